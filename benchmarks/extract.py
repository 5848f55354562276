"""Extraction throughput, shard sizes and compression filters on real 320x240 videos.

Variants, per flow method, run interleaved (order rotated each repetition) in this one process:
- ``pipeline``: ``flowprep.extract.runner.run_extract`` with default settings (RGB JPEGs, gzip flow) on N workers;
- ``pipeline_no_rgb``: the same with ``--no-rgb``;
- ``bare``: the same flow on the same videos on the same joblib loky pool (N jobs, same order), one task
  per video: decord decode in chunks of 32, gray, flow of every consecutive pair, results discarded;
- ``pipeline_w1``: the pipeline on one worker process (TV-L1: the scaling target);
- ``threads``: one plain loop over the videos in this process with ``cv2.setNumThreads(nproc)`` and
  decord's own decoder threads, writing nothing (how single-script extractors run).
Throughput is decoded frames per second of wall time; ratios are ratios of medians. Before each timed
run the worker pool is started and warmed at the size that run uses, so process start-up (a one-off of
a real run) is not measured; all of ``run_extract`` is (probe, JPEG, quantize, HDF5, fsync, merge).
Each run also records the CPU time of this process and its workers, and each method how many cores N
busy processes really get before and after (``free_cores``): on a shared machine wall-time ratios drift
with other people's load, CPU-time ratios much less (but they do not see idle waits such as fsync).

Default sizes: Farneback 8 clips of 180 frames (UCF-101's mean clip is ~7 s at 25 fps), so per-video
costs (probe, file creation, fsync) weigh as in a real run; ``--frames 40`` shows them 4.5x heavier.
TV-L1 24 clips of 3 frames: a field costs ~1 s, and with many small tasks the two workers end within
about one field of each other, so ``--workers 2 / --workers 1`` measures scaling, not the tail of a
tiny job (with 8 clips of 6 fields, one worker idled ~8% of the run at the end).

The compression rows (``benchmarks.compression``) rewrite the quantized flow of the first pipeline run
with each filter. Plugin rows (Blosc, LZ4, Zstd) appear when ``hdf5plugin`` imports; to add it without
touching .venv:

    .venv/bin/pip install --no-deps --target /tmp/hdf5plugin-site hdf5plugin
    PYTHONPATH=/tmp/hdf5plugin-site .venv/bin/python -m benchmarks.extract --out bench-out/extract.json
    .venv/bin/python -m benchmarks.extract --quick     # ~1 min, for development
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import cv2
import decord
import h5py
import numpy as np
from joblib import Parallel, delayed

from benchmarks.compression import compression_markdown, compression_table
from benchmarks.machine import cpu_seconds, free_cores, machine_facts, warm_pool
from benchmarks.media import GET_MEDIA, MEDIA, SIZE, SOURCES, MissingMedia, build_videos
from flowprep.config import FlowConfig, StorageConfig
from flowprep.extract.flow import FlowEstimator
from flowprep.extract.reader import plan_videos
from flowprep.extract.runner import run_extract

TARGETS = {"farneback": 0.9, "tvl1": 0.97}  # pipeline / bare
SCALING_TARGET = 1.85  # --workers 2 / --workers 1 with TV-L1 on 2 cores
LABELS = {"pipeline": "pipeline (RGB)", "pipeline_no_rgb": "pipeline --no-rgb", "pipeline_w1": "pipeline "
          "--workers 1", "bare": "bare decode+flow, same pool", "threads": "1 process, OpenCV threads"}


_ESTIMATORS: dict[str, FlowEstimator] = {}


def bare_video(path: str, method: str, opencv_threads: int = 1, decoder_threads: int = 1) -> tuple[int, float]:
    """Decode + flow of every consecutive pair, nothing kept; returns (frames decoded, seconds)."""
    t0 = time.perf_counter()
    cv2.setNumThreads(opencv_threads)
    if method not in _ESTIMATORS:  # one solver per process, as the pipeline's workers keep theirs
        _ESTIMATORS[method] = FlowEstimator(method=method)
    flow = _ESTIMATORS[method]
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=decoder_threads)
    prev, n = None, len(vr)
    for start in range(0, n, 32):
        for rgb in vr.get_batch(list(range(start, min(start + 32, n)))).asnumpy():
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            if prev is not None:
                flow(prev, gray)
            prev = gray
    return n, time.perf_counter() - t0


def run_variant(name: str, *, method: str, paths: list[Path], root: Path, out: Path,
                workers: int) -> tuple[float, tuple[float, float], int, list[float]]:
    """(seconds, CPU seconds of (this process, workers), frames, per-video seconds of the bare variant) of one
    timed run of ``name``."""
    n = 1 if name == "pipeline_w1" else workers
    if name == "threads":
        def work() -> tuple[int, list[float]]:
            return sum(bare_video(str(p), method, len(os.sched_getaffinity(0)), 0)[0] for p in paths), []
    elif name == "bare":
        def work() -> tuple[int, list[float]]:
            done = list(Parallel(n_jobs=n, backend="loky", return_as="generator_unordered")(
                delayed(bare_video)(str(p), method) for p in paths))
            return sum(f for f, _ in done), [t for _, t in done]
    else:
        classes, metas = plan_videos(root)
        wanted = {p.relative_to(root).as_posix() for p in paths}
        metas = [m for m in metas if m.source in wanted]

        def work() -> tuple[int, list[float]]:
            s = run_extract(videos_root=root, out=out, videos=metas, classes=classes, flow=FlowConfig(method=method),
                            storage=StorageConfig(rgb=name != "pipeline_no_rgb"), workers=n, progress=False)
            if s.failures or s.processed != len(paths):
                raise click.ClickException(f"pipeline run: expected {len(paths)} videos extracted, got "
                                           f"{s.processed} processed and failures {s.failures}")
            return s.frames, []
    if name != "threads":
        warm_pool(n)
    t0, (main0, pool0) = time.perf_counter(), cpu_seconds()
    frames, per_video = work()
    seconds, (main1, pool1) = time.perf_counter() - t0, cpu_seconds()
    return seconds, (main1 - main0, pool1 - pool0), frames, per_video


def shard_stats(out: Path) -> tuple[dict[str, float], np.ndarray]:
    """Bytes per flow field / RGB frame of a pipeline output, and all its quantized fields."""
    flow_bytes = rgb_bytes = fields = frames = 0
    flows, shards = [], sorted(out.glob("*.h5"))
    for shard in shards:
        with h5py.File(shard, "r") as f:
            for group in (g for cls in f["videos"].values() for g in cls.values()):
                flows.append(group["flow"][:])
                flow_bytes += group["flow"].id.get_storage_size()
                fields, frames = fields + len(group["flow"]), frames + int(group.attrs["num_frames"])
                rgb_bytes += sum(len(b) for b in group["rgb"][:]) if "rgb" in group else 0
    return ({"flow_bytes_per_field": flow_bytes / fields, "rgb_jpeg_bytes_per_frame": rgb_bytes / frames,
             "shard_bytes_per_frame": sum(s.stat().st_size for s in shards) / frames,
             "raw_field_bytes": float(2 * SIZE[0] * SIZE[1]), "fields": fields}, np.concatenate(flows))


def measure(method: str, *, media: Path, tmp: Path, videos: int, frames: int, reps: int, workers: int,
            variants: list[str]) -> tuple[dict[str, Any], np.ndarray]:
    root, work = tmp / method / "videos", tmp / method / "out"
    paths = build_videos(media, root, videos=videos, frames=frames)
    click.echo(f"{method}: {videos} videos x {frames} frames, {workers} workers, {reps} reps", err=True)
    load, free = [os.getloadavg()[0]], [free_cores(workers)]
    if method == "farneback":  # untimed first use of everything in this process (a TV-L1 field costs more)
        for v in ("pipeline", "bare"):
            run_variant(v, method=method, paths=paths[:1], root=root, out=tmp / "warm", workers=workers)
        shutil.rmtree(tmp / "warm")
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    main_cpu: dict[str, list[float]] = {v: [] for v in variants}  # of which this process (the runner's merge...)
    utilisation = []  # busy time / (workers x wall time) of the bare runs: how evenly the videos spread
    expected = None
    for rep in range(reps):
        for v in variants[rep % len(variants):] + variants[:rep % len(variants)]:
            t, c, n, per_video = run_variant(v, method=method, paths=paths, root=root, out=work / f"{v}-{rep}",
                                             workers=workers)
            if n != (expected := expected or n):
                raise click.ClickException(f"{v} decoded {n} frames; expected {expected}, as the other variants")
            seconds[v].append(t)
            cpu[v].append(sum(c))
            main_cpu[v].append(c[0])
            utilisation += [sum(per_video) / (workers * t)] if per_video else []
            if rep > 0 and (work / f"{v}-{rep}").exists():  # the first outputs are kept for the sizes
                shutil.rmtree(work / f"{v}-{rep}")
            click.echo(f"  rep {rep + 1}/{reps} {LABELS[v]:<30} {t:7.2f} s  {n / t:7.3g} frames/s  "
                       f"{sum(c) / n * 1e3:7.1f} CPU ms/frame", err=True)
    load.append(os.getloadavg()[0])
    free.append(free_cores(workers))
    fps = {v: expected / statistics.median(t) for v, t in seconds.items()}
    cpu_ms = {v: statistics.median(c) / expected * 1e3 for v, c in cpu.items()}
    main_ms = {v: statistics.median(c) / expected * 1e3 for v, c in main_cpu.items()}
    sizes, flows = shard_stats(work / "pipeline-0")
    sizes["no_rgb_shard_bytes_per_frame"] = shard_stats(work / "pipeline_no_rgb-0")[0]["shard_bytes_per_frame"]
    ratios = {"pipeline / bare": {"value": fps["pipeline"] / fps["bare"], "target": TARGETS[method]},
              "pipeline --no-rgb / bare": {"value": fps["pipeline_no_rgb"] / fps["bare"]},
              "pipeline / bare by CPU time (bare CPU / pipeline CPU)": {"value": cpu_ms["bare"] / cpu_ms["pipeline"]},
              "pipeline --no-rgb / bare by CPU time": {"value": cpu_ms["bare"] / cpu_ms["pipeline_no_rgb"]},
              "pipeline / 1 process with OpenCV threads": {"value": fps["pipeline"] / fps["threads"]}}
    if "pipeline_w1" in fps:
        ratios[f"pipeline --workers {workers} / --workers 1"] = {
            "value": fps["pipeline"] / fps["pipeline_w1"], "target": SCALING_TARGET if workers == 2 else None}
    return {"setup": {"videos": videos, "frames": frames, "workers": workers, "reps": reps},
            "load_1min_before_after": load, "free_cores_before_after": free, "frames_per_s": fps,
            "seconds_all": seconds, "ratios": ratios, "cpu_ms_per_frame": cpu_ms, "cpu_seconds_all": cpu,
            "main_process_cpu_ms_per_frame": main_ms,
            "sizes": sizes, "bare_worker_utilisation": utilisation,
            "bare_cpu_ms_per_field": statistics.median(cpu["bare"]) / sizes["fields"] * 1e3,
            "pipeline_extra_cpu_ms_per_frame": cpu_ms["pipeline"] - cpu_ms["bare"]}, flows


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"`{result['command']}` on {m['cpu_model']}, nproc {m['nproc']} ({m['threads_per_core']} threads per "
             f"core), 1-min load {result['load_before'][0]:.2f} before / {result['load_after'][0]:.2f} after; OpenCV "
             f"{m['opencv']}, decord {m['decord']}, h5py {m['h5py']} (HDF5 {m['hdf5']}), hdf5plugin {m['hdf5plugin']}, "
             f"commit {str(m['git_commit'])[:10]}{' + local changes' if m['git_dirty'] else ''}.", ""]
    for method, r in result["methods"].items():
        s, z = r["setup"], r["sizes"]
        busy = min(r["free_cores_before_after"]) < 0.9 * s["workers"]
        lines += [f"**{method}**: {s['videos']} videos x {s['frames']} frames at 320x240, {s['workers']} workers, "
                  f"{s['reps']} interleaved repetitions (median). {s['workers']} busy processes got "
                  f"{' and '.join(f'{c:.2f}' for c in r['free_cores_before_after'])} cores before and after"
                  + (": the machine was shared, so wall-time ratios are unreliable (CPU-time ones less so)."
                     if busy else "."), "",
                  "| variant | frames/s | vs bare | CPU ms/frame | of which main process | runs (s) |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for v, fps in r["frames_per_s"].items():
            runs = ", ".join(f"{t:.1f}" for t in r["seconds_all"][v])
            lines.append(f"| {LABELS[v]} | {fps:.3g} | {fps / r['frames_per_s']['bare']:.3f} | "
                         f"{r['cpu_ms_per_frame'][v]:.1f} | {r['main_process_cpu_ms_per_frame'][v]:.2f} | {runs} |")
        lines.append("")
        for k, v in r["ratios"].items():
            target = v.get("target")
            met = f" (target >= {target}: {'met' if v['value'] >= target else 'NOT met'})" if target else ""
            lines.append(f"- {k}: **{v['value']:.3f}**{met}")
        lines += [f"- bytes per flow field {z['flow_bytes_per_field']:.0f} (raw {z['raw_field_bytes']:.0f}), per RGB "
                  f"frame {z['rgb_jpeg_bytes_per_frame']:.0f} (JPEG q90); shard bytes per frame "
                  f"{z['shard_bytes_per_frame']:.0f} with RGB, {z['no_rgb_shard_bytes_per_frame']:.0f} without",
                  f"- bare loop {r['bare_cpu_ms_per_field']:.1f} CPU ms per field, worker utilisation "
                  f"{statistics.median(r['bare_worker_utilisation']):.2f} (1 = no idle worker); the pipeline spends "
                  f"{r['pipeline_extra_cpu_ms_per_frame']:.1f} CPU ms per frame more", ""]
    lines += compression_markdown(result["compression"], list(result["methods"]))
    return "\n".join(lines) + "\n"


def _default(given: int | None, full: int, quick: int, is_quick: bool) -> int:
    return given if given is not None else (quick if is_quick else full)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench-out/extract.json"),
              show_default=True, help="Results (JSON); the markdown tables go next to it (.md).")
@click.option("--media", type=click.Path(path_type=Path), default=MEDIA, show_default=True,
              help="Folder with OpenCV's sample videos tree.avi, Megamind.avi, vtest.avi (Debian's opencv-doc).")
@click.option("--quick", is_flag=True, help="Small sizes, 1-2 repetitions (~1 min; for development, not for numbers).")
@click.option("--method", "methods", type=click.Choice(["farneback", "tvl1"]), multiple=True,
              help="Flow method to measure (repeatable).  [default: both]")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes.  [default: all cores]")
@click.option("--reps", type=click.IntRange(min=1), default=None, help="Farneback repetitions.  [default: 5, quick 2]")
@click.option("--tvl1-reps", type=click.IntRange(min=1), default=None, help="TV-L1 repetitions.  [default: 3, quick 1]")
@click.option("--videos", type=click.IntRange(min=1), default=None, help="Farneback videos.  [default: 8, quick 4]")
@click.option("--frames", type=click.IntRange(min=2), default=None,
              help="Frames per Farneback video; UCF-101 averages ~180.  [default: 180, quick 16]")
@click.option("--tvl1-videos", type=click.IntRange(min=1), default=None,
              help="TV-L1 videos; many short ones, so that 2 workers end together.  [default: 24, quick 2]")
@click.option("--tvl1-frames", type=click.IntRange(min=2), default=None,
              help="Frames per TV-L1 video (~1 s per field per core at 320x240).  [default: 3, quick 3]")
def main(out: Path, media: Path, quick: bool, methods: tuple[str, ...], workers: int | None, reps: int | None,
         tvl1_reps: int | None, videos: int | None, frames: int | None, tvl1_videos: int | None,
         tvl1_frames: int | None) -> None:
    """Measure flowprep extract against a bare decode+flow loop on the same worker pool and against one
    multi-threaded process; bytes per field and frame; HDF5 compression filters. Prints markdown, writes JSON."""
    missing = [name for name, _ in SOURCES.values() if not (media / name).is_file()]
    if missing:
        raise MissingMedia(f"{', '.join(missing)} not in {media}; get them with: {GET_MEDIA}")
    workers = workers or len(os.sched_getaffinity(0))
    setups = {"farneback": dict(videos=_default(videos, 8, 4, quick), frames=_default(frames, 180, 16, quick),
                                reps=_default(reps, 5, 2, quick), variants=["pipeline", "bare", "pipeline_no_rgb",
                                                                            "threads"]),
              "tvl1": dict(videos=_default(tvl1_videos, 24, 2, quick), frames=_default(tvl1_frames, 3, 3, quick),
                           reps=_default(tvl1_reps, 3, 1, quick),
                           variants=["pipeline", "bare", "pipeline_w1", "pipeline_no_rgb", "threads"])}
    env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    result: dict[str, Any] = {"command": f"{env}python -m benchmarks.extract {' '.join(sys.argv[1:])}".strip(),
                              "machine": machine_facts(), "load_before": list(os.getloadavg()), "methods": {}}
    flows = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="extract-bench-") as tmp:
        for method in methods or ("farneback", "tvl1"):
            result["methods"][method], flows[method] = measure(method, media=media, tmp=Path(tmp), workers=workers,
                                                               **setups[method])
            out.write_text(json.dumps(result, indent=2))  # what is measured survives a later failure
        click.echo("compression filters", err=True)
        result["compression"] = compression_table(flows, 1 if quick else 3, Path(tmp))
    result["load_after"] = list(os.getloadavg())
    out.write_text(json.dumps(result, indent=2))
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    click.echo(table)
    click.echo(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    # Run the imported module's main: loky pickles ``__main__`` functions by value, with their globals (the
    # TV-L1 solver cached by the threads variant cannot be pickled); ``benchmarks.extract`` ones by reference.
    from benchmarks.extract import main as imported_main

    imported_main()
