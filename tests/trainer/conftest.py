"""Tiny flowprep shard folders with known content, for every trainer test.

Fixtures:
- ``tiny_shards`` (session scope, read-only: copy or use ``make_tiny_shards`` to break things):
  3 classes x 4 videos, 12 frames of 32x40 (HxW), bound 12 px (not 20, so a hard-coded 20 fails),
  3 shards of <= 5 videos, RGB JPEGs, single-task run. Videos g01-g02 of each class are in
  ``train_list``, g03 in ``val_list`` (both labelled, 1-based), g04 in ``test_list`` (unlabelled),
  all 12 in ``all_list`` (labelled).
- ``make_tiny_shards(**kwargs)`` (function scope): the same in a fresh tmp dir with ``make_shards``'s
  keyword arguments, e.g. ``tasks=2`` (array-run manifest parts), ``num_frames=[12, 5, ...]``,
  ``bound=``, ``rgb=False``, ``class_names=["air drumming", ...]`` (ids with spaces, as Kinetics has).

Content (``TinyShards.flow_q`` / ``TinyShards.rgb`` hold exactly what was written):
- flow of class c, video k, field t on the pixel grid (X = x - (W-1)/2, Y = y - (H-1)/2):
  u = tx - r*Y + e*X, v = e*Y + r*X with class 0 translating right (tx = 3 + 0.25k + 0.2t),
  class 1 expanding (e = 0.15 + 0.01k + 0.005t) and class 2 rotating (r = the same), quantized
  with flowprep.extract.quantize; every field differs from the next, so a wrong time index shows.
- RGB frame t of class c: channel c = 200, channel (c+1)%3 = 4x (a left-right gradient), channel
  (c+2)%3 = 10 + 15t (the frame index), stored as quality-95 JPEG.
Both streams can tell the classes apart, so a model can overfit them, and the classes survive a
horizontal flip (a flipped Drift moves left but is still the only translation), so flip augmentation
can stay on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import h5py
import numpy as np
import pytest
import torch

from flowprep.extract.quantize import quantize
from flowprep.extract.writer import VideoMeta, VideoWriter, write_file_attrs

CLASSES = ["Drift", "Expand", "Rotate"]

# The tests' tensors are tiny: one intra-op thread avoids thread start-up and contention on a shared
# machine (the engine tests ran ~3x faster with it on 2 busy cores), and results do not depend on it.
torch.set_num_threads(1)


@dataclass(frozen=True)
class TinyShards:
    root: Path
    classes: list[str]
    video_ids: list[str]  # class-major: Drift g01..g04, Expand g01..g04, ...
    labels: dict[str, int]  # 0-based
    num_frames: dict[str, int]
    flow_q: dict[str, np.ndarray]  # (T-1, 2, H, W) uint8, exactly as stored
    rgb: dict[str, np.ndarray]  # (T, H, W, 3) uint8 RGB before JPEG encoding
    bound: float
    height: int
    width: int
    train_list: Path
    val_list: Path
    test_list: Path
    all_list: Path


def synthetic_flow(label: int, k: int, t: int, height: int, width: int) -> np.ndarray:
    """(2, H, W) float32 field t of video k of class ``label`` (see the module docstring)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    X, Y = x - (width - 1) / 2, y - (height - 1) / 2
    slope = 0.15 + 0.01 * k + 0.005 * t
    tx, e, r = [(3 + 0.25 * k + 0.2 * t, 0.0, 0.0), (0.0, slope, 0.0), (0.0, 0.0, slope)][label % 3]
    return np.stack([tx - r * Y + e * X, e * Y + r * X]).astype(np.float32)


