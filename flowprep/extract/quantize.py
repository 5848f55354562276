"""Flow <-> uint8 quantization: q = round((f + B) * 255 / (2B)), f = q * 2B / 255 - B.

The inverse is an affine map, stored in the shards as the CF-convention attributes
``scale_factor = 2B/255`` and ``add_offset = -B`` so that any HDF5 reader can dequantize.
"""

from __future__ import annotations

import cv2
import numpy as np

from flowprep.format import dequantize, scale_and_offset  # noqa: F401  (the formula's one home; both directions)


class NonFiniteFlow(ValueError):
    """The flow holds NaN: there is no code to store for it (the video is recorded as failed, not stored wrong)."""


def quantize(flow: np.ndarray, bound: float) -> np.ndarray:
    """Clip ``flow`` (any shape, float) to [-bound, bound] and map it to uint8 (0 -> -B, 255 -> +B).

    +-inf clip like any value beyond the bound; NaN raises ``NonFiniteFlow``: any code stored for it would read
    back as a motion that was never measured."""
    scale, offset = scale_and_offset(bound)
    f = np.ascontiguousarray(flow, dtype=np.float32)
    if f.size == 0:
        return np.zeros(f.shape, np.uint8)
    lo, hi = f.min(), f.max()  # NaN propagates through both
    if np.isnan(lo) or np.isnan(hi):
        raise NonFiniteFlow(f"the flow solver returned NaN at {int(np.isnan(f).sum())} of {f.size} values")
    if max(-lo, hi) > 2**30 * scale:
        # addWeighted converts to uint8 through an int32: values beyond 2**31 steps (inf, or |f| > ~3e8 px at
        # bound 20) would wrap to code 0 instead of saturating. Clip those first (the same codes otherwise).
        f = np.clip(f, -bound, bound)
    # One fused pass: saturate_cast<uchar>(f / scale - offset / scale) clips to [0, 255] (= [-B, B]) and
    # rounds half to even like np.rint. Faster than clip/scale/rint/astype in numpy, which matters
    # with Farneback, whose flow is cheap enough for quantization to show in a profile.
    flat = f.reshape(-1, f.shape[-1]) if f.ndim > 1 else f.reshape(1, -1)
    q = cv2.addWeighted(flat, 1.0 / scale, flat, 0.0, -offset / scale, dtype=cv2.CV_8U)
    return q.reshape(f.shape)
