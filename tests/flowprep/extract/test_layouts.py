"""flowprep extract beyond UCF-101's layout: flat folders, HMDB-51, Kinetics, Something-Something v2, any CSV."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from media import random_frames, write_video

from flowprep.cli import main
from flowprep.extract.labels import read_split
from flowprep.extract.reader import DatasetError, plan_videos
from flowprep.extract.verify import verify_output


def videos(root: Path, *paths: str) -> Path:
    for i, p in enumerate(paths):
        write_video(root / p, random_frames(4, 48, 64, seed=i), codec="libx264" if p.endswith((".mp4", ".mkv")) else
                    "mpeg4" if p.endswith(".avi") else "libvpx-vp9")
    return root


def touch(root: Path, *paths: str) -> Path:
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"")
    return root


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_flat_folder_is_extracted_unlabelled_with_a_note(tmp_path: Path) -> None:
    root = videos(tmp_path / "flat", "a.mp4", "b.mp4")
    out = tmp_path / "out"
    result = invoke("extract", "--videos", root, "--out", out, "--method", "farneback", "--workers", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "extracting them unlabelled (label -1)" in result.output
    assert json.loads((out / "manifest.json").read_text())["classes"] == []
    with h5py.File(out / "shard-00000.h5", "r") as f:
        assert (f["videos/a"].attrs["label"], f["videos/a"].attrs["class_name"]) == (-1, "")
    assert verify_output(out).ok


def test_hmdb51_action_folders_label_the_videos(tmp_path: Path) -> None:
    root = touch(tmp_path / "hmdb51", "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
                 "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi")
    classes, metas = plan_videos(root, layout="hmdb51")
    assert classes == ["brush_hair", "cartwheel"]
    assert [(m.video_id, m.label) for m in metas] == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0", 0), ("cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0", 1)]


def test_kinetics_split_and_label_folders_with_spaces(tmp_path: Path) -> None:
    root = touch(tmp_path / "k400", "train/air drumming/-VtLx-mcPds_000012_000022.mp4",
                 "train/abseiling/0347ZoDXyP0_000095_000105.mp4", "val/air drumming/aB3_kd9s_000001_000011.mp4")
    classes, metas = plan_videos(root, layout="kinetics")
    assert classes == ["abseiling", "air drumming"]
    assert {m.video_id: m.class_name for m in metas}["train/air drumming/-VtLx-mcPds_000012_000022"] == "air drumming"
    with pytest.raises(DatasetError, match=r"top-level folders of .* are splits \(train, val\), not classes"):
        plan_videos(root)


def test_top_level_split_folders_are_classes_when_layout_folders_says_so(tmp_path: Path) -> None:
    """The refusal of train/ and val/ as classes names --layout folders as the way to take them anyway."""
    root = touch(tmp_path / "by-split", "train/a.mp4", "val/b.mp4")
    with pytest.raises(DatasetError, match=r"or --layout folders to label them by these names anyway$"):
        plan_videos(root)
    classes, metas = plan_videos(root, layout="folders")
    assert classes == ["train", "val"]
    assert [(m.video_id, m.label) for m in metas] == [("train/a", 0), ("val/b", 1)]


KINETICS_CSV = """label,youtube_id,time_start,time_end,split
"air drumming",-VtLx-mcPds,12,22,train
abseiling,0347ZoDXyP0,95,105,train
"passing American football (in game)",zzzzzzzzzzz,1,11,train
"""


def test_the_official_kinetics_csv_labels_flat_downloads(tmp_path: Path) -> None:
    root = touch(tmp_path / "k400", "train/-VtLx-mcPds_000012_000022.mp4", "train/0347ZoDXyP0_000095_000105.mp4")
    csv = tmp_path / "train.csv"
    csv.write_text(KINETICS_CSV)
    notes = []
    classes, metas = plan_videos(root, labels=[csv], warn=notes.append)
    assert classes == ["abseiling", "air drumming"] and [m.class_name for m in metas] == ["air drumming", "abseiling"]
    assert notes == ["note: 1 of the 3 videos in the labels file(s) are not under --videos"]  # downloads miss some
    touch(root, "train/unknown_000001_000002.mp4")
    with pytest.raises(DatasetError, match="train/unknown_000001_000002.mp4: not in the labels file"):
        plan_videos(root, labels=[csv])


def test_kinetics_times_written_as_whole_floats_match_the_files_and_other_numbers_are_refused_per_row(
    tmp_path: Path
) -> None:
    # "95.0" (some mirrors of the CSVs) was refused per row: "expected integer time_start and time_end"
    root = touch(tmp_path / "k400", "train/-VtLx-mcPds_000012_000022.mp4", "train/0347ZoDXyP0_000095_000105.mp4")
    csv = tmp_path / "train.csv"
    csv.write_text('label,youtube_id,time_start,time_end,split\n"air drumming",-VtLx-mcPds,12.0,22.0,train\n'
                   "abseiling,0347ZoDXyP0,95.,105,train\n")
    classes, metas = plan_videos(root, labels=[csv])
    assert [(m.source, m.class_name) for m in metas] == [("train/-VtLx-mcPds_000012_000022.mp4", "air drumming"),
                                                          ("train/0347ZoDXyP0_000095_000105.mp4", "abseiling")]
    assert [e.stem for e in read_split(csv, role="train")] == ["-VtLx-mcPds_000012_000022", "0347ZoDXyP0_000095_000105"]
    garbage = ["12.5", "nan", "inf", "-12", "1e1", "1_2", "twelve", ""]
    csv.write_text("label,youtube_id,time_start,time_end,split\n" +
                   "".join(f"abseiling,id{i:09d},{t},22,train\n" for i, t in enumerate(garbage)))
    with pytest.raises(DatasetError) as e:
        plan_videos(root, labels=[csv])
    lines = str(e.value).splitlines()
    assert [line.split(":", 2)[1] for line in lines[:len(garbage)]] == [str(n) for n in range(2, 2 + len(garbage))]
    assert all("expected whole seconds (12 or 12.0) in time_start and time_end" in line for line in lines[:len(garbage)])


def test_something_something_v2_json_and_its_label_index(tmp_path: Path) -> None:
    root = touch(tmp_path / "ssv2", "78687.webm", "42326.webm")
    train = tmp_path / "something-something-v2-train.json"
    train.write_text(json.dumps([
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle",
         "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks vaporub bottle"]},
        {"id": "42326", "label": "spreading margarine onto bread", "template": "Spreading [something] onto [something]",
         "placeholders": ["margarine", "bread"]}]))
    index = tmp_path / "something-something-v2-labels.json"
    index.write_text(json.dumps({"Spreading something onto something": "1", "Holding something next to something": "0",
                                 "Approaching something with your camera": "2"}))
    classes, metas = plan_videos(root, layout="ssv2", labels=[train], class_index=index)
    assert classes == ["Holding something next to something", "Spreading something onto something",
                       "Approaching something with your camera"]
    assert {m.video_id: m.label for m in metas} == {"78687": 0, "42326": 1}
    with pytest.raises(DatasetError, match="--layout ssv2 needs --labels"):
        plan_videos(root, layout="ssv2")


def test_a_generic_csv_labels_any_layout_and_every_problem_is_one_line(tmp_path: Path) -> None:
    root = touch(tmp_path / "any", "a/b/clip 1.mp4", "c.mkv", "d.mp4")
    good = tmp_path / "labels.csv"
    good.write_text("path,label,split\na/b/clip 1.mp4,jumping jacks,train\nc,ßki,val\nd.mp4,jumping jacks,train\n")
    classes, metas = plan_videos(root, labels=[good])
    assert classes == ["jumping jacks", "ßki"]
    assert {m.video_id: m.class_name for m in metas} == {"a/b/clip 1": "jumping jacks", "c": "ßki", "d": "jumping jacks"}
    bad = tmp_path / "bad.csv"
    bad.write_text("a/b/clip 1.mp4,jumping jacks\nc.mkv,ßki\nc.mkv,ßki\ngone.mp4,ßki\nbroken line\n")
    index = tmp_path / "classInd.txt"
    index.write_text("1 jumping jacks\n")
    result = invoke("extract", "--videos", root, "--out", tmp_path / "out", "--labels", bad, "--class-index", index)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: bad.csv:3: 'c' is labelled twice (first at bad.csv:2)",
        "bad.csv:5: expected 'path,label[,split]', got 'broken line'",
        "d.mp4: not in the labels file(s) bad.csv",
        "bad.csv:4: names 'gone', which is not under --videos",
        f"class 'ßki' is not in {index}: 1 video(s), e.g. 'c.mkv'",
    ]
    assert not (tmp_path / "out").exists()


def test_a_class_index_with_spaces_in_class_names(tmp_path: Path) -> None:
    root = touch(tmp_path / "v", "air drumming/x.mp4", "abseiling/y.mp4")
    index = tmp_path / "classInd.txt"
    index.write_text("1 air drumming\n2 abseiling\n")
    classes, metas = plan_videos(root, class_index=index)
    assert classes == ["air drumming", "abseiling"] and [m.label for m in metas] == [1, 0]


def test_label_files_saved_with_a_byte_order_mark_and_crlf_read_like_any_other(tmp_path: Path) -> None:
    bom = "\ufeff"
    root = touch(tmp_path / "k", "-VtLx-mcPds_000012_000022.mp4", "0347ZoDXyP0_000095_000105.mp4")
    kinetics = tmp_path / "train.csv"  # Excel's "CSV UTF-8": a BOM, CRLF line ends
    kinetics.write_bytes((bom + KINETICS_CSV).replace("\n", "\r\n").encode())
    generic = tmp_path / "labels.csv"
    generic.write_bytes(f"{bom}path,label\r\n-VtLx-mcPds_000012_000022.mp4,air drumming\r\n"
                        "0347ZoDXyP0_000095_000105.mp4,abseiling\r\n".encode())
    index = tmp_path / "classInd.txt"
    index.write_bytes(f"{bom}1 air drumming\r\n2 abseiling\r\n".encode())
    for labels in (kinetics, generic):
        classes, metas = plan_videos(root, labels=[labels], class_index=index)
        assert {m.video_id: (m.label, m.class_name) for m in metas} == {
            "-VtLx-mcPds_000012_000022": (0, "air drumming"), "0347ZoDXyP0_000095_000105": (1, "abseiling")}


@pytest.mark.parametrize("option", ["--labels", "--class-index"])
def test_a_label_file_saved_as_latin1_is_one_line_naming_file_and_line_and_exit_2(tmp_path: Path, option: str) -> None:
    """The class index crashed as 'unexpected UnicodeDecodeError' with exit 75 (rerun to resume); a labels file was
    exit 2 with Python's text, which named neither the file nor the line."""
    root = touch(tmp_path / "v", "caf\u00e9/a.mp4")
    label_file = tmp_path / "labels.txt"
    label_file.write_bytes("path,label\na.mp4,caf\u00e9\n".encode("latin-1") if option == "--labels" else
                          "1 caf\u00e9\n".encode("latin-1"))
    out = tmp_path / "out"
    result = invoke("extract", "--videos", root, "--out", out, option, label_file)
    assert result.exit_code == 2, result.output
    line = 2 if option == "--labels" else 1
    assert result.output.strip() == f"Error: {label_file}:{line}: not UTF-8 text (byte 0xe9); save it as UTF-8"
    assert not out.exists()