def synthetic_rgb(label: int, t: int, height: int, width: int) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    img[..., label % 3] = 200
    img[..., (label + 1) % 3] = np.clip(4 * np.arange(width), 0, 255)[None, :]
    img[..., (label + 2) % 3] = 10 + 15 * t
    return img


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_shards(
    root: Path, *, num_classes: int = 3, videos_per_class: int = 4, num_frames: int | list[int] = 12,
    height: int = 32, width: int = 40, bound: float = 12.0, tasks: int = 1, videos_per_shard: int = 5,
    rgb: bool = True, class_names: list[str] | None = None, id_format: str = "{cls}/v_{cls}_g{g:02d}_c01",
) -> TinyShards:
    """Write a flowprep output folder per docs/shard-format.md (manifest(s) + shards) and UCF-style lists."""
    root.mkdir(parents=True, exist_ok=True)
    names = class_names or CLASSES
    classes = [names[c] if c < len(names) else f"Class{c}" for c in range(num_classes)]
    videos = [(c, k) for c in range(num_classes) for k in range(videos_per_class)]
    frames = num_frames if isinstance(num_frames, list) else [num_frames] * len(videos)
    params = {"flow": {"method": "synthetic", "bound": bound}, "decode": {"size": [width, height]},
              "storage": {"rgb": rgb, "jpeg_quality": 95}, "versions": {"h5py": h5py.__version__}}
    ids, labels, nframes, flow_q, rgb_frames = [], {}, {}, {}, {}
    for i, (c, k) in enumerate(videos):
        vid = id_format.format(cls=classes[c], g=k + 1)
        ids.append(vid)
        labels[vid], nframes[vid] = c, frames[i]
        fields = [synthetic_flow(c, k, t, height, width) for t in range(frames[i] - 1)]
        flow_q[vid] = quantize(np.stack(fields), bound) if fields else np.zeros((0, 2, height, width), np.uint8)
        rgb_frames[vid] = np.stack([synthetic_rgb(c, t, height, width) for t in range(frames[i])])
    for task in range(tasks):
        mine = ids[task::tasks]
        prefix = "" if tasks == 1 else f"task{task:05d}-"
        shards = []
        for s in range(0, len(mine), videos_per_shard):
            name = f"{prefix}shard-{s // videos_per_shard:05d}.h5"
            tmp = root / (name + ".tmp")
            with h5py.File(tmp, "w") as f:
                write_file_attrs(f, params)
                for vid in mine[s:s + videos_per_shard]:
                    c = labels[vid]
                    meta = VideoMeta(video_id=vid, source=vid + ".avi", label=c, class_name=classes[c])
                    w = VideoWriter(f, meta, height=height, width=width, bound=bound, rgb=rgb, jpeg_quality=95)
                    w.append_flow(flow_q[vid])
                    if rgb:
                        w.append_rgb([cv2.imencode(".jpg", im[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                                      for im in rgb_frames[vid]])
                    w.finish(num_frames=nframes[vid], fps=25.0)
            os.replace(tmp, root / name)
            shards.append({"name": name, "size": (root / name).stat().st_size, "sha256": _sha256(root / name),
                           "videos": mine[s:s + videos_per_shard]})
        manifest = {"format": "flowprep-manifest", "format_version": 1, "complete": True,
                    "task": {"index": task, "count": tasks}, "params": params, "classes": classes,
                    "num_videos": len(mine), "shards": shards, "failures": []}
        mname = "manifest.json" if tasks == 1 else f"manifest-{task:05d}-of-{tasks:05d}.json"
        (root / mname).write_text(json.dumps(manifest, indent=1))

    def write_list(name: str, keep: Callable[[int], bool], labelled: bool) -> Path:
        lines = [f"{vid}.avi {labels[vid] + 1}" if labelled else f"{vid}.avi"
                 for i, vid in enumerate(ids) if keep(videos[i][1])]
        path = root / name
        path.write_text("\n".join(lines) + "\n")
        return path

    return TinyShards(
        root=root, classes=classes, video_ids=ids, labels=labels, num_frames=nframes, flow_q=flow_q,
        rgb=rgb_frames, bound=bound, height=height, width=width,
        train_list=write_list("trainlist.txt", lambda k: k < 2, True),
        val_list=write_list("vallist.txt", lambda k: k == 2, True),
        test_list=write_list("testlist.txt", lambda k: k >= 3, False),
        all_list=write_list("alllist.txt", lambda k: True, True),
    )


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> TinyShards:
    return make_shards(tmp_path_factory.mktemp("tiny_shards"))


@pytest.fixture
def make_tiny_shards(tmp_path: Path) -> Callable[..., TinyShards]:
    counter = iter(range(1000))
    return lambda **kwargs: make_shards(tmp_path / f"shards{next(counter)}", **kwargs)
