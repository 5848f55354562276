"""``flowprep export-frames``: shards -> mmaction2 rawframes (JPEG frames and rawframes.txt)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import click
import cv2
import h5py
from tqdm import tqdm

from flowprep import format as fmt
from flowprep.errors import (
    BusyOutput, OutPath, RunError, environment_cause, environment_failure, unreadable_input, unwritable_output,
)
from flowprep.exits import BusyError
from flowprep.extract.lock import OutputLock, describe
from flowprep.tools.frames import EXPORT_LOCK, FramesError

LABELS = "labels.csv"  # path,label rows: what import-frames --labels reads


def export_frames(shards: str | Path, out: str | Path, *, layout: str = "mmaction", quality: int = 95,
                  progress: bool = False) -> int:
    """Write every video of a shard folder as mmaction2 rawframes; returns the number of videos.

    ``OUT/<video_id>/img_00001.jpg`` (the stored JPEG bytes), ``flow_x_00001.jpg`` / ``flow_y_00001.jpg``
    (the uint8 codes as gray JPEGs), ``OUT/rawframes.txt``: ``<video_id> <num_frames> <label>`` per line
    (0-based labels, mmaction2's rawframe annotation format), ``OUT/classInd.txt``: the shards' classes
    in label order ("1 <name>" lines), which ``import-frames --class-index`` takes to keep the label numbers, and
    ``OUT/labels.csv``: ``path,label`` rows (the video folder, its class name; the generic CSV of
    ``extract --labels``), which ``import-frames --labels`` takes to keep each video's class and id where the id
    has no class folder (shards of ``extract --labels``). Unlabelled videos (label -1) are in neither file.
    ``out`` must be new or empty (stale frames of an earlier export would be imported again), and the shards a
    finished run (every manifest part present and complete); when the export fails, what it wrote is removed.
    While it writes, ``out/export-frames.lock`` is held: a second export into ``out`` is a ``BusyError``, and the
    file that an export killed leaves marks ``out`` as unfinished (refused here and by ``import-frames``).
    """
    if layout != "mmaction":
        raise FramesError(f"export-frames writes the mmaction layout, got {layout!r}")
    shards, out = Path(shards), Path(out)
    paths = fmt.manifest_paths(shards)
    if not paths:
        raise FramesError(f"{shards}: no manifest: not a flowprep output folder")
    if out.exists() and (not out.is_dir() or any(p.name != EXPORT_LOCK for p in out.iterdir())):
        if not (out / EXPORT_LOCK).exists():  # (else: an export writing it, busy, or one killed, said by _claim)
            raise FramesError(f"{out} is not an empty folder: export into a new --out (or delete it first)")
    manifests = [fmt.read_manifest(p) for p in paths]
    count = manifests[0].get("task", {}).get("count", 1)
    absent = sorted(set(range(count)) - {m.get("task", {}).get("index") for m in manifests})
    unfinished = [p.name for p, m in zip(paths, manifests) if m.get("complete") is not True]
    if absent or unfinished:  # an extraction still running or killed: exporting it would drop videos unsaid
        why = (f"manifest parts of task(s) {', '.join(map(str, absent))} of {count} are missing" if absent else
               f"{', '.join(unfinished)} says the run has not finished")
        raise FramesError(f"{shards} is incomplete ({why}): rerun the same flowprep extract command to finish it, "
                          f"then export (flowprep verify {shards} says what is missing)")
    classes = manifests[0].get("classes") or []
    lines, params = [], [cv2.IMWRITE_JPEG_QUALITY, quality]
    rows = io.StringIO()
    table = csv.writer(rows, lineterminator="\n")
    table.writerow(["path", "label"])
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = _claim(out)
    bar = tqdm(total=sum(len(e["videos"]) for m in manifests for e in m["shards"]), unit="video", desc="export",
               disable=not progress, dynamic_ncols=True)
    try:
        for manifest in manifests:
            for entry in manifest["shards"]:
                lock.check()
                _check_against_manifest(shards, entry)
                with h5py.File(shards / entry["name"], "r") as f:
                    for vid in entry["videos"]:
                        _export_video(f[f"{fmt.VIDEOS_GROUP}/{vid}"], out / vid, params)
                        g = f[f"{fmt.VIDEOS_GROUP}/{vid}"]
                        lines.append(f"{vid} {int(g.attrs['num_frames'])} {int(g.attrs['label'])}")
                        if int(g.attrs["label"]) >= 0:
                            table.writerow([vid, str(g.attrs["class_name"])])
                        bar.update(1)
        bar.close()
        (out / "rawframes.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        if classes:
            (out / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)),
                                              encoding="utf-8")
            (out / LABELS).write_text(rows.getvalue(), encoding="utf-8")
    except BaseException:
        if out.exists():  # it was new or empty: nothing of the user's is in it
            for child in out.iterdir():
                if child != lock.path:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        lock.release()
        if created:
            out.rmdir()
        raise
    lock.release()  # the export is whole: the folder may be imported
    return len(lines)


def _claim(out: Path) -> OutputLock:
    """Hold ``out/export-frames.lock`` for the export (a second export into ``out`` is refused as busy), and refuse an
    ``out`` that an export killed before it finished left behind (its lock file is still there)."""
    lock = OutputLock(out / EXPORT_LOCK).acquire()
    others = any(p.name != EXPORT_LOCK for p in out.iterdir())  # (a killed export that had written nothing: go on)
    if lock.took_over is not None and others:  # the file stays, naming the killed export: the folder is unfinished, for import too
        lock.path.write_text(json.dumps(lock.took_over) + "\n")
        lock.release(remove=False)
        raise FramesError(f"{out} holds an export that did not finish ({describe(lock.took_over)}; killed?), its frames "
                          f"are not all there: delete {out} and export again")
    if others:  # another export finished into it meanwhile
        lock.release()
        raise FramesError(f"{out} is not an empty folder: export into a new --out (or delete it first)")
    return lock


def _check_against_manifest(shards: Path, entry: dict) -> None:
    """A shard that is missing, or whose size or sha256 is not the manifest's, is damaged: exporting it would
    copy its damage (a JPEG frame's bytes go out as stored) and rerunning the export would not help."""
    from flowprep.extract.manifest import shard_file_problem

    path = shards / entry["name"]
    problem = shard_file_problem(path, entry)
    if problem is not None:
        raise FramesError(f"{path}: {problem}: the same flowprep extract command with --check repairs it (flowprep "
                          f"verify {shards} names the videos), then export")


def _export_video(g: h5py.Group, folder: Path, params: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    flow = g["flow"]
    for i in range(len(flow)):
        q = flow[i]
        for name, plane in (("flow_x", q[0]), ("flow_y", q[1])):
            ok, buf = cv2.imencode(".jpg", plane, params)
            (folder / f"{name}_{i + 1:05d}.jpg").write_bytes(buf.tobytes())
    if "rgb" in g:
        for i, jpeg in enumerate(g["rgb"]):
            (folder / f"img_{i + 1:05d}.jpg").write_bytes(jpeg.tobytes())


@click.command("export-frames", context_settings={"show_default": True})
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=OutPath(file_okay=False, path_type=Path),
              help="A new (or empty) folder for the frames.")
@click.option("--layout", type=click.Choice(["mmaction"]), default="mmaction",
              help="mmaction2 rawframes: OUT/<video_id>/{img,flow_x,flow_y}_00001.jpg and OUT/rawframes.txt.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, help="JPEG quality of the flow frames.")
@click.option("--progress/--no-progress", default=None, show_default=False,
              help="Show a progress bar over videos (on stderr).  [default: when stderr is a terminal]")
def export_frames_command(shards: Path, out: Path, layout: str, quality: int, progress: bool | None) -> None:
    """Write the shards of SHARDS as JPEG frames, so that mmaction2 configs can read them.

    RGB frames are written as stored; flow codes become gray JPEGs (lossy); rawframes.txt lists
    '<video_id> <num_frames> <label>' (0-based labels, as mmaction2 expects); classInd.txt lists the
    classes in label order, for `import-frames --class-index`; labels.csv each labelled video's class, for
    `import-frames --labels` (ids without class folders, from extract --labels). When the export fails, what it wrote is
    removed. Each shard is checked against the manifest's size and sha256 first. While it writes, --out holds
    export-frames.lock; an export that was killed leaves it there, and import-frames refuses such a folder. Exit
    status 2: SHARDS is not a finished flowprep output, a shard is missing or damaged, or --out is not empty (or
    holds an export that did not finish), or this user may not write into it (or it is on a read-only file system),
    or may not read a shard (one line naming it); 4: another export-frames is writing into --out; 75: reading a
    shard or writing a frame failed (one line).
    """
    try:
        n = export_frames(shards, out, layout=layout, quality=quality,
                          progress=sys.stderr.isatty() if progress is None else progress)
    except (FramesError, fmt.ManifestError) as exc:
        raise RunError(str(exc)) from exc
    except BusyError as exc:
        raise BusyOutput(str(exc)) from exc
    except PermissionError as exc:  # --out (a folder above it) this user may not write: 2, as extract; a shard: 2 too
        raise (unwritable_output(exc, out) or unreadable_input(exc, shards)) from exc
    except Exception as exc:  # disk full, I/O error reading a shard, a bug: one line, retriable
        unwritable = unwritable_output(exc, out)  # --out on a read-only mount: 2, as permission denied
        if unwritable is not None:
            raise unwritable from exc
        writing = environment_cause(exc) in ("disk full", "disk quota exceeded", "read-only file system")
        raise environment_failure(exc, out if writing else shards, action="rerun the same command", log=False) from exc
    click.echo(f"{n} videos written as {layout} frames into {out} (list: {out / 'rawframes.txt'})")
    if (out / LABELS).exists():
        click.echo(f"labels: {out / LABELS} and {out / 'classInd.txt'}; to import the frames with the same labels: "
                   f"flowprep import-frames --frames {out} --layout {layout} --labels {out / LABELS} --class-index "
                   f"{out / 'classInd.txt'} --out ...")