@pytest.mark.parametrize("option", ["--labels", "--class-index"])
def test_a_label_file_saved_as_utf16_without_a_byte_order_mark_is_one_line_and_exit_2(tmp_path: Path, option: str) -> None:
    # ASCII text in UTF-16 is valid UTF-8 with a NUL byte after every character: it was read as names holding NULs
    root = touch(tmp_path / "v", "Zoo/a.mp4")
    label_file = tmp_path / "labels.txt"
    label_file.write_bytes(("path,label\nZoo/a.mp4,Zoo\n" if option == "--labels" else "1 Zoo\n").encode("utf-16-le"))
    out = tmp_path / "out"
    result = invoke("extract", "--videos", root, "--out", out, option, label_file)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: {label_file}:1: not UTF-8 text (a NUL byte: UTF-16?); save it as UTF-8"
    assert not out.exists()
    label_file.write_bytes(("path,label\nZoo/a.mp4,Zoo\n" if option == "--labels" else "1 Zoo\n").encode("utf-16"))
    result = invoke("extract", "--videos", root, "--out", out, option, label_file)  # with the byte order mark
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"Error: {label_file}:1: not UTF-8 text (it starts with a UTF-16 byte order "
                                     "mark); save it as UTF-8")
    assert not out.exists()


def test_a_labels_file_with_a_header_alone_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    root = touch(tmp_path / "v", "a.mp4")
    header = tmp_path / "labels.csv"
    header.write_text("path,label,split\n")
    out = tmp_path / "out"
    result = invoke("extract", "--videos", root, "--out", out, "--labels", header)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: labels.csv: lists no videos (an empty file, or a header alone)",
        "a.mp4: not in the labels file(s) labels.csv"]
    assert not out.exists()


