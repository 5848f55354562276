"""The index of a flowprep output folder, read through its documented contract (docs/shard-format.md).

``index_shards`` reads the manifest(s) and each shard's attributes once; ``trainer.data.lists`` resolves
the split files against that index, and ``trainer.data.datasets`` builds the datasets on top of both.

Incomplete runs are an error: if a manifest says ``complete: false`` or parts of an array run are
missing, ``index_shards`` raises ``DataError`` unless ``allow_incomplete=True`` (then it warns and indexes
the finished shards), because training on a silently partial dataset gives numbers nobody can compare.

Damage is an error too, in one line naming the shard (and the video where one is concerned): a shard HDF5
cannot open, and a video whose flow ``scale_factor``/``add_offset`` are not those of its shard's bound
(root ``params``, through ``flowprep.format.scale_and_offset``): it would be dequantized with the wrong
numbers. Both are found from attributes alone, before any training.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from flowprep import format as fmt
from flowprep.format import scale_and_offset, video_id
from trainer.data.errors import DAMAGED, DataError, one_line, unreadable


@dataclass(frozen=True)
class VideoRecord:
    video_id: str  # path relative to the videos root, no extension, "/" separators
    shard: Path
    label: int  # 0-based
    num_frames: int
    class_name: str
    scale_factor: float = math.nan  # the video's own flow attributes (NaN: absent), checked by read_video_list
    add_offset: float = math.nan


@dataclass(frozen=True)
class ShardIndex:
    root: Path
    classes: list[str]
    videos: dict[str, VideoRecord]
    scale_factor: float  # f = q * scale_factor + add_offset, from the bound in the shards' params (one per dataset)
    add_offset: float
    height: int  # stored frame size when all videos share it, else 0
    width: int
    has_rgb: bool  # every video has JPEG frames
    bound: float  # B of the shards' root params; the factors above are flowprep.format.scale_and_offset(B)
    failed: dict[str, str] = field(default_factory=dict)  # video id -> why extraction failed (manifests' failures)


def _load_manifests(root: Path, allow_incomplete: bool) -> list[tuple[Path, dict]]:
    paths = fmt.manifest_paths(root)
    if (root / fmt.SINGLE_MANIFEST) in paths and len(paths) > 1:
        raise DataError(f"{root}: both manifest.json and array-run manifest parts; expected one run per folder")
    if not paths:
        raise DataError(f"{root}: no manifest.json or manifest-IIIII-of-NNNNN.json; expected a flowprep output folder")
    manifests = []
    for p in paths:
        try:
            manifests.append((p, fmt.read_manifest(p)))
        except fmt.ManifestError as e:
            raise DataError(f"{root}/{e}") from None
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


def _shard_bound(path: Path, f: h5py.File) -> float:
    """The flow bound B of the shard's root ``params`` attribute (the run parameters, docs/shard-format.md)."""
    try:
        bound = float(json.loads(f.attrs["params"])["flow"]["bound"])
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise DataError(f"{path}: no flow bound in the root attribute params ({type(e).__name__}: {e}); expected a "
                        "flowprep shard (docs/shard-format.md)") from None
    try:
        scale_and_offset(bound)  # > 0, and storable as float32 (an older flowprep let --bound 1e308 through)
    except ValueError as e:
        raise DataError(f"{path}: the root attribute params says flow bound {bound:g}; {e}") from None
    return bound


def _scalar_attr(obj: h5py.HLObject, name: bytes, dtype: type = np.float64) -> float | int:
    """A one-number attribute (KeyError when absent), read through h5py's low-level API: about a third of
    ``obj.attrs[name]``'s time, which counts with several reads per video (UCF-101: 13k videos)."""
    attr = h5py.h5a.open(obj.id, name)
    out = np.empty(attr.shape, dtype)
    attr.read(out)  # HDF5 converts the stored type (float32 scale_factor, int64 label) exactly
    if out.size != 1:
        raise KeyError(f"attribute {name.decode()} holds {out.size} values, expected one")
    return out.reshape(-1)[0].item()


def _quantization_attr(flow: h5py.Dataset, name: bytes) -> float:
    """The flow dataset's ``scale_factor`` / ``add_offset``; NaN when absent or not one number (then
    ``check_quantization`` refuses the video, naming it)."""
    try:
        return float(_scalar_attr(flow, name))
    except (KeyError, OSError, TypeError, ValueError):
        return math.nan


