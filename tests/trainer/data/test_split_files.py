"""Split files beyond UCF-101's lists: HMDB-51 split files, Kinetics CSVs, SSv2 JSON, a generic CSV."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.data.errors import DataError
from trainer.data.lists import read_video_list
from trainer.data.shards import index_shards


def test_hmdb51_split_files_give_train_and_test_videos_by_their_tags(make_tiny_shards, tmp_path: Path) -> None:
    tiny = make_tiny_shards(num_classes=2, videos_per_class=3, class_names=["brush_hair", "cartwheel"],
                            id_format="{cls}/{cls}_clip_{g}")
    index = index_shards(tiny.root)
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    for cls in ("brush_hair", "cartwheel"):
        (splits / f"{cls}_test_split1.txt").write_text(
            f"{cls}_clip_1.avi 1 \r\n{cls}_clip_2.avi 2 \r\n{cls}_clip_3.avi 0 \r\n")  # the files' CRLF and spaces
    train = read_video_list(splits / "*_test_split1.txt", index, role="train")
    test = read_video_list(str(splits / "*_test_split1.txt"), index, role="test")
    assert [r.video_id for r in train] == ["brush_hair/brush_hair_clip_1", "cartwheel/cartwheel_clip_1"]
    assert [r.video_id for r in test] == ["brush_hair/brush_hair_clip_2", "cartwheel/cartwheel_clip_2"]
    with pytest.raises(DataError, match="train .1. and test .2. videos only"):
        read_video_list(splits / "brush_hair_test_split1.txt", index, role="val")


def test_a_kinetics_csv_selects_videos_by_file_name_and_checks_their_class(make_tiny_shards, tmp_path: Path) -> None:
    tiny = make_tiny_shards(num_classes=2, videos_per_class=2, class_names=["abseiling", "air drumming"],
                            id_format="train/{cls}/yt{g}x{cls[1]}_000010_000020")
    index = index_shards(tiny.root)
    csv = tmp_path / "validate.csv"
    csv.write_text('label,youtube_id,time_start,time_end,split\n"air drumming",yt1xi,10,20,val\n'
                   "abseiling,yt2xb,10,20,val\n")
    records = read_video_list(csv, index, role="val")
    assert [r.video_id for r in records] == ["train/air drumming/yt1xi_000010_000020", "train/abseiling/yt2xb_000010_000020"]
    csv.write_text("label,youtube_id,time_start,time_end,split\nabseiling,yt1xi,10,20,val\n")
    with pytest.raises(DataError, match="is 'abseiling' there but 'air drumming' in the shards"):
        read_video_list(csv, index)


def test_an_ssv2_json_and_a_generic_csv_with_a_split_column(make_tiny_shards, tmp_path: Path) -> None:
    tiny = make_tiny_shards(num_classes=2, videos_per_class=2, class_names=["Holding something", "Pushing something"],
                            id_format="{g}{cls[0]}")
    index = index_shards(tiny.root)
    ssv2 = tmp_path / "something-something-v2-validation.json"
    ssv2.write_text(json.dumps([{"id": "1H", "template": "Holding [something]", "label": "holding a pen"},
                                {"id": "2P", "template": "Pushing [something]", "label": "pushing a cup"}]))
    assert [r.video_id for r in read_video_list(ssv2, index, role="val")] == ["1H", "2P"]
    generic = tmp_path / "splits.csv"
    generic.write_text("path,label,split\n1H.webm,Holding something,train\n2H.webm,Holding something,val\n"
                       "1P.webm,Pushing something,train\n")
    assert [r.video_id for r in read_video_list(generic, index, role="train")] == ["1H", "1P"]
    assert [r.video_id for r in read_video_list(generic, index, role="val")] == ["2H"]


def test_fit_takes_hmdb51_split_files_through_a_glob(make_tiny_shards, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    tiny = make_tiny_shards(num_classes=2, videos_per_class=3, class_names=["brush_hair", "cartwheel"],
                            id_format="{cls}/{cls}_clip_{g}", num_frames=12)
    splits = tmp_path / "splits"
    splits.mkdir()
    for cls in ("brush_hair", "cartwheel"):
        (splits / f"{cls}_test_split1.txt").write_text(f"{cls}_clip_1.avi 1\n{cls}_clip_2.avi 1\n{cls}_clip_3.avi 2\n")
    run = subprocess.run([sys.executable, "-m", "trainer", "fit", "--stream", "temporal", "--shards", str(tiny.root),
                          "--train-list", str(splits / "*_test_split1.txt"), "--out", str(tmp_path / "run"),
                          "--epochs", "1", "--batch-size", "2", "--workers", "0", "--crop-size", "32", "--device", "cpu",
                          "--arch", "resnet18", "--no-progress"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # as tests/trainer/conftest.py sets in here
    assert run.returncode == 0, run.stderr
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1


def test_test_splits_without_labels_name_their_videos_and_the_shards_give_the_labels(make_tiny_shards,
                                                                                    tmp_path: Path) -> None:
    """SSv2's test JSON is a list of {"id": ...}; Kinetics' test CSV has no label column."""
    tiny = make_tiny_shards(num_classes=2, videos_per_class=2, class_names=["Holding something", "Pushing something"],
                            id_format="{g}{cls[0]}")
    index = index_shards(tiny.root)
    ssv2 = tmp_path / "something-something-v2-test.json"
    ssv2.write_text(json.dumps([{"id": "2P"}, {"id": "1H"}]))
    records = read_video_list(ssv2, index, role="test")
    assert [(r.video_id, r.class_name) for r in records] == [("2P", "Pushing something"), ("1H", "Holding something")]
    kinetics = make_tiny_shards(num_classes=2, videos_per_class=1, class_names=["abseiling", "air drumming"],
                                id_format="test/yt{g}x{cls[1]}_000010_000020")
    csv = tmp_path / "test.csv"
    csv.write_text("youtube_id,time_start,time_end,split\nyt1xi,10,20,test\nyt1xb,10,20,test\n")
    records = read_video_list(csv, index_shards(kinetics.root), role="test")
    assert [r.class_name for r in records] == ["air drumming", "abseiling"]


def test_every_video_a_list_names_that_the_shards_lack_is_in_one_error(tiny_shards, tmp_path: Path) -> None:
    idx = index_shards(tiny_shards.root)
    lines = tiny_shards.train_list.read_text().splitlines()[:2] + [f"Drift/v_Drift_g9{i}_c01.avi 1" for i in range(7)]
    bad = tmp_path / "list.txt"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        read_video_list(bad, idx)
    (line,) = str(e.value).splitlines()
    assert line.startswith(f"{bad}:3: video 'Drift/v_Drift_g90_c01' is not in the shards under {tiny_shards.root}")
    assert all(f"list.txt:{n} 'Drift/v_Drift_g9{n - 3}_c01'" in line for n in (4, 5, 6, 7))
    assert "g95" not in line and "and 2 more (7 videos of the list are not in the shards)" in line


def test_list_format_overrides_the_detection(make_tiny_shards, tmp_path: Path) -> None:
    """A UCF-101 list whose first path holds a comma reads as a CSV unless told; --list-format reaches the lists."""
    from click.testing import CliRunner

    from trainer.cli import main

    tiny = make_tiny_shards(num_classes=2, videos_per_class=1, class_names=["A", "B"], id_format="{cls}/v,{g}")
    index = index_shards(tiny.root)
    ucf = tmp_path / "list.txt"
    ucf.write_text("A/v,1.avi 1\nB/v,1.avi 2\n")
    with pytest.raises(DataError):
        read_video_list(ucf, index)  # detected as a CSV: 'A/v' labelled '1.avi 1'
    assert [r.video_id for r in read_video_list(ucf, index, kind="ucf101")] == ["A/v,1", "B/v,1"]
    result = CliRunner().invoke(main, ["evaluate", "--shards", str(tiny.root), "--test-list", str(ucf),
                                       "--list-format", "kinetics", "--temporal", str(tmp_path),
                                       "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 1 and "expected Kinetics columns" in result.output, result.output
    assert "Traceback" not in result.output


def test_lists_saved_with_a_byte_order_mark_read_like_any_other(make_tiny_shards, tmp_path: Path) -> None:
    tiny = make_tiny_shards(num_classes=2, videos_per_class=1, class_names=["air drumming", "abseiling"],
                            id_format="{cls}/{cls}_{g}")
    index = index_shards(tiny.root)
    generic = tmp_path / "train.csv"  # Excel's "CSV UTF-8": a BOM before the header, CRLF
    generic.write_bytes("\ufeffpath,label\r\nair drumming/air drumming_1.mp4,air drumming\r\n".encode())
    ucf = tmp_path / "trainlist.txt"
    ucf.write_bytes("\ufeffabseiling/abseiling_1.avi 2\r\n".encode())
    assert [r.video_id for r in read_video_list(generic, index, role="train")] == ["air drumming/air drumming_1"]
    assert [(r.video_id, r.label) for r in read_video_list(ucf, index, role="train")] == [("abseiling/abseiling_1", 1)]


def test_shards_holding_unlabelled_test_videos_train_on_the_labelled_ones(make_tiny_shards, tmp_path: Path) -> None:
    """flowprep extract with Kinetics' test.csv among --labels (or a test/ folder) writes label -1, class ''."""
    import hashlib

    import h5py
    import numpy as np

    tiny = make_tiny_shards(num_classes=2, videos_per_class=2, class_names=["abseiling", "air drumming"],
                            id_format="yt{g}x{cls[1]}_000010_000020")
    unlabelled = "yt2xi_000010_000020"
    for shard in tiny.root.glob("*.h5"):
        with h5py.File(shard, "r+") as f:
            if f"videos/{unlabelled}" in f:
                f[f"videos/{unlabelled}"].attrs["label"] = np.int64(-1)
                f[f"videos/{unlabelled}"].attrs["class_name"] = ""
    manifest = json.loads((tiny.root / "manifest.json").read_text())
    for entry in manifest["shards"]:
        data = (tiny.root / entry["name"]).read_bytes()
        entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (tiny.root / "manifest.json").write_text(json.dumps(manifest))
    train = tmp_path / "train.csv"
    train.write_text('label,youtube_id,time_start,time_end,split\nabseiling,yt1xb,10,20,train\n'
                     '"air drumming",yt1xi,10,20,train\n')
    index = index_shards(tiny.root)
    assert index.videos[unlabelled].label == -1
    records = read_video_list(train, index, role="train")
    assert [r.class_name for r in records] == ["abseiling", "air drumming"]
    test = tmp_path / "test.csv"  # a list that names the unlabelled video: refused, since no label can be checked
    test.write_text("youtube_id,time_start,time_end,split\nyt2xi,10,20,test\nyt2xb,10,20,test\n")
    with pytest.raises(DataError, match=r"^1 video\(s\) of .*test.csv have no label in the shards .*"
                                        r"test.csv\[?.*'yt2xi_000010_000020'$"):
        read_video_list(test, index, role="test")


