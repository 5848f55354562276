"""Find the videos of a UCF-101-style tree and label them.

Layout: ``VIDEOS/<Class>/.../<name>.<ext>``; the class of a video is its top-level folder. Labels
are 0-based: the line order of a UCF-101 ``classInd.txt`` ("1 ApplyEyeMakeup", 1-based) when one
is given, else the sorted class names (by number when every name is a number).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

from flowprep.format import VIDEO_EXTENSIONS, video_id as video_id_of
from flowprep.extract.labels import SPLIT_NAMES, check_utf8, index_spelling, read_labels
from flowprep.extract.writer import VideoMeta

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


def _is_utf8(path: str) -> bool:
    """Whether a name read from the file system was UTF-8 (Python keeps other bytes as lone surrogates)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_class_index(path: str | Path) -> list[str]:
    """Class names from a UCF-101 ``classInd.txt`` ("<1-based index> <name>" per line), by index."""
    path = Path(path)
    try:
        check_utf8(path)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("{"):  # Something-Something v2's labels JSON: {"Class name": "index", ...}
        try:
            order = sorted(json.loads(text).items(), key=lambda kv: int(kv[1]))
        except (ValueError, AttributeError) as exc:
            raise DatasetError(f"{path}: expected a JSON object {{class name: index}} ({exc})") from None
        if [int(i) for _, i in order] != list(range(len(order))):
            raise DatasetError(f"{path}: expected the indexes 0..{len(order) - 1}, once each")
        return [name for name, _ in order]
    names: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        number, _, name = line.strip().partition(" ")  # class names may hold spaces ("air drumming")
        name = name.strip()
        if not (number.isdigit() and name):
            raise DatasetError(f"{path}:{lineno}: expected '<index> <ClassName>', got {line.strip()!r}")
        if int(number) != len(names) + 1:
            raise DatasetError(f"{path}:{lineno}: expected index {len(names) + 1}, got {number}")
        if name in names:
            raise DatasetError(f"{path}:{lineno}: class {name!r} is listed twice")
        names.append(name)
    if not names:
        raise DatasetError(f"{path}: no classes in the class index")
    return names


