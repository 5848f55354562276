"""Label files of the common datasets, read for ``flowprep extract --labels`` (imports neither cv2 nor torch).

- generic CSV: ``path,label[,split]`` per row (a header row ``path,label,...`` is optional); ``path`` is
  relative to ``--videos`` (with or without extension), ``label`` a class name;
- Kinetics-400/600/700: the official CSV ``label,youtube_id,time_start,time_end,split``; a video file is
  matched by the common name ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`` (times in whole seconds,
  written ``15`` or ``15.0``);
- Something-Something v2: the official JSON list of ``{"id", "template", ...}``; a video file is matched by
  its name ``<id>.webm``, its class is the template without brackets ("Putting something on a surface").

``read_labels`` returns a table keyed by what identifies a video file (its id for the generic CSV, its
file stem for Kinetics and SSv2) and the problems found (duplicates, malformed rows, a file that lists no
video), one line each. Files are read as UTF-8 with or without a byte order mark, line ends LF or CRLF.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from flowprep.format import video_id

KINDS = ("csv", "kinetics", "ssv2")


@dataclass(frozen=True)
class LabelRow:
    class_name: str | None  # None only in split files read with labels=False (a test split without labels)
    split: str | None
    where: str  # "file:line", for messages


@dataclass
class LabelTable:
    kind: str  # one of KINDS
    rows: dict[str, LabelRow]  # key -> label
    problems: list[str]

    def key_of(self, source: str) -> str:
        """The key a video file (path relative to --videos) is looked up by."""
        return _nfc(video_id(source) if self.kind == "csv" else Path(source).stem)


def _nfc(key: str) -> str:
    """One spelling of a name: files copied from macOS keep its decomposed accents (NFD) while a label file
    typed or generated elsewhere is composed (NFC); on Linux those are two names. Keys compare in NFC."""
    return unicodedata.normalize("NFC", key)


def index_spelling(classes: Sequence[str]) -> Callable[[str], str]:
    """``spell(name)``: a class folder's name as the class index spells it when the two differ only in their
    Unicode form (a folder macOS wrote decomposed, an index typed composed, or the other way round); any other
    name as it is."""
    spelling = {_nfc(c): c for c in classes}
    return lambda name: spelling.get(_nfc(name), name)


def detect(path: Path) -> str:
    """The kind of a label file, from its content."""
    head = path.read_text(encoding="utf-8-sig", errors="replace").lstrip()[:4096]
    if head.startswith(("[", "{")):  # "{": SSv2's labels file by mistake; _ssv2 says what it is
        return "ssv2"
    first = head.splitlines()[0] if head else ""
    return "kinetics" if "youtube_id" in first and "time_start" in first else "csv"


def read_labels(paths: list[Path], *, labels: bool = True, kind: str | None = None) -> LabelTable:
    """Read one or more label files of one kind (e.g. Kinetics' train.csv and validate.csv).

    ``labels`` False accepts rows without a label (Kinetics' test CSV, SSv2's test JSON: the videos of a
    split, whose labels come from the shards); ``kind`` overrides the detection from the content.
    """
    kinds = {kind} if kind else {detect(p) for p in paths}
    if len(kinds) != 1:
        raise ValueError(f"the --labels files are of different kinds ({', '.join(sorted(kinds))}): give one kind")
    (kind,) = kinds
    table = LabelTable(kind, {}, [])
    for path in paths:
        check_utf8(path)
        before = (len(table.rows), len(table.problems))
        {"csv": _generic, "kinetics": _kinetics, "ssv2": _ssv2}[kind](path, table, labels)
        if (len(table.rows), len(table.problems)) == before:
            table.problems.append(f"{path.name}: lists no videos (an empty file, or a header alone)")
    return table


def check_utf8(path: Path) -> None:
    """ValueError naming the file and line of its first byte that is not UTF-8 (a file saved as Latin-1 or
    UTF-16): Python's UnicodeDecodeError names neither."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Windows' "Unicode" (UTF-16 with its mark)
        raise ValueError(f"{path}:1: not UTF-8 text (it starts with a UTF-16 byte order mark); save it as UTF-8")
    body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{body[e.start]:02x}); save it as UTF-8") from None
    if b"\0" in body:  # valid UTF-8, but no list holds one: UTF-16 without a byte order mark (ASCII text, every other byte 0)
        line = body[:body.index(b"\0")].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (a NUL byte: UTF-16?); save it as UTF-8")