def test_a_csv_split_column_with_an_unknown_split_or_without_the_wanted_one_says_so(make_tiny_shards,
                                                                                     tmp_path: Path) -> None:
    tiny = make_tiny_shards(num_classes=1, videos_per_class=2, class_names=["air drumming"], id_format="{cls}/{g}")
    index = index_shards(tiny.root)
    odd = tmp_path / "odd.csv"
    odd.write_text("path,label,split\nair drumming/1.mp4,air drumming,trainval\nair drumming/2.mp4,air drumming,1\n")
    with pytest.raises(DataError) as e:
        read_video_list(odd, index, role="train")
    assert str(e.value) == ("odd.csv:2: split 'trainval' is none of test, testing, train, training, val, valid, "
                            "validate, validation (2 such row(s)); leave the column empty for a row of every split")
    no_test = tmp_path / "splits.csv"
    no_test.write_text("path,label,split\nair drumming/1.mp4,air drumming,train\nair drumming/2.mp4,air drumming,val\n")
    with pytest.raises(DataError, match=r"^.*splits.csv: no row of the test split \(its split column holds train, val\)$"):
        read_video_list(no_test, index, role="test")


def test_lists_find_videos_whose_names_are_spelled_in_the_other_unicode_form(make_tiny_shards, tmp_path: Path) -> None:
    # Files copied from macOS keep decomposed accents (NFD): the shards' ids are those names, while a list typed
    # or generated on Linux is composed (NFC). On Linux the two spellings are different names.
    import unicodedata

    nfd = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731
    tiny = make_tiny_shards(num_classes=2, videos_per_class=1, class_names=["Ballet", "Judo"],
                            id_format=nfd("{cls}/{cls}_café_{g}"))
    index = index_shards(tiny.root)
    assert sorted(index.videos) == [nfd("Ballet/Ballet_café_1"), nfd("Judo/Judo_café_1")]
    ucf = tmp_path / "trainlist.txt"
    ucf.write_text("Ballet/Ballet_café_1.avi 1\nJudo/Judo_café_1.avi 2\n")  # composed, as typed
    assert [r.video_id for r in read_video_list(ucf, index)] == sorted(index.videos)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nJudo/Judo_café_1.avi,Judo\n")
    assert [r.video_id for r in read_video_list(csv, index)] == [nfd("Judo/Judo_café_1")]
    kinetics = tmp_path / "validate.csv"
    kinetics.write_text("label,youtube_id,time_start,time_end,split\nBallet,Ballet_café_1,10,20,val\n")
    tiny_kin = make_tiny_shards(num_classes=1, videos_per_class=1, class_names=["Ballet"],
                                id_format=nfd("{cls}/{cls}_café_{g}_000010_000020"))
    assert len(read_video_list(kinetics, index_shards(tiny_kin.root))) == 1
    same = tmp_path / "same.txt"  # a list in the shards' own spelling still matches exactly
    same.write_text(nfd("Judo/Judo_café_1.avi 2\n"))
    assert [r.video_id for r in read_video_list(same, index)] == [nfd("Judo/Judo_café_1")]


