"""torch Datasets over flowprep shards: one JPEG frame (spatial) or L consecutive flow fields (temporal).

The records come from ``trainer.data.shards.index_shards`` and ``trainer.data.lists.read_video_list``; the
frames and fields are read by ``trainer.data.read``. Items are uint8 tensors plus the crop's resize factors
(trainer/data/crops.py draws the boxes; trainer/data/transforms.py has the maths, the flip and the
device-side normalisation).

Default crop: TSN's multi-scale corner crop, for both streams (``crop="resized"`` selects torchvision's
RandomResizedCrop). The resize factor s of a crop multiplies the flow, so it decides which motion
magnitudes the network trains on. ``python -m benchmarks.loader`` measures s on 320x240 shards
(BENCHMARKS.md, the temporal loader section): the multi-scale crop keeps s in a narrow band around the
evaluation crop's, while RandomResizedCrop (area down to 8%, aspect 3/4-4/3 that also scales u and v
differently) magnifies the flow far more than at test time, at the same loading speed. TSN (Wang et al. 2016) reports the multi-scale crop for both streams on UCF-101.

Training crops on the device: given ``frame_size`` (every video stored at that size, the usual case), the
training datasets return the uncropped window of the frame(s) that holds every possible box plus the
box and flip drawn (``transforms.TRAIN_PARAMS``), and ``transforms.prepare_train_batch`` crops, resizes
and flips the whole batch on the device. This takes the per-sample cv2.resize of 2L channels and the
flip off the loader workers (see ``python -m benchmarks.loader``). Evaluation items are always cropped
on the CPU (10-crop views, mixed sizes).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from trainer.data.crops import (
    CROPS, MULTISCALE_SCALES, Box, center_crop_box, crop_resize, eval_views, train_crop_box, train_window,
    window_origin,
)
from trainer.data.errors import DataError
from trainer.data.read import flow_frame_size, read_flow, read_frame
from trainer.data.shards import VideoRecord
from trainer.data.transforms import hflip_flow_uint8, hflip_rgb


def item_rng() -> np.random.Generator:
    """A sample's own generator, drawn from torch's: DataLoader worker seeding and a resumed run's RNG state apply."""
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


