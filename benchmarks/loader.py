"""Temporal-stream loader throughput: flowprep shards vs one grayscale JPEG per flow channel per frame.

All rows draw the same kind of samples (random start, L consecutive fields, TSN multi-scale crop,
random flip that negates u); they differ in storage and in WHERE the crop is resized:
- ``shards``: ``trainer.data.datasets.FlowStackDataset`` as ``trainer fit`` uses it when all videos share one
  size (``frame_size``): L fields read from the HDF5 shard (gzip, 1 field/chunk) into the window that
  holds the box; NO crop, resize or flip in the worker: those run later, batched, on the device
  (``transforms.prepare_train_batch``). Its CPU cost is measured separately (``device step on CPU``)
  and folded into the ``shards + step on CPU`` row, so nothing is hidden;
- ``shards_cpu_crop``: the same shards with the crop + cv2.resize + flip in the worker (the path for
  videos of mixed sizes, and what ``shards`` was before);
- ``jpeg``: the layout of the common two-stream toolkits, ``<video>/flow_x/frame%05d.jpg`` and
  ``flow_y/...`` (quality 95, cv2.imwrite's default), 2L ``cv2.imread`` calls per sample, then the
  CPU-side crop + resize + flip those toolkits do.
Rates are stacks/s; ``workers=0`` is the per-worker rate (one process, OpenCV and torch single-threaded),
then a DataLoader with 2 worker processes (batches of 8, collation included). Repetitions are
interleaved and the median is reported; every file is read from the page cache (both written just
before), so this measures decoding, not the disk.

The "read ms" column is storage + decoding only (no crop); it also times the shards read with ISA-L
inflate instead of libdeflate (``read_flow_isal``), right after the libdeflate read, to show what the
``deflate`` dependency buys.

The crop rows compare TSN's multi-scale crop with random resized crop through the shards: speed and
the resize factor s = crop_size / crop side that multiplies the flow (evaluation uses 224/210 = 1.07).

    python -m benchmarks.loader --out bench-out/loader.json            # smooth random flow
    python -m benchmarks.loader --source tree.avi --out loader-tree.json  # Farneback flow of a real video
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import click
import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from isal import isal_zlib

from flowprep import format as fmt
from flowprep.extract.quantize import quantize
from flowprep.extract.writer import VideoMeta, VideoWriter, write_file_attrs
from benchmarks.jpeg_layout import JpegFlowStackDataset, write_jpeg_tree
from trainer.data.datasets import FlowStackDataset
from trainer.data.lists import read_video_list
from trainer.data.read import read_flow
from trainer.data.shards import VideoRecord, index_shards
from trainer.data.crops import EVAL_RESIZE_RATIO
from trainer.data.transforms import TRAIN_PARAMS, prepare_train_batch

BOUND = 20.0


def smooth_random_flow(frames: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(frames-1, 2, H, W) float32: smooth motion in drifting regions (~30% of the frame) over a static
    background, with estimator-like noise there; it gzips to ~33 KB/field, a little worse than
    TV-L1 or Farneback flow of real 320x240 video (~25 KB), so the shard rates are not flattered."""
    coarse = rng.normal(size=(3, 6, 8)).astype(np.float32)  # u, v, and where things move
    out = []
    for _ in range(frames - 1):
        coarse = 0.9 * coarse + 0.45 * rng.normal(size=coarse.shape).astype(np.float32)
        up = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in coarse])
        moving = 1 / (1 + np.exp(-8 * (up[2] - 0.5)))
        noise = rng.normal(scale=0.05, size=up[:2].shape).astype(np.float32)
        out.append((3 * up[:2] + noise) * moving)
    return np.stack(out)


def video_flow(path: Path, frames: int, height: int, width: int) -> np.ndarray:
    """Farneback flow (flowprep's default parameters) of the first ``frames`` frames, resized to H x W."""
    cap, grays = cv2.VideoCapture(str(path)), []
    while len(grays) < frames:
        ok, bgr = cap.read()
        if not ok:
            break
        grays.append(cv2.cvtColor(cv2.resize(bgr, (width, height)), cv2.COLOR_BGR2GRAY))
    if len(grays) < 2:
        raise click.ClickException(f"{path}: expected a readable video with >= 2 frames, got {len(grays)}")
    return np.stack([cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0).transpose(2, 0, 1)
                     for a, b in zip(grays, grays[1:])])


