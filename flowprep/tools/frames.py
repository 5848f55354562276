"""Flow that users already have, as JPEG frames: the layouts of the common toolkits and ``scan``, which finds
the videos of one (``flowprep import-frames``, flowprep/tools/import_frames.py; the way back is
flowprep/tools/export_frames.py).

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
more than flow frames (or pass ``--no-rgb``): anything else is named per video, never trimmed, and so is a folder
this user may not read (never skipped). Frames of
unequal sizes, and files that are not whole JPEGs (cut short, another format behind a .jpg name), are found while
writing: the first is named, and what the import wrote is removed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from flowprep.extract.labels import SPLIT_NAMES

LAYOUTS = ("denseflow", "mmaction", "twostreamfusion")
_UCF_NAME = re.compile(r"^v_(?P<cls>.+)_g\d+_c\d+$")
# UCF-101's folder HandstandPushups holds videos named v_HandStandPushups_gNN_cNN; its classInd.txt and lists spell the
# class (and the ids, <folder>/<video>) as the folder does, so a class read from such a name is the folder's
_UCF_FOLDER_OF = {"HandStandPushups": "HandstandPushups"}
_NUMBERED = re.compile(r"^(?P<prefix>[a-z_]*?)(?P<n>\d+)\.jpe?g$", re.IGNORECASE)
_KINDS = {  # layout -> {file prefix: kind}
    "denseflow": {"flow_x_": "u", "flow_y_": "v", "x_": "u", "y_": "v", "img_": "rgb"},
    "mmaction": {"flow_x_": "u", "flow_y_": "v", "x_": "u", "y_": "v", "img_": "rgb"},
}
_TSF_FOLDERS = {"u": "u", "v": "v", "rgb": "jpegs_256"}


# In the --out of export-frames while it writes (an ``OutputLock``: a second export is refused as busy), and left there by
# one that was killed: import-frames refuses such a folder, whose frames are not all there.
EXPORT_LOCK = "export-frames.lock"


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
    if parent is not None and parent.lower() not in SPLIT_NAMES:
        return parent
    return _ucf_class(name)


def _ucf_class(name: str) -> str | None:
    """The class in a UCF-101 name (``v_<Class>_g01_c01``), spelled as UCF-101's folder of the video."""
    m = _UCF_NAME.match(name)
    return _UCF_FOLDER_OF.get(m.group("cls"), m.group("cls")) if m else None


def scan(root: str | Path, layout: str, *, rgb: bool = True, unlabelled: bool = False, by_folder: bool = False,
         ) -> tuple[list[FrameVideo], list[str]]:
    """The videos of a frames tree and the problems found (file names only; nothing is decoded).

    ``unlabelled``: every class name is "" (label -1); video ids stay as with labels where a UCF-101 name gives
    one, else the folder's path. ``by_folder`` (labels from a file, ``import-frames --labels``): every video's
    id is its folder's path, as is (the id ``extract --labels`` gave it), and its class name "" until the
    labels are looked up.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise FramesError(f"expected --layout one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not root.is_dir():
        raise FramesError(f"--frames must be a folder, got {str(root)!r}")
    per_video: dict[str, dict[str, list[Path]]] = {}
    empty: list[str] = []

    def unreadable(exc: OSError) -> None:  # a folder this user may not list: its videos are named, never skipped
        where = Path(exc.filename).relative_to(root).as_posix() if exc.filename else str(root)
        empty.append(f"{where}: cannot be read ({exc.strerror or exc}): fix its permissions")
    if layout == "twostreamfusion":
        for kind, sub in _TSF_FOLDERS.items():
            if kind == "rgb" and not rgb:
                continue
            if not (root / sub).is_dir():
                raise FramesError(f"{root}: expected the folders u/, v/ and jpegs_256/ of the twostreamfusion layout, "
                                  f"{sub}/ is missing")
            for folder in sorted(p for p in (root / sub).iterdir() if p.is_dir()):
                try:
                    files = [p for p in folder.iterdir() if _NUMBERED.match(p.name)]
                except OSError as exc:
                    unreadable(exc)
                    continue
                per_video.setdefault(folder.name, {"u": [], "v": [], "rgb": []})[kind] = files
    else:
        prefixes = _KINDS[layout]
        seen = {os.path.realpath(root)}  # folder links are followed (trees assembled from linked class folders), once
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
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
        if by_folder:
            cls, video_id = "", folder
        elif unlabelled:
            cls, ucf = "", _ucf_class(name)
            video_id = folder if "/" in folder or not ucf else f"{ucf}/{name}"
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
        if not (unlabelled or by_folder):
            video_id = folder if "/" in folder else f"{cls}/{name}"
        videos.append(FrameVideo(video_id, cls, [p for _, p in u], [p for _, p in v], [p for _, p in frames]))
    if not videos and not problems:
        problems.append(f"{root}: no flow frames of the {layout} layout found")
    return videos, problems