class _ShardDataset(Dataset):
    def __init__(self, records: list[VideoRecord], *, crop_size: int, train: bool,
                 scales: tuple[float, ...], crop: str, flip: bool, frame_size: tuple[int, int] | None) -> None:
        if not records:
            raise DataError("expected at least one video record, got an empty list")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        self.records, self.crop_size, self.train, self.scales, self.crop = list(records), crop_size, train, scales, crop
        self.flip = flip and train
        # Crop on the device: training only, and only when every item has the same (H, W) to batch.
        self.frame_size = frame_size if train else None
        self.window = train_window(*frame_size, crop=crop, scales=scales) if self.frame_size else None

    def _device_item(self, read: Callable[[tuple[int, int], tuple[int, int]], np.ndarray],
                     rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """The window holding the box drawn, and (y0, x0, h, w, flip, size) relative to it."""
        assert self.frame_size is not None and self.window is not None
        height, width = self.frame_size
        box = self._box(height, width, rng)
        flip = self._flip_now(rng)  # drawn after the box, as in the CPU path: same draws, same crops
        wy, wx = window_origin(box, self.window, height, width)
        x = read((wy, self.window[0]), (wx, self.window[1]))
        params = (box[0] - wy, box[1] - wx, box[2], box[3], float(flip), self.crop_size)
        return torch.from_numpy(x), torch.tensor(params, dtype=torch.float32)

    def _check_size(self, rec: VideoRecord, shape: tuple[int, ...]) -> None:
        if self.frame_size is not None and tuple(shape) != self.frame_size:
            raise DataError(f"{rec.shard}: {rec.video_id} is stored at {tuple(shape)}, expected frame_size "
                            f"{self.frame_size}; pass frame_size=None for videos of mixed sizes")

    def _flip_now(self, rng: np.random.Generator) -> bool:
        return self.flip and rng.random() < 0.5

    def __len__(self) -> int:
        return len(self.records)

    def _box(self, h: int, w: int, rng: np.random.Generator) -> Box:
        return train_crop_box(h, w, rng, crop=self.crop, scales=self.scales) if self.train else center_crop_box(h, w)


class FrameDataset(_ShardDataset):
    """Spatial stream: one frame per item (random when training, the middle one otherwise).

    Training flips half the items horizontally unless ``flip=False`` (classes told apart by their
    left/right direction, e.g. the sample's MoveLeft/MoveRight, need it off).
    Item: (x uint8 (3, S, S) RGB, scale float32 (2,) = (sx, sy), label); training with ``frame_size``
    (H, W): (x uint8 (3, h, w) window, params float32 (6,), label), see ``transforms.prepare_train_batch``.
    """

    def __init__(self, records: list[VideoRecord], *, crop_size: int = 224, train: bool = True,
                 scales: tuple[float, ...] = MULTISCALE_SCALES, crop: str = "multiscale", flip: bool = True,
                 frame_size: tuple[int, int] | None = None) -> None:
        super().__init__(records, crop_size=crop_size, train=train, scales=scales, crop=crop, flip=flip,
                         frame_size=frame_size)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        rec, rng = self.records[i], item_rng()
        t = int(rng.integers(rec.num_frames)) if self.train else rec.num_frames // 2
        img = read_frame(rec, t)
        if self.frame_size is not None:
            self._check_size(rec, img.shape[1:])
            x, params = self._device_item(
                lambda r, c: np.ascontiguousarray(img[:, r[0]:r[0] + r[1], c[0]:c[0] + c[1]]), rng)
            return x, params, rec.label
        x, sx, sy = crop_resize(img, self._box(*img.shape[1:], rng), self.crop_size)
        if self._flip_now(rng):
            x = hflip_rgb(x)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor((sx, sy), dtype=torch.float32), rec.label


class FlowStackDataset(_ShardDataset):
    """Temporal stream: L consecutive flow fields per item, channels [u0, v0, u1, v1, ...].

    Training draws the start uniformly from [0, T-1-L] (fields i..i+L-1, each from frame i to i+1);
    evaluation takes the middle stack. A video shorter than L+1 frames (fewer than L fields) is padded by
    repeating its last field. Training flips half the items (mirror + negate u) unless ``flip=False``.
    Item: (x uint8 (2L, S, S), scale float32 (2,) = (sx, sy), label); training with ``frame_size``
    (H, W): (x uint8 (2L, h, w) window, params float32 (6,), label), see ``transforms.prepare_train_batch``.
    """

    def __init__(self, records: list[VideoRecord], *, flow_length: int = 10, crop_size: int = 224,
                 train: bool = True, scales: tuple[float, ...] = MULTISCALE_SCALES, crop: str = "multiscale",
                 flip: bool = True, frame_size: tuple[int, int] | None = None) -> None:
        super().__init__(records, crop_size=crop_size, train=train, scales=scales, crop=crop, flip=flip,
                         frame_size=frame_size)
        _check_has_flow(self.records)
        self.flow_length = flow_length

    def _start(self, rec: VideoRecord, rng: np.random.Generator) -> int:
        """First field of the stack: uniform over [0, T-1-L] when training, the middle stack otherwise."""
        last = max(rec.num_frames - 1 - self.flow_length, 0)
        return int(rng.integers(last + 1)) if self.train else last // 2

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        rec, rng, L = self.records[i], item_rng(), self.flow_length
        start = self._start(rec, rng)
        if self.frame_size is not None:
            self._check_size(rec, flow_frame_size(rec))
            x, params = self._device_item(
                lambda r, c: read_flow(rec, start, start + L, rows=r, cols=c).reshape(2 * L, r[1], c[1]), rng)
            return x, params, rec.label
        q = read_flow(rec, start, start + L)
        q = q.reshape(2 * L, *q.shape[2:])  # (L, 2, H, W) -> (2L, H, W), u/v interleaved
        x, sx, sy = crop_resize(q, self._box(*q.shape[1:], rng), self.crop_size)
        if self._flip_now(rng):
            x = hflip_flow_uint8(x)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor((sx, sy), dtype=torch.float32), rec.label


def short_for_stacks(records: list[VideoRecord], flow_length: int, role: str) -> str | None:
    """One line when some of ``records`` (the ``role`` list's videos) have fewer than ``flow_length + 1`` frames,
    so that their flow stacks are padded with the last field (``FlowStackDataset``); None when none has."""
    videos = {r.video_id: r.num_frames for r in records}  # a list may repeat a video: count it once
    short = sum(n < flow_length + 1 for n in videos.values())
    if not short:
        return None
    have = "has" if short == 1 else "have"
    return (f"{short} of {len(videos)} {role} videos {have} fewer than {flow_length + 1} frames: their stacks repeat "
            f"the last flow field")


def _check_has_flow(records: list[VideoRecord]) -> None:
    short = [r.video_id for r in records if r.num_frames < 2]
    if short:
        raise DataError(f"{len(short)} video(s) have fewer than 2 frames and no flow, e.g. {short[0]!r}")


class VideoEvalDataset(Dataset):
    """Video-level testing: ``samples`` frames / stacks uniformly spaced over the video, 1 or 10 crops.

    Positions are ``np.linspace`` over the valid frames (spatial) or stack starts (temporal), rounded; a video
    with fewer distinct positions than ``samples`` repeats some of them. ``samples`` is capped at the most
    distinct positions any of ``records`` has (``self.samples``; ``requested`` keeps the number asked for): more
    would only repeat frames in every video, at a cost in memory and time that grows with it (an item holds
    ``samples * crops`` views, and the network sees them in one batch), while every video keeps one number of
    samples so that videos batch together. A cap below ``requested`` is told by ``capped``.
    Crops: the centre crop, or 4 corners + centre and their horizontal flips (flow flips negate u), at
    the scale of "short side resized to crop_size*256/224". Item: (x uint8 (samples*crops, C, S, S),
    scale float32 (samples*crops, 2), label, index), crops varying fastest. A temporal item with 25
    samples x 10 crops x L=10 at S=224 is 250 MB of uint8: use batch_size 1.
    """

    def __init__(self, records: list[VideoRecord], *, stream: str, samples: int = 25, crops: int = 1,
                 flow_length: int = 10, crop_size: int = 224) -> None:
        if stream not in ("spatial", "temporal"):
            raise ValueError(f"stream must be 'spatial' or 'temporal', got {stream!r}")
        if crops not in (1, 10):
            raise ValueError(f"crops must be 1 or 10, got {crops}")
        if not records:
            raise DataError("expected at least one video record, got an empty list")
        if stream == "temporal":
            _check_has_flow(records)
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.records, self.stream, self.crops = list(records), stream, crops
        self.flow_length, self.crop_size = flow_length, crop_size
        self.requested = samples
        self.samples = min(samples, max(self._last(r) + 1 for r in self.records))

    def __len__(self) -> int:
        return len(self.records)

    def _last(self, rec: VideoRecord) -> int:
        """The last frame index (spatial) or stack start (temporal) of one video."""
        return rec.num_frames - 1 if self.stream == "spatial" else max(rec.num_frames - 1 - self.flow_length, 0)

    def positions(self, rec: VideoRecord) -> np.ndarray:
        """Frame indices (spatial) or stack starts (temporal) for one video."""
        return np.rint(np.linspace(0, self._last(rec), self.samples)).astype(np.int64)

    def capped(self, option: str, role: str) -> str | None:
        """One line when ``samples`` was capped (see the class), naming ``option`` and the list's ``role``."""
        if self.samples == self.requested:
            return None
        what = "frames" if self.stream == "spatial" else f"flow stacks of {self.flow_length} fields"
        return (f"{option} {self.requested}: the {role} videos have at most {self.samples} distinct {what}; "
                f"scoring {self.samples} per video")

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int, int]:
        rec, L, pos = self.records[i], self.flow_length, self.positions(self.records[i])
        if self.stream == "temporal":
            block = read_flow(rec, int(pos[0]), int(pos[-1]) + L)  # one contiguous read for all stacks
            items = [block[p - pos[0]:p - pos[0] + L].reshape(2 * L, *block.shape[2:]) for p in pos]
            flip = hflip_flow_uint8
        else:
            items, flip = [read_frame(rec, int(p)) for p in pos], hflip_rgb
        xs, scales = eval_views(items, crops=self.crops, size=self.crop_size, flip=flip)
        return torch.from_numpy(xs), torch.from_numpy(scales), rec.label, i
