"""The split files of ``trainer fit`` / ``evaluate`` resolved against the shards' index: which videos, with
which labels (``--train-list``, ``--val-list``, ``--test-list``; the formats are read by ``flowprep.extract.labels``).
"""

from __future__ import annotations

import glob
import unicodedata
from pathlib import Path

from flowprep import format as fmt
from flowprep.extract.labels import SplitEntry, read_split
from trainer.data.errors import DataError
from trainer.data.shards import ShardIndex, VideoRecord, check_quantization


SCORED = ("val", "test")  # roles whose videos are scored: each video once


def read_video_list(path: str | Path, index: ShardIndex, *, labelled: bool | None = None, role: str | None = None,
                    kind: str | None = None) -> list[VideoRecord]:
    """Resolve a split file against the shards: a UCF-101 list (``Class/v_x.avi 1``, 1-based label optional),
    HMDB-51 split files (``<action>_test_split1.txt``: 1 = train, 2 = test), a Kinetics CSV, a
    Something-Something v2 JSON, or a CSV ``path,label[,split]`` (``flowprep.extract.labels``; detected from the
    content unless ``kind``). A path with ``*`` is a glob (HMDB-51's 51 files of a split).

    ``role`` (train / val / test) picks the videos of HMDB-51 files and of a CSV's split column. UCF-101
    lists: ``labelled`` True requires a label on every line, False forbids labels, None accepts either (not a
    mix); the path may hold spaces (``air drumming/x.mp4 3``). Kinetics, SSv2 and HMDB-51 videos are matched
    by file name (their stem), the others by video id. Labels and class names given must agree with the
    shards, and each video's flow ``scale_factor``/``add_offset`` must be its shard's (``check_quantization``).
    A video listed twice is an error in a validation or test list (``SCORED``); a training list keeps each
    listing (oversampling: a repeated video is one more sample per epoch).
    """
    paths = sorted(Path(p) for p in glob.glob(str(path))) if "*" in str(path) else [Path(path)]
    if not paths:
        raise DataError(f"{path}: no file matches")
    records: list[VideoRecord] = []
    missing: list[tuple[str, str, str, str]] = []  # (where, video, what, hint) of every file, reported together
    # video id -> file:line that lists it. Scored lists (val, test) name each video once: twice would count it twice
    # in the scores. A training list may repeat a video on purpose (oversampling: one sample per listing and epoch).
    listed: dict[str, str] | None = {} if role in SCORED else None
    for p in paths:
        try:
            entries = read_split(p, role=role, kind=kind)
        except OSError as e:
            raise DataError(f"{p}: cannot read the video list ({e.strerror})") from None
        except (fmt.ListError, ValueError) as e:  # not UTF-8 text too, naming the line (labels.check_utf8)
            raise DataError(str(e)) from None
        records += _resolve(p, entries, index, labelled=labelled, missing=missing, listed=listed)
    if missing:
        raise DataError(_missing_line(missing, index))
    if not records:
        raise DataError(f"{path}: the video list is empty; expected lines like 'Class/v_x.avi 1'")
    return records


