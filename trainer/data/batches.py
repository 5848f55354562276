"""Training batches through a ring of reused shared-memory buffers instead of a fresh tensor per batch.

Why: torch's default collate makes every worker allocate a new shared-memory tensor per batch (74 MB for
64 temporal windows of 20 x 240 x 240), write it through first-touch page faults, and the main process
then maps it and copies it again into pinned memory. Stacking into fresh shared memory costs several
times more than into memory touched before, about as much as reading and inflating the item
(``python -m benchmarks.collate``; BENCHMARKS.md, "Where a DataLoader worker's time goes"). Here the buffers are allocated and touched once,
before the workers start, and on CUDA registered as pinned memory (``cudaHostRegister``), so the
host-to-device copy reads them directly.

How: the sampler hands each worker a whole batch, ``(epoch, g, keys)``, g counting the batches of one
DataLoader iteration; the worker writes item j into row j of ring slot ``g % slots`` and returns only
``(epoch, g, slot, n)``. No free-slot queue is needed, because ``DataLoader`` dispatches batch g + P*W
(P = prefetch_factor, W = workers) only when it hands batch g to the main process
(torch.utils.data.dataloader ``_try_put_index``: P*W tasks at the start of an iteration, then one per
batch returned). With ``slots = P*W + HELD`` the slot that batch g + P*W overwrites was last used by batch
g - HELD; ``SharedBatchLoader`` makes sure that batch's device copy has finished (a CUDA event per
batch) before it asks the DataLoader for batch g, and on the CPU the training step of every earlier
batch has returned by then.

One DataLoader iteration runs across epochs (``EpochBatches`` goes on into the next epoch's batches, in
that epoch's own DistributedSampler order), so the workers prepare the first batches of epoch e + 1 while
epoch e ends instead of idling, and no epoch starts with a wait for one worker to read a whole batch
(the time to read 64 temporal items; what this did to the data wait of short epochs on a GPU is in
BENCHMARKS.md, "Training on a GPU"). ``SharedBatchLoader.__iter__`` yields one
epoch, ``sampler.epoch``, from its ``sampler.first_batch`` (not 0 when a stopped epoch is resumed); if the
stream is not there (a first epoch, a resume, an epoch abandoned part-way), it starts a new iteration there,
and a new ``iter()`` on persistent workers first waits until they have passed every task of the old one, so
no writer is left behind.

A batch's tensors on the CPU are views of its slot: valid until the next batch is requested.
"""

from __future__ import annotations

import copy
import itertools
import weakref
from collections import deque
from typing import Iterator, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from trainer.distributed import DeviceError

HELD = 3  # batches the main process may hold: the one being used and up to HELD - 1 copies in flight

Batch = tuple[Union[Tensor, tuple[Tensor, ...]], Tensor, Tensor]  # (x or (rgb, flow), params, labels)


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KiB"


