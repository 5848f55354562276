"""Training throughput on a GPU machine, in one call: loader-fed ``trainer fit`` vs the GPU alone.

1. Writes 320x240 shards (C classes x V videos x T frames, RGB JPEGs + gzip flow with the entropy of
   real flow, ~33 KB/field) with one process per core.
2. GPU ceiling: ``engine.train_one_epoch`` on one pinned batch repeated (no loader), for the
   device-crop batches ``trainer fit`` feeds (uncropped 240x240 windows + crop params, cropped,
   resized and flipped by ``transforms.prepare_train_batch``); with ``--extras`` also for pre-cropped
   224x224 batches, and the device step alone with roi_align vs grid_sample.
3. The real ``python3 -m trainer fit`` for each stream (resnet50, batch 64, crop 224, bf16,
   channels_last, 14 workers, epochs of --steps iterations) with each loader, one after the other on the
   same shards: ``ring`` (--shared-batches, trainer/data/batches.py) and ``collate`` (--no-shared-batches,
   torch's default collate and pin_memory). Samples/s and data_wait_frac are the medians of the epochs
   after the first (steady state) from metrics.jsonl.
Prints and writes a JSON summary (GPU name, CPU count, versions).

    PYTHONPATH=. python3 -m benchmarks.gpu_train --out $OUT/gpu.json        # on the GPU machine
    PYTHONPATH=. python3 -m benchmarks.gpu_train --out /tmp/g.json --smoke   # tiny, on the CPU
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import click
import cv2
import h5py
import numpy as np
import torch

from flowprep import format as fmt
from flowprep.extract.quantize import quantize
from flowprep.extract.writer import VideoMeta, VideoWriter, write_file_attrs

BOUND = 20.0


def _smooth_flow(rng: np.random.Generator, label: int, classes: int, frames: int, h: int, w: int) -> np.ndarray:
    """(frames-1, 2, H, W): smooth drifting motion over ~30% of the frame plus estimator-like noise, with a
    class-dependent drift (benchmarks/loader.py's field; it gzips a little worse than real TV-L1 flow)."""
    coarse = rng.normal(size=(3, 6, 8)).astype(np.float32)
    out = []
    for _ in range(frames - 1):
        coarse = 0.9 * coarse + 0.45 * rng.normal(size=coarse.shape).astype(np.float32)
        up = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC) for c in coarse])
        moving = 1 / (1 + np.exp(-8 * (up[2] - 0.5)))
        f = (3 * up[:2] + rng.normal(scale=0.05, size=up[:2].shape).astype(np.float32)) * moving
        f[0] += (label - classes / 2) * 0.5 * moving
        out.append(f)
    return np.stack(out)


