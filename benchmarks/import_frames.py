"""``flowprep import-frames`` throughput: JPEG flow frames (mmaction layout) -> shards, one worker vs all cores.

The frames are what the widely shared UCF-101 sets hold: 340x256 RGB JPEGs and gray flow JPEGs (here
Farneback flow of OpenCV's vtest.avi, clipped to +-20 px, quality 90). Each configuration imports the same
frames into a fresh folder; repetitions alternate between the configurations, so that both see the same machine.
``decode_only_pairs_per_s`` reads and decodes every JPEG as the import does, without writing: the share of the
time the writing (HDF5, deflate, sha256) takes is the rest.

    .venv/bin/python -m benchmarks.import_frames --out bench-out/import_frames.json
    .venv/bin/python -m benchmarks.import_frames --out /tmp/i.json --smoke   # tiny synthetic frames, checks it runs
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import click
import cv2
import numpy as np

from benchmarks.machine import machine_facts
from benchmarks.media import GET_MEDIA, MEDIA, MissingMedia
from flowprep.tools import import_frames as imp
from flowprep.tools.frames import scan

SIZE = (340, 256)


def _frames(media: Path | None, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` + 1 BGR frames and ``count`` flow fields as uint8 codes (H, W, 2)."""
    if media is None:  # --smoke: moving noise
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (48 + 2 * count, 64, 3), dtype=np.uint8)
        frames = [np.ascontiguousarray(base[2 * i:2 * i + 48]) for i in range(count + 1)]
    else:
        cap = cv2.VideoCapture(str(media / "vtest.avi"))
        frames = []
        while len(frames) < count + 1:
            ok, frame = cap.read()
            if not ok:
                raise click.ClickException(f"{media / 'vtest.avi'} has fewer than {count + 1} frames")
            frames.append(cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA))
    gray = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
    flows = []
    for a, b in zip(gray, gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        flows.append(np.rint((np.clip(flow, -20, 20) + 20) * 255 / 40).astype(np.uint8))
    return frames, flows


def write_frames(root: Path, *, videos: int, frames_per_video: int, media: Path | None) -> int:
    """mmaction2 rawframes of ``videos`` videos; returns the number of flow pairs."""
    frames, flows = _frames(media, frames_per_video)
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, 90]
    for v in range(videos):
        folder = root / "Walking" / f"v_Walking_g{v + 1:02d}_c01"
        folder.mkdir(parents=True, exist_ok=True)
        for i, flow in enumerate(flows, 1):
            cv2.imwrite(str(folder / f"flow_x_{i:05d}.jpg"), flow[..., 0], jpeg)
            cv2.imwrite(str(folder / f"flow_y_{i:05d}.jpg"), flow[..., 1], jpeg)
        for i, frame in enumerate(frames, 1):
            cv2.imwrite(str(folder / f"img_{i:05d}.jpg"), frame, jpeg)
    return videos * frames_per_video


def decode_only_s(root: Path) -> float:
    """Seconds to read and decode every frame as the import does (one process), writing nothing."""
    videos, problems = scan(root, "mmaction", rgb=True)
    assert not problems, problems
    start = time.perf_counter()
    for video in videos:
        for _ in imp._video_arrays(video):
            pass
        for path in video.rgb:
            imp._read_jpeg(path, cv2.IMREAD_COLOR)
    return time.perf_counter() - start


@click.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSON results.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out/import-work"),
              show_default=True, help="Scratch folder (frames and shards; removed at the end).")
@click.option("--videos", type=click.IntRange(min=1), default=24, show_default=True)
@click.option("--frames", "frames_per_video", type=click.IntRange(min=2), default=100, show_default=True,
              help="Flow fields per video.")
@click.option("--videos-per-shard", type=click.IntRange(min=1), default=4, show_default=True,
              help="Small shards, so that every worker has one to write.")
@click.option("--reps", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--smoke", is_flag=True, help="Tiny synthetic frames: checks that the script runs, measures nothing.")
def main(out: Path, work: Path, videos: int, frames_per_video: int, videos_per_shard: int, reps: int,
         smoke: bool) -> None:
    """Pairs per second of flowprep import-frames with one worker and with one per core."""
    media = None
    if smoke:
        videos, frames_per_video, videos_per_shard, reps = 4, 4, 1, 1
    elif not (MEDIA / "vtest.avi").is_file():
        raise MissingMedia(f"{MEDIA / 'vtest.avi'} is missing: {GET_MEDIA}")
    else:
        media = MEDIA
    shutil.rmtree(work, ignore_errors=True)
    pairs = write_frames(work / "frames", videos=videos, frames_per_video=frames_per_video, media=media)
    cores = len(os.sched_getaffinity(0))
    configs = {"workers_1": 1, f"workers_{cores}": cores} if cores > 1 else {"workers_1": 1}
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    for rep in range(reps):
        for name, workers in configs.items():
            dest = work / f"shards-{name}-{rep}"
            start = time.perf_counter()
            imp.import_frames(work / "frames", dest, layout="mmaction", bound=20.0, workers=workers,
                              videos_per_shard=videos_per_shard)
            seconds[name].append(time.perf_counter() - start)
            shutil.rmtree(dest)
    decode_s = decode_only_s(work / "frames")
    best = {name: min(s) for name, s in seconds.items()}
    result = {
        "machine": machine_facts(),
        "setup": {"videos": videos, "flow_fields_per_video": frames_per_video, "pairs": pairs,
                  "size": list(SIZE) if media else [64, 48], "videos_per_shard": videos_per_shard, "reps": reps,
                  "smoke": smoke, "frames_bytes": sum(p.stat().st_size for p in (work / "frames").rglob("*.jpg"))},
        "seconds": seconds,
        "pairs_per_s": {name: pairs / s for name, s in best.items()},
        "decode_only_pairs_per_s": pairs / decode_s,
    }
    if len(best) > 1:
        result["speedup"] = best["workers_1"] / best[f"workers_{cores}"]
    shutil.rmtree(work, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for name, rate in result["pairs_per_s"].items():
        click.echo(f"{name}: {rate:.0f} pairs/s (best of {reps})")
    click.echo(f"decode only (one process): {result['decode_only_pairs_per_s']:.0f} pairs/s")
    if "speedup" in result:
        click.echo(f"speedup with {cores} workers: {result['speedup']:.2f}x")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