class BatchRing:
    """``slots`` batch buffers in shared memory: for each input part (one, or the joint stream's rgb and flow)
    a uint8 tensor (slots, batch, C, H, W), plus the crop parameters (slots, batch, P) and labels (slots, batch).

    Allocated in the main process before the workers start (forked workers inherit the mapping; spawned
    ones receive it through torch's shared-memory pickling) and written once here, so that no page is
    faulted in fresh for each batch.
    """

    def __init__(self, *, slots: int, batch_size: int, parts: Sequence[tuple[int, int, int]], params: int) -> None:
        if slots < 1 or batch_size < 1 or not parts:
            raise ValueError(f"expected slots >= 1, batch_size >= 1 and at least one part, got slots {slots}, "
                             f"batch_size {batch_size}, parts {list(parts)}")
        self.slots, self.batch_size = slots, batch_size
        self._pinned: list[int] = []
        shapes = [((slots, batch_size, *p), torch.uint8) for p in parts]
        shapes += [((slots, batch_size, params), torch.float32), ((slots, batch_size), torch.int64)]
        nbytes = sum(torch.Size(s).numel() * t.itemsize for s, t in shapes)
        try:
            *self.parts, self.params, self.labels = [torch.zeros(s, dtype=t).share_memory_() for s, t in shapes]
        except RuntimeError as e:  # /dev/shm too small (a container's 64 MB default) or exhausted
            raise DeviceError(f"cannot allocate the {_size(nbytes)} batch ring in shared memory ({e}); "
                              "give the container more (--ipc=host or --shm-size), lower --workers or --batch-size, "
                              "or train with --no-shared-batches") from None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.parts, self.params, self.labels))

    def put(self, slot: int, row: int, x: Tensor | tuple[Tensor, ...], params: Tensor, label: int) -> None:
        """Write one item into row ``row`` of ``slot``; an item of another layout is a bug: ValueError."""
        xs = x if isinstance(x, tuple) else (x,)
        if len(xs) != len(self.parts) or any(a.shape != b.shape[2:] for a, b in zip(xs, self.parts)):
            raise ValueError(f"expected an item of parts {[tuple(p.shape[2:]) for p in self.parts]}, "
                             f"got {[tuple(a.shape) for a in xs]}")
        for src, dst in zip(xs, self.parts):
            dst[slot, row].copy_(src)
        self.params[slot, row].copy_(params)
        self.labels[slot, row] = label

    def view(self, slot: int, n: int) -> tuple[list[Tensor], Tensor, Tensor]:
        return [p[slot, :n] for p in self.parts], self.params[slot, :n], self.labels[slot, :n]

    def pin(self) -> None:
        """Register the buffers with CUDA as pinned memory: host-to-device copies read them directly, asynchronously."""
        cudart = torch.cuda.cudart()
        for t in (*self.parts, self.params, self.labels):
            err = int(cudart.cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0))
            if err:
                self.unpin()
                raise DeviceError(f"CUDA could not pin the {_size(self.nbytes)} batch ring (cudaHostRegister: "
                                  f"cudaError {err}); train with --no-shared-batches")
            self._pinned.append(t.data_ptr())

    def unpin(self) -> None:
        cudart = torch.cuda.cudart()
        while self._pinned:
            cudart.cudaHostUnregister(self._pinned.pop())


