"""The DataLoaders of ``trainer fit``: seeded training samples per (epoch, index), validation videos per rank.

Each training item is drawn from torch's RNG seeded by (run seed, epoch, dataset index), so the crops and
flips do not depend on the worker count, the worker order or a ``--resume``. An epoch resumed part-way
(``EpochSampler.set_epoch(epoch, first_batch=S)``) skips the indices of its first S batches, unread.

The workers ignore SIGINT, and SIGTERM unless their parent sends it (``flowprep.stopping.ignore_stop_signals``):
``trainer fit`` finishes its step and saves first, and then ends them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from flowprep.stopping import ignore_stop_signals
from trainer.config import DataConfig, ModelConfig
from trainer.data.batches import BatchRing, EpochBatches, RingBatches, SharedBatchLoader, ring_slots
from trainer.data.datasets import FlowStackDataset, FrameDataset, VideoEvalDataset
from trainer.data.joint_datasets import JointDataset, JointEvalDataset
from trainer.data.shards import VideoRecord
from trainer.data.transforms import TRAIN_PARAMS
from trainer.distributed import DistInfo


class EpochSampler(DistributedSampler):
    """A DistributedSampler that also knows where the epoch in progress starts: ``set_epoch(epoch,
    first_batch=S)`` for an epoch resumed after S batches of ``batch_size``. The loaders skip those batches'
    indices; iterating the sampler itself still gives the whole epoch."""

    def __init__(self, dataset: Dataset, *, batch_size: int, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.batch_size, self.first_batch = batch_size, 0

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        super().set_epoch(epoch)
        self.first_batch = first_batch


class _EpochKeys(Sampler):
    """Yields (epoch, index) so that a dataset in a persistent worker knows which epoch it serves; from the
    epoch's ``first_batch`` on."""

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.sampler.first_batch * self.sampler.batch_size)

    def __iter__(self):
        epoch, skip = self.sampler.epoch, self.sampler.first_batch * self.sampler.batch_size
        return ((epoch, i) for i in list(self.sampler)[skip:])


class _SeededSamples(Dataset):
    """Draws item ``i`` of ``epoch`` from torch's RNG seeded by (seed, epoch, i): the same crops and flips
    whatever the worker count, worker order or a resume (the datasets draw from torch's RNG)."""

    def __init__(self, inner: Dataset, *, seed: int) -> None:
        self.inner, self.seed = inner, seed

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        with torch.random.fork_rng(devices=[]):  # leaves the process's own stream (dropout, workers=0) alone
            # The CPU generator alone (the items draw from it): torch.manual_seed would also seed every other
            # backend, a cost per item that shows next to reading it.
            torch.default_generator.manual_seed(
                int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1, np.uint64)[0] >> 1))
            return self.inner[i]


def train_dataset(model: ModelConfig, data: DataConfig, records: list[VideoRecord], *,
                  frame_size: tuple[int, int] | None) -> FrameDataset | FlowStackDataset:
    """The training dataset of ``model.stream``; ``frame_size`` (all videos stored at it) crops on the device."""
    if model.stream == "spatial":
        return FrameDataset(records, crop_size=data.crop_size, train=True, flip=data.flip, frame_size=frame_size)
    stack_dataset = JointDataset if model.stream == "joint" else FlowStackDataset
    return stack_dataset(records, flow_length=model.flow_length, crop_size=data.crop_size, train=True, flip=data.flip,
                         frame_size=frame_size)


def _ring_parts(model: ModelConfig, data: DataConfig,
                ds: FrameDataset | FlowStackDataset) -> tuple[list[tuple[int, int, int]], int]:
    """(C, H, W) of each input part of a training item, and the length of its params: the uncropped window and
    (y0, x0, h, w, flip, size) when cropping on the device, else the crop and (sx, sy)."""
    channels = {"spatial": (3,), "temporal": (2 * model.flow_length,), "joint": (3, 2 * model.flow_length)}
    hw = ds.window or (data.crop_size, data.crop_size)
    return [(c, *hw) for c in channels[model.stream]], TRAIN_PARAMS if ds.window else 2


def make_train_loader(
    model: ModelConfig, data: DataConfig, records: list[VideoRecord], *, frame_size: tuple[int, int] | None,
    dist: DistInfo, seed: int, device: torch.device,
) -> tuple[DataLoader | SharedBatchLoader, EpochSampler]:
    """The training loader and its sampler (``set_epoch`` each epoch; ``len(loader)``: the batches left in it).

    With workers and ``data.shared_batches`` (the default), workers write whole batches into a ring of
    reused shared buffers (trainer/data/batches.py) and batches arrive with x already on a CUDA device;
    otherwise a plain DataLoader collates items keyed by (epoch, index). Both give the same batches.
    """
    ds = train_dataset(model, data, records, frame_size=frame_size)
    sampler = EpochSampler(ds, batch_size=data.batch_size, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                           seed=seed)
    drop_last = len(sampler) >= data.batch_size  # a last batch of 1 breaks BatchNorm
    common = dict(
        num_workers=data.workers,
        persistent_workers=data.workers > 0,  # no re-fork, no HDF5 re-open, no cold prefetch each epoch
        generator=torch.Generator().manual_seed(seed),  # worker base seeds: not drawn from the global RNG
        worker_init_fn=ignore_stop_signals,
    )
    items = _SeededSamples(ds, seed=seed)
    if data.workers and data.shared_batches:
        parts, n_params = _ring_parts(model, data, ds)
        prefetch = 2  # batches queued per worker; each one holds a ring slot
        ring = BatchRing(slots=ring_slots(workers=data.workers, prefetch_factor=prefetch), batch_size=data.batch_size,
                         parts=parts, params=n_params)
        loader = DataLoader(RingBatches(items, ring), batch_size=None,
                            sampler=EpochBatches(sampler, batch_size=data.batch_size, drop_last=drop_last),
                            prefetch_factor=prefetch, **common)
        return SharedBatchLoader(loader, ring, device=device), sampler
    loader = DataLoader(
        items, batch_size=data.batch_size, sampler=_EpochKeys(sampler), pin_memory=device.type == "cuda",
        drop_last=drop_last, prefetch_factor=4 if data.workers else None, **common,
    )
    return loader, sampler


def make_val_loader(
    model: ModelConfig, data: DataConfig, records: list[VideoRecord], *, dist: DistInfo, pin_memory: bool,
) -> DataLoader:
    """Video-level validation: ``val_samples`` centre crops per video; the joint stream's items hold both inputs."""
    ds: VideoEvalDataset
    if model.stream == "joint":
        ds = JointEvalDataset(records, samples=data.val_samples, crops=1, flow_length=model.flow_length,
                              crop_size=data.crop_size)
    else:
        ds = VideoEvalDataset(records, stream=model.stream, samples=data.val_samples, crops=1,
                              flow_length=model.flow_length, crop_size=data.crop_size)
    # Each process scores its own videos (no padding duplicates); engine.evaluate sums the score rows.
    return DataLoader(
        ds, batch_size=max(1, data.batch_size // ds.samples), num_workers=data.workers,
        sampler=list(range(dist.rank, len(ds), dist.world_size)), pin_memory=pin_memory,
        worker_init_fn=ignore_stop_signals,
    )
