"""``flowprep sample``: the built-in sample dataset as real encoded videos in UCF-101 layout.

Motion-only classes (see flowprep.tools.synth: a single frame cannot tell them apart) written as
``OUT/videos/<Class>/v_<Class>_gGG_cCC.<ext>`` with classInd.txt, trainlist01.txt, vallist01.txt and
testlist01.txt. The split is by group, as in UCF-101: the lowest groups are the test set, the next ones
the validation set, the rest the training set. Odd groups are MPEG-4 .avi, even groups H.264 .mp4.
Encoded bytes depend on the codec library versions; the raw frames only on the seed and sizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import av
import click
import cv2
import numpy as np

from flowprep.errors import OutPath, environment_failure, unwritable_output
from flowprep.extract.manifest import replacing
from flowprep.tools.synth import DEFAULT_CLASSES, MIRROR_SAFE_CLASSES, MOTIONS, ClipSpec, render_clip

CODECS = {".avi": "mpeg4", ".mp4": "libx264"}
# Encoder threads per codec, fixed: by default FFmpeg takes one more than the machine's cores, and MPEG-4's
# slices (and x264's frame threads beyond 16) follow that count, so the bytes, the decoded frames and the
# demo's figures would depend on the machine. MPEG-4: 3, that default on the 2-core machines the demo's
# records were made on, so their bytes stay as they were; x264: 1 (the same bytes as 2-16 threads at these
# sizes, and no threads whose timing could matter).
ENCODER_THREADS = {"mpeg4": 3, "libx264": 1}
LISTS = ("classInd.txt", "trainlist01.txt", "vallist01.txt", "testlist01.txt", "sample.json")


def video_path(spec: ClipSpec) -> str:
    """Path under OUT/videos, as the lists write it: Class/v_Class_g01_c01.avi (odd groups) or .mp4."""
    ext = ".avi" if spec.group % 2 else ".mp4"
    return f"{spec.class_name}/v_{spec.class_name}_g{spec.group:02d}_c{spec.clip:02d}{ext}"


def encode_video(frames: np.ndarray, path: Path, *, fps: int) -> None:
    """(T, H, W, 3) uint8 RGB -> H.264 (.mp4) or MPEG-4 part 2 (.avi), yuv420p, near-lossless luma."""
    codec = CODECS[path.suffix]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = ENCODER_THREADS[codec]  # machine-independent bytes
        if codec == "libx264":
            stream.options = {"crf": "16", "preset": "medium"}
        else:
            stream.bit_rate = int(frames.shape[1] * frames.shape[2] * fps * 2)  # ~2 bits/pixel
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode(None))


def split_groups(num_groups: int, *, val: bool = True) -> dict[int, str]:
    """Group number (1-based) -> "test" | "val" | "train": the lowest ~30% test, then ~15% val."""
    n_test = max(1, round(0.3 * num_groups))
    n_val = max(1, round(0.15 * num_groups)) if val and num_groups - n_test >= 2 else 0
    if num_groups - n_test - n_val < 1:
        raise ValueError(f"expected at least 2 groups per class to split train/test, got {num_groups}")
    return {g: "test" if g <= n_test else "val" if g <= n_test + n_val else "train" for g in range(1, num_groups + 1)}


def plan_clips(
    *, classes: Sequence[str], videos_per_class: int, clips_per_group: int, width: int, height: int,
    frames: int, fps: int = 25, seed: int = 0,
) -> list[ClipSpec]:
    """Per class, groups g01, g02... of `clips_per_group` clips (the last group may have fewer)."""
    unknown = [c for c in classes if c not in MOTIONS]
    if unknown:
        raise ValueError(f"unknown class(es) {', '.join(unknown)}; expected some of {', '.join(MOTIONS)}")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"expected at least 2 distinct classes, got {list(classes)}")
    if width % 2 or height % 2 or min(width, height) < 32:
        raise ValueError(f"expected an even frame size of at least 32x32 (yuv420p), got {width}x{height}")
    if frames < 2 or videos_per_class < 1 or clips_per_group < 1:
        raise ValueError(f"expected frames >= 2 and counts >= 1, got {frames}, {videos_per_class}, {clips_per_group}")
    if fps < 1:  # PyAV encodes a rate of 0 as 24 fps without a word, and a negative one fails in the encoder
        raise ValueError(f"expected --fps >= 1, got {fps}")
    if videos_per_class <= clips_per_group:
        raise ValueError(
            f"{videos_per_class} videos per class in groups of {clips_per_group} make 1 group; "
            "expected at least 2 groups per class (the split is by group)"
        )
    return [
        ClipSpec(name, label, i // clips_per_group + 1, i % clips_per_group + 1, width, height, frames, fps, seed)
        for label, name in enumerate(classes)
        for i in range(videos_per_class)
    ]


def write_lists(out: Path, specs: Sequence[ClipSpec], classes: Sequence[str], split: dict[int, str]) -> dict:
    """classInd.txt ("1 Name"); train/vallist01.txt ("Name/v_...ext 1", 1-based); testlist01.txt (no label)."""
    (out / "classInd.txt").write_text("".join(f"{i + 1} {name}\n" for i, name in enumerate(classes)))
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for sp in specs:
        part = split[sp.group]
        lines[part].append(video_path(sp) + ("" if part == "test" else f" {sp.label + 1}"))
    for part, rows in lines.items():
        if rows:
            (out / f"{part}list01.txt").write_text("\n".join(rows) + "\n")
    return {part: len(rows) for part, rows in lines.items()}


def make_sample(
    out: str | Path, *, seed: int = 0, videos_per_class: int = 12, clips_per_group: int = 2, width: int = 112,
    height: int = 112, frames: int = 24, fps: int = 25, classes: Sequence[str] = DEFAULT_CLASSES,
    val: bool = True, progress: bool = False,
) -> dict:
    """Render, encode and list the whole sample under `out`; returns what sample.json records."""
    from tqdm import tqdm

    out = Path(out)
    specs = plan_clips(classes=classes, videos_per_class=videos_per_class, clips_per_group=clips_per_group,
                       width=width, height=height, frames=frames, fps=fps, seed=seed)
    split = split_groups(max(sp.group for sp in specs), val=val)
    for sp in tqdm(specs, desc="sample", unit="video", disable=not progress):
        path = out / "videos" / video_path(sp)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path, hidden=True) as tmp:  # whole or absent (a full disk, a kill); two samples at once: each its own
            encode_video(render_clip(sp), tmp, fps=fps)
    info = {
        "generator": "flowprep.tools.sample", "seed": seed, "classes": list(classes), "size": [width, height],
        "frames": frames, "fps": fps, "videos_per_class": videos_per_class, "clips_per_group": clips_per_group,
        "groups": {part: [g for g, p in split.items() if p == part] for part in ("train", "val", "test")},
        "videos": write_lists(out, specs, classes, split),
        "versions": {"numpy": np.__version__, "opencv": cv2.__version__, "av": av.__version__},
    }
    (out / "sample.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _parse_size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    w, _, h = value.lower().partition("x")
    try:
        return int(w), int(h or w)
    except ValueError:
        raise click.BadParameter(f"expected N or WxH (e.g. 112 or 128x96), got {value!r}") from None


@click.command("sample")
@click.option("--out", required=True, type=OutPath(file_okay=False, path_type=Path),
              help="Output folder: videos/<Class>/v_<Class>_gGG_cCC.{avi,mp4}, classInd.txt, *list01.txt.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same raw frames.")
@click.option("--videos-per-class", default=12, show_default=True)
@click.option("--clips-per-group", default=2, show_default=True,
              help="Clips per group (one 'actor/scene'); the split is by group.")
@click.option("--size", default="112", show_default=True, callback=_parse_size, help="N (square) or WxH, even.")
@click.option("--frames", default=24, show_default=True, help="Frames per video (flow stacks of L=10 need >= 11).")
@click.option("--fps", default=25, show_default=True)
@click.option("--classes", default=",".join(DEFAULT_CLASSES), show_default=True,
              help=f"Comma-separated motion classes, or 'mirror-safe' ({','.join(MIRROR_SAFE_CLASSES)}: "
              "classes a horizontal-flip augmentation cannot confuse).")
@click.option("--val/--no-val", default=True, show_default=True,
              help="Hold out training groups as vallist01.txt (model and fusion-weight selection).")
@click.option("--force", is_flag=True, help="Replace an earlier sample in --out.")
def sample_command(
    out: Path, seed: int, videos_per_class: int, clips_per_group: int, size: tuple[int, int], frames: int,
    fps: int, classes: str, val: bool, force: bool,
) -> None:
    """Write the built-in sample: motion-only classes as H.264 .mp4 and MPEG-4 .avi videos, UCF-101 layout.

    \b
    Appearance (background, colours, window position and size) is random and independent of the
    class: only the motion inside the window tells the classes apart, never a single frame.
    Split by group: test g01.. (~30%), then validation (~15%), training the rest.
    The default (8 classes x 12 videos x 24 frames, 112x112) is 2208 flow fields; what a field costs
    with each method is in BENCHMARKS.md.
    Exit status 1: --out holds a sample (pass --force); 2: a bad option, an --out this user may not write into (or
    on a read-only file system); 75: a full disk or an I/O error (one line: rerun with --force; each video is
    written whole or not at all).
    """
    names = list(MIRROR_SAFE_CLASSES) if classes == "mirror-safe" else [c.strip() for c in classes.split(",")]
    if (out / "videos").is_dir() and any((out / "videos").iterdir()):
        if not force:
            raise click.ClickException(f"{out}/videos already holds videos; pass --force to replace them")
        shutil.rmtree(out / "videos")
        for name in LISTS:
            (out / name).unlink(missing_ok=True)
    try:
        info = make_sample(out, seed=seed, videos_per_class=videos_per_class, clips_per_group=clips_per_group,
                           width=size[0], height=size[1], frames=frames, fps=fps, classes=names, val=val,
                           progress=True)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    except OSError as e:  # a full disk, an I/O error (PyAV's errors are OSErrors too): one line, retriable; an --out
        # (a folder above it) this user may not write or on a read-only mount: 2, as extract
        raise (unwritable_output(e, out) or environment_failure(e, out, action="rerun the same command with --force",
                                                                log=False)) from None
    n = info["videos"]
    click.echo(f"{out}: {len(names)} classes, {n['train']} train / {n['val']} val / {n['test']} test videos, "
               f"{size[0]}x{size[1]}, {frames} frames")