def test_a_class_name_in_the_other_unicode_form_is_the_same_class(make_tiny_shards, tmp_path: Path) -> None:
    # Kinetics class folders copied from macOS (NFD) extracted with --layout kinetics; the official CSVs are NFC
    import unicodedata

    tiny = make_tiny_shards(num_classes=2, videos_per_class=1, class_names=[unicodedata.normalize("NFD", "café"), "judo"],
                            id_format="{g}x{cls[0]}_000010_000020")
    kinetics = tmp_path / "train.csv"
    kinetics.write_text("label,youtube_id,time_start,time_end,split\ncafé,1xc,10,20,train\njudo,1xj,10,20,train\n")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n1xc_000010_000020.mp4,café\n")
    index = index_shards(tiny.root)
    assert [r.label for r in read_video_list(kinetics, index)] == [0, 1]
    assert [r.label for r in read_video_list(csv, index)] == [0]


@pytest.mark.parametrize("role", ["val", "test"])
def test_a_video_listed_twice_in_a_scored_list_is_one_line_naming_both_places(tiny_shards, tmp_path: Path,
                                                                              role: str) -> None:
    idx = index_shards(tiny_shards.root)
    first, second = tiny_shards.train_list.read_text().splitlines()[:2]
    ucf = tmp_path / "list.txt"
    ucf.write_text(f"{first}\n\n{second}\n{first}  \n")  # a blank line and trailing spaces too
    with pytest.raises(DataError) as e:
        read_video_list(ucf, idx, role=role)
    vid = first.split()[0].rsplit(".", 1)[0]
    assert str(e.value) == (f"{ucf}:4: {vid} is listed twice (first at {ucf}:1); expected each video once in a "
                            "validation or test list (twice would count it twice in the scores)")
    # a training list may repeat a video on purpose (oversampling): each listing is a sample
    assert [r.video_id for r in read_video_list(ucf, idx, role="train")].count(vid) == 2


