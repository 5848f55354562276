"""The DataLoaders of ``trainer fit``: seeded training samples per (epoch, index), validation videos per rank.

Each training item is drawn from torch's RNG seeded by (run seed, epoch, dataset index), so the crops and
flips do not depend on the worker count, the worker order or a ``--resume``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from trainer.config import DataConfig, ModelConfig
from trainer.data import FlowStackDataset, FrameDataset, VideoEvalDataset, VideoRecord
from trainer.distributed import DistInfo
from trainer.joint import JointDataset, JointEvalDataset


class _EpochKeys(Sampler):
    """Yields (epoch, index) so that a dataset in a persistent worker knows which epoch it serves."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)


class _SeededSamples(Dataset):
    """Draws item ``i`` of ``epoch`` from torch's RNG seeded by (seed, epoch, i): the same crops and flips
    whatever the worker count, worker order or a resume (trainer.data draws from torch's RNG)."""

    def __init__(self, inner: Dataset, *, seed: int) -> None:
        self.inner, self.seed = inner, seed

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        with torch.random.fork_rng(devices=[]):  # leaves the process's own stream (dropout, workers=0) alone
            torch.manual_seed(int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1, np.uint64)[0] >> 1))
            return self.inner[i]


def train_dataset(model: ModelConfig, data: DataConfig, records: list[VideoRecord], *,
                  frame_size: tuple[int, int] | None) -> Dataset:
    """The training dataset of ``model.stream``; ``frame_size`` (all videos stored at it) crops on the device."""
    if model.stream == "spatial":
        return FrameDataset(records, crop_size=data.crop_size, train=True, flip=data.flip, frame_size=frame_size)
    stack_dataset = JointDataset if model.stream == "joint" else FlowStackDataset
    return stack_dataset(records, flow_length=model.flow_length, crop_size=data.crop_size, train=True, flip=data.flip,
                         frame_size=frame_size)


def make_train_loader(
    model: ModelConfig, data: DataConfig, records: list[VideoRecord], *, frame_size: tuple[int, int] | None,
    dist: DistInfo, seed: int, pin_memory: bool,
) -> tuple[DataLoader, DistributedSampler]:
    """The training loader (items keyed by (epoch, index)) and its sampler (``set_epoch`` each epoch)."""
    ds = train_dataset(model, data, records, frame_size=frame_size)
    sampler = DistributedSampler(ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed)
    loader = DataLoader(
        _SeededSamples(ds, seed=seed), batch_size=data.batch_size, sampler=_EpochKeys(sampler),
        num_workers=data.workers, pin_memory=pin_memory,
        drop_last=len(sampler) >= data.batch_size,  # a last batch of 1 breaks BatchNorm
        persistent_workers=data.workers > 0,  # no re-fork, no HDF5 re-open, no cold prefetch each epoch
        prefetch_factor=4 if data.workers else None,
        generator=torch.Generator().manual_seed(seed),  # worker base seeds: not drawn from the global RNG
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
        ds, batch_size=max(1, data.batch_size // data.val_samples), num_workers=data.workers,
        sampler=list(range(dist.rank, len(ds), dist.world_size)), pin_memory=pin_memory,
    )