def _write_shard(job: tuple[Path, int, list[tuple[str, int]], int, int, int, int]) -> dict[str, Any]:
    root, s, vids, classes, frames, h, w = job
    name = f"shard-{s:05d}.h5"
    with h5py.File(root / (name + ".tmp"), "w") as f:
        write_file_attrs(f, {"flow": {"bound": BOUND}})
        for vid, label in vids:
            rng = np.random.default_rng([s, label, len(vid)])
            meta = VideoMeta(video_id=vid, source=vid + ".avi", label=label, class_name=f"C{label}")
            writer = VideoWriter(f, meta, height=h, width=w, bound=BOUND, rgb=True)
            writer.append_flow(quantize(_smooth_flow(rng, label, classes, frames, h, w), BOUND))
            base = cv2.resize(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
            writer.append_rgb([cv2.imencode(".jpg", np.roll(base, t, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                               for t in range(frames)])
            writer.finish(num_frames=frames, fps=25.0)
    os.replace(root / (name + ".tmp"), root / name)
    return {"name": name, "size": (root / name).stat().st_size, "sha256": "", "videos": [v for v, _ in vids]}


def make_shards(root: Path, *, classes: int, videos: int, frames: int, h: int, w: int, repeat: int, procs: int) -> Path:
    """Shards + manifest + a training list (videos 0..V-2 of each class, repeated ``repeat`` times)."""
    root.mkdir(parents=True, exist_ok=True)
    vids = [(f"C{c}/v_C{c}_g{k + 1:02d}_c01", c, k) for c in range(classes) for k in range(videos)]
    jobs = [(root, s, [(v, c) for v, c, _ in vids[s:s + 4]], classes, frames, h, w) for s in range(0, len(vids), 4)]
    with ProcessPoolExecutor(procs) as ex:
        shards = list(ex.map(_write_shard, jobs))
    (root / "manifest.json").write_text(json.dumps({
        "format": fmt.MANIFEST_FORMAT, "format_version": fmt.MANIFEST_VERSION, "complete": True,
        "task": {"index": 0, "count": 1},
        "params": {}, "classes": [f"C{c}" for c in range(classes)], "num_videos": len(vids), "shards": shards,
        "failures": []}))
    train = root / "train.txt"
    train.write_text("".join(f"{v}.avi {c + 1}\n" for v, c, k in vids if k < videos - 1) * repeat)
    return train


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ceiling(stream: str, *, arch: str, batch: int, crop: int, window: tuple[int, int], steps: int,
            device: torch.device, device_crop: bool) -> float:
    """samples/s of train_one_epoch on one pinned batch repeated (median of 3 epochs after a warm-up)."""
    from trainer.data.transforms import BatchPreparer
    from trainer.distributed import amp_dtype_for
    from trainer.engine import train_one_epoch
    from trainer.models.streams import spatial_stream, temporal_stream

    net = temporal_stream(arch=arch, num_classes=8) if stream == "temporal" else spatial_stream(arch=arch, num_classes=8)
    cuda = device.type == "cuda"
    net = net.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    c = 20 if stream == "temporal" else 3
    if device_crop:
        x = torch.randint(0, 256, (batch, c, *window), dtype=torch.uint8)
        side = int(min(window) * 0.875)
        second = torch.tensor([[0, 0, side, side, k % 2, crop] for k in range(batch)], dtype=torch.float32)
    else:
        x, second = torch.randint(0, 256, (batch, c, crop, crop), dtype=torch.uint8), torch.ones(batch, 2)
    b = (x, second, torch.randint(0, 8, (batch,)))
    b = tuple(t.pin_memory() for t in b) if cuda else b
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    prepare = BatchPreparer(device=device, stream=stream, scale_factor=2 * BOUND / 255, add_offset=-BOUND,
                            amp_dtype=amp_dtype_for("bf16" if cuda else "none", device), channels_last=cuda)
    rates = []
    for ep in range(4):
        s = train_one_epoch(net, torch.nn.CrossEntropyLoss(), opt, sched, scaler, [b] * steps, prepare, ep,
                            max_grad_norm=40.0, show_progress=False)
        rates.append(s["samples_per_s"])
    return statistics.median(rates[1:])


def device_step_ms(method: str, *, batch: int, crop: int, window: tuple[int, int], device: torch.device) -> float:
    """Milliseconds per batch of prepare_train_batch (temporal, L=10) on ``device``."""
    from trainer.data.transforms import prepare_train_batch

    x = torch.randint(0, 256, (batch, 20, *window), dtype=torch.uint8, device=device)
    rng = np.random.default_rng(0)
    h, w = int(window[0] * 0.75), int(window[1] * 0.66)  # a typical multi-scale box, placed at random
    params = torch.tensor([[rng.integers(0, window[0] - h + 1), rng.integers(0, window[1] - w + 1), h, w, k % 2, crop]
                           for k in range(batch)], dtype=torch.float32)
    for _ in range(2):
        prepare_train_batch(x, params, stream="temporal", scale_factor=0.16, add_offset=-20.0, method=method)
    _sync(device)
    n = 10 if device.type == "cuda" else 1
    t0 = time.perf_counter()
    for _ in range(n):
        prepare_train_batch(x, params, stream="temporal", scale_factor=0.16, add_offset=-20.0, method=method)
    _sync(device)
    return (time.perf_counter() - t0) / n * 1e3


def fit_run(stream: str, *, shards: Path, train: Path, out: Path, arch: str, batch: int, crop: int, workers: int,
            epochs: int, device: str, timeout: float, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The real ``trainer fit`` (plus ``extra`` options); steady state = the epochs after the first (workers and
    cuDNN warm)."""
    cmd = [sys.executable, "-m", "trainer", "fit", "--stream", stream, "--shards", str(shards), "--train-list", str(train),
           "--out", str(out), "--arch", arch, "--batch-size", str(batch), "--crop-size", str(crop), "--workers",
           str(workers), "--epochs", str(epochs), "--device", device, "--no-progress", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"rc": proc.returncode, "wall_s": wall, "error": (proc.stdout + proc.stderr)[-2000:]}
    epochs_m = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = epochs_m[1:] or epochs_m
    return {"rc": 0, "wall_s": wall, "samples_per_s": statistics.median(e["samples_per_s"] for e in steady),
            "data_wait_frac": statistics.median(e["data_wait_frac"] for e in steady),
            "epochs": [{k: e[k] for k in ("epoch", "samples_per_s", "data_wait_frac", "loss")} for e in epochs_m]}


def _gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or "none"
    except (OSError, subprocess.TimeoutExpired):
        return "none (no nvidia-smi)"


LOADERS = {"ring": ("--shared-batches",), "collate": ("--no-shared-batches",)}  # trainer/data/batches.py vs torch's collate


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Write the summary here (JSON).")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("/tmp/gpu_train"), show_default=True,
              help="Scratch folder for shards and runs (emptied first).")
@click.option("--smoke", is_flag=True, help="Tiny sizes on the CPU: checks that the script runs, measures nothing.")
@click.option("--workers", default=14, show_default=True, help="DataLoader workers of the trainer fit runs.")
@click.option("--steps", default=150, show_default=True,
              help="Iterations per trainer fit epoch (150 x 64 ~ a UCF-101 split's 9.5k training videos).")
@click.option("--epochs", default=4, show_default=True, help="trainer fit epochs; the first is not counted.")
@click.option("--streams", default="temporal,spatial", show_default=True, help="Streams to run trainer fit on.")
@click.option("--loaders", default="ring,collate", show_default=True,
              help="ring: --shared-batches (trainer/data/batches.py); collate: --no-shared-batches. Run one after the other.")
@click.option("--extras", is_flag=True, help="Also the pre-cropped ceilings and the device step (roi_align vs grid_sample).")
def main(out: Path, work: Path, smoke: bool, workers: int, steps: int, epochs: int, streams: str, loaders: str,
         extras: bool) -> None:
    """Measure trainer fit's samples/s and data wait against the GPU-only ceiling (see the module docstring)."""
    if not smoke and not torch.cuda.is_available():
        raise click.ClickException("no CUDA device; expected a GPU machine (use --smoke to try the script on a CPU)")
    device = torch.device("cpu" if smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = (dict(classes=2, videos=3, frames=14, h=48, w=64, procs=2, arch="resnet18", batch=4, crop=32,
                workers=min(workers, 2), epochs=2, steps=2, ceiling_steps=2)
           if smoke else
           dict(classes=8, videos=6, frames=40, h=240, w=320, procs=os.cpu_count() or 8, arch="resnet50",
                batch=64, crop=224, workers=workers, epochs=epochs, steps=steps, ceiling_steps=40))
    train_videos = cfg["classes"] * (cfg["videos"] - 1)
    cfg["repeat"] = -(-cfg["steps"] * cfg["batch"] // train_videos)  # list repeated: epochs of >= steps iterations
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    train = make_shards(work / "shards", classes=cfg["classes"], videos=cfg["videos"], frames=cfg["frames"], h=cfg["h"],
                        w=cfg["w"], repeat=cfg["repeat"], procs=cfg["procs"])
    shard_s = time.perf_counter() - t0
    window = (cfg["h"], min(cfg["h"], cfg["w"]))  # the multi-scale crop's window (crops.train_window)
    result: dict[str, Any] = {
        "machine": {"gpu": _gpu_name(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "torchvision": __import__("torchvision").__version__, "h5py": h5py.__version__,
                    "opencv": cv2.__version__, "numpy": np.__version__},
        "setup": {k: v for k, v in cfg.items()} | {"smoke": smoke, "shard_s": shard_s,
                                                    "shard_bytes": sum(p.stat().st_size for p in (work / "shards").glob("*.h5"))},
    }
    click.echo(f"shards: {shard_s:.1f} s, {result['setup']['shard_bytes'] / 1e6:.0f} MB")
    kw = dict(batch=cfg["batch"], crop=cfg["crop"], window=window, device=device)
    if extras:
        result["device_step_ms_per_batch"] = {m: device_step_ms(m, **kw) for m in ("roi_align", "grid_sample")}
        click.echo(f"device step (temporal, batch {cfg['batch']}): " +
                   ", ".join(f"{m} {v:.2f} ms" for m, v in result["device_step_ms_per_batch"].items()))
    stream_list = [x for x in streams.split(",") if x]
    result["ceiling_samples_per_s"] = {}
    for stream in stream_list:
        for dc in (True, False) if extras else (True,):
            name = f"{stream}_{'device_crop' if dc else 'precropped'}"
            result["ceiling_samples_per_s"][name] = r = ceiling(stream, arch=cfg["arch"], steps=cfg["ceiling_steps"],
                                                                device_crop=dc, **kw)
            click.echo(f"ceiling {name}: {r:.0f} samples/s")
    result["fit"] = {}
    for stream in stream_list:
        for loader in [x for x in loaders.split(",") if x]:
            name = f"{stream}_{loader}"
            r = fit_run(stream, shards=work / "shards", train=train, out=work / f"fit_{name}", arch=cfg["arch"],
                        batch=cfg["batch"], crop=cfg["crop"], workers=cfg["workers"], epochs=cfg["epochs"],
                        device=device.type, timeout=240, extra=LOADERS[loader])
            result["fit"][name] = r
            if r["rc"]:
                click.echo(f"fit {name}: FAILED rc={r['rc']}: {r['error'][-300:]}")
            else:
                ceil = result["ceiling_samples_per_s"][f"{stream}_device_crop"]
                click.echo(f"fit {name} ({cfg['workers']} workers, {cfg['steps']}-step epochs): "
                           f"{r['samples_per_s']:.0f} samples/s ({100 * r['samples_per_s'] / ceil:.0f}% of the ceiling), "
                           f"data wait {100 * r['data_wait_frac']:.1f}% (steady-state epochs), wall {r['wall_s']:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    click.echo(f"wrote {out}")
    if any(r["rc"] for r in result["fit"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
