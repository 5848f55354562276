"""``flowprep extract`` of two source trees, interleaved on the same clips: did a change slow extraction?

    .venv/bin/python -m benchmarks.extract_ab --before /tmp/old-checkout --after . --runs 3

Each run is the real CLI (``python -m flowprep extract``, Farneback, 2 workers, RGB) into a fresh folder,
with ``PYTHONPATH`` set to the tree under test; the runs alternate before/after, and the report gives
the median wall time and the median CPU time (the CLI and its worker processes) of each, and their ratios.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from benchmarks.media import GET_MEDIA, MEDIA, MissingMedia, build_videos


def _run(tree: Path, videos: Path, out: Path, method: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flowprep", "extract", "--videos", str(videos), "--out", str(out),
                    "--method", method, "--workers", "2", "--no-progress"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(tree.resolve())})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


@click.command()
@click.option("--before", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--after", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."))
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--videos", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--frames", type=click.IntRange(min=2), default=180, show_default=True)
@click.option("--method", type=click.Choice(["farneback", "tvl1"]), default="farneback", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench-out/extract_ab.json"))
def main(before: Path, after: Path, runs: int, videos: int, frames: int, method: str, out: Path) -> None:
    if not (MEDIA / "vtest.avi").exists():
        raise MissingMedia(f"no sample videos in {MEDIA}: {GET_MEDIA}")
    times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        clips = Path(tmp) / "videos"
        build_videos(MEDIA, clips, videos=videos, frames=frames)
        for i in range(runs):
            for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
                tree = before if name == "before" else after
                times[name].append(_run(tree, clips, Path(tmp) / f"{name}{i}", method))
                click.echo(f"run {i + 1} {name}: {times[name][-1][0]:.2f} s wall, {times[name][-1][1]:.2f} s CPU")
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    result = {"method": method, "videos": videos, "frames": frames, "runs": times, "median": med,
              "after_over_before": {"wall": med["after"][0] / med["before"][0], "cpu": med["after"][1] / med["before"][1]},
              "load_after": os.getloadavg()[0]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    r = result["after_over_before"]
    click.echo(f"after / before: wall {r['wall']:.3f}, CPU {r['cpu']:.3f} (medians of {runs}; {videos} x {frames} "
               f"frames, {method}, 2 workers)")


if __name__ == "__main__":
    main()
