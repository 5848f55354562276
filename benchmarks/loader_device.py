"""Where the temporal loader's time goes on a machine's CPUs, without a model (complements gpu_train.py).

1. One process, no DataLoader: ms per temporal training item split into the HDF5 read (read_flow of
   L=10 fields of a 240x240 window) and the whole item (read + box/flip draw + tensor).
2. The training loader of ``trainer fit`` alone (``loaders.make_train_loader``, device-crop temporal
   items, batch 64), items/s with 1 and with N workers, for each loader side by side: ``ring``
   (--shared-batches: batches written into reused shared buffers, pinned on CUDA, trainer/data/batches.py)
   and ``collate`` (--no-shared-batches: torch's default collate, pin_memory on CUDA). On CUDA each batch
   is also copied to the device, as the training step would; i.e. the most a training run could be fed.
   Repetitions alternate the loaders (medians reported): the machine's load drifts.

    PYTHONPATH=. python3 -m benchmarks.loader_device --out $OUT/loader_device.json      # GPU machine
    .venv/bin/python -m benchmarks.loader_device --out bench-out/loader_device.json --workers 2   # here
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import click
import torch

from benchmarks.gpu_train import make_shards
from trainer.config import DataConfig, ModelConfig
from trainer.data.datasets import FlowStackDataset
from trainer.data.lists import read_video_list
from trainer.data.read import read_flow
from trainer.data.shards import VideoRecord, index_shards
from trainer.distributed import DistInfo
from trainer.data.loaders import make_train_loader


def loader_rate(records: list[VideoRecord], frame_size: tuple[int, int], *, workers: int, shared: bool, batches: int,
                batch: int, device: torch.device, crop: int = 224) -> float:
    """Items/s of trainer fit's training loader (after its first batch), each batch moved to ``device``."""
    model = ModelConfig(stream="temporal", num_classes=8, flow_length=10)
    data = DataConfig(shards="-", train_list="-", crop_size=crop, batch_size=batch, workers=workers, shared_batches=shared)
    loader, sampler = make_train_loader(model, data, records, frame_size=frame_size, dist=DistInfo(), seed=0, device=device)
    if len(loader) < batches + 1:
        raise click.ClickException(f"{len(loader)} batches per epoch, expected at least {batches + 1}")
    sampler.set_epoch(0)
    it = iter(loader)
    next(it)  # workers started, first batch ready
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        x, _, _ = next(it)
        x = x.to(device, non_blocking=True)  # the ring's batches are there already; the collated ones are pinned
        n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = n / (time.perf_counter() - t0)
    del it, loader  # workers and the ring go before the next measurement
    return rate


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("/tmp/loader_device"),
              show_default=True)
@click.option("--workers", default=14, show_default=True, help="The larger worker count (the other is 1).")
@click.option("--batches", default=120, show_default=True, help="Batches timed per measurement with --workers workers.")
@click.option("--reps", default=3, show_default=True)
@click.option("--smoke", is_flag=True, help="Tiny sizes: checks that the script runs.")
def main(out: Path, work: Path, workers: int, batches: int, reps: int, smoke: bool) -> None:
    """Items/s of trainer fit's temporal training loader, ring vs collate, 1 and N workers."""
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    batch, L = (8, 10) if smoke else (64, 10)
    batches = 3 if smoke else batches
    few = max(2, batches // 6)  # the 1-worker runs are ~N times slower
    size = dict(classes=2, videos=4, frames=16, h=64, w=80) if smoke else dict(classes=8, videos=6, frames=40, h=240, w=320)
    crop = 32 if smoke else 224
    window = (0, 64) if smoke else (40, 240)  # the columns read_flow reads (a 240x200 crop window at 320x240)
    repeat = max(1, (batches + 2) * batch // (size["classes"] * (size["videos"] - 1)) + 1)  # training videos: V-1 a class
    train = make_shards(work / "shards", **size, repeat=repeat, procs=min(16, os.cpu_count() or 1))
    index = index_shards(work / "shards")
    recs = read_video_list(train, index)
    frame_size = (index.height, index.width)
    ds = FlowStackDataset(recs, flow_length=L, crop_size=crop, train=True, frame_size=frame_size)
    res: dict = {"cpus": os.cpu_count(), "torch": torch.__version__, "device": str(device), "batch": batch,
                 "batches": batches, "reps": reps, "frame": [index.height, index.width], "crop": crop}
    n = 20 if smoke else 300
    t0 = time.perf_counter()
    for i in range(n):
        read_flow(recs[i % len(recs)], 3, 3 + L, rows=(0, index.height), cols=window)
    res["read_ms"] = (time.perf_counter() - t0) / n * 1e3
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    res["item_ms"] = (time.perf_counter() - t0) / n * 1e3
    click.echo(f"one process: read_flow {res['read_ms']:.2f} ms, whole item {res['item_ms']:.2f} ms")
    rates: dict[str, list[float]] = {}
    for _ in range(reps):
        for w in (1, workers):
            for name, shared in (("ring", True), ("collate", False)):
                r = loader_rate(recs, frame_size, workers=w, shared=shared, batches=few if w == 1 else batches, crop=crop,
                                batch=batch, device=device)
                rates.setdefault(f"{name}_{w}", []).append(r)
    res["loader_items_per_s"] = {k: statistics.median(v) for k, v in rates.items()}
    res["loader_items_per_s_runs"] = rates
    for w in (1, workers):
        ring, coll = res["loader_items_per_s"][f"ring_{w}"], res["loader_items_per_s"][f"collate_{w}"]
        click.echo(f"{w:2d} workers: ring {ring:.0f} items/s, collate {coll:.0f} items/s, ring/collate {ring / coll:.2f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
