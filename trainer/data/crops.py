"""Crop boxes for training and testing, and the CPU crop + resize of uint8 (C, H, W) arrays.

Crops (boxes are ``(y0, x0, h, w)`` in stored-frame pixels):
- ``multiscale_crop_box``: TSN's multi-scale corner crop (Wang et al. 2016): side lengths drawn from
  ``scales`` x the short side, independently for height and width but at most ``max_distort`` scale steps
  apart (aspect jitter), placed at one of 5 fixed positions (4 corners, centre).
- ``random_resized_crop_box``: torchvision's RandomResizedCrop (area 8%-100%, aspect 3/4-4/3, uniform
  position).
- ``center_crop_box`` / ``five_crop_boxes``: evaluation, geometrically identical to "resize the short side
  to crop_size*256/224, then take the centre (or 4 corners + centre) crop_size crop", but only the crop is
  resized.

``train_window`` / ``window_origin``: when the crop runs on the device (``transforms.prepare_train_batch``),
a training item is the fixed-size window of the frame that holds every box of the policy, and the box is
given relative to it.
"""

from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # (y0, x0, h, w)

MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)
CROPS = ("multiscale", "resized")  # training crop policies: TSN multi-scale corner crop, RandomResizedCrop
RRC_AREA = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
EVAL_RESIZE_RATIO = 256 / 224  # short side resized to crop_size * 256/224 before cropping, as is customary


def multiscale_crop_box(
    height: int, width: int, rng: np.random.Generator, *, scales: tuple[float, ...] = MULTISCALE_SCALES,
    max_distort: int = 1,
) -> Box:
    """TSN's multi-scale corner crop: side lengths from ``scales`` x short side, 5 fixed positions."""
    base = min(height, width)
    sizes = [max(1, int(base * s)) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]
    ch, cw = pairs[rng.integers(len(pairs))]
    dy, dx = (height - ch) // 4, (width - cw) // 4
    positions = [(0, 0), (0, 4 * dx), (4 * dy, 0), (4 * dy, 4 * dx), (2 * dy, 2 * dx)]
    y0, x0 = positions[rng.integers(len(positions))]
    return y0, x0, ch, cw


def random_resized_crop_box(
    height: int, width: int, rng: np.random.Generator, *, area: tuple[float, float] = RRC_AREA,
    ratio: tuple[float, float] = RRC_RATIO,
) -> Box:
    """torchvision's RandomResizedCrop box: 10 tries at a random area/aspect, else the centre crop."""
    total = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = total * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= width and 0 < ch <= height:
            return int(rng.integers(height - ch + 1)), int(rng.integers(width - cw + 1)), ch, cw
    # Fallback as torchvision: the whole frame clamped to the aspect range, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        cw, ch = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = height, int(round(height * ratio[1]))
    else:
        ch, cw = height, width
    return (height - ch) // 2, (width - cw) // 2, ch, cw


def train_crop_box(
    height: int, width: int, rng: np.random.Generator, *, crop: str, scales: tuple[float, ...] = MULTISCALE_SCALES,
) -> Box:
    """A random training crop with policy ``crop`` (one of ``CROPS``)."""
    if crop == "multiscale":
        return multiscale_crop_box(height, width, rng, scales=scales)
    if crop == "resized":
        return random_resized_crop_box(height, width, rng)
    raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")


def _eval_side(height: int, width: int) -> int:
    return max(1, int(round(min(height, width) / EVAL_RESIZE_RATIO)))


def center_crop_box(height: int, width: int) -> Box:
    """The centre crop_size crop of the frame resized to short side crop_size*256/224, in frame pixels."""
    side = _eval_side(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def five_crop_boxes(height: int, width: int) -> list[Box]:
    """4 corners + centre, same scale as ``center_crop_box`` (the 10-crop test adds their flips)."""
    side = _eval_side(height, width)
    y1, x1 = height - side, width - side
    return [(0, 0, side, side), (0, x1, side, side), (y1, 0, side, side), (y1, x1, side, side),
            center_crop_box(height, width)]


def crop_resize(chw: np.ndarray, box: Box, size: int) -> tuple[np.ndarray, float, float]:
    """Crop a (C, H, W) uint8 array to ``box`` and resize to (C, size, size) bilinearly.

    Returns the array and the resize factors (sx, sy). Bilinear interpolation of the codes equals
    interpolation of the flow up to rounding, because dequantization is affine.
    """
    y0, x0, h, w = box
    if h <= 0 or w <= 0 or y0 < 0 or x0 < 0 or y0 + h > chw.shape[1] or x0 + w > chw.shape[2]:
        raise ValueError(f"crop box {box} does not fit a frame of shape {chw.shape[1:]}")
    crop = chw[:, y0:y0 + h, x0:x0 + w]
    if (h, w) == (size, size):
        return crop, 1.0, 1.0
    out = np.empty((chw.shape[0], size, size), np.uint8)
    # One 2-D resize per channel: faster than one (h, w, C) resize, which needs a transposed copy.
    for c in range(chw.shape[0]):
        cv2.resize(crop[c], (size, size), dst=out[c], interpolation=cv2.INTER_LINEAR)
    return out, size / w, size / h


def eval_views(
    items: list[np.ndarray], *, crops: int, size: int, flip: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Test-time views of (C, H, W) items: the centre crop (crops=1), or 4 corners + centre followed by
    their ``flip`` (crops=10). Returns (len(items)*crops, C, size, size) uint8 and (len(items)*crops, 2)
    float32 resize factors, crops varying fastest."""
    h, w = items[0].shape[1:]
    boxes = [center_crop_box(h, w)] if crops == 1 else five_crop_boxes(h, w)
    views, scales = [], []
    for item in items:
        cropped = [crop_resize(item, box, size) for box in boxes]
        views += [c[0] for c in cropped] + ([flip(c[0]) for c in cropped] if crops == 10 else [])
        scales += [c[1:] for c in cropped] * (2 if crops == 10 else 1)
    return np.stack(views), np.asarray(scales, dtype=np.float32)


def train_window(height: int, width: int, *, crop: str, scales: tuple[float, ...] = MULTISCALE_SCALES) -> tuple[int, int]:
    """(h, w) of the smallest window that holds every training box of policy ``crop`` in a frame of this
    size: the multi-scale crop's sides are at most ``max(scales)`` x the short side, RandomResizedCrop
    may span the whole frame."""
    if crop == "resized":
        return height, width
    if crop != "multiscale":
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    side = max(1, int(min(height, width) * max(scales)))
    return min(height, side), min(width, side)


def window_origin(box: Box, window: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """Top-left corner of a ``window``-sized region of an (height, width) frame that contains ``box``."""
    y0, x0, h, w = box
    if h > window[0] or w > window[1]:
        raise ValueError(f"crop box {box} is larger than the window {window}")
    return min(y0, height - window[0]), min(x0, width - window[1])
