"""Storage per hour of video, for planning HMDB-51 / Kinetics runs (pipelines/kinetics.md, pipelines/hmdb51.md).

Re-encodes clips of OpenCV's sample videos at 340x256 (the short side 256 that Kinetics pipelines use),
runs the real ``flowprep extract`` (TV-L1 by default, default storage) on them, and reads back from the
shards what one flow field and one RGB frame take on disk. Per hour of video at 25 fps: 90,000 frames.

    .venv/bin/python -m benchmarks.storage --out bench-out/storage.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import h5py

from benchmarks.media import GET_MEDIA, MEDIA, MissingMedia, build_videos

FRAMES_PER_HOUR = 25 * 3600


def measure(root: Path, out: Path) -> dict:
    flow_bytes = rgb_bytes = fields = frames = 0
    for shard in sorted(out.glob("*.h5")):
        with h5py.File(shard, "r") as f:
            def visit(name: str, obj) -> None:
                nonlocal flow_bytes, rgb_bytes, fields, frames
                if isinstance(obj, h5py.Group) and "flow" in obj:
                    flow_bytes += obj["flow"].id.get_storage_size()
                    fields += obj["flow"].shape[0]
                    if "rgb" in obj:
                        rgb_bytes += sum(len(x) for x in obj["rgb"][:])
                        frames += obj["rgb"].shape[0]
            f["videos"].visititems(visit)
    shard_bytes = sum(p.stat().st_size for p in out.glob("*.h5"))
    per_field, per_frame = flow_bytes / fields, rgb_bytes / max(frames, 1)
    return {"fields": fields, "frames": frames, "flow_bytes_per_field": per_field, "rgb_bytes_per_frame": per_frame,
            "shard_bytes": shard_bytes, "overhead": shard_bytes / (flow_bytes + rgb_bytes) - 1,
            "gb_per_hour": {"flow": per_field * FRAMES_PER_HOUR / 1e9, "rgb": per_frame * FRAMES_PER_HOUR / 1e9,
                            "total": shard_bytes / max(frames, fields + 1) * FRAMES_PER_HOUR / 1e9}}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench-out/storage.json"),
              show_default=True)
@click.option("--media", type=click.Path(path_type=Path), default=MEDIA, show_default=True)
@click.option("--method", type=click.Choice(["tvl1", "farneback"]), default="tvl1", show_default=True)
@click.option("--videos", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--frames", type=click.IntRange(min=2), default=24, show_default=True)
def main(out: Path, media: Path, method: str, videos: int, frames: int) -> None:
    """Bytes per flow field and RGB frame at 340x256, and GB per hour of 25 fps video."""
    if not (media / "vtest.avi").exists():
        raise MissingMedia(f"no sample videos in {media}: {GET_MEDIA}")
    with tempfile.TemporaryDirectory() as tmp:
        root, shards = Path(tmp) / "videos", Path(tmp) / "shards"
        build_videos(media, root, videos=videos, frames=frames, size=(340, 256))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flowprep", "extract", "--videos", str(root), "--out", str(shards),
                        "--method", method, "--no-progress"], check=True)
        result = {"method": method, "size": "340x256", "videos": videos, "frames_per_video": frames,
                  "extract_seconds": time.perf_counter() - start, **measure(root, shards)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    g = result["gb_per_hour"]
    click.echo(f"{method} at 340x256: {result['flow_bytes_per_field'] / 1e3:.1f} KB per flow field, "
               f"{result['rgb_bytes_per_frame'] / 1e3:.1f} KB per RGB frame; per hour of 25 fps video: "
               f"{g['flow']:.2f} GB flow + {g['rgb']:.2f} GB RGB, {g['total']:.2f} GB of shards")


if __name__ == "__main__":
    main()
