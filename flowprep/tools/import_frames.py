"""``flowprep import-frames``: JPEG flow frames of another toolkit (found by flowprep/tools/frames.py) -> shards."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import click
import cv2
import h5py
import numpy as np
from tqdm import tqdm

import flowprep
from flowprep import exits
from flowprep import format as fmt
from flowprep.config import FlowConfig, StorageConfig
from flowprep.errors import Bound, BusyOutput, FiniteFloat, OutPath, RunError, environment_failure, unwritable_output
from flowprep.extract import manifest as mf
from flowprep.extract import reader
from flowprep.extract.labels import SPLIT_NAMES, index_spelling
from flowprep.extract import verify as verify_mod
from flowprep.extract.reader import sort_classes
from flowprep.extract.writer import VideoMeta, VideoWriter, write_file_attrs
from flowprep.tools.frames import EXPORT_LOCK, LAYOUTS, FramesError, FrameVideo, scan



def _read_jpeg(path: Path, mode: int) -> tuple[bytes, np.ndarray]:
    """A frame's bytes and pixels; a file that is not a whole JPEG is a ``FramesError`` naming it.

    OpenCV decodes a JPEG cut short (an interrupted copy or download) with a warning, the missing rows grey, and
    reads PNG or BMP bytes behind a .jpg name: both would be imported as if they were the frame.
    """
    try:
        data = path.read_bytes()
    except PermissionError as exc:  # the input's, not the environment's: a rerun fails the same way until it is fixed
        raise FramesError(f"{path}: cannot be read (permission denied): fix its permissions") from exc
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
                  rgb: bool = True, videos_per_shard: int = 100, fps: float = 25.0, unlabelled: bool = False,
                  progress: bool = False, notes: list[str] | None = None, workers: int = 1,
                  labels: Sequence[str | Path] = (), warn: Callable[[str], None] | None = None) -> dict:
    """Write the frames under ``root`` as shards into ``out``; resumable, like ``flowprep extract``.

    Returns the manifest. ``classes`` (a class index's order) else the sorted class names found;
    ``unlabelled``: label -1 and no class name for every video (test frames); ``labels``: label files as for
    ``extract --labels`` (e.g. the labels.csv that export-frames writes), keyed by the video folder's path, which
    is then the video id as it is. Problems found by the scan
    write nothing. Each shard is listed in the manifest (``complete`` false) once it is whole, so a rerun of
    the same import after a crash, a kill or a frame that turned out bad while writing keeps the finished
    shards (checked by sha256, as the import's own verify reads them all anyway; one missing or damaged is
    imported again) and goes on; what the failing shard had written is removed. A rerun of a finished import
    changes nothing. ``notes`` gets what a rerun kept or repaired, one line each; ``warn`` (default: ``notes``)
    what the scan finds worth a word (an input folder one level too high, the labels files), before any work, so
    that a user can stop and fix the command before hours of import. ``workers`` processes write
    one shard each at a time (the shards are the same whatever their number; the manifest lists them in name
    order).
    """
    from flowprep.extract.lock import SUFFIX, OutputLock

    root, out = Path(root), Path(out)
    notes = notes if notes is not None else []
    warn = warn or notes.append
    if labels and unlabelled:
        raise FramesError("give --labels or --unlabelled, not both")
    if (root / EXPORT_LOCK).exists():  # an export-frames writing it, or one killed: videos would be missing unsaid
        raise FramesError(f"{root} holds {EXPORT_LOCK}: an export-frames into it is running or was stopped before it "
                          "finished, so its frames are not all there; import a finished export")
    if (out / EXPORT_LOCK).exists():  # the shards would go in among the frames of that export
        raise FramesError(f"{out} holds {EXPORT_LOCK}: it is the --out of an export-frames (running, or stopped before "
                          "it finished): use another --out")
    videos, problems = scan(root, layout, rgb=rgb, unlabelled=unlabelled, by_folder=bool(labels))
    if not (labels or unlabelled) and not any(v.video_id.split("/", 1)[0].lower() in SPLIT_NAMES for v in videos):
        note = reader.one_folder_note([v.video_id for v in videos], root, option="--frames", what="video folder",
                                      so="so every video id starts with it and lists of <Class>/<video> select none")
        if note:  # train/<Class>/<video>/ (a split folder above the classes) is a layout of its own: no note
            warn(note)
    if labels:  # the class of each video folder from the file (extract --labels' ids have no class folder)
        names = reader.names_from_labels([v.video_id for v in videos], [Path(p) for p in labels], problems,
                                         warn, under="--frames", doing="importing")
        for v in videos:
            v.class_name = names.get(v.video_id, "")
    if classes is not None:  # a folder macOS named decomposed (NFD) is the index's class typed composed, as in extract
        spell = index_spelling(classes)
        for v in videos:
            if v.class_name:
                v.class_name = spell(v.class_name)
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
    manifest_path, manifest = out / fmt.SINGLE_MANIFEST, None
    try:
        with OutputLock(out / (fmt.SINGLE_MANIFEST + SUFFIX)):
            fresh = mf.new_manifest(task_index=0, task_count=1, params=params, classes=classes, num_videos=len(videos),
                                    videos_sha256=mf.videos_digest([v.video_id for v in videos]))
            manifest = _earlier_import(out, fresh, notes)
            done = {s["name"] for s in manifest["shards"]}
            plan = [(fmt.shard_name(n), videos[s:s + videos_per_shard])
                    for n, s in enumerate(range(0, len(videos), videos_per_shard))]
            todo = [ShardJob(str(out), name, batch, [label.get(v.class_name, -1) for v in batch], params, bound, rgb,
                             fps, os.getpid()) for name, batch in plan if name not in done]
            bar = tqdm(total=len(videos), unit="video", desc="import", disable=not progress, dynamic_ncols=True)
            bar.update(len(videos) - sum(len(job.videos) for job in todo))
            failure: BaseException | None = None
            for entry in _write_shards(todo, workers=max(1, min(workers, len(todo)))):
                if isinstance(entry, BaseException):  # the shards listed so far stay listed
                    failure = entry
                    continue
                manifest["shards"] = sorted(manifest["shards"] + [entry], key=lambda e: e["name"])
                mf.write_json_atomic(manifest_path, manifest)  # listed once whole: a rerun keeps it
                bar.update(len(entry["videos"]))
            bar.close()
            if failure is not None:
                raise failure
            if not manifest["complete"]:  # (a rerun of a finished import writes nothing)
                manifest["complete"] = True
                mf.write_json_atomic(manifest_path, manifest)
    except BaseException as exc:
        if manifest is None:  # refused before writing (another output, a busy lock)
            raise
        if not manifest["shards"]:  # nothing finished: leave nothing behind
            manifest_path.unlink(missing_ok=True)
            if created:
                try:
                    out.rmdir()
                except OSError:
                    pass
        elif isinstance(exc, FramesError):  # a frame found bad while writing: say what the rerun goes on from
            raise FramesError(f"{exc} ({len(manifest['shards'])} finished shard(s) are kept: fix it and rerun the same "
                              "command to go on)") from exc
        raise
    return manifest


@dataclass(frozen=True)
class ShardJob:
    """One shard for a worker process to write: ``out/name`` from ``videos`` (and their ``labels``)."""

    out: str
    name: str
    videos: list[FrameVideo]
    labels: list[int]
    params: dict
    bound: float
    rgb: bool
    fps: float
    run_pid: int  # the import's process: a worker whose parent died (kill -9) leaves the shard unnamed


def _write_shards(jobs: list[ShardJob], *, workers: int) -> Iterator[dict | BaseException]:
    """Each job's manifest entry as it is finished (in any order), or the error that stopped it: after an error
    the jobs not started are dropped, those running finish. One worker: in this process."""
    if workers == 1:
        for job in jobs:
            try:
                yield write_shard(job)
            except Exception as exc:
                yield exc
                return
        return
    from joblib import Parallel, delayed, parallel_config

    from flowprep import stopping

    with parallel_config("loky", initializer=stopping.ignore_ctrl_c):
        try:
            yield from Parallel(n_jobs=workers, return_as="generator_unordered")(delayed(write_shard)(j) for j in jobs)
        except Exception as exc:  # joblib cancels the jobs not started; what the running ones finish is unnamed
            yield exc


def write_shard(job: ShardJob) -> dict:
    """Write one shard as ``<name>.tmp``, fsync it, rename it; its manifest entry.

    A worker whose import was killed (kill -9: the worker is re-parented) starts no shard and renames none, and
    touches ``<name>.tmp`` only while it is still its own file (the rerun's worker writes one of that name too).
    It then returns ``{}``, which nobody reads.
    """
    if _orphaned(job):
        return {}
    out = Path(job.out)
    tmp, final = out / (job.name + ".tmp"), out / job.name
    tmp.unlink(missing_ok=True)
    inode = None
    try:
        with h5py.File(tmp, "x") as f:
            inode = os.stat(tmp).st_ino
            write_file_attrs(f, job.params)
            for video, label in zip(job.videos, job.labels):
                if _orphaned(job):
                    return {}  # its .tmp stays: the rerun's worker replaces it
                _write_video(f, video, label, bound=job.bound, rgb=job.rgb, fps=job.fps)
        with open(tmp, "rb") as fh:
            if _orphaned(job) or os.fstat(fh.fileno()).st_ino != inode:
                return {}
            os.fsync(fh.fileno())
    except BaseException:
        if inode is not None and _same_file(tmp, inode) and not _orphaned(job):
            tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)
    return {"name": job.name, "size": final.stat().st_size, "sha256": mf.file_digest(final),
            "videos": [v.video_id for v in job.videos]}


def _orphaned(job: ShardJob) -> bool:
    return os.getpid() != job.run_pid and os.getppid() != job.run_pid


def _same_file(path: Path, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except FileNotFoundError:
        return False


def _earlier_import(out: Path, fresh: dict, notes: list[str]) -> dict:
    """The manifest to go on from: the earlier run's when ``out`` holds this same import (its listed shards that are
    missing or damaged, by size or sha256, dropped, to be imported again), else ``fresh``; another output is
    refused."""
    paths = fmt.manifest_paths(out)
    if not paths:
        return fresh
    try:
        earlier = mf.read_part(paths[0]) if paths == [out / fmt.SINGLE_MANIFEST] else None
    except mf.ManifestError as exc:
        raise FramesError(f"{out}: {exc}: use another --out") from exc
    same = earlier is not None and all(earlier[k] == fresh[k] for k in ("params", "classes", "num_videos",
                                                                           "videos_sha256"))
    if not same:
        raise FramesError(f"{out} already holds a flowprep output (not this import of these frames with these "
                          "options): use another --out")
    kept = []
    for entry in earlier["shards"]:
        problem = mf.shard_file_problem(out / entry["name"], entry)
        if problem is None:
            kept.append(entry)
        else:
            notes.append(f"repair: {entry['name']} {problem}: imported again")
    if len(kept) < len(earlier["shards"]):
        earlier["complete"] = False
    elif not earlier["complete"]:
        notes.append(f"resume: {len(kept)} shard(s) of an earlier run kept")
    earlier["shards"] = kept
    return earlier


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
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="Label file(s) as for extract --labels, e.g. the labels.csv export-frames writes ('path,label' "
                   "rows, path = the video folder under --frames): classes from the file, video ids the folders' "
                   "paths as they are.  [default: the class is the folder holding the video's]")
@click.option("--unlabelled", is_flag=True,
              help="Import without labels: label -1 and no class name (test frames; folders need no class).")
@click.option("--no-rgb", is_flag=True, help="Import the flow alone (no RGB frames, or RGB frames of another size).")
@click.option("--videos-per-shard", type=click.IntRange(min=1), default=StorageConfig.videos_per_shard,
              help="Videos per HDF5 shard.")
@click.option("--fps", type=FiniteFloat(min=0, min_open=True), default=25.0,
              help="Frame rate to record (frames do not carry one).")
@click.option("--workers", type=click.IntRange(min=1), default=None, show_default=False,
              help="Processes writing shards side by side (one shard each at a time).  [default: one per CPU core]")
@click.option("--progress/--no-progress", default=None, show_default=False,
              help="Show a progress bar over videos (on stderr), moving as shards finish.  [default: when stderr is "
                   "a terminal]")
def import_frames_command(frames: Path, out: Path, layout: str, bound: float, class_index: Path | None,
                          labels: tuple[Path, ...], unlabelled: bool, no_rgb: bool, videos_per_shard: int, fps: float,
                          workers: int | None, progress: bool | None) -> None:
    """Turn JPEG flow frames that another toolkit made into verified shards (the same contract as extract).

    The source is recorded as lossy JPEG with its bound in every shard's params. A video with missing
    frames, unequal u/v counts or RGB frames that do not fit, or a folder this user may not read, is named
    (the first ten problems, then a count); then nothing is written and the exit status is 2, as for --frames
    an export-frames has not finished (it holds export-frames.lock) and for an --out an export-frames writes
    into. A frame of another size, one that is not a whole JPEG or one this user may not read is found while
    writing: exit 2, and the shards finished before it are kept. Rerun the same command (after fixing the
    frame, or after a crash, a kill or a full disk: 75) and it goes on from the finished shards; a rerun of a
    finished import changes nothing. 2 also for an --out this user may not write into
    (or on a read-only file system). 4: another import
    holds --out.
    """
    notes: list[str] = []
    try:
        classes = reader.read_class_index(class_index) if class_index else None
        manifest = import_frames(frames, out, layout=layout, bound=bound, classes=classes, rgb=not no_rgb,
                                 videos_per_shard=videos_per_shard, fps=fps, unlabelled=unlabelled,
                                 progress=sys.stderr.isatty() if progress is None else progress, notes=notes,
                                 workers=workers or len(os.sched_getaffinity(0)), labels=labels,
                                 warn=lambda line: click.echo(line, err=True))
    except (FramesError, reader.DatasetError) as exc:
        raise RunError(str(exc)) from exc
    except exits.BusyError as exc:
        raise BusyOutput(str(exc)) from exc
    except Exception as exc:  # disk full, I/O error, a bug: one line, retriable (finished shards are kept); an --out
        # (a folder above it) this user may not write or on a read-only mount: 2, as extract; a frame's: 75
        raise (unwritable_output(exc, out) or environment_failure(exc, out, action="rerun the same command to go on")
               ) from exc
    for line in notes:
        click.echo(line)
    report = verify_mod.verify_output(out)
    click.echo(f"{manifest['num_videos']} videos imported into {len(manifest['shards'])} shard(s) in {out}; verify: "
               + ("OK" if report.ok else "NOT OK"))
    if not report.ok:
        click.echo(verify_mod.format_report(report))
        sys.exit(exits.RETRY.code)