def test_the_official_test_files_among_the_labels_extract_their_videos_unlabelled(tmp_path: Path) -> None:
    """A full download holds the test videos too: README's commands give the test file with the others."""
    ssv2 = touch(tmp_path / "20bn-something-something-v2", "78687.webm", "1420.webm")
    train, test = tmp_path / "something-something-v2-train.json", tmp_path / "something-something-v2-test.json"
    train.write_text(json.dumps([{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
                                  "template": "Holding [something] next to [something]", "placeholders": []}]))
    test.write_text(json.dumps([{"id": "1420"}]))
    notes = []
    classes, metas = plan_videos(ssv2, layout="ssv2", labels=[train, test], warn=notes.append)
    assert classes == ["Holding something next to something"]
    assert {m.video_id: (m.label, m.class_name) for m in metas} == {
        "78687": (0, "Holding something next to something"), "1420": (-1, "")}
    assert notes == ["note: 1 video(s) have no label in the labels file(s) (a test split): extracting them "
                     "unlabelled (label -1)"]
    k400 = touch(tmp_path / "k400", "-VtLx-mcPds_000012_000022.mp4", "aaaaaaaaaaa_000001_000011.mp4")
    kinetics_test = tmp_path / "test.csv"
    kinetics_test.write_text("youtube_id,time_start,time_end,split\naaaaaaaaaaa,1,11,test\n")
    (tmp_path / "train.csv").write_text(KINETICS_CSV)
    classes, metas = plan_videos(k400, labels=[tmp_path / "train.csv", kinetics_test])
    assert {m.video_id: m.label for m in metas} == {"-VtLx-mcPds_000012_000022": 0, "aaaaaaaaaaa_000001_000011": -1}


