"""Real clips for the extraction benchmarks: OpenCV's sample videos, re-encoded at 320x240 in a UCF-101 layout."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import click
import cv2
import numpy as np

MEDIA = Path("/tmp/ocvdoc/usr/share/doc/opencv-doc/examples/data")
GET_MEDIA = "apt-get download opencv-doc && dpkg -x opencv-doc_*.deb /tmp/ocvdoc"
# class -> (file, first frame used). Megamind.avi opens with a cut from a title card: TV-L1 spends ~20 s
# on that one field (~1 s on the others), which would turn a short clip into the whole TV-L1 run.
SOURCES = {"Tree": ("tree.avi", 0), "Megamind": ("Megamind.avi", 1), "Walking": ("vtest.avi", 0)}
SIZE = (320, 240)

class MissingMedia(click.ClickException):
    exit_code = 2

def build_videos(media: Path, root: Path, *, videos: int, frames: int, size: tuple[int, int] = SIZE) -> list[Path]:
    """``videos`` clips of ``frames`` frames at ``size`` (320x240) in a UCF-101 layout, cut round-robin from the
    sources; sorted by relative path, the order in which the pipeline hands them out.

    Even clips are H.264 .mp4 (x264 defaults), odd ones MPEG-4 part 2 .avi at 600 kbit/s (UCF-101's xvid).
    A source shorter than its clips need (tree.avi has 68 frames) is played forwards, backwards, forwards...
    (no frame twice in a row), so long clips stay real motion of real video."""
    decoded: dict[str, np.ndarray] = {}
    paths = []
    for i in range(videos):
        cls = list(SOURCES)[i % len(SOURCES)]
        if cls not in decoded:
            name, first = SOURCES[cls]
            needed = frames * -(-videos // len(SOURCES))  # the clips of this class, back to back
            with av.open(str(media / name)) as c:
                src = np.stack([cv2.resize(f.to_ndarray(format="rgb24"), size, interpolation=cv2.INTER_AREA)
                                for f, _ in zip(c.decode(video=0), range(first + needed))][first:])
            decoded[cls] = src[ping_pong(len(src), needed)]
        src = decoded[cls]
        start = i // len(SOURCES) * frames
        codec, ext = ("libx264", "mp4") if i % 2 == 0 else ("mpeg4", "avi")
        path = root / cls / f"v_{cls}_g{i // len(SOURCES) + 1:02d}_c01.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as c:
            s = c.add_stream(codec, rate=Fraction(25))
            s.width, s.height, s.pix_fmt = *size, "yuv420p"
            if codec == "mpeg4":
                s.bit_rate = 600_000
            for frame in src[start:start + frames]:
                c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            c.mux(s.encode())
        paths.append(path)
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def ping_pong(n: int, length: int) -> np.ndarray:
    """``length`` frame indices into n frames: 0, 1, ..., n-1, n-2, ..., 0, 1, ... (just 0..length-1 if n >= length)."""
    if n < 2:
        raise click.UsageError(f"a source video needs at least 2 usable frames, got {n}")
    period = 2 * (n - 1)
    k = np.arange(length) % period
    return np.where(k < n, k, period - k)
