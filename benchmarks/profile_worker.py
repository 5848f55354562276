"""Where one worker's time goes: ``extract_video`` against the bare decode+flow loop, in one process.

1. CPU ms per frame of the bare loop, the pipeline's worker (``flowprep.extract.worker.extract_video``) and the same
   with ``--no-rgb``, on the same clips, interleaved, medians of the repetitions.
2. Per-video fixed costs: the container length check, the PyAV probe, decord's open.
3. The worker's functions by their own time (cProfile of one pass), in ms per frame.

    .venv/bin/python -m benchmarks.profile_worker                 # Farneback, 3 clips of 180 frames
    .venv/bin/python -m benchmarks.profile_worker --method tvl1 --frames 4
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import click
import cv2

from benchmarks.extract import bare_video
from benchmarks.media import MEDIA, build_videos
from flowprep.config import DecodeConfig, FlowConfig, StorageConfig
from flowprep.extract.decode import VideoStream, _probe, declared_length
from flowprep.extract.worker import VideoJob, extract_video
from flowprep.extract.writer import VideoMeta


def _worker_pass(paths: list[Path], out: Path, method: str, *, rgb: bool) -> None:
    for i, p in enumerate(paths):
        job = VideoJob(str(p), VideoMeta("Bench/v", "Bench/v.mp4", 0, "Bench"), str(out / f"{i}.h5"),
                       FlowConfig(method=method), DecodeConfig(), StorageConfig(rgb=rgb))
        result = extract_video(job)
        if not result.ok:
            raise click.ClickException(f"{p}: expected the clip to extract, got {result.error}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--method", type=click.Choice(["farneback", "tvl1"]), default="farneback", show_default=True)
@click.option("--videos", default=3, show_default=True)
@click.option("--frames", default=180, show_default=True)
@click.option("--reps", default=3, show_default=True)
@click.option("--media", type=click.Path(path_type=Path), default=MEDIA, show_default=True)
def main(method: str, videos: int, frames: int, reps: int, media: Path) -> None:
    """Profile one extraction worker against the bare decode+flow loop (single process, single thread)."""
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="profile-worker-") as tmp:
        root = Path(tmp)
        paths = build_videos(media, root / "videos", videos=videos, frames=frames)
        n = videos * frames
        cpu: dict[str, list[float]] = {"bare": [], "worker": [], "worker --no-rgb": []}
        for rep in range(reps):
            for name in list(cpu)[rep % 3:] + list(cpu)[:rep % 3]:
                out = root / f"{rep}-{name.replace(' ', '')}"
                out.mkdir()
                c0 = time.process_time()
                if name == "bare":
                    for p in paths:
                        bare_video(str(p), method)
                else:
                    _worker_pass(paths, out, method, rgb=name == "worker")
                cpu[name].append((time.process_time() - c0) / n * 1e3)
        for name, v in cpu.items():
            click.echo(f"{name:<16} {statistics.median(v):7.2f} CPU ms/frame")
        fixed: dict[str, list[float]] = {"length check": [], "PyAV probe": [], "VideoStream open (incl. probe)": []}
        for p in paths * reps:
            for name, fn in (("length check", declared_length), ("PyAV probe", _probe),
                             ("VideoStream open (incl. probe)", VideoStream)):
                t0 = time.perf_counter()
                fn(p)
                fixed[name].append((time.perf_counter() - t0) * 1e3)
        for name, v in fixed.items():
            click.echo(f"{name:<32} {statistics.median(v):6.2f} ms per video")
        prof = cProfile.Profile()
        (root / "prof").mkdir()
        prof.runcall(_worker_pass, paths, root / "prof", method, rgb=True)
        stats = pstats.Stats(prof, stream=io.StringIO())
        click.echo(f"worker functions by own time, ms per frame ({n} frames):")
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:12]  # (file, line, name) -> (cc, nc, tt, ct, ...)
        for (file, line, name), (_, calls, tottime, _, _) in rows:
            where = name if file == "~" else f"{Path(file).name}:{line}({name})"
            click.echo(f"  {tottime / n * 1e3:7.3f}  {calls:6d} calls  {where}")


if __name__ == "__main__":
    main()