def test_the_ssv2_labels_file_given_as_labels_is_one_line_that_names_it_a_class_index(tmp_path: Path) -> None:
    """README's SSv2 command takes four JSON files: three lists of videos (--labels) and the class index."""
    ssv2 = touch(tmp_path / "20bn-something-something-v2", "78687.webm")
    index = tmp_path / "something-something-v2-labels.json"
    index.write_text(json.dumps({"Holding something next to something": "0", "Putting something, something and "
                                 "something on the table": "1"}, indent=1))
    result = invoke("extract", "--videos", ssv2, "--out", tmp_path / "out", "--layout", "ssv2", "--labels", index)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: {index}: expected a JSON list of videos, got dict (Something-Something's labels file "
        "{class name: index} is a class index: flowprep extract --class-index)"]


def test_kinetics_test_clips_in_a_split_folder_are_unlabelled_not_a_class_named_test(tmp_path: Path) -> None:
    root = touch(tmp_path / "k400", "train/air drumming/-VtLx-mcPds_000012_000022.mp4", "test/aaaaaaaaaaa_000001_000011.mp4")
    notes = []
    classes, metas = plan_videos(root, layout="kinetics", warn=notes.append)
    assert classes == ["air drumming"]
    assert {m.video_id: m.label for m in metas} == {"train/air drumming/-VtLx-mcPds_000012_000022": 0,
                                                   "test/aaaaaaaaaaa_000001_000011": -1}
    assert notes == ["note: 1 video(s) sit in split folders without label folders (test/<video>): extracting them "
                     "unlabelled (label -1)"]


def test_kinetics_training_clips_in_a_split_folder_without_label_folders_are_refused_not_extracted_unlabelled(
    tmp_path: Path,
) -> None:
    """A flat download (train/<clip>.mp4, its labels in train.csv) with --layout kinetics: hours of flow for
    clips no list can train on; the line says where their labels come from."""
    root = touch(tmp_path / "k400", "train/-VtLx-mcPds_000012_000022.mp4", "train/bbbbbbbbbbb_000002_000012.mp4",
                 "test/aaaaaaaaaaa_000001_000011.mp4")
    with pytest.raises(DatasetError, match=r"^2 video\(s\) sit in train/ without label folders, e\.g\. "
                                           r"'train/-VtLx-mcPds_000012_000022\.mp4': .*--labels train\.csv"):
        plan_videos(root, layout="kinetics")


def test_class_numbers_as_labels_keep_their_order(tmp_path: Path) -> None:
    root = touch(tmp_path / "v", *(f"clip{i}.mp4" for i in range(12)))
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"clip{i}.mp4,{i}\n" for i in range(12)))
    classes, metas = plan_videos(root, labels=[labels])
    assert classes == [str(i) for i in range(12)]  # not "0", "1", "10", "11", "2", ...
    assert all(m.label == int(m.class_name) for m in metas)


