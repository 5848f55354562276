"""``flowprep import-frames``: JPEG flow frames of another toolkit (found by flowprep/tools/frames.py) -> shards."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import click
import cv2
import h5py
import numpy as np

import flowprep
from flowprep import exits
from flowprep import format as fmt
from flowprep.config import FlowConfig, StorageConfig
from flowprep.errors import Bound, BusyOutput, FiniteFloat, OutPath, RunError, environment_failure
from flowprep.extract import manifest as mf
from flowprep.extract import reader
from flowprep.extract import verify as verify_mod
from flowprep.extract.reader import sort_classes
from flowprep.extract.writer import VideoMeta, VideoWriter, write_file_attrs
from flowprep.tools.frames import LAYOUTS, FramesError, FrameVideo, scan


def _read_jpeg(path: Path, mode: int) -> tuple[bytes, np.ndarray]:
    """A frame's bytes and pixels; a file that is not a whole JPEG is a ``FramesError`` naming it.

    OpenCV decodes a JPEG cut short (an interrupted copy or download) with a warning, the missing rows grey, and
    reads PNG or BMP bytes behind a .jpg name: both would be imported as if they were the frame.
    """
    data = path.read_bytes()
    if data[:3] != b"\xff\xd8\xff":
        raise FramesError(f"{path}: not a JPEG file")
    if data.rstrip(b"\0\r\n ")[-2:] != b"\xff\xd9":
        raise FramesError(f"{path}: a JPEG cut short (no end marker): copy the frame again")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), mode)
    if img is None:
        raise FramesError(f"{path}: not a readable JPEG")
    return data, img


def _read_gray(path: Path) -> np.ndarray:
    return _read_jpeg(path, cv2.IMREAD_GRAYSCALE)[1]


def _short(path: Path) -> str:
    return "/".join(path.parts[-3:])  # u/<video>/frame000002.jpg, <Class>/<video>/flow_x_00002.jpg


def _video_arrays(video: FrameVideo) -> Iterator[np.ndarray]:
    """(n, 2, H, W) uint8 codes, 32 fields at a time."""
    for s in range(0, len(video.u), 32):
        fields = []
        for pu, pv in zip(video.u[s:s + 32], video.v[s:s + 32]):
            gu, gv = _read_gray(pu), _read_gray(pv)
            if gu.shape != gv.shape:
                raise FramesError(f"{video.video_id}: {_short(pu)} is {gu.shape[1]}x{gu.shape[0]} but {_short(pv)} is "
                                  f"{gv.shape[1]}x{gv.shape[0]}")
            fields.append(np.stack([gu, gv]))
        yield np.stack(fields)


def import_frames(root: str | Path, out: str | Path, *, layout: str, bound: float, classes: Sequence[str] | None = None,
                  rgb: bool = True, videos_per_shard: int = 100, fps: float = 25.0, unlabelled: bool = False) -> dict:
    """Write the frames under ``root`` as shards into ``out`` (nothing is written when a video has a problem).

    Returns the manifest. ``classes`` (a class index's order) else the sorted class names found;
    ``unlabelled``: label -1 and no class name for every video (test frames).
    """
    from flowprep.extract.lock import SUFFIX, OutputLock

    root, out = Path(root), Path(out)
    videos, problems = scan(root, layout, rgb=rgb, unlabelled=unlabelled)
    found = sort_classes({v.class_name for v in videos if v.class_name})
    classes = list(classes) if classes is not None else found
    problems += [f"{v.video_id}: class {v.class_name!r} is not in the class index" for v in videos
                 if v.class_name and v.class_name not in classes]
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more problem(s)"] if len(problems) > 10 else [])
        raise FramesError("\n".join(shown))
    label = {c: i for i, c in enumerate(classes)}
    params = {
        "flow": {"method": "imported", "bound": float(bound),
                 "params": {"source": "jpeg", "lossy": True, "layout": layout, "frames": str(root.resolve())}},
        "decode": {"size": None, "short_side": None, "frame_step": 1},
        "storage": {"rgb": rgb, "jpeg_quality": None, "compression": "gzip", "compression_level": 1,
                    "videos_per_shard": videos_per_shard},
        "versions": {"flowprep": flowprep.__version__, "opencv": cv2.__version__, "h5py": h5py.__version__,
                     "numpy": np.__version__},
    }
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []  # removed again when the import fails (frames of another size, disk full ...)
    try:
        with OutputLock(out / (fmt.SINGLE_MANIFEST + SUFFIX)):
            if fmt.manifest_paths(out):
                raise FramesError(f"{out} already holds a flowprep output: use another --out")
            manifest = mf.new_manifest(task_index=0, task_count=1, params=params, classes=classes, num_videos=len(videos),
                                       videos_sha256=mf.videos_digest([v.video_id for v in videos]))
            for number, start in enumerate(range(0, len(videos), videos_per_shard)):
                name = fmt.shard_name(number)
                tmp, final = out / (name + ".tmp"), out / name
                tmp.unlink(missing_ok=True)
                batch = videos[start:start + videos_per_shard]
                written += [tmp, final]
                with h5py.File(tmp, "x") as f:
                    write_file_attrs(f, params)
                    for video in batch:
                        _write_video(f, video, label.get(video.class_name, -1), bound=bound, rgb=rgb, fps=fps)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, final)
                manifest["shards"].append({"name": name, "size": final.stat().st_size,
                                           "sha256": mf.file_digest(final), "videos": [v.video_id for v in batch]})
            manifest["complete"] = True
            mf.write_json_atomic(out / fmt.SINGLE_MANIFEST, manifest)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    return manifest


def _write_video(f: h5py.File, video: FrameVideo, label: int, *, bound: float, rgb: bool, fps: float) -> None:
    height, width = _read_gray(video.u[0]).shape
    meta = VideoMeta(video_id=video.video_id, source=video.video_id, label=label, class_name=video.class_name)
    # jpeg_quality -1: unknown, the source's own JPEG files are stored as they are (no second loss)
    writer = VideoWriter(f, meta, height=height, width=width, bound=bound, rgb=rgb, jpeg_quality=-1)
    for q in _video_arrays(video):
        if q.shape[2:] != (height, width):
            raise FramesError(f"{video.video_id}: flow frames change size ({width}x{height}, then "
                              f"{q.shape[3]}x{q.shape[2]})")
        writer.append_flow(q)
    if rgb:
        frames = []
        for path in video.rgb:  # every frame: one of another size or a damaged one would fail only in training
            data, frame = _read_jpeg(path, cv2.IMREAD_COLOR)
            if frame.shape[:2] != (height, width):
                raise FramesError(f"{video.video_id}: RGB frame {_short(path)} is {frame.shape[1]}x{frame.shape[0]}, "
                                  f"the flow is {width}x{height}: the shard format needs one size (pass --no-rgb to "
                                  "import the flow alone)")
            frames.append(data)
        writer.append_rgb(frames)
    writer.finish(num_frames=len(video.u) + 1, fps=fps)


@click.command("import-frames", context_settings={"show_default": True})
@click.option("--frames", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of flow frames (one JPEG per flow channel per frame) made by another toolkit.")
@click.option("--out", required=True, type=OutPath(file_okay=False, path_type=Path),
              help="New output folder for the shards and the manifest.")
@click.option("--layout", required=True, type=click.Choice(LAYOUTS),
              help="denseflow / mmaction: <Class>/<video>/{flow_x_,flow_y_,img_}00001.jpg (or x_/y_; the class is "
                   "the folder holding the video's, also in train/<Class>/<video>/; top-level video folders need "
                   "UCF-101 names); twostreamfusion: u/<video>/frame000001.jpg, v/..., jpegs_256/... with UCF-101 "
                   "names.")
@click.option("--bound", type=Bound(), default=FlowConfig.bound,
              help="The bound the frames were made with: gray value g stands for g * 2B/255 - B pixels.")
@click.option("--class-index", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="UCF-101 classInd.txt (export-frames writes one): labels follow its order.  [default: sorted "
                   "class names, by number when all are numbers]")
@click.option("--unlabelled", is_flag=True,
              help="Import without labels: label -1 and no class name (test frames; folders need no class).")
@click.option("--no-rgb", is_flag=True, help="Import the flow alone (no RGB frames, or RGB frames of another size).")
@click.option("--videos-per-shard", type=click.IntRange(min=1), default=StorageConfig.videos_per_shard,
              help="Videos per HDF5 shard.")
@click.option("--fps", type=FiniteFloat(min=0, min_open=True), default=25.0,
              help="Frame rate to record (frames do not carry one).")
def import_frames_command(frames: Path, out: Path, layout: str, bound: float, class_index: Path | None, unlabelled: bool,
                  no_rgb: bool, videos_per_shard: int, fps: float) -> None:
    """Turn JPEG flow frames that another toolkit made into verified shards (the same contract as extract).

    The source is recorded as lossy JPEG with its bound in every shard's params. A video with missing
    frames, unequal u/v counts or RGB frames that do not fit is named (the first ten problems, then a
    count); then nothing is written and the exit status is 2, as for a frame of another size or one that is
    not a whole JPEG (found while writing; what was written is removed). 75: the disk filled up or an I/O
    error (one line; rerun into a new --out). 4: another import holds --out.
    """
    try:
        classes = reader.read_class_index(class_index) if class_index else None
        manifest = import_frames(frames, out, layout=layout, bound=bound, classes=classes, rgb=not no_rgb,
                                            videos_per_shard=videos_per_shard, fps=fps, unlabelled=unlabelled)
    except (FramesError, reader.DatasetError) as exc:
        raise RunError(str(exc)) from exc
    except exits.BusyError as exc:
        raise BusyOutput(str(exc)) from exc
    except Exception as exc:  # disk full, I/O error, a bug: one line, retriable (nothing is listed until complete)
        raise environment_failure(exc, out, action="rerun the same command into a new --out") from exc
    report = verify_mod.verify_output(out)
    click.echo(f"{manifest['num_videos']} videos imported into {len(manifest['shards'])} shard(s) in {out}; verify: "
               + ("OK" if report.ok else "NOT OK"))
    if not report.ok:
        click.echo(verify_mod.format_report(report))
        sys.exit(exits.RETRY.code)