def test_an_hmdb51_test_video_tagged_twice_in_the_split_files_of_a_glob_is_named(make_tiny_shards, tmp_path: Path) -> None:
    tiny = make_tiny_shards(num_classes=2, videos_per_class=2, class_names=["brush_hair", "cartwheel"],
                            id_format="{cls}/{cls}_clip_{g}")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("brush_hair_clip_1.avi 2\nbrush_hair_clip_2.avi 1\n"
                                                         "brush_hair_clip_1.avi 2\n")
    (splits / "cartwheel_test_split1.txt").write_text("cartwheel_clip_1.avi 2\n")
    with pytest.raises(DataError, match=r"brush_hair_test_split1.txt:3: brush_hair/brush_hair_clip_1 is listed twice "
                                        r"\(first at .*brush_hair_test_split1.txt:1\)"):
        read_video_list(splits / "*_test_split1.txt", index_shards(tiny.root), role="test")


def test_a_list_that_is_not_utf8_names_the_file_and_the_line(tiny_shards, tmp_path: Path) -> None:
    idx = index_shards(tiny_shards.root)
    first = tiny_shards.train_list.read_text().splitlines()[0]
    latin1 = tmp_path / "trainlist.txt"
    latin1.write_bytes(f"{first}\nJump/caf\xe9.avi 1\n".encode("latin-1"))  # saved by an editor as Latin-1
    with pytest.raises(DataError) as e:
        read_video_list(latin1, idx)
    assert str(e.value) == f"{latin1}:2: not UTF-8 text (byte 0xe9); save it as UTF-8"  # as flowprep extract says