def _resolve(path: Path, entries: list[SplitEntry], index: ShardIndex, *, labelled: bool | None,
             missing: list[tuple[str, str, str, str]], listed: dict[str, str] | None) -> list[VideoRecord]:
    """The shards' records of ``entries``; the entries the shards lack are added to ``missing``, and a video
    already in ``listed`` (by an earlier line or file; None: repeats are kept) is an error."""
    by_stem: dict[str, list[VideoRecord]] | None = None
    by_nfc: dict[str, list[VideoRecord]] | None = None
    records, seen_labels = [], set()
    unlabelled: list[str] = []  # "where 'id'" of listed videos the shards hold without a label
    for entry in entries:
        has_label = entry.label is not None
        if entry.video_id is not None:  # UCF-101 lists and CSVs: by video id
            seen_labels.add(has_label)
            if labelled is not None and has_label != labelled:
                want = "a 1-based label on every line" if labelled else "no labels"
                raise DataError(f"{path}:{entry.where.rsplit(':', 1)[-1]}: expected {want}, got {entry.text!r}")
            if len(seen_labels) > 1:
                raise DataError(f"{path}:{entry.where.rsplit(':', 1)[-1]}: some lines have labels and some do not; "
                                "expected one or the other")
            rec = index.videos.get(entry.video_id)
            if rec is None:  # another Unicode spelling of the name (macOS writes accents decomposed)?
                if by_nfc is None:
                    by_nfc = {}
                    for r in index.videos.values():
                        by_nfc.setdefault(_nfc(r.video_id), []).append(r)
                found = by_nfc.get(_nfc(entry.video_id), [])
                rec = found[0] if len(found) == 1 else None
            if rec is None:
                hint = ("; expected 'Class/video.avi [label]', the label a 1-based integer"
                        if any(c.isspace() for c in entry.text) and entry.class_name is None else "")
                missing.append((f"{path}:{entry.where.rsplit(':', 1)[-1]}", entry.video_id, "is not in the shards", hint))
                continue
        else:  # Kinetics, SSv2, HMDB-51: by file name
            if by_stem is None:
                by_stem = {}
                for r in index.videos.values():
                    by_stem.setdefault(_nfc(r.video_id.rsplit("/", 1)[-1]), []).append(r)
            found = by_stem.get(_nfc(entry.stem), [])
            if len(found) != 1:
                what = "is not in the shards" if not found else f"names {len(found)} videos ({found[0].video_id}, ...)"
                missing.append((entry.where, entry.stem, what, ""))
                continue
            rec = found[0]
        if rec.label < 0:
            unlabelled.append(f"{entry.where if entry.video_id is None else f'{path}:' + entry.where.rsplit(':', 1)[-1]}"
                              f" {rec.video_id!r}")
            continue
        if has_label and entry.label != rec.label:
            raise DataError(
                f"{path}:{entry.where.rsplit(':', 1)[-1]}: {rec.video_id} has label {entry.label + 1} (1-based) but "
                f"the shards say {rec.label + 1} ({rec.class_name}); expected the class order of the shards (their "
                "--class-index, else the sorted class names): leave the labels out of the list (the shards' are used)"
            )
        if entry.class_name is not None and _nfc(entry.class_name) != _nfc(rec.class_name):  # macOS folders: NFD
            raise DataError(f"{entry.where}: {rec.video_id} is {entry.class_name!r} there but {rec.class_name!r} in "
                            "the shards")
        if listed is not None:
            place = f"{path}:{entry.where.rsplit(':', 1)[-1]}"
            if rec.video_id in listed:
                raise DataError(f"{place}: {rec.video_id} is listed twice (first at {listed[rec.video_id]}); expected "
                                "each video once in a validation or test list (twice would count it twice in the scores)")
            listed[rec.video_id] = place
        check_quantization(rec, index)
        records.append(rec)
    if unlabelled:
        more = f" and {len(unlabelled) - 5} more" if len(unlabelled) > 5 else ""
        raise DataError(f"{len(unlabelled)} video(s) of {path} have no label in the shards (extracted unlabelled: label "
                        f"-1), so they can be neither trained nor scored: {', '.join(unlabelled[:5])}{more}")
    return records


def _nfc(name: str) -> str:
    """Names compare in one Unicode spelling (NFC): a list typed on Linux finds files copied from macOS."""
    return unicodedata.normalize("NFC", name)


def _missing_line(missing: list[tuple[str, str, str, str]], index: ShardIndex) -> str:
    """Every video of a list that the shards lack, in one line: the first few by place, then a count; those whose
    extraction failed (the manifests' failures) are said to have failed, with the way to drop them from a list."""
    failed = {}
    for vid, why in index.failed.items():
        failed[_nfc(vid)] = failed[_nfc(vid.rsplit("/", 1)[-1])] = why  # lists name videos by id or by file name
    where, name, what, hint = missing[0]
    line = f"{where}: video {name!r} {what} under {index.root}{hint}"
    if _nfc(name) in failed:
        line = f"{where}: video {name!r} is not in the shards under {index.root}: its extraction failed ({failed[_nfc(name)]})"
    if len(missing) > 1:
        more = ", ".join(f"{w} {n!r}" for w, n, _, _ in missing[1:_SHOWN])
        rest = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        line += f"; also {more}{rest} ({len(missing)} videos of the list are not in the shards)"
    some = sum(_nfc(n) in failed for _, n, _, _ in missing)
    if some:
        them = "it" if len(missing) == 1 else f"the {some} that failed" if some < len(missing) else f"all {some}"
        line += (f"; drop {them} from the list ({index.root}/manifest*.json list the failed videos; pipelines/ucf101.md "
                 f"shows how) or replace {'the file' if some == 1 else 'the files'} and rerun flowprep extract")
    return line


_SHOWN = 5  # missing videos named in the error; the rest are counted
