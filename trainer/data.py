"""torch Datasets over flowprep shards: one JPEG frame (spatial) or L consecutive flow fields (temporal).

The records come from ``trainer.shards`` (``index_shards``, ``read_video_list``; re-exported here). Items
are uint8 tensors plus the crop's resize factors (trainer/crops.py draws the boxes; trainer/transforms.py
has the maths, the flip and the device-side normalisation).

Default crop: TSN's multi-scale corner crop, for both streams (``crop="resized"`` selects torchvision's
RandomResizedCrop). The resize factor s of a crop multiplies the flow, so it decides which motion
magnitudes the network trains on; ``python -m benchmarks.loader`` measured on 320x240 shards (L=10,
S=224): multi-scale s = 0.93 / 1.07 / 1.42 (p5 / median / p95), centred on the evaluation crop's 1.07,
while RandomResizedCrop (area down to 8%, aspect 3/4-4/3 that also scales u and v differently) gives
0.80 / 1.24 / 2.43, i.e. flow magnified up to 2.3x more than at test time, at the same
loading speed. TSN (Wang et al. 2016) reports the multi-scale crop for both streams on UCF-101.

Training crops on the device: given ``frame_size`` (every video stored at that size, the usual case), the
training datasets return the uncropped window of the frame(s) that holds every possible box plus the
box and flip drawn (``transforms.TRAIN_PARAMS``), and ``transforms.prepare_train_batch`` crops, resizes
and flips the whole batch on the device. This takes the per-sample cv2.resize of 2L channels and the
flip off the loader workers (see ``python -m benchmarks.loader``). Evaluation items are always cropped
on the CPU (10-crop views, mixed sizes).

Flow is read chunk by chunk with ``read_direct_chunk`` and inflated with libdeflate (the ``deflate``
package; one field per chunk, as the format says), and the window is copied into the item, skipping
HDF5's filter pipeline. libdeflate inflates a whole buffer of known size, which is exactly a chunk, faster
than ISA-L and far faster than HDF5's zlib filter (BENCHMARKS.md, compression table). Other chunk layouts
or filters fall back to an h5py hyperslab read.

HDF5 files are opened lazily, in the process that reads (each DataLoader worker), never before fork, and
cached per process; a cache inherited through fork is dropped, not reused.

A damaged shard (a chunk that does not inflate, HDF5 metadata that does not read) raises ``DataError``
naming the shard, the video and the field or frame; raised in a loader worker, it reaches the main process
as that one line (``trainer.shards.DataError``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import cv2
import deflate
import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from trainer.shards import DAMAGED, DataError, ShardIndex, VideoRecord, index_shards, one_line, read_video_list
from trainer.crops import (
    CROPS, MULTISCALE_SCALES, Box, center_crop_box, crop_resize, eval_views, train_crop_box, train_window,
    window_origin,
)
from trainer.transforms import hflip_flow_uint8, hflip_rgb

__all__ = [  # the index lives in trainer.shards; re-exported because every caller wants both
    "DataError", "FlowStackDataset", "FrameDataset", "ShardIndex", "VideoEvalDataset", "VideoRecord",
    "index_shards", "read_flow", "read_frame", "read_video_list",
]

# Per-process cache of open HDF5 files. The pid check drops handles inherited through fork: an HDF5 file
# object must not be shared between processes.
_files: dict[Path, h5py.File] = {}
_flows: dict[tuple[Path, str], tuple[h5py.Dataset, str]] = {}  # (shard, video) -> flow dataset, read mode
_files_pid = -1


def _open(rec: VideoRecord) -> h5py.File:
    """The open shard of ``rec`` (cached per process)."""
    global _files, _flows, _files_pid
    path = rec.shard
    if _files_pid != os.getpid():
        _files, _flows, _files_pid = {}, {}, os.getpid()
        if get_worker_info() is not None:
            cv2.setNumThreads(1)  # one worker = one core; OpenCV's own pool would oversubscribe
    f = _files.get(path)
    if f is None:
        # No chunk cache: a sample reads each chunk once, so a cache would only hold memory (measured:
        # same read speed with and without).
        try:
            f = _files[path] = h5py.File(path, "r", rdcc_nbytes=0)
        except OSError as e:
            raise DataError(f"{path}: cannot be opened as HDF5 to read {rec.video_id} ({one_line(e)}); {DAMAGED}") from None
    return f


def _damaged(rec: VideoRecord, what: str, e: BaseException) -> DataError:
    return DataError(f"{rec.shard}: {what} of {rec.video_id} cannot be read ({one_line(e)}); {DAMAGED}")


def _rng() -> np.random.Generator:
    # Drawn from torch's generator so DataLoader worker seeding and a resumed run's RNG state apply.
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


def read_frame(rec: VideoRecord, t: int) -> np.ndarray:
    """Frame t as (3, H, W) uint8 RGB."""
    f = _open(rec)
    try:
        buf = f[f"videos/{rec.video_id}/rgb"][t]
    except (OSError, KeyError, RuntimeError) as e:  # h5py: damaged chunk or metadata
        raise _damaged(rec, f"frame {t}", e) from None
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"{rec.shard}: frame {t} of {rec.video_id} is not a decodable JPEG; {DAMAGED}")
    return bgr[:, :, ::-1].transpose(2, 0, 1)  # BGR (H, W, 3) -> RGB (3, H, W), a view


def _flow_dataset(rec: VideoRecord) -> tuple[h5py.Dataset, str]:
    """The video's flow dataset and how to read it: "gzip" / "raw" chunk by chunk, else "hyperslab"."""
    f = _open(rec)  # first: in a new process this drops the handles inherited through fork
    key = (rec.shard, rec.video_id)
    if key not in _flows:
        try:
            ds = f[f"videos/{rec.video_id}/flow"]
        except (OSError, KeyError, RuntimeError) as e:
            raise _damaged(rec, "the flow dataset", e) from None
        one_field = ds.chunks == (1, *ds.shape[1:])
        plain = not ds.shuffle and not ds.fletcher32 and ds.scaleoffset is None
        mode = {"gzip": "gzip", None: "raw"}.get(ds.compression, "hyperslab") if one_field and plain else "hyperslab"
        _flows[key] = ds, mode
    return _flows[key]


