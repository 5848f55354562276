"""Flow <-> uint8 quantization: q = round((f + B) * 255 / (2B)), f = q * 2B / 255 - B.

The inverse is an affine map, stored in the shards as the CF-convention attributes
``scale_factor = 2B/255`` and ``add_offset = -B`` so that any HDF5 reader can dequantize.
"""

from __future__ import annotations

import cv2
import numpy as np


def scale_and_offset(bound: float) -> tuple[float, float]:
    """(scale_factor, add_offset) such that ``f = q * scale_factor + add_offset``."""
    if not bound > 0:
        raise ValueError(f"bound must be > 0, got {bound}")
    return 2.0 * bound / 255.0, -float(bound)


def quantize(flow: np.ndarray, bound: float) -> np.ndarray:
    """Clip ``flow`` (any shape, float) to [-bound, bound] and map it to uint8 (0 -> -B, 255 -> +B)."""
    scale, offset = scale_and_offset(bound)
    f = np.ascontiguousarray(flow, dtype=np.float32)
    if f.size == 0:
        return np.zeros(f.shape, np.uint8)
    # One fused pass: saturate_cast<uchar>(f / scale - offset / scale) clips to [0, 255] (= [-B, B]) and
    # rounds half to even like np.rint. 5x faster than clip/scale/rint/astype in numpy, which matters
    # with Farneback, where flow costs only ~20 ms per field at 320x240.
    flat = f.reshape(-1, f.shape[-1]) if f.ndim > 1 else f.reshape(1, -1)
    q = cv2.addWeighted(flat, 1.0 / scale, flat, 0.0, -offset / scale, dtype=cv2.CV_8U)
    return q.reshape(f.shape)


def dequantize(q: np.ndarray, scale_factor: float, add_offset: float) -> np.ndarray:
    """uint8 -> float32 pixels, with the factors read from the data (never a hard-coded bound)."""
    return q.astype(np.float32) * np.float32(scale_factor) + np.float32(add_offset)