def test_every_pair_of_videos_that_would_share_an_id_is_a_line_with_the_other_problems(tmp_path: Path) -> None:
    root = touch(tmp_path / "v", "Run/a.avi", "Run/a.mp4", "Run/b.mkv", "Run/b.webm", "Zoo/c.mp4")
    index = tmp_path / "classInd.txt"
    index.write_text("1 Run\n")
    with pytest.raises(DatasetError) as e:
        plan_videos(root, class_index=index)
    assert str(e.value).splitlines() == [f"class 'Zoo' is not in {index}: 1 video(s), e.g. 'Zoo/c.mp4'",
                                         "'Run/a.avi' and 'Run/a.mp4' would both be stored as 'Run/a'",
                                         "'Run/b.mkv' and 'Run/b.webm' would both be stored as 'Run/b'"]


def test_a_labels_file_in_composed_unicode_finds_files_named_in_decomposed_unicode_as_macos_writes_them(
    tmp_path: Path,
) -> None:
    import unicodedata

    nfd = unicodedata.normalize("NFD", "Café/crème brûlée.mp4")
    root = touch(tmp_path / "any", nfd, unicodedata.normalize("NFD", "Kinetics/abcdefghijé_000010_000020.mp4"))
    assert (root / nfd).exists() and not (root / "Café").exists()  # two spellings, two names on Linux
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("path,label\nCafé/crème brûlée.mp4,dessert\nKinetics/abcdefghijé_000010_000020.mp4,x\n")
    classes, metas = plan_videos(root, labels=[csv_file])
    # found, and kept under the file's own name: the shard's id is the path on disk
    assert {m.video_id: m.class_name for m in metas} == {unicodedata.normalize("NFD", "Café/crème brûlée"): "dessert",
                                                         unicodedata.normalize("NFD", "Kinetics/abcdefghijé_000010_000020"): "x"}
    kinetics = tmp_path / "kinetics.csv"
    kinetics.write_text("label,youtube_id,time_start,time_end,split\nx,abcdefghijé,10,20,train\n")
    kin_root = touch(tmp_path / "kin", unicodedata.normalize("NFD", "abcdefghijé_000010_000020.mp4"))
    _, metas = plan_videos(kin_root, labels=[kinetics])
    assert [m.class_name for m in metas] == ["x"]


def test_class_folders_in_decomposed_unicode_are_the_class_index_names_typed_composed(tmp_path: Path) -> None:
    """A dataset copied from macOS (NFD folder names) with a classInd.txt typed elsewhere (NFC)."""
    import unicodedata

    root = touch(tmp_path / "any", unicodedata.normalize("NFD", "Café/a.mp4"), "Zoo/b.mp4")
    index = tmp_path / "classInd.txt"
    index.write_text("1 Zoo\n2 Café\n")
    classes, metas = plan_videos(root, class_index=index)
    assert classes == ["Zoo", "Café"]
    assert {m.video_id: (m.label, m.class_name) for m in metas} == {  # the id stays the name on disk
        unicodedata.normalize("NFD", "Café/a"): (1, "Café"), "Zoo/b": (0, "Zoo")}


def test_videos_all_under_one_folder_of_class_folders_get_a_note_naming_the_videos_folder_to_give(tmp_path: Path) -> None:
    """`unrar x UCF101.rar` makes UCF-101/<Class>/<video>.avi: --videos one level up gives one class, 'UCF-101'."""
    root = touch(tmp_path / "data", "UCF-101/Archery/v_Archery_g01_c01.avi", "UCF-101/Biking/v_Biking_g01_c01.avi")
    notes = []
    classes, _ = plan_videos(root, warn=notes.append)
    assert classes == ["UCF-101"]
    assert notes == [f"note: every video sits under the one folder 'UCF-101', so all get that one class; if it holds "
                     f"the class folders, give --videos {root / 'UCF-101'}"]
    notes.clear()
    assert plan_videos(root / "UCF-101", warn=notes.append)[0] == ["Archery", "Biking"] and notes == []
    assert plan_videos(touch(tmp_path / "one", "Archery/a.avi", "Archery/b.avi"), warn=notes.append)[0] == ["Archery"]
    assert notes == []  # one class folder holding its videos: nothing to say
