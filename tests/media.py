"""Test media made on the fly: real encoded video files (PyAV), never checked-in binaries.

Other test modules import these helpers (``from media import write_video``; tests/ is on sys.path
through tests/conftest.py), so they stay general: any frames, any codec PyAV can encode.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

# codec -> (container extension, encoder options). High quality so that decoded frames stay close to
# the raw ones: tests that measure flow should not be measuring compression artefacts.
CODECS = {
    "libx264": (".mp4", {"crf": "4", "preset": "ultrafast"}),
    "mpeg4": (".avi", {"qmin": "1", "qmax": "3"}),
}


def write_video(
    path: str | Path, frames: np.ndarray, fps: float = 25.0, codec: str = "libx264", *, turned: float = 0,
    mirrored: bool = False,
) -> Path:
    """Encode RGB uint8 frames (T, H, W, 3) into ``path`` (the extension picks the container).

    ``turned``: a display matrix that shows the frames turned by that many degrees counter-clockwise (a
    phone's portrait video; PyAV's ``set_display_rotation``, read back as ``VideoFrame.rotation``), and
    ``mirrored``, one that then mirrors them left to right.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"yuv420p needs even H and W, got {frames.shape[1]}x{frames.shape[2]}")
    options = CODECS.get(codec, (None, {}))[1]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = dict(options)
        if turned or mirrored:
            stream.set_display_rotation(turned, hflip=mirrored)
        if codec == "mpeg4":
            stream.bit_rate = 20_000_000  # with qmax 3: near-lossless, whatever the frame size
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def smooth_texture(height: int, width: int, *, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """Random RGB texture (H, W, 3) uint8, blurred so that it has structure at a few pixels' scale."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 3)).astype(np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), sigma)
    tex -= tex.min(axis=(0, 1))
    tex /= tex.max(axis=(0, 1))
    return (tex * 255).round().astype(np.uint8)


def translating_texture(
    num_frames: int, height: int, width: int, dx: float, dy: float, *, seed: int = 0
) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of a texture moving by (dx, dy) px per frame (+x right, +y down).

    Frame t is a window of a larger texture shifted by (t*dx, t*dy) with sub-pixel (bilinear)
    warps, so content at (x, y) in frame t is at (x + dx, y + dy) in frame t + 1.
    """
    pad = int(np.ceil(max(abs(dx), abs(dy)) * num_frames)) + 8
    big = smooth_texture(height + 2 * pad, width + 2 * pad, seed=seed)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        m = np.float32([[1, 0, t * dx], [0, 1, t * dy]])
        moved = cv2.warpAffine(big, m, (big.shape[1], big.shape[0]), flags=cv2.INTER_LINEAR)
        frames[t] = moved[pad : pad + height, pad : pad + width]
    return frames


def random_frames(num_frames: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """Smooth random frames that change over time (cheap content for tests that do not measure flow)."""
    frames = translating_texture(num_frames, height, width, 1.0, 0.5, seed=seed)
    return frames
