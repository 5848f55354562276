"""The shard format of docs/shard-format.md, in one place: names, constants, the rules both sides share.

Everything that writes or reads a flowprep output folder takes these from here: the extractor
(writer, runner, manifest), ``verify``, ``preview``, the demo and the trainer. Imports neither OpenCV
nor torch, so that readers can use it without them.

- file names: ``manifest_name``, ``shard_name``, ``manifest_paths``; reading a manifest: ``read_manifest``;
- the video id of a path: ``video_id`` (path relative to --videos, "/" separators, no extension);
- quantization: ``scale_and_offset`` (bound -> attributes) and ``dequantize`` (codes -> pixels);
- UCF-101 style list files: ``read_list`` / ``write_list`` (1-based labels in the file, 0-based here).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, TypeVar

SHARD_FORMAT = "flowprep-shard"
SHARD_VERSION = 1
MANIFEST_FORMAT = "flowprep-manifest"
MANIFEST_VERSION = 1
VIDEOS_GROUP = "videos"  # /videos/<video_id>/{flow, rgb}
SINGLE_MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")
_PART = re.compile(r"^manifest-(\d{5})-of-(\d{5})\.json$")

T = TypeVar("T")


class ManifestError(ValueError):
    """A manifest file is unreadable or not a flowprep manifest."""


def _check_task(task_index: int, task_count: int) -> None:
    if not (task_count >= 1 and 0 <= task_index < task_count):
        raise ValueError(f"expected 0 <= task_index < task_count, got task {task_index} of {task_count}")


def manifest_name(*, task_index: int = 0, task_count: int = 1) -> str:
    """``manifest.json`` for a single run, ``manifest-iiiii-of-nnnnn.json`` for task i of an array run."""
    _check_task(task_index, task_count)
    return SINGLE_MANIFEST if task_count == 1 else f"manifest-{task_index:05d}-of-{task_count:05d}.json"


def shard_name(number: int, *, task_index: int = 0, task_count: int = 1) -> str:
    _check_task(task_index, task_count)
    prefix = "" if task_count == 1 else f"task{task_index:05d}-"
    return f"{prefix}shard-{number:05d}.h5"


def manifest_paths(out: str | Path) -> list[Path]:
    """Every manifest part in ``out``: ``manifest.json`` and/or ``manifest-*-of-*.json``, sorted.

    Both kinds at once are two runs mixed in one folder: readers find out from the parts' task counts.
    """
    out = Path(out)
    paths = [out / SINGLE_MANIFEST] if (out / SINGLE_MANIFEST).is_file() else []
    paths += sorted(p for p in out.glob("manifest-*-of-*.json") if _PART.match(p.name))
    return paths


def read_manifest(path: str | Path) -> dict[str, Any]:
    """One manifest part, checked to be a flowprep manifest of the version this code reads."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path.name}: cannot read the manifest ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ManifestError(f"{path.name}: not a flowprep manifest (format={got!r})")
    if data.get("format_version") != MANIFEST_VERSION:
        raise ManifestError(
            f"{path.name}: expected format_version {MANIFEST_VERSION}, got {data.get('format_version')!r}"
        )
    return data


def video_id(path: str) -> str:
    """The id a video is stored under: its path relative to --videos, "/" separators, no extension.

    List files name videos by that path with the extension (``Class/v_x.avi``); either form maps here.
    """
    posix = PurePosixPath(path.replace("\\", "/").strip("/"))
    return str(posix.with_suffix("")) if posix.suffix.lower() in VIDEO_EXTENSIONS else str(posix)


MAX_BOUND = 3.4028234663852886e38  # the largest float32
MIN_BOUND = 1.1754943508222875e-38 * 255 / 2  # scale_factor is then the smallest normal float32


def scale_and_offset(bound: float) -> tuple[float, float]:
    """(scale_factor, add_offset) of flow clipped to +-bound and stored as uint8: ``f = q * scale_factor + add_offset``.

    q = round((f + B) * 255 / (2B)), so scale_factor = 2B/255 and add_offset = -B.
    """
    if not bound > 0:
        raise ValueError(f"bound must be > 0, got {bound}")
    if not MIN_BOUND <= bound <= MAX_BOUND:  # the attributes are float32: it would store 0 or infinity
        raise ValueError(f"{bound:g} cannot be stored: the shards hold scale_factor (2*bound/255) and add_offset "
                         f"(-bound) as 32-bit floats, so the bound must be from {MIN_BOUND:.3g} to {MAX_BOUND:.3g}")
    return 2.0 * bound / 255.0, -float(bound)


def dequantize(q: T, scale_factor: float, add_offset: float) -> T:
    """Codes -> pixels with the data's own attributes (numpy arrays in float32; torch tensors as given)."""
    if hasattr(q, "astype"):  # numpy
        import numpy as np

        return q.astype(np.float32) * np.float32(scale_factor) + np.float32(add_offset)
    return q.float() * scale_factor + add_offset  # torch


@dataclass(frozen=True)
class ListEntry:
    video_id: str
    label: int | None  # 0-based; None when the line has no label (UCF-101 test lists)
    lineno: int
    text: str  # the line as written (for messages)
    path: str  # the path as written, with its extension


class ListError(ValueError):
    """A list file line that cannot be read (the message names the file and line)."""


def read_list(path: str | Path) -> list[ListEntry]:
    """A UCF-101 style list: ``Class/v_x.avi 1`` (1-based label) or ``Class/v_x.avi``.

    The label is the last field when it is an integer, so paths may hold spaces (Kinetics classes such
    as "air drumming"): ``air drumming/abc.mp4 3``. Blank lines are skipped.
    """
    path = Path(path)
    entries = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        parts = text.rsplit(None, 1)  # the label is the last field, after any whitespace (a tab too)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            name, label = parts[0].rstrip(), int(parts[1])
            if label < 1:
                raise ListError(f"{path}:{lineno}: labels are 1-based, got {label} in {text!r}")
            entries.append(ListEntry(video_id(name), label - 1, lineno, text, name))
        else:
            entries.append(ListEntry(video_id(text), None, lineno, text, text))
    return entries


def write_list(path: str | Path, rows: Iterable[tuple[str, int | None]], *, extension: str = ".avi") -> None:
    """Write (video_id, 0-based label or None) rows as a UCF-101 style list (1-based labels)."""
    lines = [f"{vid}{extension}" + ("" if label is None else f" {label + 1}") for vid, label in rows]
    Path(path).write_text("".join(line + "\n" for line in lines))