def write_shards(root: Path, quantized: list[np.ndarray], *, compression: str | None) -> list[VideoRecord]:
    """One shard + manifest + list (docs/shard-format.md) holding ``quantized`` flow, indexed by the trainer."""
    root.mkdir(parents=True)
    ids, (h, w) = [f"Bench/v_Bench_g{i:02d}_c01" for i in range(len(quantized))], quantized[0].shape[2:]
    params = {"flow": {"method": "benchmark", "bound": BOUND}, "storage": {"compression": compression}}
    with h5py.File(root / "shard-00000.h5", "w") as f:
        write_file_attrs(f, params)
        for vid, q in zip(ids, quantized):
            writer = VideoWriter(f, VideoMeta(vid, vid + ".avi", 0, "Bench"), height=h, width=w, bound=BOUND, rgb=False,
                                 compression=compression, compression_level=1 if compression == "gzip" else None)
            writer.append_flow(q)
            writer.finish(num_frames=len(q) + 1, fps=25.0)
    shard = {"name": "shard-00000.h5", "size": (root / "shard-00000.h5").stat().st_size, "sha256": "", "videos": ids}
    manifest = {"format": fmt.MANIFEST_FORMAT, "format_version": fmt.MANIFEST_VERSION, "complete": True,
                "task": {"index": 0, "count": 1},
                "params": params, "classes": ["Bench"], "num_videos": len(ids), "shards": [shard], "failures": []}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "list.txt").write_text("".join(f"{v}.avi 1\n" for v in ids))
    return read_video_list(root / "list.txt", index_shards(root))


_ISAL_FILES: dict[Path, h5py.File] = {}


def read_flow_isal(rec: VideoRecord, start: int, stop: int) -> np.ndarray:
    """``trainer.data.read.read_flow``'s direct path with ISA-L instead of libdeflate (what it used before); files
    stay open, as trainer.data.read keeps them."""
    f = _ISAL_FILES.get(rec.shard) or _ISAL_FILES.setdefault(rec.shard, h5py.File(rec.shard, "r", rdcc_nbytes=0))
    ds = f[f"videos/{rec.video_id}/flow"]
    n = ds.shape[1] * ds.shape[2] * ds.shape[3]
    return np.stack([np.frombuffer(isal_zlib.decompress(ds.id.read_direct_chunk((t, 0, 0, 0))[1], bufsize=n),
                                   np.uint8).reshape(ds.shape[1:]) for t in range(start, stop)])


def read_ms(read: Callable[[VideoRecord, int], object], records: list[VideoRecord], n: int, L: int) -> float:
    """Milliseconds to read one stack (storage + decoding only, no crop)."""
    picks = [(records[i], int(torch.randint(records[i].num_frames - L, ()))) for i in torch.randint(len(records), (n,))]
    t0 = time.perf_counter()
    for rec, start in picks:
        read(rec, start)
    return (time.perf_counter() - t0) / n * 1e3


def resize_factors(second: torch.Tensor) -> torch.Tensor:
    """(sx, sy) of an item: given directly (CPU crop) or from its device-crop params (y0, x0, h, w, flip, S)."""
    if second.shape[-1] == TRAIN_PARAMS:
        return torch.stack([second[5] / second[3], second[5] / second[2]])
    return second


def inline_rate(ds: Dataset, n: int) -> tuple[float, list[torch.Tensor]]:
    idx = torch.randint(len(ds), (n,)).tolist()
    t0, items = time.perf_counter(), []
    for i in idx:
        items.append(ds[i][1])
    rate = n / (time.perf_counter() - t0)
    return rate, [resize_factors(s) for s in items]


def device_step_ms(ds: Dataset, batch_size: int, scale_factor: float, add_offset: float) -> float:
    """Milliseconds per sample of ``prepare_train_batch`` run on this CPU (one thread) for one batch."""
    items = [ds[i % len(ds)] for i in range(batch_size)]
    x, params = torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])
    t0 = time.perf_counter()
    prepare_train_batch(x, params, stream="temporal", scale_factor=scale_factor, add_offset=add_offset)
    return (time.perf_counter() - t0) / batch_size * 1e3


def single_thread_opencv(_: int) -> None:
    cv2.setNumThreads(1)


def loader_rate(ds: Dataset, batches: int, batch_size: int) -> float:
    sampler = RandomSampler(ds, replacement=True, num_samples=(batches + 1) * batch_size)  # videos are few
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=2, worker_init_fn=single_thread_opencv)
    it = iter(loader)
    next(it)  # worker start-up and the first batch are not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch_size / (time.perf_counter() - t0)
    del it
    return rate


