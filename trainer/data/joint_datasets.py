"""Datasets of the joint stream: an RGB frame and the flow stack around it, seen through the same crop.

Training (``JointDataset``): the stack start s is drawn as ``FlowStackDataset`` draws it (uniform over
[0, T-1-L]; the middle stack when not training), the RGB frame is the stack's centre frame
t = min(s + L // 2, T - 1), and ONE crop box and ONE flip are drawn for both, since frames and flow share
H x W (docs/shard-format.md): both streams look at the same region of the same moment, and a flipped
item is a mirrored clip (flow: mirrored with u negated). The draws are those of ``FlowStackDataset`` in
the same order (start, box, flip), so the flow half of an item is the ``FlowStackDataset`` item of the same
seed. Both crop paths of ``trainer.data.datasets`` work: with ``frame_size`` an item holds the uncropped windows and
the shared ``transforms.TRAIN_PARAMS`` (cropped on the device by ``prepare_train_batch``), else the crops
made on the CPU and their resize factors.

Item: ((rgb uint8 (3, ., .), flow uint8 (2L, ., .)), scale (2,) or params (6,), label): one
``scale``/``params`` for both halves, because they share the box.

Evaluation (``JointEvalDataset``): the temporal stream's video positions and views (``VideoEvalDataset``)
plus, for each stack, the same views of its centre frame.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from trainer.data.crops import crop_resize, eval_views
from trainer.data.datasets import FlowStackDataset, VideoEvalDataset, item_rng
from trainer.data.errors import DataError
from trainer.data.read import flow_frame_size, read_flow, read_frame
from trainer.data.shards import VideoRecord
from trainer.data.transforms import hflip_flow_uint8, hflip_rgb

JointInputs = tuple[Tensor, Tensor]  # (rgb, flow)


def centre_frame(rec: VideoRecord, start: int, flow_length: int) -> int:
    """The RGB frame in the middle of the stack of fields [start, start + L): frames start..start+L span it."""
    return min(start + flow_length // 2, rec.num_frames - 1)


def _check_same_size(rec: VideoRecord, rgb_hw: tuple[int, ...], flow_hw: tuple[int, ...]) -> None:
    if tuple(rgb_hw) != tuple(flow_hw):
        raise DataError(f"{rec.shard}: {rec.video_id} has RGB frames of {tuple(rgb_hw)} and flow of {tuple(flow_hw)}; "
                        "expected one frame size for both (docs/shard-format.md)")


class JointDataset(FlowStackDataset):
    """Joint stream training/validation items: the flow stack of ``FlowStackDataset`` (same arguments, same
    start draw) and its centre RGB frame, one crop box and one flip for both (see the module docstring).

    ``flip=False`` turns the training flip off (classes a mirror swaps, e.g. moving left vs right).
    """

    def __getitem__(self, i: int) -> tuple[JointInputs, Tensor, int]:  # type: ignore[override]
        rec, rng, L = self.records[i], item_rng(), self.flow_length
        start = self._start(rec, rng)  # as FlowStackDataset: same draws
        img = read_frame(rec, centre_frame(rec, start, L))
        if self.frame_size is not None:
            self._check_size(rec, img.shape[1:])
            self._check_size(rec, flow_frame_size(rec))

            def window(r: tuple[int, int], c: tuple[int, int]) -> np.ndarray:
                x = np.empty((3 + 2 * L, r[1], c[1]), np.uint8)  # filled in place: no second copy of the flow
                x[:3] = img[:, r[0]:r[0] + r[1], c[0]:c[0] + c[1]]
                read_flow(rec, start, start + L, rows=r, cols=c, out=x[3:].reshape(L, 2, r[1], c[1]))
                return x

            # One (3 + 2L)-channel window: _device_item draws one box and one flip, shared by both halves.
            x, params = self._device_item(window, rng)
            return (x[:3], x[3:]), params, rec.label
        q = read_flow(rec, start, start + L)
        q = q.reshape(2 * L, *q.shape[2:])  # (L, 2, H, W) -> (2L, H, W), u/v interleaved
        _check_same_size(rec, img.shape[1:], q.shape[1:])
        box = self._box(*q.shape[1:], rng)
        rgb, sx, sy = crop_resize(img, box, self.crop_size)
        flow, _, _ = crop_resize(q, box, self.crop_size)  # same box and size: same (sx, sy)
        if self._flip_now(rng):
            rgb, flow = hflip_rgb(rgb), hflip_flow_uint8(flow)
        views = (torch.from_numpy(np.ascontiguousarray(rgb)), torch.from_numpy(np.ascontiguousarray(flow)))
        return views, torch.tensor((sx, sy), dtype=torch.float32), rec.label


class JointEvalDataset(VideoEvalDataset):
    """Video-level testing of the joint stream: the ``samples`` stack starts of the temporal stream
    (``VideoEvalDataset(stream="temporal")``, whose ``positions`` this keeps), the RGB frame at the centre of
    each stack, and the same 1 or 10 crops (and flips) of both.

    Item: ((rgb uint8 (samples*crops, 3, S, S), flow uint8 (samples*crops, 2L, S, S)),
    scale float32 (samples*crops, 2), label, index), crops varying fastest.
    """

    def __init__(self, records: list[VideoRecord], *, samples: int = 25, crops: int = 1, flow_length: int = 10,
                 crop_size: int = 224) -> None:
        super().__init__(records, stream="temporal", samples=samples, crops=crops, flow_length=flow_length,
                         crop_size=crop_size)

    def __getitem__(self, i: int) -> tuple[JointInputs, Tensor, int, int]:
        flow, scale, label, index = super().__getitem__(i)
        rec = self.records[i]
        frames = [read_frame(rec, centre_frame(rec, int(s), self.flow_length)) for s in self.positions(rec)]
        _check_same_size(rec, frames[0].shape[1:], flow_frame_size(rec))
        rgb, _ = eval_views(frames, crops=self.crops, size=self.crop_size, flip=hflip_rgb)  # the flow's boxes
        return (torch.from_numpy(rgb), flow), scale, label, index
