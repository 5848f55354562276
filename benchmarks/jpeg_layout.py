"""The flow layout of the common two-stream toolkits, for benchmarks/loader.py to compare the shards with:
``<video>/flow_x/frame%05d.jpg`` and ``flow_y/...``, one grayscale JPEG per channel per field (quality 95),
read with ``FlowStackDataset``'s sampling, crop, resize and flip done in the worker, as those toolkits do.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from trainer.data.crops import crop_resize, multiscale_crop_box
from trainer.data.shards import VideoRecord
from trainer.data.transforms import hflip_flow_uint8


def write_jpeg_tree(root: Path, records: list[VideoRecord], quantized: list[np.ndarray]) -> None:
    """``root/<video_id>/flow_x/frame00001.jpg``...: one grayscale JPEG per channel per field (1-based)."""
    for rec, q in zip(records, quantized):
        for axis, name in ((0, "flow_x"), (1, "flow_y")):
            d = root / rec.video_id / name
            d.mkdir(parents=True)
            for t, field in enumerate(q[:, axis]):
                cv2.imwrite(str(d / f"frame{t + 1:05d}.jpg"), field, [cv2.IMWRITE_JPEG_QUALITY, 95])


class JpegFlowStackDataset(Dataset):
    """The toolkits' layout, with FlowStackDataset's sampling, crop, resize and flip."""

    def __init__(self, records: list[VideoRecord], jpeg_root: Path, *, flow_length: int, crop_size: int) -> None:
        self.records, self.root, self.L, self.S = records, jpeg_root, flow_length, crop_size

    def __len__(self) -> int:
        return len(self.records)

    def read(self, rec: VideoRecord, start: int) -> np.ndarray:
        """(2L, H, W) uint8 [u0, v0, u1, ...] from 2L files."""
        d = self.root / rec.video_id
        return np.stack([cv2.imread(str(d / name / f"frame{t + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
                         for t in range(start, start + self.L) for name in ("flow_x", "flow_y")])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rec = self.records[i]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        q = self.read(rec, int(rng.integers(rec.num_frames - self.L)))
        x, sx, sy = crop_resize(q, multiscale_crop_box(*q.shape[1:], rng), self.S)
        if rng.random() < 0.5:
            x = hflip_flow_uint8(x)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor((sx, sy)), rec.label
