"""Flow -> colour: hue = direction, value = magnitude, saturation = 1; and the colour-wheel legend.

Directions are in image coordinates (u to the right, v downward, as in the shards), and the hue is
``atan2(v, u)`` in degrees, so on screen the hue turns clockwise:

    right (+u) -> 0 deg (red),  down (+v) -> 90 deg (yellow-green),
    left (-u) -> 180 deg (cyan),  up (-v) -> 270 deg (violet).

Brightness is ``min(|f| / max_flow, 1)``: one fixed ``max_flow`` for a whole picture or animation (never
per frame, which would make a slow video look as fast as a fast one), written on the legend.
"""

from __future__ import annotations

import cv2
import numpy as np

DIRECTION_HUES = {"right": 0.0, "down": 90.0, "left": 180.0, "up": 270.0}


def flow_hue(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Hue in degrees, [0, 360), of the direction (u, v) in image coordinates (v downward)."""
    hue = np.degrees(np.arctan2(v, u)) % 360.0
    # x % 360 can round up to exactly 360 for tiny negative angles; that is the hue 0.
    return np.where(hue >= 360.0, 0.0, hue).astype(np.float32)


def flow_to_rgb(flow: np.ndarray, *, max_flow: float) -> np.ndarray:
    """(2, H, W) float flow (u, v) in pixels -> (H, W, 3) uint8 RGB."""
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"expected flow of shape (2, H, W), got {flow.shape}")
    if not max_flow > 0:
        raise ValueError(f"max_flow must be > 0, got {max_flow}")
    u, v = flow[0].astype(np.float32), flow[1].astype(np.float32)
    value = np.clip(np.hypot(u, v) / np.float32(max_flow), 0.0, 1.0)
    hsv = np.stack([flow_hue(u, v), np.ones_like(value), value], axis=-1)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)  # float32: H in degrees, S and V in [0, 1]
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def color_wheel(size: int, *, background: tuple[int, int, int] = (40, 40, 40)) -> np.ndarray:
    """(size, size, 3) uint8 RGB disc: the pixel at offset (dx, dy) from the centre (dy downward) has
    the colour of a flow pointing (dx, dy) whose magnitude is max_flow at the rim."""
    if size < 8:
        raise ValueError(f"expected a wheel size >= 8 pixels, got {size}")
    radius = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - np.float32(radius)
    wheel = flow_to_rgb(np.stack([xx, yy]) / np.float32(radius), max_flow=1.0)
    wheel[np.hypot(xx, yy) > radius] = background
    return wheel


def legend(*, max_flow: float, width: int = 200, wheel_size: int = 120) -> np.ndarray:
    """A (height, width, 3) uint8 RGB panel: the colour wheel with direction labels and the brightness scale."""
    font, white = cv2.FONT_HERSHEY_SIMPLEX, (235, 235, 235)
    pad = (width - wheel_size) // 2
    height = wheel_size + 2 * pad + 58
    panel = np.full((height, width, 3), 40, np.uint8)
    panel[pad : pad + wheel_size, pad : pad + wheel_size] = color_wheel(wheel_size)
    mid = pad + wheel_size // 2
    for text, (x, y) in {
        "R": (pad + wheel_size + 3, mid + 4),
        "L": (pad - 13, mid + 4),
        "U": (mid - 4, pad - 4),
        "D": (mid - 4, pad + wheel_size + 13),
    }.items():
        cv2.putText(panel, text, (x, y), font, 0.4, white, 1, cv2.LINE_AA)
    y0 = pad + wheel_size + 30
    cv2.putText(panel, "hue = direction", (6, y0), font, 0.4, white, 1, cv2.LINE_AA)
    cv2.putText(panel, "brightness = |flow|", (6, y0 + 16), font, 0.4, white, 1, cv2.LINE_AA)
    cv2.putText(panel, f"full at {max_flow:g} px/frame", (6, y0 + 32), font, 0.4, white, 1, cv2.LINE_AA)
    return panel
