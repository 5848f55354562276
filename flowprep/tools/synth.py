"""Synthetic motion clips: a static textured scene with a window whose texture moves with a motion field.

Each clip shows a static textured background and an elliptic window (a "door"); the texture inside
the window moves with the class's motion field (translate, rotate, expand or contract about a point
inside the window). Nothing a single frame shows depends on the class:

- the window's position, size and shape, the colours and the background are drawn the same way for
  every class, and none of them moves;
- the moving texture is a dead-leaves image (discs with radius density ~ r^-3), statistically
  invariant to translation, rotation and scale, so a middle or last frame is distributed like a first
  frame (an expanding clip does not get coarser, a contracting one finer).

The clips of group gGG of a class share appearance parameters (background, colours, window), as the
clips of one actor/scene in UCF-101. Raw frames are a pure function of the ClipSpec.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

SUPERSAMPLE = 2  # frames are rendered at 2x and area-averaged: smooth edges, exact sub-pixel motion
TEXTURE_SCALE = 2.0  # texture pixels per frame pixel at zoom 1: a zoom-in stays sharp
MAX_ZOOM = 1.5  # zoom classes scale by at most this either way from the middle frame

# name -> (kind, x, y): translate by unit (x, y) (y downward); rotate x = +1 clockwise; zoom x = +1 expand
MOTIONS: dict[str, tuple[str, float, float]] = {
    "MoveLeft": ("translate", -1.0, 0.0),
    "MoveRight": ("translate", 1.0, 0.0),
    "MoveUp": ("translate", 0.0, -1.0),
    "MoveDown": ("translate", 0.0, 1.0),
    "RotateClockwise": ("rotate", 1.0, 0.0),
    "RotateCounterclockwise": ("rotate", -1.0, 0.0),
    "Expand": ("zoom", 1.0, 0.0),
    "Contract": ("zoom", -1.0, 0.0),
}
DEFAULT_CLASSES = tuple(MOTIONS)
# A horizontal flip (a usual training augmentation) turns MoveLeft into MoveRight and clockwise into
# counter-clockwise; these classes are unchanged by it.
MIRROR_SAFE_CLASSES = ("MoveUp", "MoveDown", "Expand", "Contract")


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one clip's raw frames."""

    class_name: str
    label: int  # 0-based
    group: int  # 1-based, as in v_X_g01_c01
    clip: int  # 1-based
    width: int
    height: int
    frames: int
    fps: int = 25
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    """The random draw behind one clip (pixels, y downward)."""

    window_center: tuple[float, float]
    window_axes: tuple[float, float]
    window_angle: float  # degrees
    motion_center: tuple[float, float]  # rotation / zoom centre
    velocity: tuple[float, float]  # px/frame (translate)
    omega: float  # rad/frame, + clockwise (rotate)
    zoom_rate: float  # d(log scale)/frame, + expand (zoom)
    fg_palette: np.ndarray  # (3, 3) RGB
    bg_palette: np.ndarray
    texture_seed: int
    background_seed: int


def draw_scene(spec: ClipSpec) -> Scene:
    """Draw the clip's appearance and motion. Appearance is drawn the same way for every class (the
    class name only selects an independent random stream)."""
    key = [spec.seed, zlib.crc32(spec.class_name.encode()), spec.group]
    g, c = np.random.default_rng(key), np.random.default_rng(key + [spec.clip])  # group, clip
    w, h, m = spec.width, spec.height, min(spec.width, spec.height)
    fg, bg = g.uniform(0, 255, (3, 3)), g.uniform(40, 215, (3, 3))
    axes = g.uniform(0.24, 0.34) * m * np.array([1.0, g.uniform(0.8, 1.25)]) * c.uniform(0.93, 1.07)
    lo, hi = axes.max() + 2, np.array([w, h]) - axes.max() - 2
    center = np.clip(g.uniform(lo, hi) + c.normal(0, 0.03 * m, 2), lo, hi)
    angle = g.uniform(0, 180) + c.normal(0, 8)
    mc = center + c.uniform(-0.15, 0.15, 2) * axes
    speed = c.uniform(1.0, 2.2)  # px/frame; for rotate/zoom at `rho` from the centre
    jitter = math.radians(c.normal(0, 8))
    bg_seed, tex_seed = int(g.integers(2**62)), int(c.integers(2**62))
    kind, x, y = MOTIONS[spec.class_name]
    rho, half = 0.6 * math.sqrt(axes[0] * axes[1]), max((spec.frames - 1) / 2, 1)
    velocity, omega, zoom = (0.0, 0.0), 0.0, 0.0
    if kind == "translate":
        cs, sn = math.cos(jitter), math.sin(jitter)
        velocity = (speed * (cs * x - sn * y), speed * (sn * x + cs * y))
    elif kind == "rotate":
        omega = x * min(speed / rho, 0.12)
    else:
        zoom = x * min(speed / rho, math.log(MAX_ZOOM) / half)
    return Scene(tuple(center), tuple(axes), float(angle), tuple(mc), velocity, omega, zoom, fg, bg, tex_seed, bg_seed)


