"""What moving a temporal item through a DataLoader worker costs, apart from reading it.

A device-crop temporal item is a uint8 window of 2L x 240 x 240 (1.15 MB at L = 10). A DataLoader worker
collates a batch of them into a fresh shared-memory tensor, which the main process maps. This measures,
in one process, ms per item to stack a batch of 64 such items (1) into fresh shared memory, as a worker's
default_collate does, (2) into fresh private memory, (3) into shared memory allocated and touched once
before, and then (4) the items/s of a 1-worker DataLoader whose dataset returns precomputed items (no
reading at all), at batch 8 and 64.

    .venv/bin/python -m benchmarks.collate
"""

from __future__ import annotations

import statistics
import time

import click
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler


class _Precomputed(Dataset):
    """Every item is a copy of one window: the DataLoader's own cost, without any reading."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.x, self.params = torch.randint(0, 256, shape, dtype=torch.uint8), torch.zeros(6)

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x.clone(), self.params, 0


def _into_fresh_shared(items: list[torch.Tensor]) -> torch.Tensor:
    """What default_collate does in a worker: a new shared-memory storage per batch, then stack into it."""
    elem = items[0]
    storage = elem.untyped_storage()._new_shared(len(items) * elem.numel() * elem.element_size())
    return torch.stack(items, 0, out=elem.new(storage).resize_(len(items), *elem.size()))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--flow-length", default=10, show_default=True)
@click.option("--side", default=240, show_default=True, help="Window side (240 for 320x240 shards, multi-scale crop).")
@click.option("--reps", default=5, show_default=True)
def main(flow_length: int, side: int, reps: int) -> None:
    """ms per item to collate temporal windows, and a 1-worker DataLoader's items/s without reading."""
    torch.set_num_threads(1)
    shape = (2 * flow_length, side, side)
    items = [torch.randint(0, 256, shape, dtype=torch.uint8) for _ in range(64)]
    touched = _into_fresh_shared(items)
    ways = {"fresh shared memory (a worker's collate)": lambda: _into_fresh_shared(items),
            "fresh private memory": lambda: torch.stack(items, 0),
            "shared memory touched before": lambda: torch.stack(items, 0, out=touched)}
    ms: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(reps):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            batch = fn()
            ms[name].append((time.perf_counter() - t0) / len(items) * 1e3)
            del batch
    mb = items[0].numel() / 1e6
    click.echo(f"stack 64 items of {shape} uint8 ({mb:.2f} MB each), ms per item (median of {reps}):")
    for name, v in ms.items():
        click.echo(f"  {statistics.median(v):6.3f}  {name}")
    ds = _Precomputed(shape)
    for batch_size in (8, 64):
        loader = DataLoader(ds, batch_size=batch_size, num_workers=1,
                            sampler=RandomSampler(ds, replacement=True, num_samples=batch_size * (2 + 320 // batch_size)))
        it = iter(loader)
        next(it)  # worker start-up
        t0, n = time.perf_counter(), 0
        for x, _, _ in it:
            n += len(x)
        seconds = time.perf_counter() - t0
        click.echo(f"1-worker DataLoader, precomputed items, batch {batch_size}: {n / seconds:.0f} items/s "
                   f"({seconds / n * 1e3:.2f} ms per item)")


if __name__ == "__main__":
    main()
