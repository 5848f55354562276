"""Flow <-> uint8 quantization: q = round((f + B) * 255 / (2B)), f = q * 2B / 255 - B.

The inverse is an affine map, stored in the shards as the CF-convention attributes
``scale_factor = 2B/255`` and ``add_offset = -B`` so that any HDF5 reader can dequantize.
"""

from __future__ import annotations

import numpy as np


def scale_and_offset(bound: float) -> tuple[float, float]:
    """(scale_factor, add_offset) such that ``f = q * scale_factor + add_offset``."""
    if not bound > 0:
        raise ValueError(f"bound must be > 0, got {bound}")
    return 2.0 * bound / 255.0, -float(bound)


def quantize(flow: np.ndarray, bound: float) -> np.ndarray:
    """Clip ``flow`` (any shape, float) to [-bound, bound] and map it to uint8 (0 -> -B, 255 -> +B)."""
    scale, offset = scale_and_offset(bound)
    q = np.clip(flow, -bound, bound)
    q = (q - offset) / scale  # in [0, 255]
    return np.rint(q).astype(np.uint8)


def dequantize(q: np.ndarray, scale_factor: float, add_offset: float) -> np.ndarray:
    """uint8 -> float32 pixels, with the factors read from the data (never a hard-coded bound)."""
    return q.astype(np.float32) * np.float32(scale_factor) + np.float32(add_offset)