def dead_leaves(
    rng: np.random.Generator, height: int, width: int, palette: np.ndarray, *, r_min: float, r_max: float
) -> np.ndarray:
    """(H, W, 3) uint8: opaque discs, radius density ~ r^-3 on [r_min, r_max] (scale invariant)."""
    ratio = (r_min / r_max) ** 2
    mean_area = math.pi * 2 * r_min**2 * math.log(r_max / r_min) / (1 - ratio)
    n = int(min(100_000, 4.0 * height * width / mean_area))  # leaves ~e^-4 of the canvas uncovered
    radii = r_min * (1 - rng.random(n) * (1 - ratio)) ** -0.5
    centers = rng.uniform(0, 1, (n, 2)) * [width, height]
    colors = np.clip(palette[rng.integers(0, len(palette), n)] + rng.normal(0, 20, (n, 3)), 0, 255)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = np.rint(palette.mean(axis=0)).astype(np.uint8)
    fixed = (np.c_[centers, radii] * 16).round().astype(np.int64)  # 4 fractional bits (shift=4)
    for (x, y, r), col in zip(fixed.tolist(), colors.round().astype(int).tolist()):
        cv2.circle(img, (x, y), r, col, -1, cv2.LINE_AA, 4)
    return img


def _window(spec: ClipSpec, sc: Scene, thickness: int) -> np.ndarray:
    """(H, W, 1) float coverage of the window (-1) or its frame, drawn at 2x and area-averaged."""
    s = SUPERSAMPLE
    big = np.zeros((spec.height * s, spec.width * s), np.float32)
    center = tuple(float(v) * s + (s - 1) / 2 for v in sc.window_center)
    cv2.ellipse(big, (center, tuple(2 * a * s for a in sc.window_axes), sc.window_angle), 1.0, thickness, cv2.LINE_AA)
    return cv2.resize(big, (spec.width, spec.height), interpolation=cv2.INTER_AREA)[..., None]


def render_clip(spec: ClipSpec) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of the clip."""
    sc, s, q = draw_scene(spec), SUPERSAMPLE, TEXTURE_SCALE
    w, h, tm = spec.width, spec.height, (spec.frames - 1) / 2
    mc, wc = np.array(sc.motion_center), np.array(sc.window_center)
    z_min = math.exp(-abs(sc.zoom_rate) * tm)
    reach = (max(sc.window_axes) + np.linalg.norm(mc - wc) + math.hypot(*sc.velocity) * tm) / z_min + 3
    half = int(math.ceil(q * reach))
    # The same disc sizes for every class: on screen they span [0.5 px, 1.5 window axes] at any zoom.
    r_min, r_max = 0.5 * q / MAX_ZOOM, 1.5 * q * max(sc.window_axes) * MAX_ZOOM
    rng = np.random.default_rng(sc.texture_seed)
    tex = dead_leaves(rng, 2 * half + 1, 2 * half + 1, sc.fg_palette, r_min=r_min, r_max=r_max).astype(np.float32)
    rng = np.random.default_rng(sc.background_seed)
    back = dead_leaves(rng, h, w, sc.bg_palette, r_min=1.0, r_max=0.3 * min(w, h)).astype(np.float32)
    back = cv2.GaussianBlur(back, (0, 0), 1.0)
    back = 0.5 * back + 0.5 * back.mean(axis=(0, 1))  # calmer than the window
    inside, ring = _window(spec, sc, -1), _window(spec, sc, int(1.5 * s))
    out = np.empty((spec.frames, h, w, 3), np.uint8)
    for t in range(spec.frames):
        theta, z, d = sc.omega * (t - tm), math.exp(sc.zoom_rate * (t - tm)), np.array(sc.velocity) * (t - tm)
        # Content at x(t) = c + z R(theta) (x0 - c) + d: sample the texture at x0 (inverse map) for
        # each supersampled pixel X, whose frame coordinate is x = X / s + 0.5 / s - 0.5.
        rinv = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
        m = np.c_[q / (z * s) * rinv, q / z * rinv @ (np.full(2, 0.5 / s - 0.5) - mc - d) + half]
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        content = cv2.warpAffine(tex, m, (w * s, h * s), flags=flags, borderMode=cv2.BORDER_REFLECT101)
        content = cv2.resize(content, (w, h), interpolation=cv2.INTER_AREA)
        frame = ring * 25.0 + (1 - ring) * (inside * content + (1 - inside) * back)
        out[t] = np.rint(np.clip(frame, 0, 255)).astype(np.uint8)
    return out
