"""The index of a flowprep output folder, read through its documented contract (docs/shard-format.md).

``index_shards`` reads the manifest(s) and each shard's attributes once; ``read_video_list`` resolves a
UCF-101 style list against that index. ``trainer.data`` builds the datasets on top of both.

Incomplete runs are an error: if a manifest says ``complete: false`` or parts of an array run are
missing, ``index_shards`` raises ``DataError`` unless ``allow_incomplete=True`` (then it warns and indexes
the finished shards), because training on a silently partial dataset gives numbers nobody can compare.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import h5py

_PART = re.compile(r"manifest-(\d{5})-of-(\d{5})\.json")


class DataError(ValueError):
    """Bad or inconsistent input data; the message is one line naming what was expected and what came."""


@dataclass(frozen=True)
class VideoRecord:
    video_id: str  # path relative to the videos root, no extension, "/" separators
    shard: Path
    label: int  # 0-based
    num_frames: int
    class_name: str


@dataclass(frozen=True)
class ShardIndex:
    root: Path
    classes: list[str]
    videos: dict[str, VideoRecord]
    scale_factor: float  # f = q * scale_factor + add_offset, the same for every shard (checked)
    add_offset: float
    height: int  # stored frame size when all videos share it, else 0
    width: int
    has_rgb: bool  # every video has JPEG frames


def _load_manifests(root: Path, allow_incomplete: bool) -> list[tuple[Path, dict]]:
    single = root / "manifest.json"
    parts = sorted(p for p in root.glob("manifest-*-of-*.json") if _PART.fullmatch(p.name))
    if single.exists() and parts:
        raise DataError(f"{root}: both manifest.json and array-run manifest parts; expected one run per folder")
    paths = [single] if single.exists() else parts
    if not paths:
        raise DataError(f"{root}: no manifest.json or manifest-IIIII-of-NNNNN.json; expected a flowprep output folder")
    manifests = []
    for p in paths:
        try:
            m = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{p}: unreadable manifest ({e})") from None
        if m.get("format") != "flowprep-manifest" or m.get("format_version") != 1:
            raise DataError(f"{p}: expected format flowprep-manifest version 1, "
                            f"got {m.get('format')!r} {m.get('format_version')!r}")
        manifests.append((p, m))
    counts = {m["task"]["count"] for _, m in manifests}
    if len(counts) != 1:
        raise DataError(f"{root}: manifest parts disagree on the task count: {sorted(counts)}")
    missing = sorted(set(range(counts.pop())) - {m["task"]["index"] for _, m in manifests})
    unfinished = [p.name for p, m in manifests if not m.get("complete")]
    problems = ([f"missing manifest parts for tasks {missing}"] if missing else []) + (
        [f"complete=false in {', '.join(unfinished)}"] if unfinished else [])
    if problems:
        msg = f"{root}: incomplete run ({'; '.join(problems)})"
        if not allow_incomplete:
            raise DataError(msg + "; wait for the extraction to finish or pass allow_incomplete=True")
        warnings.warn(msg + "; indexing the finished shards only", stacklevel=3)
    return manifests


def _index_shard(
    path: Path, names: list[str], classes: list[str], manifest: str,
) -> tuple[list[VideoRecord], tuple[float, float] | None, set[tuple[int, int]], bool]:
    """Records of one shard, its (scale_factor, add_offset), its frame sizes and whether all have RGB."""
    records, sizes, has_rgb = [], set(), True
    with h5py.File(path, "r") as f:
        for vid in names:
            g = f.get(f"videos/{vid}")
            if g is None or "flow" not in g:
                raise DataError(f"{path}: video {vid!r} listed in {manifest} but not in the shard")
            label, name = int(g.attrs["label"]), str(g.attrs["class_name"])
            if not (0 <= label < len(classes)) or classes[label] != name:
                raise DataError(f"{path}: {vid} has label {label} ({name!r}), expected one of the manifest's classes")
            records.append(VideoRecord(vid, path, label, int(g.attrs["num_frames"]), name))
            sizes.add(g["flow"].shape[2:])
            has_rgb = has_rgb and "rgb" in g
        # The quantization is a run parameter: read once per shard, from its first video.
        attrs = f[f"videos/{names[0]}/flow"].attrs if names else {}
        factors = (float(attrs["scale_factor"]), float(attrs["add_offset"])) if names else None
    return records, factors, sizes, has_rgb


def index_shards(root: str | Path, *, allow_incomplete: bool = False) -> ShardIndex:
    """Index every video of a flowprep output folder (single run or all parts of an array run).

    ``height``/``width`` are the stored frame size when every video has the same one, else 0 (runs
    with ``--short-side`` keep each video's aspect ratio; the datasets crop each sample on its own).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: expected a shard folder, no such directory")
    manifests = _load_manifests(root, allow_incomplete)
    classes = manifests[0][1]["classes"]
    videos: dict[str, VideoRecord] = {}
    factors: dict[tuple[float, float], str] = {}
    sizes: set[tuple[int, int]] = set()
    has_rgb = True
    for mpath, m in manifests:
        if m["classes"] != classes:
            raise DataError(f"{mpath}: classes differ from {manifests[0][0].name}; expected one class list per run")
        for entry in m["shards"]:
            path = root / entry["name"]
            if not path.is_file():
                raise DataError(f"{path}: listed in {mpath.name} but missing on disk")
            if path.stat().st_size != entry["size"]:
                raise DataError(f"{path}: {path.stat().st_size} bytes on disk, {mpath.name} says {entry['size']}")
            records, sf_ao, shard_sizes, shard_rgb = _index_shard(path, entry["videos"], classes, mpath.name)
            if sf_ao is not None:
                factors.setdefault(sf_ao, path.name)
            if len(factors) > 1:
                (a, pa), (b, pb) = list(factors.items())[:2]
                raise DataError(f"{root}: flow quantization differs between shards ({pa}: bound {-a[1]:g} px, "
                                f"{pb}: bound {-b[1]:g} px); expected one bound per dataset")
            for rec in records:
                if rec.video_id in videos:
                    raise DataError(f"{path}: video {rec.video_id!r} also in {videos[rec.video_id].shard.name}; "
                                    "expected each video once")
                videos[rec.video_id] = rec
            sizes |= shard_sizes
            has_rgb = has_rgb and shard_rgb
    if not videos:
        raise DataError(f"{root}: the manifests list no videos")
    (sf, ao), = factors
    height, width = sizes.pop() if len(sizes) == 1 else (0, 0)
    return ShardIndex(root, list(classes), videos, sf, ao, height, width, has_rgb)


def read_video_list(path: str | Path, index: ShardIndex, *, labelled: bool | None = None) -> list[VideoRecord]:
    """Resolve a UCF-101 list (``Class/v_x.avi 1`` with 1-based labels, or ``Class/v_x.avi``).

    ``labelled``: True requires a label on every line, False forbids labels, None accepts either (but
    not a mix). Labels present must agree with the shards.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read the video list ({e.strerror})") from None
    records, seen_labels = [], set()
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2 or (len(fields) == 2 and not fields[1].isdigit()):
            raise DataError(f"{path}:{lineno}: expected 'Class/video.avi [label]', got {line.strip()!r}")
        has_label = len(fields) == 2
        seen_labels.add(has_label)
        if labelled is not None and has_label != labelled:
            want = "a 1-based label on every line" if labelled else "no labels"
            raise DataError(f"{path}:{lineno}: expected {want}, got {line.strip()!r}")
        if len(seen_labels) > 1:
            raise DataError(f"{path}:{lineno}: some lines have labels and some do not; expected one or the other")
        vid = str(PurePosixPath(fields[0].replace("\\", "/")).with_suffix(""))
        rec = index.videos.get(vid)
        if rec is None:
            raise DataError(f"{path}:{lineno}: video {vid!r} is not in the shards under {index.root}")
        if has_label and int(fields[1]) - 1 != rec.label:
            raise DataError(
                f"{path}:{lineno}: {vid} has label {fields[1]} (1-based) but the shards say "
                f"{rec.label + 1} ({rec.class_name}); expected the class order of the shards"
            )
        records.append(rec)
    if not records:
        raise DataError(f"{path}: the video list is empty; expected lines like 'Class/v_x.avi 1'")
    return records
