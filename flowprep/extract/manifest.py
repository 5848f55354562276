"""The manifest JSON of docs/shard-format.md as a run writes it: one part per task, checked on resume.

A single run (task 0 of 1) writes ``manifest.json`` and ``shard-00000.h5``...; array task i of n
writes ``manifest-iiiii-of-nnnnn.json`` and ``taskiiiii-shard-00000.h5``... into the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from flowprep.format import (  # noqa: F401  (the names of docs/shard-format.md; callers use them from here too)
    FAILURES,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    SINGLE_MANIFEST,
    ManifestError,
    manifest_name,
    manifest_paths,
    read_manifest,
    shard_name,
)


class RunConflict(ValueError):
    """OUT already holds a run that this one must not be mixed with."""


def new_manifest(
    *,
    task_index: int,
    task_count: int,
    params: dict[str, Any],
    classes: list[str],
    num_videos: int,
    videos_sha256: str,
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "complete": False,
        "task": {"index": task_index, "count": task_count},
        "params": params,
        "classes": list(classes),
        "num_videos": num_videos,
        "videos_sha256": videos_sha256,
        "shards": [],
        "failures": [],
    }


def videos_digest(sources: list[str]) -> str:
    """sha256 of this task's planned video list: a resume must plan exactly the same videos."""
    return hashlib.sha256("\n".join(sources).encode()).hexdigest()


def labels_digest(labels: list[tuple[str, int, str]]) -> str:
    """sha256 of this task's (video id, label, class name) triples: a resume must label its videos as before (a
    changed --labels file would leave the finished videos with the old labels and the others with the new)."""
    return hashlib.sha256("\n".join(f"{v}\t{label}\t{name}" for v, label, name in labels).encode()).hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path, *, hidden: bool = False) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write, synced and renamed over ``path`` when the block
    ends: readers see the old file or the new one, never a partial one, and a block that fails (a full disk,
    Ctrl-C) leaves neither a new file nor its temporary. ``hidden``: the temporary is ``.STEM.tmp-PID.SUFFIX``,
    which extract's scan skips, one per process (two writers of one name each rename a whole file), and with the
    suffix by which Pillow and PyAV choose the format (videos, pictures)."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}" if hidden else path.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any, *, indent: int = 1) -> None:
    """Write ``obj`` to ``path`` so that readers see the old or the new file, never a partial one."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def _structure_problem(m: dict[str, Any]) -> str | None:
    """What in a parsed manifest part is not what ``new_manifest`` and the runs write (None: nothing)."""

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    def strings(x: Any) -> bool:
        return isinstance(x, list) and all(isinstance(v, str) for v in x)

    task = m.get("task")
    if not (isinstance(task, dict) and is_int(task.get("index")) and is_int(task.get("count"))
            and 0 <= task["index"] < task["count"]):
        return f"task is {task!r}, expected {{'index': i, 'count': n}} with 0 <= i < n"
    expected = {"complete": (lambda x: isinstance(x, bool), "true or false"), "params": (
        lambda x: isinstance(x, dict), "an object"), "classes": (strings, "a list of names"), "num_videos": (
        lambda x: is_int(x) and x >= 0, "a count"), "videos_sha256": (lambda x: isinstance(x, str), "a string"),
        "shards": (lambda x: isinstance(x, list), "a list"), "failures": (lambda x: isinstance(x, list), "a list")}
    for key, (ok, what) in expected.items():
        if not ok(m.get(key)):
            return f"{key} is {m.get(key)!r}, expected {what}" if key in m else f"no {key}"
    for i, shard in enumerate(m["shards"]):
        if not (isinstance(shard, dict) and isinstance(shard.get("name"), str) and is_int(shard.get("size"))
                and isinstance(shard.get("sha256"), str) and strings(shard.get("videos"))
                and shard["name"] == Path(shard["name"]).name and shard["name"] not in ("", ".", "..")):
            return f"shards[{i}] is not {{'name': file name, 'size': bytes, 'sha256': hex, 'videos': [ids]}}"
    for i, failure in enumerate(m["failures"]):
        if not (isinstance(failure, dict) and isinstance(failure.get("path"), str)
                and isinstance(failure.get("error"), str)):
            return f"failures[{i}] is not {{'path': ..., 'error': ...}}"
    return None


def read_part(path: Path) -> dict[str, Any]:
    """``read_manifest``, and every field a run writes there with its type: a part damaged while still valid JSON
    (edited by hand, merged by a tool) is a ``ManifestError`` (set aside by a rerun, a problem for verify), not a
    KeyError or TypeError deep in the run that reads as a crash of the environment (exit 75) on every rerun.
    A part that cannot be read at all (permission denied, an I/O error) raises that ``OSError``: it is not known
    to be damaged, and setting it aside would redo every finished video of the task."""
    try:
        part, unreadable = read_manifest(path), None
    except ManifestError as exc:
        unreadable = exc.__cause__  # permission denied, an I/O error: the file may be intact, so it is not set
        if not isinstance(unreadable, OSError):  # aside (the task would start over) but stops the run
            raise
    if unreadable is not None:
        raise unreadable  # outside the except block: its context is not the ManifestError caused by it (a cycle)
    problem = _structure_problem(part)
    if problem:
        raise ManifestError(f"{Path(path).name}: damaged manifest ({problem})")
    return part


def read_manifests(out: str | Path) -> list[dict[str, Any]]:
    """All manifest parts of ``out`` (any task counts; see ``missing_tasks`` for completeness)."""
    return [read_part(p) for p in manifest_paths(out)]


def missing_tasks(parts: list[dict[str, Any]]) -> list[int]:
    """Task indices of an array run that have no manifest part yet (all tasks share one count)."""
    counts = {p["task"]["count"] for p in parts}
    if len(counts) != 1:
        raise ManifestError(f"manifest parts of different runs are mixed: task counts {sorted(counts)}")
    (count,) = counts
    present = {p["task"]["index"] for p in parts}
    return [i for i in range(count) if i not in present]


def _first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            diff = _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    return None if old == new else f"{prefix[:-1]} is {old!r} there and {new!r} now"


def check_compatible(out: Path, mine: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Refuse to mix runs; return (this task's existing manifest or None for a fresh start, a repair note).

    This task's own manifest, when it is damaged (by hand or by the file system: it is only ever
    replaced atomically), is set aside as ``<name>.damaged`` and the task starts over, so that a
    rerun repairs what ``verify`` flags; the note says so. One that cannot be read (permission
    denied, an I/O error) stops the run instead (``OSError``). Other tasks' damaged or unreadable
    parts are theirs to repair and are passed over here.
    """
    own, note = None, None
    mine_name = manifest_name(task_index=mine["task"]["index"], task_count=mine["task"]["count"])
    for path in manifest_paths(out):
        try:
            part = read_part(path)
        except OSError:
            if path.name != mine_name:
                continue
            raise
        except ManifestError as exc:
            if path.name != mine_name:
                continue
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            note = f"{exc}: set aside as {aside.name}; this task starts over"
            continue
        if part["task"]["count"] != mine["task"]["count"]:
            raise RunConflict(
                f"{out} holds a run split into {part['task']['count']} task(s); this run has "
                f"{mine['task']['count']}: use another --out"
            )
        diff = _first_difference(part["params"], mine["params"])
        if diff:
            raise RunConflict(f"{out} holds a run with different parameters: {diff} (use another --out)")
        if part["classes"] != mine["classes"]:
            raise RunConflict(f"{out} holds a run with other classes ({len(part['classes'])} classes there, "
                              f"{len(mine['classes'])} now; check --class-index): use another --out")
        if part["task"]["index"] == mine["task"]["index"]:
            for key in ("num_videos", "videos_sha256"):
                if part[key] != mine[key]:
                    raise RunConflict(f"{out} holds a run of a different video list ({key} differs): use another --out")
            if part.get("labels_sha256", mine.get("labels_sha256")) != mine.get("labels_sha256"):  # older runs: none
                raise RunConflict(f"{out} holds a run that labelled its videos otherwise (--labels, --class-index or "
                                  "--unlabelled changed since): use another --out")
            own = part
    return own, note