def read_flow(rec: VideoRecord, start: int, stop: int, *, rows: tuple[int, int] | None = None,
              cols: tuple[int, int] | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Flow fields [start, stop) as (n, 2, h, w) uint8; past the last field, the last field is repeated.

    ``rows``/``cols``: (first, count) of a window, default the whole frame. ``out``: write into this
    (n, 2, h, w) uint8 array (e.g. part of a larger item) instead of a new one.
    """
    ds, mode = _flow_dataset(rec)
    n_fields, _, height, width = ds.shape
    r0, nr = rows or (0, height)
    c0, nc = cols or (0, width)
    stop_read = min(stop, n_fields)
    if out is None:
        out = np.empty((stop - start, 2, nr, nc), np.uint8)
    elif out.dtype != np.uint8 or out.shape != (stop - start, 2, nr, nc):
        raise ValueError(f"out must be uint8 {(stop - start, 2, nr, nc)}, got {out.dtype} {out.shape}")
    if mode == "hyperslab":
        try:
            out[:stop_read - start] = ds[start:stop_read, :, r0:r0 + nr, c0:c0 + nc]
        except (OSError, RuntimeError) as e:  # h5py: a chunk its filter cannot decode, damaged metadata
            raise _damaged(rec, f"fields {start}-{stop_read - 1}", e) from None
    else:
        nbytes = 2 * height * width
        for k, t in enumerate(range(start, stop_read)):
            try:
                mask, chunk = ds.id.read_direct_chunk((t, 0, 0, 0))
            except (OSError, KeyError, RuntimeError) as e:
                raise _damaged(rec, f"field {t}", e) from None
            if mask:
                raise DataError(f"{rec.shard}: field {t} of {rec.video_id} was stored with its filter skipped "
                                f"(mask {mask}); expected every chunk {mode}")
            try:
                buf = deflate.zlib_decompress(chunk, nbytes) if mode == "gzip" else chunk
            except deflate.DeflateError:
                raise DataError(f"{rec.shard}: field {t} of {rec.video_id} does not inflate (corrupt chunk); "
                                f"{DAMAGED}") from None
            if len(buf) != nbytes:
                raise DataError(f"{rec.shard}: field {t} of {rec.video_id} holds {len(buf)} bytes, expected {nbytes}; "
                                f"{DAMAGED}")
            out[k] = np.frombuffer(buf, np.uint8).reshape(2, height, width)[:, r0:r0 + nr, c0:c0 + nc]
    out[stop_read - start:] = out[stop_read - start - 1]
    return out


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
        rec, rng = self.records[i], _rng()
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
        rec, rng, L = self.records[i], _rng(), self.flow_length
        start = self._start(rec, rng)
        if self.frame_size is not None:
            self._check_size(rec, _flow_dataset(rec)[0].shape[2:])
            x, params = self._device_item(
                lambda r, c: read_flow(rec, start, start + L, rows=r, cols=c).reshape(2 * L, r[1], c[1]), rng)
            return x, params, rec.label
        q = read_flow(rec, start, start + L)
        q = q.reshape(2 * L, *q.shape[2:])  # (L, 2, H, W) -> (2L, H, W), u/v interleaved
        x, sx, sy = crop_resize(q, self._box(*q.shape[1:], rng), self.crop_size)
        if self._flip_now(rng):
            x = hflip_flow_uint8(x)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor((sx, sy), dtype=torch.float32), rec.label


def _check_has_flow(records: list[VideoRecord]) -> None:
    short = [r.video_id for r in records if r.num_frames < 2]
    if short:
        raise DataError(f"{len(short)} video(s) have fewer than 2 frames and no flow, e.g. {short[0]!r}")


class VideoEvalDataset(Dataset):
    """Video-level testing: ``samples`` frames / stacks uniformly spaced over the video, 1 or 10 crops.

    Positions are ``np.linspace`` over the valid frames (spatial) or stack starts (temporal), rounded.
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
        self.records, self.stream, self.samples, self.crops = list(records), stream, samples, crops
        self.flow_length, self.crop_size = flow_length, crop_size

    def __len__(self) -> int:
        return len(self.records)

    def positions(self, rec: VideoRecord) -> np.ndarray:
        """Frame indices (spatial) or stack starts (temporal) for one video."""
        last = rec.num_frames - 1 if self.stream == "spatial" else max(rec.num_frames - 1 - self.flow_length, 0)
        return np.rint(np.linspace(0, last, self.samples)).astype(np.int64)

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