def _add(table: LabelTable, key: str, row: LabelRow) -> None:
    key = _nfc(key)
    if key in table.rows:
        table.problems.append(f"{row.where}: {key!r} is labelled twice (first at {table.rows[key].where})")
    else:
        table.rows[key] = row


def _generic(path: Path, table: LabelTable, labels: bool) -> None:
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, fields in enumerate(csv.reader(f), 1):
            if not fields or not "".join(fields).strip():
                continue
            if lineno == 1 and [x.strip().lower() for x in fields[:2]] == ["path", "label"]:
                continue  # the header
            where = f"{path.name}:{lineno}"
            if len(fields) not in (2, 3) or not fields[0].strip() or not fields[1].strip():
                table.problems.append(f"{where}: expected 'path,label[,split]', got {','.join(fields)!r}")
                continue
            split = fields[2].strip() if len(fields) == 3 else None
            _add(table, video_id(fields[0].strip()), LabelRow(fields[1].strip(), split, where))


_WHOLE_SECONDS = re.compile(r"[0-9]+(?:\.0*)?")


def _seconds(text: str | None) -> int:
    """A Kinetics time as the file names write it: whole seconds, given as ``15`` or as ``15.0`` (some mirrors of
    the CSVs). ``15.5``, ``nan``, ``-5``, ``1e1`` or no number at all is a ValueError; a missing field (a short
    row) a TypeError."""
    if text is None:
        raise TypeError("no such field")
    if not _WHOLE_SECONDS.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a whole number of seconds")
    return int(text.strip().split(".")[0])


def _kinetics(path: Path, table: LabelTable, labels: bool) -> None:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"youtube_id", "time_start", "time_end"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: expected Kinetics columns label,youtube_id,time_start,time_end,split")
        for lineno, row in enumerate(reader, 2):
            where = f"{path.name}:{lineno}"
            try:
                key = f"{row['youtube_id']}_{_seconds(row['time_start']):06d}_{_seconds(row['time_end']):06d}"
            except (TypeError, ValueError):
                table.problems.append(f"{where}: expected whole seconds (12 or 12.0) in time_start and time_end, "
                                      f"got {row}")
                continue
            label = (row.get("label") or "").strip()
            if not label and not labels:
                _add(table, key, LabelRow(None, (row.get("split") or "").strip() or None, where))
                continue
            if not label:
                table.problems.append(f"{where}: {key} has no label (a test split without labels: use --unlabelled)")
                continue
            _add(table, key, LabelRow(label, (row.get("split") or "").strip() or None, where))


def _ssv2(path: Path, table: LabelTable, labels: bool) -> None:
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of videos, got {type(items).__name__}"
                         + (" (Something-Something's labels file {class name: index} is a class index: flowprep "
                            "extract --class-index)" if isinstance(items, dict) else ""))
    for i, item in enumerate(items):
        where = f"{path.name}[{i}]"
        if not labels and isinstance(item, dict) and "id" in item and "template" not in item:
            _add(table, str(item["id"]), LabelRow(None, None, where))  # the test list: {"id": "1420"}
            continue
        if not isinstance(item, dict) or "id" not in item or "template" not in item:
            table.problems.append(f"{where}: expected an object with 'id' and 'template' (the test list has no "
                                  "labels: use --unlabelled)")
            continue
        name = str(item["template"]).replace("[", "").replace("]", "")
        _add(table, str(item["id"]), LabelRow(name, None, where))


