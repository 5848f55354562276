"""TV-L1 speed: OpenCV's DualTVL1 per CPU core vs the PyTorch solver (flowprep.torchflow.tvl1) per batch size (issue 14).

Frame pairs at 320x240 with the default parameters: consecutive frames of opencv-doc's vtest.avi (or, without
it, flowprep's synthetic clips). Rows:
- ``opencv_pairs_per_s_per_core``: ``calc`` in a loop with ``cv2.setNumThreads(1)``;
- ``torch``: ``tvl1_flow`` on batches of B pairs for each B in ``--batches`` (pairs/s of the solver alone,
  input already on the device, result synchronised), with the peak GPU memory per batch size on CUDA; a
  CUDA out-of-memory ends the sweep (recorded), it does not end the run;
- ``ratio_vs_one_core``: torch pairs/s / OpenCV pairs/s per core.
With ``--compile`` every batch size is timed again with ``torch.compile`` of the solver's inner iteration
(first-call time, i.e. compilation, and the difference from the eager flow recorded). With ``--profile`` the
largest eager batch that fitted is run once more under torch.profiler (top ops by time).
``pipeline``: the whole ``flowprep extract --engine torch`` (``run_extract`` in this process: decode, gray,
the flow process's batches across videos, quantization, JPEG, HDF5, shard assembly) on ``--pipeline-videos``
H.264 clips of ``--pipeline-frames`` frames cut from the same source, with ``--workers`` worker processes and
one flow process per device. Rows: pairs/s over the whole run's wall time (start-up included: the flow
process imports torch and initialises CUDA) and over the flow process's serving time (first request to
last answer), the fractions of that time the flow process spent in the solver and (beside it, on its
finisher thread) putting flow into the workers' blocks and quantizing, its batch statistics, and
the ratio to the solver alone (best eager batch, and at the pipeline's own ``--flow-batch`` when swept).

    PYTHONPATH=. python3 -m benchmarks.tvl1_gpu --out $OUT/tvl1_gpu.json --profile     # GPU machine
    PYTHONPATH=. python3 -m benchmarks.tvl1_gpu --out bench-out/tvl1_cpu.json --device cpu --batches 1,4
    PYTHONPATH=. python3 -m benchmarks.tvl1_gpu --out /tmp/s.json --smoke              # tiny, CPU
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
import torch

from benchmarks.flow_quality import MEDIA, facts, opencv_flow, video_pairs
from flowprep.config import FlowConfig, TVL1Params
from flowprep.torchflow.service import FLOW_BATCH
from flowprep.extract.reader import plan_videos
from flowprep.extract.runner import run_extract
from flowprep.tools.sample import encode_video
from flowprep.tools.synth import DEFAULT_CLASSES, ClipSpec, render_clip
from flowprep.torchflow.tvl1 import SolveStats, tvl1_flow


def frame_pairs(media: Path, count: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, str]:
    """(prev (n, H, W), next (n, H, W), source) gray uint8, ``count`` consecutive pairs."""
    if (media / "vtest.avi").exists():
        starts = [i % 790 for i in range(count)]
        pairs = video_pairs(media / "vtest.avi", sorted(set(starts)), size)
        pairs = [pairs[i % len(pairs)] for i in range(count)]
        source = f"vtest.avi {size[0]}x{size[1]}"
    else:
        pairs = []
        per_clip = 16
        for c in range(-(-count // per_clip)):
            name = DEFAULT_CLASSES[c % len(DEFAULT_CLASSES)]
            clip = render_clip(ClipSpec(name, c % len(DEFAULT_CLASSES), group=1 + c, clip=1, width=size[0],
                                        height=size[1], frames=per_clip + 1, seed=c))
            g = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip]
            pairs += list(zip(g[:-1], g[1:]))
        pairs = pairs[:count]
        source = f"synthetic clips {size[0]}x{size[1]}"
    return np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs]), source


def pipeline(work: Path, media: Path, *, device: str, params: TVL1Params, size: tuple[int, int], videos: int,
             frames: int, workers: int, flow_batch: int) -> dict[str, Any]:
    """The whole ``flowprep extract --engine torch --device DEVICE`` on ``videos`` clips of ``frames`` frames."""
    root, out = work / "pipeline-videos", work / "pipeline-out"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    prev, nxt, source = frame_pairs(media, min(videos * (frames - 1), 780), size)
    seq = np.concatenate([prev, nxt[-1:]])  # vtest.avi: its first frames in order (else synthetic clips)
    if len(seq) < frames:
        raise click.ClickException(f"--pipeline-frames {frames}: the source has {len(seq)} frames")
    (root / "Clip").mkdir(parents=True)
    for v in range(videos):  # clip v: frames s .. s + frames - 1, successive clips overlapping by a frame
        start = v * (frames - 1) % (len(seq) - frames + 1)
        gray = seq[start:start + frames]
        encode_video(np.repeat(gray[..., None], 3, axis=3), root / "Clip" / f"v_Clip_g{v + 1:02d}.mp4", fps=25)
    classes, metas = plan_videos(root, class_index=None, layout=None, labels=(), unlabelled=False,
                                 warn=lambda _: None)
    t0 = time.perf_counter()
    summary = run_extract(videos_root=root, out=out, videos=metas, classes=classes, workers=workers, progress=False,
                          flow=FlowConfig(tvl1=params, engine="torch", device=device), flow_batch=flow_batch)
    wall = time.perf_counter() - t0
    if summary.failures or summary.processed != videos:
        raise click.ClickException(f"the pipeline run failed: {summary.failures}")
    pairs = summary.frames - videos
    stats = summary.flow_processes
    serving = max(s["serving_seconds"] for s in stats)
    return {"source": f"{source} (clips re-encoded as H.264 gray)", "videos": videos, "frames_per_video": frames,
            "workers": workers, "flow_batch": flow_batch, "device": device, "pairs": pairs, "wall_s": wall,
            "pairs_per_s_wall": pairs / wall, "pairs_per_s_serving": pairs / serving,
            "solver_busy_fraction": [s["solve_seconds"] / s["serving_seconds"] for s in stats],
            "finisher_busy_fraction": [s["finish_seconds"] / s["serving_seconds"] for s in stats],
            "flow_processes": stats}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def cpu_ratio(prev: np.ndarray, nxt: np.ndarray, p: TVL1Params, pairs: int, reps: int,
              compiled: bool = False) -> dict[str, Any]:
    """Per-core speed on the CPU, interleaved (the load of a shared machine drifts): each repetition times
    OpenCV on ``pairs`` pairs (one thread, one pair per call) and the torch solver on the same pairs as one
    batch (one thread), in alternating order; medians of the per-repetition seconds and ratios."""
    cv2.setNumThreads(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.from_numpy(prev[:pairs]), torch.from_numpy(nxt[:pairs])
    engines = ["opencv", "torch"] + (["torch_compiled"] if compiled else [])
    res: dict[str, Any] = {"pairs": pairs, "reps": reps}
    if compiled:
        t0 = time.perf_counter()
        tvl1_flow(a, b, p, compile=True)  # compiles (not timed below)
        res["compile_and_first_call_s"] = time.perf_counter() - t0
    runs = []
    for r in range(reps):
        times = {}
        for engine in (engines if r % 2 == 0 else engines[::-1]):
            t0 = time.perf_counter()
            if engine == "opencv":
                for i in range(pairs):
                    opencv_flow(prev[i], nxt[i], p)
            else:
                tvl1_flow(a, b, p, compile=engine == "torch_compiled")
            times[engine] = time.perf_counter() - t0
        runs.append({**times, **{f"{e}_over_opencv": times[e] / times["opencv"] for e in engines[1:]}})
    torch.set_num_threads(threads)
    res["runs"] = runs
    for e in engines:
        res[f"median_{e}_s_per_pair"] = statistics.median(r[e] for r in runs) / pairs
    for e in engines[1:]:
        res[f"median_{e}_over_opencv"] = statistics.median(r[f"{e}_over_opencv"] for r in runs)
    return res


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the pipeline row's clips and output (default: a temporary folder).")
@click.option("--device", default=None, help="cuda or cpu (default: cuda when available, cpu with --smoke).")
@click.option("--batches", default="1,16,64,128,256,512", show_default=True, help="Batch sizes, ascending.")
@click.option("--min-pairs", default=256, show_default=True, help="Pairs timed per batch size, unless --max-seconds ...")
@click.option("--max-seconds", default=20.0, show_default=True, help="... runs out first (one batch at least).")
@click.option("--opencv-pairs", default=6, show_default=True, help="Pairs timed for OpenCV on one core.")
@click.option("--check-every", default=None, type=int, help="Host checks of the stopping test (default 1 on CPU, 10 on CUDA).")
@click.option("--stop-sum", type=click.Choice(["sequential", "guarded", "float64"]), default=None,
              help="The stopping test's sum (default: sequential on the CPU, guarded on CUDA; see tvl1_flow).")
@click.option("--threads", default=1, show_default=True, help="torch CPU threads (OpenCV always runs on one).")
@click.option("--media", type=click.Path(file_okay=False, path_type=Path), default=MEDIA, show_default=True)
@click.option("--cpu-ratio-reps", default=0, show_default=True,
              help="Also measure torch vs OpenCV per core on the CPU, interleaved, this many times (--opencv-pairs pairs).")
@click.option("--compile", "compiled", is_flag=True,
              help="Also time the solver with torch.compile of its inner iteration (compile time recorded).")
@click.option("--profile", is_flag=True, help="Profile one run of the largest batch that fitted.")
@click.option("--pipeline-videos", default=48, show_default=True, help="Clips for the whole-pipeline row (0: none).")
@click.option("--pipeline-frames", default=65, show_default=True, help="Frames per clip (pairs = frames - 1).")
@click.option("--workers", default=len(os.sched_getaffinity(0)), show_default="all cores",
              help="Worker processes of the pipeline row.")
@click.option("--flow-batch", default=FLOW_BATCH, show_default=True, help="The pipeline row's --flow-batch.")
@click.option("--smoke", is_flag=True, help="Tiny sizes on the CPU: checks that the script runs.")
def main(out: Path, work: Path | None, device: str | None, batches: str, min_pairs: int, max_seconds: float,
         opencv_pairs: int, check_every: int | None, stop_sum: str | None, threads: int, media: Path,
         cpu_ratio_reps: int, compiled: bool, profile: bool, pipeline_videos: int, pipeline_frames: int, workers: int,
         flow_batch: int, smoke: bool) -> None:
    """Pairs/s of OpenCV's TV-L1 per core and of the PyTorch solver per batch size, GPU memory per batch, and of
    the whole flowprep extract with the torch engine."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() and not smoke else "cpu"))
    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    size = (64, 48) if smoke else (320, 240)
    sizes = [1, 2] if smoke else [int(b) for b in batches.split(",")]
    min_pairs = 2 if smoke else min_pairs
    opencv_pairs = 2 if smoke else opencv_pairs
    check = check_every or (10 if dev.type == "cuda" else 1)
    p = TVL1Params(nscales=2, warps=2, outer_iterations=2, inner_iterations=5) if smoke else TVL1Params()
    prev, nxt, source = frame_pairs(media, max(max(sizes), opencv_pairs), size)
    res: dict[str, Any] = {"facts": facts(dev), "params": p.__dict__, "frames": source, "size": list(size),
                           "check_every": check, "stop_sum": stop_sum, "smoke": smoke}

    cv_rate = None
    if hasattr(cv2, "optflow") and opencv_pairs > 0:
        t0 = time.perf_counter()
        for i in range(opencv_pairs):
            opencv_flow(prev[i], nxt[i], p)
        cv_rate = opencv_pairs / (time.perf_counter() - t0)
        click.echo(f"OpenCV {cv2.__version__}, one core: {cv_rate:.2f} pairs/s")
    else:
        click.echo(f"OpenCV {cv2.__version__} has no optflow (contrib) module: no OpenCV row")
    res["opencv_pairs_per_s_per_core"] = cv_rate
    if cpu_ratio_reps and cv_rate:
        res["cpu_ratio"] = cpu_ratio(prev, nxt, p, opencv_pairs, 1 if smoke else cpu_ratio_reps, compiled)
        click.echo(f"CPU, one core each: torch / OpenCV time per pair {res['cpu_ratio']['median_torch_over_opencv']:.2f} "
                   f"(median of {res['cpu_ratio']['reps']})")

    prev_t = torch.from_numpy(prev).to(dev)
    nxt_t = torch.from_numpy(nxt).to(dev)
    rows: list[dict[str, Any]] = []
    fitted = None
    for mode in ["eager"] + (["compiled"] if compiled else []):
        for b in sizes:
            row: dict[str, Any] = {"mode": mode, "batch": b}
            if b > len(prev_t):
                raise click.ClickException(f"batch {b} > {len(prev_t)} pairs")
            try:
                t0 = time.perf_counter()
                first = tvl1_flow(prev_t[:b], nxt_t[:b], p, check_every=check, compile=mode == "compiled",
                                  stop_sum=stop_sum)  # warm-up
                sync(dev)
                row["first_call_s"] = time.perf_counter() - t0  # CUDA context, allocator, kernels, compile
                if mode == "compiled":
                    eager = tvl1_flow(prev_t[:b], nxt_t[:b], p, check_every=check, stop_sum=stop_sum)
                    row["max_abs_vs_eager_px"] = float((first - eager).abs().max())
                    row["mean_abs_vs_eager_px"] = float((first - eager).abs().mean())
                    del eager
                del first
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                stats = SolveStats()
                calls, t0 = 0, time.perf_counter()
                while calls == 0 or (calls * b < min_pairs and time.perf_counter() - t0 < max_seconds):
                    idx = torch.arange(calls * b, (calls + 1) * b, device=dev) % len(prev_t)
                    tvl1_flow(prev_t[idx], nxt_t[idx], p, check_every=check, stats=stats,
                              compile=mode == "compiled", stop_sum=stop_sum)
                    sync(dev)
                    calls += 1
                dt = time.perf_counter() - t0
                row.update(pairs=calls * b, seconds=dt, pairs_per_s=calls * b / dt,
                           ratio_vs_one_core=calls * b / dt / cv_rate if cv_rate else None,
                           mean_inner_iterations_last_call=float(stats.iterations.float().mean()))
                if dev.type == "cuda":
                    row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
                fitted = b if mode == "eager" else fitted
            except torch.cuda.OutOfMemoryError as e:  # a smaller batch goes on; the sweep ends here
                row["oom"] = str(e).splitlines()[0]
                rows.append(row)
                click.echo(f"{mode} batch {b}: CUDA out of memory")
                torch.cuda.empty_cache()
                break
            rows.append(row)
            ratio = f" ({row['ratio_vs_one_core']:.2f}x one OpenCV core)" if cv_rate else ""
            click.echo(f"{mode} batch {b:4d}: {row['pairs_per_s']:.2f} pairs/s{ratio}"
                       + (f", peak {row['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in row else ""))
    res["torch"] = rows
    if profile and fitted:
        from torch.profiler import ProfilerActivity, profile as prof

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with prof(activities=acts) as pr:
            tvl1_flow(prev_t[:fitted], nxt_t[:fitted], p, check_every=check, stop_sum=stop_sum)
            sync(dev)
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        table = pr.key_averages().table(sort_by=key, row_limit=20)
        res["profile"] = {"batch": fitted, "sort_by": key, "table": table.splitlines()}
        click.echo(table)
    if pipeline_videos:
        if smoke:
            pipeline_videos, pipeline_frames, workers, flow_batch = 2, 5, 2, 4
        with tempfile.TemporaryDirectory(prefix="tvl1-gpu-") as tmp:
            row = pipeline(work or Path(tmp), media, device=str(dev), params=p, size=size, videos=pipeline_videos,
                           frames=pipeline_frames, workers=workers, flow_batch=flow_batch)
        eager = [r for r in rows if r["mode"] == "eager" and "pairs_per_s" in r]
        if eager:
            row["vs_solver_best"] = row["pairs_per_s_serving"] / max(r["pairs_per_s"] for r in eager)
            same = [r for r in eager if r["batch"] == flow_batch]
            row["vs_solver_at_flow_batch"] = row["pairs_per_s_serving"] / same[0]["pairs_per_s"] if same else None
        res["pipeline"] = row
        click.echo(f"pipeline ({row['workers']} workers, --flow-batch {flow_batch}): {row['pairs_per_s_wall']:.2f} "
                   f"pairs/s over the whole run, {row['pairs_per_s_serving']:.2f} while serving, solver busy "
                   f"{', '.join(f'{f:.0%}' for f in row['solver_busy_fraction'])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