class EpochBatches(Sampler):
    """Yields (epoch, g, [index, ...]) for the batches of a DistributedSampler's epoch ``sampler.epoch`` (as set
    when the DataLoader's iteration starts) from its ``sampler.first_batch`` (0 unless the sampler has one,
    ``loaders.EpochSampler``), then of the following epochs, without end: the workers run on into the next
    epoch instead of idling at its start. g numbers the stream's batches from 0. ``len()`` is one epoch's
    batches."""

    def __init__(self, sampler: DistributedSampler, *, batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def first_batch(self) -> int:
        return getattr(self.sampler, "first_batch", 0)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """The index batches of ``epoch``: DistributedSampler's own permutation for that epoch."""
        sampler = copy.copy(self.sampler)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        return [indices[b * self.batch_size:(b + 1) * self.batch_size] for b in range(len(self))]

    def __iter__(self) -> Iterator[tuple[int, int, list[int]]]:
        if len(self) == 0:
            return
        g, first = 0, self.first_batch
        for epoch in itertools.count(self.epoch):
            for keys in self.batches(epoch)[first:]:
                yield epoch, g, keys
                g += 1
            first = 0


class RingBatches(Dataset):
    """Item (epoch, g, keys) -> batch g written into ring slot ``g % slots``; returns (epoch, g, slot, n).

    ``items`` maps (epoch, index) to one item (x, params, label), e.g. ``loaders._SeededSamples``.
    """

    def __init__(self, items: Dataset, ring: BatchRing) -> None:
        self.items, self.ring = items, ring

    def __getitem__(self, key: tuple[int, int, list[int]]) -> tuple[int, int, int, int]:
        epoch, g, indices = key
        slot = g % self.ring.slots
        for row, i in enumerate(indices):
            x, params, label = self.items[(epoch, i)]
            self.ring.put(slot, row, x, params, label)
        return epoch, g, slot, len(indices)


class SharedBatchLoader:
    """Iterates a DataLoader over ``RingBatches`` and yields (x, params, labels) like a collating DataLoader:
    x on ``device`` when it is CUDA (copied asynchronously from the pinned ring), else views of the ring;
    params and labels as small CPU copies. ``len()`` is the number of batches left in the epoch."""

    def __init__(self, loader: DataLoader, ring: BatchRing, *, device: torch.device) -> None:
        workers, prefetch = loader.num_workers, loader.prefetch_factor or 0
        need = ring_slots(workers=workers, prefetch_factor=prefetch)
        if ring.slots < need:
            raise ValueError(f"a ring for {workers} workers x prefetch_factor {prefetch} needs at least "
                             f"{need} slots, got {ring.slots}")
        self.loader, self.ring, self.device = loader, ring, device
        self.pinned = device.type == "cuda"
        if self.pinned:
            ring.pin()
        # Unregistered when this loader goes away (the ring stays alive until then: the finalizer holds it).
        self._unpin = weakref.finalize(self, ring.unpin) if self.pinned else None
        self._stream: Iterator[tuple[int, int, int, int]] | None = None  # the DataLoader's, across epochs
        self._start = (0, 0)  # (epoch, batch) where the stream started
        self._consumed = 0

    def __len__(self) -> int:
        return max(0, len(self.loader) - self.loader.sampler.first_batch)  # type: ignore[union-attr]

    def __iter__(self) -> Iterator[Batch]:
        """One epoch, ``sampler.epoch``, from ``sampler.first_batch``: its batches continue the running stream
        when that is where the stream stands (the previous epoch was read to its end), else the stream restarts
        there."""
        batches: EpochBatches = self.loader.sampler  # type: ignore[assignment]
        epoch, first, per_epoch = batches.epoch, batches.first_batch, len(batches)
        if per_epoch == 0:
            return
        if self._stream is None or self._position() != (epoch, first):
            # A new iter() on persistent workers first waits until they have passed every task of the old one.
            self._stream, self._start, self._consumed = iter(self.loader), (epoch, first), 0
        cuda = self.device.type == "cuda"
        copies: deque[torch.cuda.Event] = deque()  # one per batch handed out, oldest first
        try:
            for _ in range(per_epoch - first):
                # The DataLoader is about to dispatch a batch into the slot of the batch HELD back: its copy
                # must be done (on the CPU the step that used it returned before this call).
                while len(copies) > HELD - 1:
                    copies.popleft().synchronize()
                got_epoch, g, slot, n = next(self._stream)
                self._consumed += 1
                if (got_epoch, g) != (epoch, self._consumed - 1):
                    raise RuntimeError(f"batch stream out of step: got batch {g} (epoch {got_epoch}), expected batch "
                                       f"{self._consumed - 1} (epoch {epoch})")
                xs, params, labels = self.ring.view(slot, n)
                if cuda:
                    xs = [x.to(self.device, non_blocking=True) for x in xs]
                    copies.append(torch.cuda.Event())
                    copies[-1].record()
                yield (xs[0] if len(xs) == 1 else tuple(xs)), params.clone(), labels.clone()
        finally:
            for event in copies:
                event.synchronize()

    def _position(self) -> tuple[int, int]:
        """(epoch, batch within it) of the stream's next batch."""
        per_epoch = len(self.loader)
        start_epoch, first = self._start
        done = first + self._consumed
        return start_epoch + done // per_epoch, done % per_epoch

    def close(self) -> None:
        """Unregister the pinned ring now (also done when the loader is garbage collected)."""
        if self._unpin is not None:
            self._unpin()
        self.pinned = False


def ring_slots(*, workers: int, prefetch_factor: int) -> int:
    """The smallest safe ring for a DataLoader of ``workers`` x ``prefetch_factor`` (see the module docstring)."""
    return workers * prefetch_factor + HELD