def _index_shard(
    path: Path, names: list[str], classes: list[str], manifest: str,
) -> tuple[list[VideoRecord], float, set[tuple[int, int]], bool]:
    """Records of one shard, its flow bound (root params), its frame sizes and whether all have RGB.

    Reads attributes and shapes only, no data: each video's flow ``scale_factor``/``add_offset`` go into its
    record for ``read_video_list`` to check against the bound.
    """
    records, sizes, has_rgb = [], set(), True
    try:
        f = h5py.File(path, "r")
    except PermissionError:  # not damaged
        raise unreadable(path) from None
    except OSError as e:  # zeroed, truncated in place, not HDF5 at all
        some = f"{len(names)} videos, e.g. {names[0]!r}" if names else "no videos"
        raise DataError(f"{path}: cannot be opened as HDF5 ({one_line(e)}); the shard ({some}) is damaged: "
                        f"{DAMAGED}") from None
    with f:
        bound = _shard_bound(path, f)
        for vid in names:
            try:
                g = f.get(f"videos/{vid}")
                if g is None or "flow" not in g:
                    raise DataError(f"{path}: video {vid!r} listed in {manifest} but not in the shard")
                label, name = _scalar_attr(g, b"label", np.int64), str(g.attrs["class_name"])
                flow = g["flow"]
                rec = VideoRecord(vid, path, label, _scalar_attr(g, b"num_frames", np.int64), name,
                                  _quantization_attr(flow, b"scale_factor"), _quantization_attr(flow, b"add_offset"))
                size, rgb = flow.shape[2:], "rgb" in g
            except (OSError, KeyError, RuntimeError) as e:  # h5py: damaged metadata or a missing attribute
                raise DataError(f"{path}: video {vid!r} cannot be indexed ({one_line(e)}); the shard is damaged or "
                                f"not a flowprep shard: {DAMAGED}") from None
            unlabelled = label == -1 and name == ""  # --unlabelled, a flat folder, a test split without labels
            if not unlabelled and (not (0 <= label < len(classes)) or classes[label] != name):
                raise DataError(f"{path}: {vid} has label {label} ({name!r}), expected one of the manifest's classes")
            records.append(rec)
            sizes.add(size)
            has_rgb = has_rgb and rgb
    return records, bound, sizes, has_rgb


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
    bounds: dict[float, str] = {}  # flow bound -> first shard with it
    sizes: set[tuple[int, int]] = set()
    has_rgb = True
    failed: dict[str, str] = {}
    for mpath, m in manifests:
        for failure in m.get("failures") or []:
            if isinstance(failure, dict) and isinstance(failure.get("path"), str):
                failed[video_id(failure["path"])] = str(failure.get("error", ""))
        if m["classes"] != classes:
            raise DataError(f"{mpath}: classes differ from {manifests[0][0].name}; expected one class list per run")
        for entry in m["shards"]:
            path = root / entry["name"]
            if not path.is_file():
                raise DataError(f"{path}: listed in {mpath.name} but missing on disk")
            if path.stat().st_size != entry["size"]:
                raise DataError(f"{path}: {path.stat().st_size} bytes on disk, {mpath.name} says {entry['size']}")
            records, bound, shard_sizes, shard_rgb = _index_shard(path, entry["videos"], classes, mpath.name)
            bounds.setdefault(bound, path.name)
            if len(bounds) > 1:
                (a, pa), (b, pb) = list(bounds.items())[:2]
                raise DataError(f"{root}: flow quantization differs between shards ({pa}: bound {a:g} px, "
                                f"{pb}: bound {b:g} px, from their root attribute params); expected one bound per "
                                "dataset")
            for rec in records:
                if rec.video_id in videos:
                    raise DataError(f"{path}: video {rec.video_id!r} also in {videos[rec.video_id].shard.name}; "
                                    "expected each video once")
                videos[rec.video_id] = rec
            sizes |= shard_sizes
            has_rgb = has_rgb and shard_rgb
    if not videos:
        raise DataError(f"{root}: the manifests list no videos")
    (bound,) = bounds
    # As the writer stores them (float32), so that dequantizing gives exactly the numbers of any HDF5 reader.
    sf, ao = (float(np.float32(v)) for v in scale_and_offset(bound))
    height, width = sizes.pop() if len(sizes) == 1 else (0, 0)
    return ShardIndex(root, list(classes), videos, sf, ao, height, width, has_rgb, bound,
                      {vid: why for vid, why in failed.items() if vid not in videos})


def check_quantization(rec: VideoRecord, index: ShardIndex) -> None:
    """DataError unless the video's flow ``scale_factor``/``add_offset`` are those of its shard's bound."""
    want = (index.scale_factor, index.add_offset)
    got = (rec.scale_factor, rec.add_offset)
    if not all(math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-6) for g, w in zip(got, want)):  # NaN (absent) fails
        raise DataError(
            f"{rec.shard}: video {rec.video_id} has flow scale_factor {got[0]:.7g} / add_offset {got[1]:.7g}, but "
            f"the shard's params say bound {index.bound:g} px, i.e. {want[0]:.7g} / {want[1]:.7g}; its flow would be "
            f"dequantized wrongly (an edited or foreign video): {DAMAGED}"
        )