def factor_stats(scales: list[torch.Tensor]) -> dict[str, float]:
    s = torch.stack(scales).double()
    sx, aspect = s[:, 0].numpy(), np.abs(np.log(s[:, 0].numpy() / s[:, 1].numpy()))
    return {"s_p5": float(np.percentile(sx, 5)), "s_median": float(np.median(sx)), "s_p95": float(np.percentile(sx, 95)),
            "aspect_distortion_median": float(np.median(aspect))}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Write the results here (JSON).")
@click.option("--source", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A video to take Farneback flow from (default: smooth random flow).")
@click.option("--videos", default=6, show_default=True, help="Videos to write (each --frames frames).")
@click.option("--frames", default=48, show_default=True, help="Frames per video (320x240).")
@click.option("--samples", default=120, show_default=True, help="Stacks per inline repetition.")
@click.option("--reps", default=5, show_default=True, help="Interleaved repetitions (median reported).")
@click.option("--batches", default=12, show_default=True, help="Batches of 8 per DataLoader repetition.")
@click.option("--flow-length", default=10, show_default=True)
@click.option("--crop-size", default=224, show_default=True)
def main(out: Path, source: Path | None, videos: int, frames: int, samples: int, reps: int, batches: int,
         flow_length: int, crop_size: int) -> None:
    """Measure temporal stacks/s: flowprep shards vs JPEG-per-channel files, and two crop policies."""
    if frames < flow_length + 2:
        raise click.UsageError(f"--frames must be >= flow length + 2 = {flow_length + 2}, got {frames}")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cv2.setNumThreads(1)  # the inline rows are per-worker rates
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        if source is None:
            flows = [smooth_random_flow(frames, 240, 320, rng) for _ in range(videos)]
        else:
            flow = video_flow(source, frames * videos, 240, 320)  # consecutive pieces of one real video
            flows = [flow[i * (frames - 1):(i + 1) * (frames - 1)] for i in range(videos) if len(flow) >= (i + 1) * (frames - 1)]
            if not flows:
                raise click.ClickException(f"{source}: {len(flow) + 1} frames, expected at least --frames {frames}")
        quantized = [quantize(f, BOUND) for f in flows]
        records = write_shards(root / "gzip", quantized, compression="gzip")  # the format's default storage
        raw_records = write_shards(root / "raw", quantized, compression=None)  # what-if: no compression
        write_jpeg_tree(root / "jpeg", records, quantized)
        fields = sum(len(q) for q in quantized)
        sizes = {"shard_bytes_per_field": (root / "gzip" / "shard-00000.h5").stat().st_size / fields,
                 "raw_shard_bytes_per_field": (root / "raw" / "shard-00000.h5").stat().st_size / fields,
                 "jpeg_bytes_per_field": sum(p.stat().st_size for p in (root / "jpeg").rglob("*.jpg")) / fields}
        click.echo(f"wrote {len(records)} videos, {fields} fields of 320x240 in {time.perf_counter() - t0:.1f} s")
        kw = {"flow_length": flow_length, "crop_size": crop_size}
        jpeg = JpegFlowStackDataset(records, root / "jpeg", **kw)
        # Same fields, same [u0, v0, u1, ...] order in both layouts (up to JPEG's loss), or the race is void.
        a = read_flow(records[0], 1, 1 + flow_length).reshape(2 * flow_length, 240, 320).astype(np.int16)
        jpeg_error = float(np.abs(jpeg.read(records[0], 1) - a).mean())
        if not jpeg_error < 1.5:
            raise click.ClickException(f"JPEG and shard stacks differ by {jpeg_error:.2f} codes on average; expected < 1.5")
        dev = {"frame_size": (240, 320)}  # as trainer fit builds it: crop on the device
        sets = {"shards": FlowStackDataset(records, **dev, **kw), "shards_cpu_crop": FlowStackDataset(records, **kw),
                "jpeg": jpeg, "shards+resized_crop": FlowStackDataset(records, crop="resized", **dev, **kw),
                "raw_shards (what-if)": FlowStackDataset(raw_records, **dev, **kw)}
        readers = {"shards": (lambda r, s: read_flow(r, s, s + flow_length), records), "jpeg": (jpeg.read, records),
                   "shards, ISA-L inflate": (lambda r, s: read_flow_isal(r, s, s + flow_length), records),
                   "raw_shards (what-if)": (lambda r, s: read_flow(r, s, s + flow_length), raw_records)}
        idx = index_shards(root / "gzip")
        inline, scales = {k: [] for k in sets}, {k: [] for k in sets}
        reads, steps = {k: [] for k in readers}, []
        for rep in range(reps):
            order = list(sets)[rep % len(sets):] + list(sets)[:rep % len(sets)]  # rotate: no position bias
            for name in order:
                rate, s = inline_rate(sets[name], samples)
                inline[name].append(rate)
                scales[name] += s
                for reader in [r for r in readers if r == name or (name == "shards" and r.startswith("shards,"))]:
                    reads[reader].append(read_ms(*readers[reader], samples // 2, flow_length))
            steps.append(device_step_ms(sets["shards"], 16, idx.scale_factor, idx.add_offset))
        loader = {k: [] for k in ("shards", "shards_cpu_crop", "jpeg")}
        for rep in range(2):
            for name in (list(loader) if rep == 0 else list(loader)[::-1]):
                loader[name].append(loader_rate(sets[name], batches, 8))
    med = {k: statistics.median(v) for k, v in inline.items()}
    step_ms = statistics.median(steps)
    # Everything on one CPU core: the worker's item plus the device step run on this CPU instead.
    med["shards + step on CPU"] = 1e3 / (1e3 / med["shards"] + step_ms)
    med_loader = {k: statistics.median(v) for k, v in loader.items()}
    med_read = {k: statistics.median(v) for k, v in reads.items()}
    eval_factor = crop_size / round(240 / EVAL_RESIZE_RATIO)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": torch.get_num_threads(),
                    "opencv": cv2.__version__, "h5py": h5py.__version__, "torch": torch.__version__},
        "setup": {"source": str(source) if source else "smooth random", "videos": len(records), "frames": frames,
                  "flow_length": flow_length, "crop_size": crop_size, "samples": samples, "reps": reps,
                  "jpeg_mean_abs_error_codes": jpeg_error, **sizes},
        "stacks_per_s_per_worker": med, "stacks_per_s_per_worker_all": inline,
        "stacks_per_s_2_workers": med_loader, "stacks_per_s_2_workers_all": loader,
        "read_ms_per_stack": med_read, "read_ms_per_stack_all": reads,
        "device_step_on_cpu_ms_per_stack": step_ms, "device_step_on_cpu_ms_all": steps,
        "speedup_per_worker": med["shards"] / med["jpeg"], "speedup_2_workers": med_loader["shards"] / med_loader["jpeg"],
        "speedup_per_worker_cpu_crop": med["shards_cpu_crop"] / med["jpeg"],
        "speedup_2_workers_cpu_crop": med_loader["shards_cpu_crop"] / med_loader["jpeg"],
        "speedup_per_worker_incl_step_on_cpu": med["shards + step on CPU"] / med["jpeg"],
        "resize_factor": {"eval": eval_factor, "multiscale": factor_stats(scales["shards"]),
                          "resized": factor_stats(scales["shards+resized_crop"])},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    click.echo(f"{'loader':<22}{'stacks/s/worker':>16}{'2 workers':>11}{'read ms':>9}   resize factor s (p5/median/p95)")
    for name in med:
        fs = factor_stats(scales[name]) if name in scales else None
        two = f"{med_loader[name]:11.1f}" if name in med_loader else f"{'-':>11}"
        rd = f"{med_read[name]:9.2f}" if name in med_read else f"{'-':>9}"
        fac = f"{fs['s_p5']:.2f} / {fs['s_median']:.2f} / {fs['s_p95']:.2f}" if fs else "-"
        click.echo(f"{name:<22}{med[name]:16.1f}{two}{rd}   {fac}")
    click.echo(f"read ms per stack, shards inflated with ISA-L instead of libdeflate: {med_read['shards, ISA-L inflate']:.2f}")
    click.echo("shards: crop + resize + flip run later on the device (prepare_train_batch, batched); that step costs "
               f"{step_ms:.2f} ms/stack when run on this CPU instead (one thread), counted in 'shards + step on CPU'")
    click.echo(f"speed-up vs jpeg (which crops/resizes/flips in the worker): shards {result['speedup_per_worker']:.2f}x "
               f"per worker, {result['speedup_2_workers']:.2f}x with 2 workers (target >= 2x); shards_cpu_crop "
               f"{result['speedup_per_worker_cpu_crop']:.2f}x / {result['speedup_2_workers_cpu_crop']:.2f}x; "
               f"shards + step on CPU {result['speedup_per_worker_incl_step_on_cpu']:.2f}x; eval factor {eval_factor:.2f}")
    click.echo(f"bytes per field: shard {sizes['shard_bytes_per_field']:.0f}, raw shard {sizes['raw_shard_bytes_per_field']:.0f}, "
               f"jpeg {sizes['jpeg_bytes_per_field']:.0f}; wrote {out}")


if __name__ == "__main__":
    main()
