"""Flow that users already have, as JPEG frames: ``flowprep import-frames`` and ``flowprep export-frames``.

The common toolkits store TV-L1 flow as one 8-bit gray JPEG per flow channel per frame, with the
same mapping as ours: ``g = round((f + B) * 255 / (2B))`` clipped to 0..255. So a decoded JPEG's gray
values are our uint8 codes (up to JPEG's loss), and the shard's ``scale_factor``/``add_offset`` for
the bound B the frames were made with dequantize them. The shard's ``params.flow`` records that the
source was lossy JPEG, the layout and the bound.

Layouts (``--layout``):

- ``denseflow`` / ``mmaction``: one folder per video, ``img_00001.jpg`` (RGB), ``flow_x_00001.jpg`` and
  ``flow_y_00001.jpg`` (denseflow also writes ``x_00001.jpg``/``y_00001.jpg``); numbering from 0 or 1.
  The class of a video is the folder holding its folder (``<Class>/<video>/``, mmaction2's rawframes; also
  ``train/<Class>/<video>/``); a video folder at the top, or in a split folder (``test/<video>/``), needs a
  UCF-101 name (``v_<Class>_g01_c01``), whose class is then read from the name. Folder links are followed
  (each real folder is read once), as by ``flowprep extract``.
- ``twostreamfusion``: the widely shared UCF-101 TV-L1 set: ``u/<video>/frame000001.jpg``,
  ``v/<video>/frame000001.jpg`` and RGB in ``jpegs_256/<video>/frame000001.jpg``; UCF-101 names.

Video ids are the video folders' paths (``<Class>/<video>``, as ``flowprep extract`` names UCF-101's
videos, so UCF-101's list files select them). A video must have as many u as v frames, numbered without gaps, and one RGB frame
more than flow frames (or pass ``--no-rgb``): anything else is named per video, never trimmed. Frames of
unequal sizes are found while writing: the first is named, and what the import wrote is removed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import h5py
import numpy as np

import flowprep
from flowprep import format as fmt
from flowprep.extract import manifest as mf
from flowprep.extract.labels import ROLES
from flowprep.extract.reader import sort_classes
from flowprep.extract.writer import VideoMeta, VideoWriter, write_file_attrs

LAYOUTS = ("denseflow", "mmaction", "twostreamfusion")
_UCF_NAME = re.compile(r"^v_(?P<cls>.+)_g\d+_c\d+$")
_NUMBERED = re.compile(r"^(?P<prefix>[a-z_]*?)(?P<n>\d+)\.jpe?g$", re.IGNORECASE)
_KINDS = {  # layout -> {file prefix: kind}
    "denseflow": {"flow_x_": "u", "flow_y_": "v", "x_": "u", "y_": "v", "img_": "rgb"},
    "mmaction": {"flow_x_": "u", "flow_y_": "v", "x_": "u", "y_": "v", "img_": "rgb"},
}
_TSF_FOLDERS = {"u": "u", "v": "v", "rgb": "jpegs_256"}
_SPLIT_NAMES = set().union(*ROLES.values())  # train/, val/, test/ ...: not classes


class FramesError(ValueError):
    """Frames that cannot be imported as given; the message lists the first problems (one line each)."""


@dataclass
class FrameVideo:
    video_id: str
    class_name: str
    u: list[Path]
    v: list[Path]
    rgb: list[Path]


def _numbered(files: Sequence[Path]) -> list[tuple[int, Path]]:
    return sorted((int(_NUMBERED.match(p.name).group("n")), p) for p in files)


def _gaps(numbers: list[int]) -> str | None:
    if not numbers:
        return None
    first = numbers[0]
    if first not in (0, 1):
        return f"numbering starts at {first}"
    missing = sorted(set(range(first, numbers[-1] + 1)) - set(numbers))
    if missing:
        return f"frame(s) {', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''} missing"
    return None


def _class_of(folder: str, name: str) -> str | None:
    """The folder holding the video's folder (``.../<Class>/<video>/``), else the class in a UCF-101 name."""
    parent = folder.rsplit("/", 2)[-2] if "/" in folder else None
    if parent is not None and parent.lower() not in _SPLIT_NAMES:
        return parent
    m = _UCF_NAME.match(name)
    return m.group("cls") if m else None