def sort_classes(names: set[str]) -> list[str]:
    """The label order without a class index: sorted names, by number when every name is a number ("2" before
    "10": a CSV whose labels are class numbers keeps their order)."""
    if names and all(n.isdecimal() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


LAYOUTS = ("folders", "ucf101", "hmdb51", "kinetics", "ssv2")


def plan_videos(
    root: str | Path, *, class_index: str | Path | None = None, warn: Callable[[str], None] | None = None,
    layout: str | None = None, labels: Sequence[str | Path] = (), unlabelled: bool = False,
) -> tuple[list[str], list[VideoMeta]]:
    """(classes, videos sorted by relative path) for the tree under ``root``.

    Where a video's class comes from: ``labels`` files (generic CSV, Kinetics CSV, SSv2 JSON; see
    ``flowprep.extract.labels``) when given; none with ``unlabelled`` (label -1, no class name; also when every
    video sits at the top level, with a note); else its folder: the top-level one (``folders``, ``ucf101``,
    ``hmdb51``: ``<Class>/<video>``), or the one holding it (``kinetics``: ``<split>/<label>/<video>``; a clip
    in ``test/<video>``, with no label folder, is unlabelled, with a note). Rows of the labels files without a
    label (Kinetics' test CSV, SSv2's test JSON) make their videos unlabelled, with a note.
    Problems (unlabelled videos, labels naming missing videos, unknown classes) are listed, the first
    ten and a count, in one ``DatasetError``.
    """
    warn = warn or (lambda message: None)
    if labels and unlabelled:
        raise DatasetError("give --labels or --unlabelled, not both")
    if layout is not None and layout not in LAYOUTS:
        raise DatasetError(f"expected a layout in {', '.join(LAYOUTS)}, got {layout!r}")
    sources = find_videos(root, warn=warn)
    if not sources:
        raise DatasetError(f"no videos ({' '.join(VIDEO_EXTENSIONS)}) under {root}")
    odd = [s for s in sources if any(c in s for c in _LINE_BREAKING)]
    if odd:
        raise DatasetError(f"video path {odd[0]!r} contains a tab or line break, which no list file can name: "
                           f"rename it ({len(odd)} such path(s))")
    undecodable = [s for s in sources if not _is_utf8(s)]
    if undecodable:  # the shards, manifest and list files hold video ids as UTF-8 text
        raise DatasetError(f"video path {os.fsencode(undecodable[0])!r} is not UTF-8, so no shard or list file can "
                           f"name it: rename it ({len(undecodable)} such path(s))")
    problems: list[str] = []
    if labels:
        names = names_from_labels(sources, [Path(p) for p in labels], problems, warn)
    elif unlabelled or (layout is None and all("/" not in s for s in sources)):
        if not unlabelled:
            warn(f"note: the {len(sources)} videos sit at the top of {root}, in no class folders: extracting them "
                 "unlabelled (label -1); give --labels FILE to label them")
        names = {s: "" for s in sources}
    elif layout == "ssv2":
        raise DatasetError("--layout ssv2 needs --labels (the official train/validation JSON), or --unlabelled")
    else:
        names = _names_from_folders(sources, layout, root, warn)
    if class_index is not None:
        classes = read_class_index(class_index)
        spell = index_spelling(classes)  # a folder macOS named decomposed (NFD) is the index's class typed composed
        names = {s: spell(n) for s, n in names.items()}
    found = sort_classes({n for n in names.values() if n})
    if class_index is not None:
        for c in found:
            if c not in classes:
                of = [s for s in sources if names.get(s) == c]
                problems.append(f"class {c!r} is not in {class_index}: {len(of)} video(s), e.g. {of[0]!r}")
    else:
        classes = found
    seen: dict[str, str] = {}
    for source in sources:  # a.mp4 beside a.avi: one id for two videos
        video_id = video_id_of(source)
        if video_id in seen:
            problems.append(f"{seen[video_id]!r} and {source!r} would both be stored as {video_id!r}")
        seen.setdefault(video_id, source)
    if problems:
        raise DatasetError("\n".join(problems[:10] + ([f"... and {len(problems) - 10} more problem(s)"]
                                                       if len(problems) > 10 else [])))
    label = {name: i for i, name in enumerate(classes)}
    videos = []
    for source in sources:
        name = names[source]
        videos.append(VideoMeta(video_id=video_id_of(source), source=source, label=label[name] if name else -1, class_name=name))
    return classes, videos


def _names_from_folders(sources: list[str], layout: str | None, root: str | Path,
                        warn: Callable[[str], None]) -> dict[str, str]:
    loose = [s for s in sources if "/" not in s]
    if loose:
        raise DatasetError(f"videos must sit in class folders (<Class>/<video>), found {loose[0]!r} at the top level "
                           "(or give --labels FILE, or --unlabelled)")
    if layout == "kinetics":  # <split>/<label>/<video> or <label>/<video>: the folder holding the video
        names = {s: s.rsplit("/", 2)[-2] for s in sources}
        test = [s for s in sources if s.count("/") == 1 and names[s].lower() in SPLIT_NAMES]
        labelled = sorted({s.split("/")[0] for s in test if s.split("/")[0].lower() not in ("test", "testing")})
        if labelled:  # train/<clip>: a flat download (the clips' labels are in the official CSVs), not a test split
            flat = [s for s in test if s.split("/")[0] in labelled]
            raise DatasetError(f"{len(flat)} video(s) sit in {', '.join(f'{d}/' for d in labelled)} without label folders, "
                               f"e.g. {flat[0]!r}: training and validation clips need their labels, from "
                               "<split>/<label>/<clip> folders or from the official CSVs (--labels train.csv --labels "
                               "validate.csv; only test/<clip> is extracted unlabelled)")
        if test:  # test/<video>: Kinetics' test clips come without labels, in no label folders
            warn(f"note: {len(test)} video(s) sit in split folders without label folders "
                 f"({', '.join(sorted({s.split('/')[0] for s in test}))}/<video>): extracting them unlabelled (label -1)")
            names.update({s: "" for s in test})
        return names
    tops = {s.split("/", 1)[0] for s in sources}
    if layout is None and tops <= SPLIT_NAMES:  # the default, not a --layout folders that says so
        raise DatasetError(f"the top-level folders of {root} are splits ({', '.join(sorted(tops))}), not classes: "
                           "use --layout kinetics for <split>/<class>/<video>, or --layout folders to label them "
                           "by these names anyway")
    note = one_folder_note(sources, root)
    if note:
        warn(note)
    return {s: s.split("/", 1)[0] for s in sources}


def one_folder_note(paths: Sequence[str], root: str | Path, *, option: str = "--videos", what: str = "video",
                    so: str = "so all get that one class") -> str | None:
    """The note for an input folder given one level too high: every path (relative to ``root``, at least
    ``<top>/<Class>/<video>``) under one top folder, as UCF-101.rar unpacks into UCF-101/<Class>/. It says what
    that does (``so``) and names the folder to give instead (``option``). None when the paths spread out.
    ``extract`` (videos: all of that one class) and ``import-frames`` (video folders: ids that start with it)."""
    tops = {p.split("/", 1)[0] for p in paths}
    if len(tops) != 1 or not all(p.count("/") >= 2 for p in paths):
        return None
    (top,) = tops
    return (f"note: every {what} sits under the one folder {top!r}, {so}; if it holds the class folders, give "
            f"{option} {Path(root) / top}")


def names_from_labels(sources: list[str], paths: list[Path], problems: list[str], warn: Callable[[str], None], *,
                      under: str = "--videos", doing: str = "extracting") -> dict[str, str]:
    """{source: class name ("" for a row without a label)} from ``--labels`` files; problems (a video not in them, a
    generic CSV's row naming a video not ``under`` the input folder) are appended, notes go to ``warn``. Also
    ``import-frames --labels``, whose sources are video folders (``under`` "--frames", ``doing`` "importing")."""
    try:
        table = read_labels(paths, labels=False)  # rows without a label: Kinetics' test CSV, SSv2's test JSON
    except (OSError, ValueError) as exc:
        raise DatasetError(str(exc)) from None
    problems += table.problems
    names, used, unlabelled = {}, set(), 0
    for source in sources:
        row = table.rows.get(table.key_of(source))
        if row is None:
            problems.append(f"{source}: not in the labels file(s) {', '.join(p.name for p in paths)}")
            continue
        names[source] = row.class_name or ""
        unlabelled += row.class_name is None
        used.add(table.key_of(source))
    if unlabelled:
        warn(f"note: {unlabelled} video(s) have no label in the labels file(s) (a test split): {doing} them "
             "unlabelled (label -1)")
    missing = sorted(set(table.rows) - used)
    if missing and table.kind == "csv":
        problems += [f"{table.rows[key].where}: names {key!r}, which is not under {under}" for key in missing]
    elif missing:  # Kinetics and SSv2 downloads always miss some videos: say how many
        warn(f"note: {len(missing)} of the {len(table.rows)} videos in the labels file(s) are not under {under}")
    return names
