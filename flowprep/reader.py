"""Find the videos of a UCF-101-style tree and label them.

Layout: ``VIDEOS/<Class>/.../<name>.<ext>``; the class of a video is its top-level folder. Labels
are 0-based: the line order of a UCF-101 ``classInd.txt`` ("1 ApplyEyeMakeup", 1-based) when one
is given, else the sorted class folder names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from flowprep.format import VIDEO_EXTENSIONS, video_id as video_id_of
from flowprep.writer import VideoMeta

_LINE_BREAKING = "\t\n\r\v\f"  # spaces are fine: list files take the label from the last field


class DatasetError(ValueError):
    """The videos folder or the class index cannot be used as given (a usage error)."""


def find_videos(root: str | Path, *, warn: Callable[[str], None] | None = None) -> list[str]:
    """Paths of all videos under ``root`` relative to it (posix, sorted), extensions case-insensitive.

    Folder links are followed (datasets are often assembled from linked class folders), but each
    real folder is read once: a link back into the tree (``Cls/up -> ..``, ``alias -> .``) or a
    second link to a folder already read is skipped, and ``warn`` is told so. A folder that cannot
    be read is a ``DatasetError``: it would silently make the dataset smaller.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--videos must be a folder, got {str(root)!r}")
    found, seen, skipped = [], {os.path.realpath(root): "."}, []

    def unreadable(exc: OSError) -> None:
        raise DatasetError(f"cannot read the folder {exc.filename}: {exc.strerror} (fix its permissions, or move "
                           "it out of --videos)")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        rel_dir = Path(dirpath).relative_to(root)
        keep = []
        for d in sorted(dirnames, key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d)):  # real ones first
            if d.startswith("."):
                continue
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen:
                skipped.append(f"{(rel_dir / d).as_posix()} (the same folder as {seen[real]})")
                continue
            seen[real] = (rel_dir / d).as_posix()
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS):
                found.append((rel_dir / name).as_posix())
    if skipped and warn is not None:
        shown = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        warn(f"note: skipped {len(skipped)} linked folder(s) already read: {shown}")
    return sorted(found)


def read_class_index(path: str | Path) -> list[str]:
    """Class names from a UCF-101 ``classInd.txt`` ("<1-based index> <name>" per line), by index."""
    path = Path(path)
    names: list[str] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path}:{lineno}: expected '<index> <ClassName>', got {line.strip()!r}")
        if int(parts[0]) != len(names) + 1:
            raise DatasetError(f"{path}:{lineno}: expected index {len(names) + 1}, got {parts[0]}")
        if parts[1] in names:
            raise DatasetError(f"{path}:{lineno}: class {parts[1]!r} is listed twice")
        names.append(parts[1])
    if not names:
        raise DatasetError(f"{path}: no classes in the class index")
    return names


def plan_videos(
    root: str | Path, *, class_index: str | Path | None = None, warn: Callable[[str], None] | None = None
) -> tuple[list[str], list[VideoMeta]]:
    """(classes, videos sorted by relative path) for the tree under ``root``."""
    sources = find_videos(root, warn=warn)
    if not sources:
        raise DatasetError(f"no videos ({' '.join(VIDEO_EXTENSIONS)}) under {root}")
    odd = [s for s in sources if any(c in s for c in _LINE_BREAKING)]
    if odd:
        raise DatasetError(f"video path {odd[0]!r} contains a tab or line break, which no list file can name: "
                           f"rename it ({len(odd)} such path(s))")
    loose = [s for s in sources if "/" not in s]
    if loose:
        raise DatasetError(f"videos must sit in class folders (<Class>/<video>), found {loose[0]!r} at the top level")
    folders = sorted({s.split("/", 1)[0] for s in sources})
    if class_index is not None:
        classes = read_class_index(class_index)
        unknown = [c for c in folders if c not in classes]
        if unknown:
            raise DatasetError(f"class folder {unknown[0]!r} is not in {class_index} ({len(unknown)} unknown folder(s))")
    else:
        classes = folders
    label = {name: i for i, name in enumerate(classes)}
    videos, seen = [], {}
    for source in sources:
        video_id = video_id_of(source)
        if video_id in seen:
            raise DatasetError(f"{seen[video_id]!r} and {source!r} would both be stored as {video_id!r}")
        seen[video_id] = source
        class_name = source.split("/", 1)[0]
        videos.append(VideoMeta(video_id=video_id, source=source, label=label[class_name], class_name=class_name))
    return classes, videos
