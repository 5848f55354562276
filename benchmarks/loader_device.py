"""Where the temporal loader's time goes on a GPU machine's CPUs (complements benchmarks/gpu_train.py).

1. One process, no DataLoader: ms per temporal training item split into the HDF5 read (read_flow of
   L=10 fields of a 240x240 window) and the whole item (read + box/flip draw + tensor).
2. DataLoader alone (no model): items/s with 1 and with N workers, batch 64, pin_memory on CUDA, the
   device-crop items ``trainer fit`` uses, i.e. the most a training run could be fed.
3. The real ``trainer fit --stream temporal`` with epochs of --steps iterations, so that the epoch
   start (the workers' first batches) weighs what it weighs in a UCF-101-sized epoch (~150 steps).

    PYTHONPATH=. python3 -m benchmarks.loader_device --out $OUT/loader_device.json
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import torch
from torch.utils.data import DataLoader

from benchmarks.gpu_train import fit_run, make_shards
from trainer.data import FlowStackDataset, index_shards, read_flow, read_video_list


def loader_rate(ds: FlowStackDataset, *, workers: int, batches: int, batch: int, pin: bool) -> float:
    dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin, drop_last=True,
                    persistent_workers=False, prefetch_factor=4 if workers else None)
    it = iter(dl)
    next(it)  # workers started, first batch ready
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        x, _, _ = next(it)
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("/tmp/loader_device"))
@click.option("--workers", default=14, show_default=True)
@click.option("--steps", default=150, show_default=True, help="Iterations per trainer fit epoch.")
@click.option("--smoke", is_flag=True, help="Tiny sizes on the CPU: checks that the script runs.")
def main(out: Path, work: Path, workers: int, steps: int, smoke: bool) -> None:
    cuda = torch.cuda.is_available() and not smoke
    batch, L = (8, 10) if smoke else (64, 10)
    repeat = max(1, steps * batch // 40 + 1)
    train = make_shards(work / "shards", classes=8, videos=6, frames=40, h=240, w=320, repeat=repeat,
                        procs=min(16, os.cpu_count() or 1))
    index = index_shards(work / "shards")
    recs = read_video_list(train, index)
    ds = FlowStackDataset(recs, flow_length=L, crop_size=224, train=True, frame_size=(index.height, index.width))
    res: dict = {"cpus": os.cpu_count(), "torch": torch.__version__}
    n = 20 if smoke else 300
    t0 = time.perf_counter()
    for i in range(n):
        read_flow(recs[i % len(recs)], 3, 3 + L, rows=(0, 240), cols=(40, 240))
    res["read_ms"] = (time.perf_counter() - t0) / n * 1e3
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    res["item_ms"] = (time.perf_counter() - t0) / n * 1e3
    print(f"one process: read_flow {res['read_ms']:.2f} ms, whole item {res['item_ms']:.2f} ms")
    res["loader_items_per_s"] = {}
    for w in (1, workers):
        rate = loader_rate(ds, workers=w, batches=(3 if smoke else (20 if w == 1 else 120)), batch=batch, pin=cuda)
        res["loader_items_per_s"][w] = rate
        print(f"DataLoader, {w} workers: {rate:.0f} items/s")
    if not smoke:
        res["fit_temporal"] = fit_run("temporal", shards=work / "shards", train=train, out=work / "run", arch="resnet50",
                                      batch=batch, crop=224, workers=workers, epochs=3, device="cuda", timeout=150)
        f = res["fit_temporal"]
        print(f"fit temporal, {steps}-step epochs: {f.get('samples_per_s', 0):.0f} samples/s, "
              f"data wait {f.get('data_wait_frac', 0):.1%}")
    out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