# --- split files for the trainer (--train-list / --val-list / --test-list) ----------------------------

LIST_KINDS = ("ucf101", "hmdb51", "kinetics", "ssv2", "csv")
ROLES = {"train": {"train", "training"}, "val": {"val", "valid", "validate", "validation"},
         "test": {"test", "testing"}}
SPLIT_NAMES = frozenset().union(*ROLES.values())  # folder names that are splits (train/, val/, test/ ...), not classes
_HMDB_FILE = "_test_split"  # <action>_test_split<k>.txt


@dataclass(frozen=True)
class SplitEntry:
    """One video of a split file: matched by ``video_id`` (UCF-101 lists, CSV) or by file ``stem`` (the rest)."""

    video_id: str | None
    stem: str | None
    class_name: str | None  # the class the file says, if any (checked against the shards)
    label: int | None  # 0-based label the file says (UCF-101 lists)
    where: str
    text: str


def detect_list(path: Path) -> str:
    """The kind of a split file, from its name and content."""
    if _HMDB_FILE in path.name:
        return "hmdb51"
    kind = detect(path)
    if kind != "csv":
        return kind
    first = next((line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()), "")
    return "csv" if "," in first else "ucf101"


def read_split(path: Path, *, role: str | None, kind: str | None = None) -> list[SplitEntry]:
    """The videos of ``role`` (train / val / test; None: every video the file lists) in one split file.

    HMDB-51 files tag each video 1 (train), 2 (test) or 0 (unused); a generic CSV with a split column
    keeps the rows of ``role``; Kinetics and SSv2 files are one split each. UCF-101 lists go through
    ``flowprep.format.read_list``. A file that is not UTF-8 text (Latin-1, UTF-16 without a byte order mark) is a
    ValueError naming its line (``check_utf8``), whatever its kind.
    """
    from flowprep.format import read_list

    check_utf8(path)  # before detect_list, which reads it with errors="replace"
    kind = kind or detect_list(path)
    if kind == "ucf101":
        return [SplitEntry(e.video_id, None, None, e.label, f"{path.name}:{e.lineno}", e.text) for e in read_list(path)]
    if kind == "hmdb51":
        if role == "val":
            raise ValueError(f"{path}: HMDB-51's split files have train (1) and test (2) videos only; hold out "
                             "a validation list of your own (pipelines/hmdb51.md)")
        action = path.name.split(_HMDB_FILE, 1)[0]
        want = {"train": "1", "test": "2", None: None}[role]
        entries = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}:{lineno}: expected '<video>.avi 0|1|2', got {line.strip()!r}")
            if (want is None and fields[1] != "0") or fields[1] == want:
                entries.append(SplitEntry(None, Path(fields[0]).stem, action, None, f"{path.name}:{lineno}", line))
        return entries
    if kind not in LIST_KINDS:
        raise ValueError(f"{path}: unknown list format {kind!r}; expected one of {', '.join(LIST_KINDS)}")
    table = read_labels([path], labels=False, kind=kind)
    if table.problems:
        raise ValueError(table.problems[0])
    if kind == "csv":
        odd = [row for row in table.rows.values() if row.split and row.split.lower() not in SPLIT_NAMES]
        if odd:
            raise ValueError(f"{odd[0].where}: split {odd[0].split!r} is none of {', '.join(sorted(SPLIT_NAMES))} "
                             f"({len(odd)} such row(s)); leave the column empty for a row of every split")
    entries = []
    for key, row in table.rows.items():
        if kind == "csv" and role is not None and row.split and row.split.lower() not in ROLES[role]:
            continue
        vid, stem = (key, None) if kind == "csv" else (None, key)
        entries.append(SplitEntry(vid, stem, row.class_name, None, row.where, key))
    if not entries and table.rows and role is not None:
        splits = sorted({row.split for row in table.rows.values() if row.split})
        raise ValueError(f"{path}: no row of the {role} split (its split column holds {', '.join(splits)})")
    return entries