def scan(root: str | Path, layout: str, *, rgb: bool = True, unlabelled: bool = False,
         ) -> tuple[list[FrameVideo], list[str]]:
    """The videos of a frames tree and the problems found (file names only; nothing is decoded).

    ``unlabelled``: every class name is "" (label -1); video ids stay as with labels where a UCF-101 name gives
    one, else the folder's path.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise FramesError(f"expected --layout one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not root.is_dir():
        raise FramesError(f"--frames must be a folder, got {str(root)!r}")
    per_video: dict[str, dict[str, list[Path]]] = {}
    empty: list[str] = []
    if layout == "twostreamfusion":
        for kind, sub in _TSF_FOLDERS.items():
            if kind == "rgb" and not rgb:
                continue
            if not (root / sub).is_dir():
                raise FramesError(f"{root}: expected the folders u/, v/ and jpegs_256/ of the twostreamfusion layout, "
                                  f"{sub}/ is missing")
            for folder in sorted(p for p in (root / sub).iterdir() if p.is_dir()):
                files = [p for p in folder.iterdir() if _NUMBERED.match(p.name)]
                per_video.setdefault(folder.name, {"u": [], "v": [], "rgb": []})[kind] = files
    else:
        prefixes = _KINDS[layout]
        seen = {os.path.realpath(root)}  # folder links are followed (trees assembled from linked class folders), once
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            rel_dir = Path(dirpath).relative_to(root)
            if not dirnames and not filenames and rel_dir != Path("."):
                empty.append(f"{rel_dir.as_posix()}: an empty folder (a video without frames?)")
            keep = []
            for d in sorted(dirnames):
                real = os.path.realpath(os.path.join(dirpath, d))
                if not d.startswith(".") and real not in seen:
                    seen.add(real)
                    keep.append(d)
            dirnames[:] = keep
            for name in sorted(filenames):
                m = _NUMBERED.match(name)
                kind = prefixes.get(m.group("prefix").lower()) if m else None
                if kind is None or name.startswith("."):
                    continue
                files = per_video.setdefault(rel_dir.as_posix(), {"u": [], "v": [], "rgb": []})
                if kind != "rgb" or rgb:  # a folder of RGB frames alone is still a video (without flow)
                    files[kind].append(Path(dirpath) / name)
    videos, problems = [], list(empty)
    for folder, files in sorted(per_video.items()):
        name = folder.rsplit("/", 1)[-1]
        if folder == ".":
            problems.append(f"{root}: frames at the top of --frames; expected one folder per video")
            continue
        cls = _class_of(folder, name)
        if unlabelled:
            cls, ucf = "", _UCF_NAME.match(name)
            video_id = folder if "/" in folder or not ucf else f"{ucf.group('cls')}/{name}"
        elif cls is None:
            problems.append(f"{folder}: cannot tell its class (expected <Class>/<video>/ or a UCF-101 name v_<Class>_gNN_cNN)")
            continue
        u, v, frames = _numbered(files["u"]), _numbered(files["v"]), _numbered(files["rgb"])
        where = f"{folder}: "
        if not u or not v:
            problems.append(where + f"{len(u)} u and {len(v)} v flow frames: both are needed")
            continue
        twice = False
        for kind, numbered in (("u", u), ("v", v)) + ((("rgb", frames),) if rgb else ()):
            dup = next(((a, b) for a, b in zip(numbered, numbered[1:]) if a[0] == b[0]), None)
            if dup:  # denseflow's flow_x_00001.jpg beside x_00001.jpg: which one is meant?
                problems.append(where + f"{kind}: frame {dup[0][0]} twice ({dup[0][1].name}, {dup[1][1].name})")
                twice = True
                continue
            gap = _gaps([n for n, _ in numbered])
            if gap:
                problems.append(where + f"{kind}: {gap}")
        if twice:
            continue
        if len(u) != len(v):
            problems.append(where + f"{len(u)} u but {len(v)} v flow frames")
            continue
        if rgb and len(frames) != len(u) + 1:
            problems.append(where + f"{len(frames)} RGB frames for {len(u)} flow frames, expected {len(u) + 1} "
                                    "(or pass --no-rgb)")
        if not unlabelled:
            video_id = folder if "/" in folder else f"{cls}/{name}"
        videos.append(FrameVideo(video_id, cls, [p for _, p in u], [p for _, p in v], [p for _, p in frames]))
    if not videos and not problems:
        problems.append(f"{root}: no flow frames of the {layout} layout found")
    return videos, problems


def _read_gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FramesError(f"{path}: not a readable JPEG")
    return img


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
        first = cv2.imread(str(video.rgb[0]), cv2.IMREAD_COLOR)
        if first is None or first.shape[:2] != (height, width):
            got = "unreadable" if first is None else f"{first.shape[1]}x{first.shape[0]}"
            raise FramesError(f"{video.video_id}: RGB frames are {got}, the flow is {width}x{height}: the shard "
                              "format needs one size (pass --no-rgb to import the flow alone)")
        writer.append_rgb([p.read_bytes() for p in video.rgb])
    writer.finish(num_frames=len(video.u) + 1, fps=fps)


def export_frames(shards: str | Path, out: str | Path, *, layout: str = "mmaction", quality: int = 95) -> int:
    """Write every video of a shard folder as mmaction2 rawframes; returns the number of videos.

    ``OUT/<video_id>/img_00001.jpg`` (the stored JPEG bytes), ``flow_x_00001.jpg`` / ``flow_y_00001.jpg``
    (the uint8 codes as gray JPEGs), ``OUT/rawframes.txt``: ``<video_id> <num_frames> <label>`` per line
    (0-based labels, mmaction2's rawframe annotation format), and ``OUT/classInd.txt``: the shards' classes
    in label order ("1 <name>" lines), which ``import-frames --class-index`` takes to keep the labels.
    ``out`` must be new or empty (stale frames of an earlier export would be imported again); when the
    export fails, what it wrote is removed.
    """
    import shutil

    if layout != "mmaction":
        raise FramesError(f"export-frames writes the mmaction layout, got {layout!r}")
    shards, out = Path(shards), Path(out)
    paths = fmt.manifest_paths(shards)
    if not paths:
        raise FramesError(f"{shards}: no manifest: not a flowprep output folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FramesError(f"{out} is not an empty folder: export into a new --out (or delete it first)")
    manifests = [fmt.read_manifest(p) for p in paths]
    classes = manifests[0].get("classes") or []
    lines, params = [], [cv2.IMWRITE_JPEG_QUALITY, quality]
    created = not out.exists()
    try:
        for manifest in manifests:
            for entry in manifest["shards"]:
                with h5py.File(shards / entry["name"], "r") as f:
                    for vid in entry["videos"]:
                        _export_video(f[f"{fmt.VIDEOS_GROUP}/{vid}"], out / vid, params)
                        g = f[f"{fmt.VIDEOS_GROUP}/{vid}"]
                        lines.append(f"{vid} {int(g.attrs['num_frames'])} {int(g.attrs['label'])}")
        out.mkdir(parents=True, exist_ok=True)
        (out / "rawframes.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        if classes:
            (out / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)),
                                              encoding="utf-8")
    except BaseException:
        if out.exists():  # it was new or empty: nothing of the user's is in it
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            if created:
                out.rmdir()
        raise
    return len(lines)


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