def start_part(out: Path, mine: dict[str, Any]) -> None:
    """Write this task's fresh manifest part, then run ``check_compatible`` again; on a conflict remove it.

    Tasks of different runs (another task count, other parameters) hold different locks, so two of them
    starting at the same instant could both pass ``check_compatible`` before either had written its part
    and then write into one ``--out`` (a task 0 of 4 and a task 0 of 8 even write the same shard names).
    Each writes its part before it checks again, so the later of the two always sees the other and
    refuses, before it has changed anything else.
    """
    path = out / manifest_name(task_index=mine["task"]["index"], task_count=mine["task"]["count"])
    write_json_atomic(path, mine)
    try:
        check_compatible(out, mine)
    except RunConflict:
        path.unlink(missing_ok=True)
        raise


def inputs_digest(weights: list[tuple[str, int]]) -> str:
    """sha256 of the whole input listing (relative path and size of every video) a task planned from.

    The tasks of an array run split the videos by size, each from its own listing: when the files
    change between task starts, tasks can disagree on the split, which ``verify`` reports.
    """
    return hashlib.sha256("\n".join(f"{p}\t{size}" for p, size in sorted(weights)).encode()).hexdigest()


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def shard_file_problem(path: Path, entry: dict[str, Any], *, digest: bool = True) -> str | None:
    """Why the shard file ``path`` is not the one its manifest ``entry`` lists (missing, another size, and with
    ``digest`` another sha256, which reads every byte), or None."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry["size"]:
        return f"{size} bytes, the manifest says {entry['size']}"
    if digest and file_digest(path) != entry["sha256"]:
        return "sha256 differs from the manifest"
    return None


def failure_paths(path: Path) -> set[str]:
    """Paths already in failures.jsonl; a line a crash cut short does not count (it is logged again).

    The log is UTF-8 whatever the locale; a line cut inside a character is undecodable like any cut line. Lines
    end at "\n" only: JSON text may hold U+2028 or U+0085 unescaped, which ``str.splitlines`` would split at."""
    logged = set()
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n") if path.exists() else []:
        try:
            logged.add(json.loads(line)["path"])
        except json.JSONDecodeError:
            continue
    return logged


def append_failure(path: Path, record: dict[str, str]) -> None:
    """Append one JSON line with a single write(), so that the tasks of an array run do not interleave.

    Names are written as UTF-8 text (``é``, ``動画``, not ``\\u00e9``), so that grep finds a file name in the log.
    A name that is not UTF-8 (a lone surrogate: the bytes Python could not decode; extract refuses such paths
    before planning) is written as JSON escapes instead, so that the log stays valid UTF-8 JSON."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        data = (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        data = (json.dumps(record) + "\n").encode("ascii")
    with open(path, "ab") as f:
        if f.tell() and not _ends_with_newline(path):
            data = b"\n" + data  # end the line a killed run left unfinished
        f.write(data)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