@pytest.mark.parametrize("kind", ["ucf101", "hmdb51", "csv"])
def test_a_list_saved_as_utf16_without_a_byte_order_mark_names_the_file_and_the_line(
    make_tiny_shards, tmp_path: Path, kind: str
) -> None:
    """ASCII text in UTF-16 is valid UTF-8 with a NUL after every character: a UCF-101 list named its first line's
    video as 'D\\x00r\\x00i\\x00...' not in the shards; the rule is flowprep extract's (labels.check_utf8)."""
    tiny = make_tiny_shards(num_classes=2, videos_per_class=2, class_names=["brush_hair", "cartwheel"],
                            id_format="{cls}/{cls}_clip_{g}")
    text, name = {"ucf101": ("brush_hair/brush_hair_clip_1.avi 1\n", "trainlist.txt"),
                  "hmdb51": ("brush_hair_clip_1.avi 1\n", "brush_hair_test_split1.txt"),
                  "csv": ("path,label\nbrush_hair/brush_hair_clip_1.avi,brush_hair\n", "train.csv")}[kind]
    utf16 = tmp_path / name
    utf16.write_bytes(text.encode("utf-16-le"))  # Windows Notepad's "Unicode", without its byte order mark
    with pytest.raises(DataError) as e:
        read_video_list(utf16, index_shards(tiny.root), role="train")
    assert str(e.value) == f"{utf16}:1: not UTF-8 text (a NUL byte: UTF-16?); save it as UTF-8"
    utf16.write_bytes(text.encode("utf-16"))  # with its byte order mark: said so (it was "byte 0xff")
    with pytest.raises(DataError) as e:
        read_video_list(utf16, index_shards(tiny.root), role="train")
    assert str(e.value) == f"{utf16}:1: not UTF-8 text (it starts with a UTF-16 byte order mark); save it as UTF-8"
