"""flowprep import-frames / export-frames: JPEG flow frames of the common toolkits <-> shards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from flowprep import format as fmt
from flowprep.cli import main
from flowprep.extract.verify import format_report, verify_output
from flowprep.tools.import_frames import import_frames
from processes import bound_by_file_modes


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def gray(value: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(value + rng.integers(-3, 4, (h, w)), 0, 255).astype(np.uint8)


def write_jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    path.write_bytes(buf.tobytes())


def twostreamfusion(root: Path, videos: dict[str, int], *, rgb_extra: int = 1) -> Path:
    """The widely shared UCF-101 layout: u/<video>/frame000001.jpg, v/..., jpegs_256/..."""
    for k, (name, fields) in enumerate(videos.items()):
        for i in range(1, fields + 1):
            write_jpeg(root / "u" / name / f"frame{i:06d}.jpg", gray(140 + k, seed=i))  # ~ +2 px at bound 20
            write_jpeg(root / "v" / name / f"frame{i:06d}.jpg", gray(115, seed=i))  # ~ -2 px
        for i in range(1, fields + rgb_extra + 1):
            write_jpeg(root / "jpegs_256" / name / f"frame{i:06d}.jpg", np.full((24, 32, 3), 60 + i, np.uint8))
    return root


def test_twostreamfusion_frames_become_shards_that_ucf_lists_select(tmp_path: Path) -> None:
    frames = twostreamfusion(tmp_path / "tsf", {"v_ApplyEyeMakeup_g08_c01": 4, "v_Archery_g01_c02": 3})
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n3 Basketball\n")
    out = tmp_path / "shards"
    result = invoke("import-frames", "--frames", frames, "--out", out, "--layout", "twostreamfusion", "--bound", "20",
                    "--class-index", tmp_path / "classInd.txt")
    assert result.exit_code == 0, result.output
    assert "2 videos imported into 1 shard(s)" in result.output and "verify: OK" in result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == ["ApplyEyeMakeup", "Archery", "Basketball"]
    assert m["params"]["flow"]["method"] == "imported" and m["params"]["flow"]["bound"] == 20.0
    assert m["params"]["flow"]["params"]["source"] == "jpeg" and m["params"]["flow"]["params"]["lossy"] is True
    with h5py.File(out / "shard-00000.h5", "r") as f:
        g = f["videos/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01"]
        assert (g.attrs["num_frames"], g.attrs["label"], g["flow"].shape) == (5, 0, (4, 2, 24, 32))
        flow = fmt.dequantize(g["flow"][:], g["flow"].attrs["scale_factor"], g["flow"].attrs["add_offset"])
        assert abs(flow[:, 0].mean() - (140 * 40 / 255 - 20)) < 0.1 and abs(flow[:, 1].mean() - (115 * 40 / 255 - 20)) < 0.1
        assert g["rgb"][2].tobytes() == (frames / "jpegs_256" / "v_ApplyEyeMakeup_g08_c01" / "frame000003.jpg").read_bytes()
        assert f["videos/Archery/v_Archery_g01_c02"].attrs["label"] == 1
    listing = tmp_path / "testlist.txt"
    listing.write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\nArchery/v_Archery_g01_c02.avi\n")
    listed = {v for s in m["shards"] for v in s["videos"]}
    assert {e.video_id for e in fmt.read_list(listing)} == listed


def test_ucf101_handstand_pushups_named_with_a_capital_s_import_into_their_class_folder(tmp_path: Path) -> None:
    """UCF-101's folder HandstandPushups holds v_HandStandPushups_gNN_cNN.avi; classInd.txt and the lists use the
    folder's spelling (trainlist01.txt: 'HandstandPushups/v_HandStandPushups_g08_c01.avi 37')."""
    frames = twostreamfusion(tmp_path / "tsf", {"v_HandStandPushups_g08_c01": 3, "v_HandstandWalking_g01_c01": 3})
    (tmp_path / "classInd.txt").write_text("1 HandstandPushups\n2 HandstandWalking\n")
    out = tmp_path / "shards"
    result = invoke("import-frames", "--frames", frames, "--out", out, "--layout", "twostreamfusion",
                    "--class-index", tmp_path / "classInd.txt")
    assert result.exit_code == 0, result.output
    listing = tmp_path / "trainlist.txt"
    listing.write_text("HandstandPushups/v_HandStandPushups_g08_c01.avi 1\nHandstandWalking/v_HandstandWalking_g01_c01.avi 2\n")
    m = json.loads((out / "manifest.json").read_text())
    assert {v for s in m["shards"] for v in s["videos"]} == {e.video_id for e in fmt.read_list(listing)}
    with h5py.File(out / "shard-00000.h5", "r") as f:
        assert f["videos/HandstandPushups/v_HandStandPushups_g08_c01"].attrs["class_name"] == "HandstandPushups"


def test_a_bound_of_12_dequantizes_with_12(tmp_path: Path) -> None:
    frames = twostreamfusion(tmp_path / "tsf", {"v_A_g01_c01": 2})
    out = tmp_path / "shards"
    assert invoke("import-frames", "--frames", frames, "--out", out, "--layout", "twostreamfusion",
                  "--bound", "12").exit_code == 0
    with h5py.File(out / "shard-00000.h5", "r") as f:
        assert f["videos/A/v_A_g01_c01/flow"].attrs["add_offset"] == pytest.approx(-12.0)


def test_denseflow_names_at_the_top_numbered_from_zero(tmp_path: Path) -> None:
    root = tmp_path / "denseflow"
    for i in range(3):
        write_jpeg(root / "v_Run_g02_c01" / f"x_{i:05d}.jpg", gray(128, seed=i))
        write_jpeg(root / "v_Run_g02_c01" / f"y_{i:05d}.jpg", gray(128, seed=i + 9))
    out = tmp_path / "shards"
    result = invoke("import-frames", "--frames", root, "--out", out, "--layout", "denseflow", "--no-rgb")
    assert result.exit_code == 0, result.output
    assert verify_output(out).ok
    assert json.loads((out / "manifest.json").read_text())["shards"][0]["videos"] == ["Run/v_Run_g02_c01"]


def test_problems_are_named_per_video_and_nothing_is_written(tmp_path: Path) -> None:
    frames = twostreamfusion(tmp_path / "tsf", {"v_A_g01_c01": 4, "v_B_g01_c01": 3, "v_C_g01_c01": 3,
                                                "v_D_g01_c01": 2})
    (frames / "v" / "v_A_g01_c01" / "frame000004.jpg").unlink()  # fewer v than u
    (frames / "u" / "v_B_g01_c01" / "frame000002.jpg").unlink()  # a gap in u and v
    (frames / "v" / "v_B_g01_c01" / "frame000002.jpg").unlink()
    (frames / "jpegs_256" / "v_C_g01_c01" / "frame000004.jpg").unlink()  # as many RGB frames as flow frames
    out = tmp_path / "shards"
    result = invoke("import-frames", "--frames", frames, "--out", out, "--layout", "twostreamfusion")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: v_A_g01_c01: 4 u but 3 v flow frames",
        "v_B_g01_c01: u: frame(s) 2 missing",
        "v_B_g01_c01: v: frame(s) 2 missing",
        "v_B_g01_c01: 4 RGB frames for 2 flow frames, expected 3 (or pass --no-rgb)",
        "v_C_g01_c01: 3 RGB frames for 3 flow frames, expected 4 (or pass --no-rgb)",
    ]
    assert not out.exists() or not any(out.iterdir())


def test_export_then_import_gives_back_the_flow_up_to_jpeg_loss(ucf_tree: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    extract = invoke("extract", "--videos", ucf_tree, "--out", shards, "--method", "farneback", "--workers", "2",
                     "--no-progress")
    assert extract.exit_code == 0, extract.output
    frames = tmp_path / "frames"
    exported = invoke("export-frames", shards, "--out", frames, "--layout", "mmaction")
    assert exported.exit_code == 0 and "4 videos written as mmaction frames" in exported.output
    lines = (frames / "rawframes.txt").read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == ["Jump/v_Jump_g00", "Jump/v_Jump_g01", "Run/v_Run_g00", "Run/v_Run_g01"]
    assert all(line.split()[1:] in (["8", "0"], ["8", "1"]) for line in lines)
    back = tmp_path / "back"
    imported = invoke("import-frames", "--frames", frames, "--out", back, "--layout", "mmaction")
    assert imported.exit_code == 0, imported.output
    with h5py.File(shards / "shard-00000.h5", "r") as a, h5py.File(back / "shard-00000.h5", "r") as b:
        for vid in ("Jump/v_Jump_g00", "Run/v_Run_g01"):
            qa, qb = a[f"videos/{vid}/flow"][:].astype(int), b[f"videos/{vid}/flow"][:].astype(int)
            assert qa.shape == qb.shape and np.abs(qa - qb).mean() < 1.0  # JPEG quality 95
            assert [x.tobytes() for x in a[f"videos/{vid}/rgb"]] == [x.tobytes() for x in b[f"videos/{vid}/rgb"]]
            assert a[f"videos/{vid}"].attrs["label"] == b[f"videos/{vid}"].attrs["label"]


def test_export_of_a_damaged_or_missing_shard_is_one_line_saying_how_to_repair_it_and_writes_nothing(
    ucf_tree: Path, tmp_path: Path
) -> None:
    shards = tmp_path / "shards"
    assert invoke("extract", "--videos", ucf_tree, "--out", shards, "--method", "farneback", "--workers", "2",
                  "--no-progress").exit_code == 0
    shard = shards / "shard-00000.h5"
    good = shard.read_bytes()
    damaged = bytearray(good)
    damaged[len(good) - 1000] ^= 0xFF  # one flipped bit of data: a JPEG frame would go out as stored
    for content, problem in ((bytes(damaged), "sha256 differs from the manifest"),
                             (good[: len(good) // 2], f"{len(good) // 2} bytes, the manifest says {len(good)}"),
                             (None, "missing")):
        shard.unlink()
        if content is not None:
            shard.write_bytes(content)
        result = invoke("export-frames", shards, "--out", tmp_path / "frames")
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.output.strip() == (f"Error: {shard}: {problem}: the same flowprep extract command with --check "
                                         f"repairs it (flowprep verify {shards} names the videos), then export")
        assert not (tmp_path / "frames").exists()


def mmaction(root: Path, videos: dict[str, int]) -> Path:
    """mmaction2 rawframes: <...>/<Class>/<video>/flow_x_00001.jpg, flow_y_00001.jpg, img_00001.jpg."""
    for k, (folder, fields) in enumerate(videos.items()):
        for i in range(1, fields + 1):
            write_jpeg(root / folder / f"flow_x_{i:05d}.jpg", gray(100 + 20 * k, seed=i))
            write_jpeg(root / folder / f"flow_y_{i:05d}.jpg", gray(150, seed=i))
        for i in range(1, fields + 2):
            write_jpeg(root / folder / f"img_{i:05d}.jpg", np.full((24, 32, 3), 60 + i, np.uint8))
    return root


def labels_of(out: Path) -> dict[str, tuple[int, str]]:
    with h5py.File(out / "shard-00000.h5", "r") as f:
        return {vid: (int(f[f"videos/{vid}"].attrs["label"]), f[f"videos/{vid}"].attrs["class_name"])
                for s in json.loads((out / "manifest.json").read_text())["shards"] for vid in s["videos"]}


def test_the_round_trip_keeps_classes_of_split_folders_and_the_label_order(tmp_path: Path) -> None:
    """Kinetics rawframes sit in <split>/<class>/<video>/: the class is the folder holding the video."""
    frames = mmaction(tmp_path / "rawframes", {"train/air drumming/abc_000001_000011": 2,
                                               "val/crème brûlée/xyz_000002_000012": 2, "test/v_Run_g01_c01": 2})
    index = tmp_path / "classInd.txt"
    index.write_text("1 crème brûlée\n2 Run\n3 air drumming\n", encoding="utf-8")  # not sorted
    first = tmp_path / "first"
    assert invoke("import-frames", "--frames", frames, "--out", first, "--layout", "mmaction",
                  "--class-index", index).exit_code == 0
    expected = {"train/air drumming/abc_000001_000011": (2, "air drumming"), "val/crème brûlée/xyz_000002_000012":
                (0, "crème brûlée"), "test/v_Run_g01_c01": (1, "Run")}
    assert labels_of(first) == expected
    exported = tmp_path / "exported"
    result = invoke("export-frames", first, "--out", exported)
    assert result.exit_code == 0, result.output
    assert (exported / "classInd.txt").read_text(encoding="utf-8") == index.read_text(encoding="utf-8")
    again = tmp_path / "again"
    result = invoke("import-frames", "--frames", exported, "--out", again, "--layout", "mmaction",
                    "--class-index", exported / "classInd.txt")
    assert result.exit_code == 0, result.output
    assert labels_of(again) == expected and verify_output(again).ok


def test_the_round_trip_of_shards_labelled_by_a_file_keeps_their_ids_and_labels(tmp_path: Path) -> None:
    # extract --labels gives ids without class folders: the export wrote no label beside them, the import of
    # clipA/ said "cannot tell its class", and one of batch2/clipC/ took "batch2" for its class
    from media import random_frames, write_video

    from trainer.data.shards import index_shards

    videos = tmp_path / "videos"
    for k, name in enumerate(["clipA.mp4", "clipB.mp4", "batch2/clipC.mp4"]):
        write_video(videos / name, random_frames(4, 24, 32, seed=k))
    csv = tmp_path / "labels.csv"
    csv.write_text('path,label\nclipA.mp4,"pushing, then pulling"\nclipB.mp4,waving\nbatch2/clipC.mp4,waving\n',
                   encoding="utf-8")
    index = tmp_path / "classInd.txt"
    index.write_text("1 waving\n2 pushing, then pulling\n", encoding="utf-8")  # not sorted
    shards = tmp_path / "shards"
    extracted = invoke("extract", "--videos", videos, "--out", shards, "--labels", csv, "--class-index", index,
                       "--method", "farneback", "--workers", "1", "--no-progress")
    assert extracted.exit_code == 0, extracted.output
    frames = tmp_path / "frames"
    exported = invoke("export-frames", shards, "--out", frames)
    assert exported.exit_code == 0, exported.output
    assert (f"labels: {frames / 'labels.csv'} and {frames / 'classInd.txt'}; to import the frames with the same "
            f"labels: flowprep import-frames --frames {frames} --layout mmaction --labels {frames / 'labels.csv'} "
            f"--class-index {frames / 'classInd.txt'} --out ...") in exported.output
    assert (frames / "labels.csv").read_text(encoding="utf-8") == (
        'path,label\nbatch2/clipC,waving\nclipA,"pushing, then pulling"\nclipB,waving\n')
    again = tmp_path / "again"
    imported = invoke("import-frames", "--frames", frames, "--out", again, "--layout", "mmaction", "--labels",
                      frames / "labels.csv", "--class-index", frames / "classInd.txt", "--workers", "1")
    assert imported.exit_code == 0, imported.output
    before, after = index_shards(shards), index_shards(again)
    assert after.classes == before.classes == ["waving", "pushing, then pulling"]
    expected = {"clipA": (1, "pushing, then pulling"), "clipB": (0, "waving"), "batch2/clipC": (0, "waving")}
    for index_ in (before, after):
        assert {v: (r.label, r.class_name) for v, r in index_.videos.items()} == expected
    assert verify_output(again).ok
    # --labels names each folder: one it does not name is a problem, as for extract (nothing is written)
    (frames / "labels.csv").write_text("path,label\nclipA,waving\n", encoding="utf-8")
    refused = invoke("import-frames", "--frames", frames, "--out", tmp_path / "no", "--layout", "mmaction", "--labels",
                     frames / "labels.csv")
    assert refused.exit_code == 2 and "Error: batch2/clipC: not in the labels file(s) labels.csv" in refused.output
    assert not (tmp_path / "no").exists()


def test_frames_given_one_folder_too_high_get_extracts_note_naming_the_folder_to_give(tmp_path: Path) -> None:
    # imported without a word once: every id started with "rawframes/", so UCF-101's lists selected no video
    mmaction(tmp_path / "data" / "rawframes", {"Jump/v_Jump_g01_c01": 2, "Run/v_Run_g01_c01": 2})
    result = invoke("import-frames", "--frames", tmp_path / "data", "--out", tmp_path / "high", "--layout", "mmaction")
    assert result.exit_code == 0, result.output
    assert ("note: every video folder sits under the one folder 'rawframes', so every video id starts with it and "
            f"lists of <Class>/<video> select none; if it holds the class folders, give --frames "
            f"{tmp_path / 'data' / 'rawframes'}") in result.stderr.splitlines()  # on stderr, as extract's
    seen = []  # and said before any work, when a user can still stop and give the right folder
    import_frames(tmp_path / "data", tmp_path / "early", layout="mmaction", bound=20.0,
                  warn=lambda line: seen.append((line, list((tmp_path / "early").glob("*.h5")))))
    assert len(seen) == 1 and seen[0][0].startswith("note: every video folder sits under") and seen[0][1] == []
    for frames in (tmp_path / "data" / "rawframes", mmaction(tmp_path / "split", {"train/Jump/v_Jump_g01_c01": 2})):
        result = invoke("import-frames", "--frames", frames, "--out", tmp_path / frames.name / "out", "--layout",
                        "mmaction")  # the dataset root, and a split folder above the classes: no note
        assert result.exit_code == 0 and "note:" not in result.output, result.output


def test_export_into_a_folder_that_holds_files_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    frames = mmaction(tmp_path / "rawframes", {"Run/v_Run_g01_c01": 2})
    shards = tmp_path / "shards"
    assert invoke("import-frames", "--frames", frames, "--out", shards, "--layout", "mmaction").exit_code == 0
    before = sorted(p.relative_to(frames) for p in frames.rglob("*"))
    result = invoke("export-frames", shards, "--out", frames)  # stale frames would be imported again later
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {frames} is not an empty folder: export into a new --out (or delete it first)"
    assert sorted(p.relative_to(frames) for p in frames.rglob("*")) == before


def test_frames_of_another_size_found_while_writing_leave_nothing_behind(tmp_path: Path) -> None:
    frames = twostreamfusion(tmp_path / "tsf", {"v_A_g01_c01": 2, "v_B_g01_c01": 3})
    write_jpeg(frames / "v" / "v_B_g01_c01" / "frame000002.jpg", gray(128, h=30, w=40))
    out = tmp_path / "shards"
    result = invoke("import-frames", "--frames", frames, "--out", out, "--layout", "twostreamfusion")
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: B/v_B_g01_c01: u/v_B_g01_c01/frame000002.jpg is 32x24 but "
                                     "v/v_B_g01_c01/frame000002.jpg is 40x30")
    assert not out.exists()
    out.mkdir()  # an empty folder given as --out stays, empty
    assert invoke("import-frames", "--frames", frames, "--out", out, "--layout", "twostreamfusion").exit_code == 2
    assert list(out.iterdir()) == []


def test_a_missing_frame_in_the_middle_is_named_as_well_as_the_unequal_counts(tmp_path: Path) -> None:
    frames = twostreamfusion(tmp_path / "tsf", {"v_A_g01_c01": 4})
    (frames / "u" / "v_A_g01_c01" / "frame000002.jpg").unlink()
    result = invoke("import-frames", "--frames", frames, "--out", tmp_path / "shards", "--layout", "twostreamfusion")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["Error: v_A_g01_c01: u: frame(s) 2 missing",
                                                  "v_A_g01_c01: 3 u but 4 v flow frames"]


def test_an_empty_video_folder_or_one_of_rgb_frames_alone_is_named_not_skipped(tmp_path: Path) -> None:
    frames = mmaction(tmp_path / "rawframes", {"Run/v_Run_g01_c01": 2})
    (frames / "Run" / "v_Run_g02_c01").mkdir()  # the toolkit failed on this video
    for i in (1, 2, 3):
        write_jpeg(frames / "Run" / "v_Run_g03_c01" / f"img_{i:05d}.jpg", np.full((24, 32, 3), 9, np.uint8))
    for extra in ([], ["--no-rgb"]):
        result = invoke("import-frames", "--frames", frames, "--out", tmp_path / "shards", "--layout", "mmaction", *extra)
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [
            "Error: Run/v_Run_g02_c01: an empty folder (a video without frames?)",
            "Run/v_Run_g03_c01: 0 u and 0 v flow frames: both are needed"]
        assert not (tmp_path / "shards").exists()


def test_linked_class_folders_are_followed_as_extract_follows_them(tmp_path: Path) -> None:
    mmaction(tmp_path / "elsewhere", {"Jump/v_Jump_g01_c01": 2})
    frames = mmaction(tmp_path / "rawframes", {"Run/v_Run_g01_c01": 2})
    (frames / "Jump").symlink_to(tmp_path / "elsewhere" / "Jump", target_is_directory=True)
    (frames / "Run" / "again").symlink_to(frames / "Run", target_is_directory=True)  # a loop: read once
    out = tmp_path / "shards"
    result = invoke("import-frames", "--frames", frames, "--out", out, "--layout", "mmaction")
    assert result.exit_code == 0, result.output
    assert sorted(labels_of(out)) == ["Jump/v_Jump_g01_c01", "Run/v_Run_g01_c01"]


def test_test_frames_without_classes_import_unlabelled_and_make_the_round_trip(tmp_path: Path) -> None:
    frames = mmaction(tmp_path / "rawframes", {"1420": 2, "78687": 3, "v_Run_g01_c01": 2})  # SSv2 ids, a UCF name
    refused = invoke("import-frames", "--frames", frames, "--out", tmp_path / "no", "--layout", "mmaction")
    assert refused.exit_code == 2 and "1420: cannot tell its class" in refused.output
    first = tmp_path / "first"
    result = invoke("import-frames", "--frames", frames, "--out", first, "--layout", "mmaction", "--unlabelled")
    assert result.exit_code == 0, result.output
    expected = {"1420": (-1, ""), "78687": (-1, ""), "Run/v_Run_g01_c01": (-1, "")}
    assert labels_of(first) == expected and json.loads((first / "manifest.json").read_text())["classes"] == []
    exported = tmp_path / "exported"
    assert invoke("export-frames", first, "--out", exported).exit_code == 0
    assert not (exported / "classInd.txt").exists()
    assert sorted((exported / "rawframes.txt").read_text().splitlines()) == [
        "1420 3 -1", "78687 4 -1", "Run/v_Run_g01_c01 3 -1"]
    again = tmp_path / "again"
    assert invoke("import-frames", "--frames", exported, "--out", again, "--layout", "mmaction",
                  "--unlabelled").exit_code == 0
    assert labels_of(again) == expected and verify_output(again).ok


def test_frames_at_the_top_of_the_folder_are_refused_in_one_line(tmp_path: Path) -> None:
    frames = mmaction(tmp_path, {"rawframes": 2})
    result = invoke("import-frames", "--frames", frames / "rawframes", "--out", tmp_path / "out", "--layout", "mmaction",
                    "--unlabelled")
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {frames / 'rawframes'}: frames at the top of --frames; expected one folder per video"


def test_two_files_for_one_frame_number_are_named(tmp_path: Path) -> None:
    frames = mmaction(tmp_path / "rawframes", {"Run/v_Run_g01_c01": 2})
    for i in (1, 2):  # the old dense_flow names beside the new ones
        write_jpeg(frames / "Run" / "v_Run_g01_c01" / f"x_{i:05d}.jpg", gray(128))
    result = invoke("import-frames", "--frames", frames, "--out", tmp_path / "out", "--layout", "denseflow")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: Run/v_Run_g01_c01: u: frame 1 twice (flow_x_00001.jpg, x_00001.jpg)"


@pytest.mark.parametrize("frame, damage, expected", [
    ("flow_x_00002.jpg", lambda p: p.write_bytes(p.read_bytes()[:300]), "a JPEG cut short (no end marker): copy the frame again"),
    ("img_00003.jpg", lambda p: p.write_bytes(p.read_bytes()[:300]), "a JPEG cut short (no end marker): copy the frame again"),
    ("img_00002.jpg", lambda p: p.write_bytes(cv2.imencode(".png", np.zeros((24, 32, 3), np.uint8))[1].tobytes()),
     "not a JPEG file"),
])
def test_a_frame_cut_short_or_not_a_jpeg_is_named_and_nothing_is_written(tmp_path: Path, frame: str, damage,
                                                                           expected: str) -> None:
    frames = mmaction(tmp_path / "rawframes", {"Run/v_Run_g01_c01": 3})
    damage(frames / "Run" / "v_Run_g01_c01" / frame)  # OpenCV decodes both, with grey rows or as PNG
    result = invoke("import-frames", "--frames", frames, "--out", tmp_path / "shards", "--layout", "mmaction")
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {frames / 'Run' / 'v_Run_g01_c01' / frame}: {expected}"
    assert not (tmp_path / "shards").exists()


def test_an_rgb_frame_of_another_size_after_the_first_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    frames = mmaction(tmp_path / "rawframes", {"Run/v_Run_g01_c01": 3})
    write_jpeg(frames / "Run" / "v_Run_g01_c01" / "img_00003.jpg", np.full((30, 40, 3), 9, np.uint8))
    result = invoke("import-frames", "--frames", frames, "--out", tmp_path / "shards", "--layout", "mmaction")
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: Run/v_Run_g01_c01: RGB frame Run/v_Run_g01_c01/img_00003.jpg is 40x30, the "
                                     "flow is 32x24: the shard format needs one size (pass --no-rgb to import the flow "
                                     "alone)")
    assert not (tmp_path / "shards").exists()


def test_export_of_a_run_that_has_not_finished_is_refused_instead_of_dropping_its_videos(tmp_path: Path) -> None:
    frames = mmaction(tmp_path / "rawframes", {"Run/v_Run_g01_c01": 2, "Run/v_Run_g02_c01": 2})
    shards = tmp_path / "shards"
    assert invoke("import-frames", "--frames", frames, "--out", shards, "--layout", "mmaction",
                  "--videos-per-shard", "1").exit_code == 0
    m = json.loads((shards / "manifest.json").read_text())  # what a run killed after its first shard leaves
    m.update(complete=False, shards=m["shards"][:1])
    (shards / "manifest.json").write_text(json.dumps(m))
    (shards / "shard-00001.h5").unlink()
    result = invoke("export-frames", shards, "--out", tmp_path / "exported")
    assert result.exit_code == 2
    assert result.output.strip() == (f"Error: {shards} is incomplete (manifest.json says the run has not finished): "
                                     "rerun the same flowprep extract command to finish it, then export (flowprep "
                                     f"verify {shards} says what is missing)")
    assert not (tmp_path / "exported").exists()


# --- a long import resumes (UCF-101's frames: millions of JPEGs) ------------------------------------------------------


def _four_videos(tmp_path: Path) -> Path:
    return mmaction(tmp_path / "rawframes", {f"Run/v_Run_g0{i}_c01": 3 for i in range(1, 5)})


def _flow_of(out: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for entry in json.loads((out / "manifest.json").read_text())["shards"]:
        with h5py.File(out / entry["name"], "r") as f:
            for vid in entry["videos"]:
                arrays[vid] = f[f"videos/{vid}/flow"][:]
                arrays[vid + "/rgb"] = np.concatenate([np.frombuffer(b.tobytes(), np.uint8) for b in f[f"videos/{vid}/rgb"]])
    return arrays


def test_an_import_killed_after_its_first_shard_goes_on_from_it_and_equals_one_run(tmp_path: Path) -> None:
    import signal
    import sys

    frames = _four_videos(tmp_path)
    one_run = tmp_path / "one-run"
    assert invoke("import-frames", "--frames", frames, "--out", one_run, "--layout", "mmaction",
                  "--videos-per-shard", "2").exit_code == 0
    out = tmp_path / "shards"
    # a real process, killed with SIGKILL while it writes the first video of its second shard
    code = ("import os, signal, sys; from flowprep.tools import import_frames as m; real = m._write_video\n"
            "def write(f, video, *a, **k):\n"
            "    if video.video_id.endswith('g03_c01'): os.kill(os.getpid(), signal.SIGKILL)\n"
            "    real(f, video, *a, **k)\n"
            "m._write_video = write\n"
            "from flowprep.cli import main; main(sys.argv[1:])")
    killed = subprocess.run([sys.executable, "-c", code, "import-frames", "--frames", str(frames), "--out", str(out),
                             "--layout", "mmaction", "--videos-per-shard", "2", "--workers", "1"], capture_output=True,
                            text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "manifest.json.lock", "shard-00000.h5",
                                                      "shard-00001.h5.tmp"]
    first = (out / "shard-00000.h5").stat()
    assert not verify_output(out).ok  # an import cut short says so
    result = invoke("import-frames", "--frames", frames, "--out", out, "--layout", "mmaction", "--videos-per-shard", "2")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "resume: 1 shard(s) of an earlier run kept"
    assert "4 videos imported into 2 shard(s)" in result.output and "verify: OK" in result.output
    again = (out / "shard-00000.h5").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # kept, not written again
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.h5", "shard-00001.h5"]
    a, b = _flow_of(one_run), _flow_of(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_bad_frame_found_while_writing_keeps_the_finished_shards_and_the_fixed_rerun_goes_on(tmp_path: Path) -> None:
    frames = _four_videos(tmp_path)
    bad = frames / "Run" / "v_Run_g04_c01" / "flow_x_00002.jpg"
    good = bad.read_bytes()
    bad.write_bytes(good[:300])
    out = tmp_path / "shards"
    args = ["import-frames", "--frames", frames, "--out", out, "--layout", "mmaction", "--videos-per-shard", "2",
            "--workers", "1"]
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.output.strip() == (f"Error: {bad}: a JPEG cut short (no end marker): copy the frame again (1 finished "
                                     "shard(s) are kept: fix it and rerun the same command to go on)")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.h5"]
    bad.write_bytes(good)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "resume: 1 shard(s) of an earlier run kept" in result.output and "verify: OK" in result.output


def test_a_rerun_of_a_finished_import_changes_nothing_and_another_import_is_refused(tmp_path: Path) -> None:
    frames = _four_videos(tmp_path)
    out = tmp_path / "shards"
    args = ["import-frames", "--frames", frames, "--out", out, "--layout", "mmaction", "--videos-per-shard", "2"]
    assert invoke(*args).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = invoke(*args)
    assert result.exit_code == 0 and "4 videos imported into 2 shard(s)" in result.output, result.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    (out / "shard-00001.h5").unlink()  # a lost shard is imported again
    result = invoke(*args)
    assert result.exit_code == 0 and result.output.splitlines()[0] == "repair: shard-00001.h5 missing: imported again"
    assert verify_output(out).ok
    other = invoke(*args, "--bound", "12")
    assert other.exit_code == 2
    assert other.output.strip() == (f"Error: {out} already holds a flowprep output (not this import of these frames "
                                    "with these options): use another --out")
    assert verify_output(out).ok


def test_import_and_export_show_progress_when_asked_and_not_in_a_log_by_default(tmp_path: Path) -> None:
    frames = _four_videos(tmp_path)
    shown = invoke("import-frames", "--frames", frames, "--out", tmp_path / "a", "--layout", "mmaction", "--progress")
    assert shown.exit_code == 0 and "import: 100%" in shown.output and "4/4" in shown.output
    quiet = invoke("import-frames", "--frames", frames, "--out", tmp_path / "b", "--layout", "mmaction")
    assert quiet.exit_code == 0 and "import:" not in quiet.output
    exported = invoke("export-frames", tmp_path / "a", "--out", tmp_path / "c", "--progress")
    assert exported.exit_code == 0 and "export: 100%" in exported.output and "4/4" in exported.output
    quiet = invoke("export-frames", tmp_path / "a", "--out", tmp_path / "d")
    assert quiet.exit_code == 0 and "export:" not in quiet.output


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_during_an_import_is_75_and_the_rerun_after_freeing_space_goes_on(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = tmp_path / "rawframes"
    for k in range(1, 5):  # noise: ~445 kB per shard of two videos, whatever the compression
        folder = frames / "Run" / f"v_Run_g0{k}_c01"
        for i in range(1, 4):
            write_jpeg(folder / f"flow_x_{i:05d}.jpg", rng.integers(0, 256, (120, 160), dtype=np.uint8))
            write_jpeg(folder / f"flow_y_{i:05d}.jpg", rng.integers(0, 256, (120, 160), dtype=np.uint8))
        for i in range(1, 5):
            write_jpeg(folder / f"img_{i:05d}.jpg", rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        (disk / "fill").write_bytes(b"\0" * (1448 << 10))  # room for the first shard, not for the second
        out = disk / "shards"
        args = ["import-frames", "--frames", frames, "--out", out, "--layout", "mmaction", "--videos-per-shard", "2",
                "--workers", "1"]
        full = invoke(*args)
        assert full.exit_code == 75, full.output
        assert full.output.startswith(f"Error: disk full ({out}): ") and full.output.strip().count("\n") == 0
        assert "rerun the same command to go on" in full.output
        assert sorted(p.name for p in out.iterdir()) == ["flowprep-error.log", "manifest.json", "shard-00000.h5"]
        (disk / "fill").unlink()
        again = invoke(*args)
        assert again.exit_code == 0, again.output
        assert "resume: 1 shard(s) of an earlier run kept" in again.output and "verify: OK" in again.output
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_during_an_export_names_the_out_leaves_nothing_and_the_rerun_after_freeing_space_works(
    tmp_path: Path
) -> None:
    """The line said 'disk full (SHARDS)', the folder read, not the one written."""
    frames = _four_videos(tmp_path)
    shards = tmp_path / "shards"
    assert invoke("import-frames", "--frames", frames, "--out", shards, "--layout", "mmaction").exit_code == 0
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], check=True)
    try:
        (disk / "fill").write_bytes(b"\0" * (480 << 10))  # room for a few frames (4 kB each here), not for all 40
        out = disk / "frames"
        full = invoke("export-frames", shards, "--out", out)
        assert full.exit_code == 75, full.output
        assert full.output.startswith(f"Error: disk full ({out}): ") and full.output.strip().count("\n") == 0
        assert sorted(p.name for p in disk.iterdir()) == ["fill"]
        (disk / "fill").unlink()
        again = invoke("export-frames", shards, "--out", out)
        assert again.exit_code == 0 and "4 videos written" in again.output, again.output
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_worker_processes_write_the_shards_and_manifest_of_one_process_and_a_bad_frame_stops_them(tmp_path: Path) -> None:
    frames = mmaction(tmp_path / "rawframes", {f"Run/v_Run_g0{i}_c01": 3 for i in range(1, 7)})
    args = ["--frames", frames, "--layout", "mmaction", "--videos-per-shard", "2"]
    one = invoke("import-frames", *args, "--out", tmp_path / "one", "--workers", "1")
    three = invoke("import-frames", *args, "--out", tmp_path / "three", "--workers", "3")
    assert one.exit_code == 0 and three.exit_code == 0, three.output
    assert (tmp_path / "one" / "manifest.json").read_bytes() == (tmp_path / "three" / "manifest.json").read_bytes()
    for name in ("shard-00000.h5", "shard-00001.h5", "shard-00002.h5"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()
    bad = frames / "Run" / "v_Run_g05_c01" / "flow_y_00003.jpg"
    good = bad.read_bytes()
    bad.write_bytes(good[:200])
    out = tmp_path / "stopped"
    stopped = invoke("import-frames", *args, "--out", out, "--workers", "3")
    assert stopped.exit_code == 2 and f"Error: {bad}: a JPEG cut short (no end marker)" in stopped.output
    assert "Traceback" not in stopped.output and not (out / "shard-00002.h5").exists()
    bad.write_bytes(good)
    again = invoke("import-frames", *args, "--out", out, "--workers", "3")
    assert again.exit_code == 0 and "verify: OK" in again.output, again.output
    assert (out / "manifest.json").read_bytes() == (tmp_path / "one" / "manifest.json").read_bytes()


def test_a_shard_job_of_an_import_that_was_killed_writes_and_renames_nothing(tmp_path: Path) -> None:
    # loky's workers outlive an import killed with SIGKILL and hold queued shards; the rerun writes the same names
    import subprocess
    import sys

    from flowprep.tools import import_frames as imp
    from flowprep.tools.frames import scan

    frames = mmaction(tmp_path / "rawframes", {"Run/v_Run_g01_c01": 3})
    videos, _ = scan(frames, "mmaction")
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    out = tmp_path / "shards"
    out.mkdir()
    (out / "shard-00000.h5.tmp").write_bytes(b"the rerun's file")
    job = imp.ShardJob(str(out), "shard-00000.h5", videos, [0], {"flow": {}}, 20.0, True, 25.0, run_pid=gone)
    assert imp.write_shard(job) == {}
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.h5.tmp"]
    assert (out / "shard-00000.h5.tmp").read_bytes() == b"the rerun's file"
    mine = imp.ShardJob(str(out), "shard-00000.h5", videos, [0], {"flow": {}}, 20.0, True, 25.0, run_pid=os.getpid())
    assert imp.write_shard(mine)["videos"] == ["Run/v_Run_g01_c01"]
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.h5"]


def test_a_rerun_imports_again_a_shard_damaged_at_the_same_size(tmp_path: Path) -> None:
    frames = _four_videos(tmp_path)
    out = tmp_path / "shards"
    args = ["import-frames", "--frames", frames, "--out", out, "--layout", "mmaction", "--videos-per-shard", "2"]
    assert invoke(*args).exit_code == 0
    shard = out / "shard-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte: the size the manifest lists, another sha256
    shard.write_bytes(bytes(data))
    report = verify_output(out)
    assert not report.ok and ("to repair damaged or missing shards: rerun the same flowprep import-frames command (it "
                              "checks every finished shard)") in format_report(report)
    repaired = invoke(*args)
    assert repaired.exit_code == 0, repaired.output
    assert repaired.output.splitlines()[0] == "repair: shard-00001.h5 sha256 differs from the manifest: imported again"
    assert verify_output(out).ok


def test_class_folders_in_decomposed_unicode_import_as_the_class_index_names_typed_composed(tmp_path: Path) -> None:
    # frames copied from macOS (NFD folder names), classInd.txt typed elsewhere (NFC): as extract --class-index takes them
    import unicodedata

    cafe = unicodedata.normalize("NFD", "Café")
    frames = mmaction(tmp_path / "rawframes", {f"{cafe}/v_a": 2, "Zoo/v_b": 2})
    (tmp_path / "classInd.txt").write_text("1 Zoo\n2 Café\n", encoding="utf-8")
    out = tmp_path / "shards"
    result = invoke("import-frames", "--frames", frames, "--out", out, "--layout", "mmaction", "--class-index",
                    tmp_path / "classInd.txt")
    assert result.exit_code == 0, result.output
    assert labels_of(out) == {f"{cafe}/v_a": (1, "Café"), "Zoo/v_b": (0, "Zoo")}  # the id stays the name on disk


def test_an_export_killed_half_way_is_refused_by_its_rerun_and_by_import_and_a_second_export_meanwhile_is_busy(
    tmp_path: Path
) -> None:
    """An export killed with SIGKILL left the video folders it had written and no rawframes.txt: its rerun said only
    'not an empty folder', and import-frames imported the videos there were, exit 0, 'verify: OK', the others missing
    unsaid. A second export while one wrote was refused only once the first had made a video folder ('not an empty
    folder'); two started together both wrote into --out, and one that failed removed the other's frames. An import
    into the --out of a running export put its shards among the frames, and both exited 0."""
    import signal
    import sys

    frames = _four_videos(tmp_path)
    shards = tmp_path / "shards"
    assert invoke("import-frames", "--frames", frames, "--out", shards, "--layout", "mmaction").exit_code == 0
    out, gate = tmp_path / "exported", tmp_path / "gate"
    code = ("import os, signal, sys, time; from flowprep.tools import export_frames as m; real = m._export_video\n"
            "def export(g, folder, *a):\n"
            f"    if folder.name.startswith('v_Run_g03'):\n"
            f"        open({str(gate)!r} + '.waiting', 'w').close()\n"
            f"        while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
            f"        if open({str(gate)!r}).read() == 'kill': os.kill(os.getpid(), signal.SIGKILL)\n"
            "    real(g, folder, *a)\n"
            "m._export_video = export\n"
            "from flowprep.cli import main; main(sys.argv[1:])")
    for how in ("go", "kill"):
        first = subprocess.Popen([sys.executable, "-c", code, "export-frames", str(shards), "--out", str(out)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while not Path(f"{gate}.waiting").exists():
            assert first.poll() is None, first.communicate()
            time.sleep(0.02)
        second = invoke("export-frames", shards, "--out", out)  # while the first one writes
        assert second.exit_code == 4 and "is being written by another run" in second.output, second.output
        early = invoke("import-frames", "--frames", out, "--out", tmp_path / "early", "--layout", "mmaction")
        assert early.exit_code == 2 and "holds export-frames.lock" in early.output, early.output
        assert not (tmp_path / "early").exists()
        inside = invoke("import-frames", "--frames", frames, "--out", out, "--layout", "mmaction")
        assert inside.exit_code == 2 and f"{out} holds export-frames.lock: it is the --out of an export-frames" in \
            inside.output, inside.output  # its shards went in among the frames, both runs exit 0
        gate.write_text(how)
        first.communicate(timeout=60)
        Path(f"{gate}.waiting").unlink()
        gate.unlink()
        if how == "go":
            assert first.returncode == 0 and sorted(p.name for p in out.iterdir()) == ["Run", "classInd.txt",
                                                                                      "labels.csv", "rawframes.txt"]
            assert len((out / "rawframes.txt").read_text().splitlines()) == 4
            shutil.rmtree(out)
    assert first.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "Run").iterdir()) == ["v_Run_g01_c01", "v_Run_g02_c01"]
    for _ in range(2):  # the refused rerun leaves the mark of the killed export, naming it
        rerun = invoke("export-frames", shards, "--out", out)
        assert rerun.exit_code == 2 and "Traceback" not in rerun.output
        assert f"holds an export that did not finish (host {os.uname().nodename}, pid {first.pid}," in rerun.output
    late = invoke("import-frames", "--frames", out, "--out", tmp_path / "late", "--layout", "mmaction")
    assert late.exit_code == 2 and "holds export-frames.lock" in late.output and not (tmp_path / "late").exists()
    shutil.rmtree(out / "Run")  # a killed export that had written nothing yet: the rerun goes on
    again = invoke("export-frames", shards, "--out", out)
    assert again.exit_code == 0 and sorted(p.name for p in out.iterdir()) == ["Run", "classInd.txt", "labels.csv",
                                                                             "rawframes.txt"], again.output


def test_an_out_in_a_folder_this_user_may_not_write_is_a_usage_error_of_one_line_for_the_tools(tmp_path: Path) -> None:
    """import-frames, export-frames and sample said 'Permission denied ... rerun the same command', exit 75, which a
    rerun never gets past; extract says 'cannot write into OUT: permission denied (FILE)', exit 2."""
    import sys

    frames = _four_videos(tmp_path)
    shards = tmp_path / "shards"
    assert invoke("import-frames", "--frames", frames, "--out", shards, "--layout", "mmaction").exit_code == 0
    locked = tmp_path / "locked"
    (locked / "empty").mkdir(parents=True)
    locked.chmod(0o555)
    (locked / "empty").chmod(0o555)
    run = [sys.executable, "-m", "flowprep"]
    run = bound_by_file_modes(run)  # root: as one without the capabilities that bypass modes
    for out, denied in ((locked / "new", locked / "new"), (locked / "empty", None)):
        for args, first in ((["import-frames", "--frames", frames, "--layout", "mmaction"], "manifest.json.lock"),
                            (["export-frames", shards], "export-frames.lock"),
                            (["sample", "--videos-per-class", "2", "--clips-per-group", "1", "--size", "32", "--frames",
                              "3", "--classes", "MoveUp,MoveDown"], "videos")):
            res = subprocess.run([*run, *map(str, args), "--out", str(out)], capture_output=True, text=True, timeout=120)
            assert res.returncode == 2, (args[0], res.stderr)
            assert res.stderr.strip().splitlines()[-1] == \
                f"Error: cannot write into {out}: permission denied ({denied or out / first})", args[0]
    assert sorted(p.name for p in locked.rglob("*")) == ["empty"]


def test_an_out_on_a_read_only_file_system_is_a_usage_error_of_one_line_for_every_flowprep_command(
    tmp_path: Path, ucf_tree: Path, read_only_folder: Path
) -> None:
    """A read-only mount as --out, or as the folder --out is to be made in, said 'read-only file system ... rerun the
    same command', exit 75 (extract, import-frames, export-frames, sample), which a rerun never gets past; preview
    said 'permission denied'. Now each says what a folder this user may not write gives: 'cannot write into OUT:
    read-only file system (FILE)', exit 2."""
    frames = _four_videos(tmp_path)
    shards = tmp_path / "shards"
    assert invoke("import-frames", "--frames", frames, "--out", shards, "--layout", "mmaction").exit_code == 0
    ro = read_only_folder
    for out, denied in ((ro / "new", ro / "new"), (ro, None)):
        for args, first in ((["extract", "--videos", ucf_tree, "--workers", "1"], "manifest.json.lock"),
                            (["import-frames", "--frames", frames, "--layout", "mmaction"], "manifest.json.lock"),
                            (["export-frames", shards], "export-frames.lock"),
                            (["sample", "--videos-per-class", "2", "--clips-per-group", "1", "--size", "32", "--frames",
                              "3", "--classes", "MoveUp,MoveDown"], "videos")):
            res = invoke(*args, "--out", out)
            assert res.exit_code == 2, (args[0], res.output)
            assert res.output.strip().splitlines()[-1] == \
                f"Error: cannot write into {out}: read-only file system ({denied or out / first})", args[0]
    res = invoke("preview", shards, "Run/v_Run_g01_c01", "--out", ro / "x.gif")
    assert res.exit_code == 2, res.output
    assert res.output.strip() == \
        f"Error: cannot write into {os.path.realpath(ro)}: read-only file system ({ro / 'x.gif'})"


def test_a_shard_this_user_may_not_read_is_one_line_naming_it_and_no_retry_in_verify_export_frames_and_fit(
    tmp_path: Path
) -> None:
    """A shard with mode 000 made flowprep verify and export-frames exit 75 ('Permission denied ... rerun'), which a
    scheduler retries for ever, and trainer fit call it damaged ('flowprep verify ... says what to re-extract', which
    would change nothing). Now all three say 'cannot read FILE: permission denied (fix its permissions)': exit 2 for
    verify and export-frames (unusable input, as an unreadable folder), 1 for fit (its status for unusable data)."""
    import sys

    videos = [f"{c}/v_{c}_g0{i}_c01" for c in ("Jump", "Run") for i in (1, 2)]
    frames = mmaction(tmp_path / "rawframes", {v: 3 for v in videos})
    shards = tmp_path / "shards"
    assert invoke("import-frames", "--frames", frames, "--out", shards, "--layout", "mmaction").exit_code == 0
    (tmp_path / "train.txt").write_text("".join(f"{v}.avi\n" for v in videos))
    shard = shards / "shard-00000.h5"
    shard.chmod(0)
    fit = ["trainer", "fit", "--stream", "temporal", "--shards", shards, "--train-list", tmp_path / "train.txt",
           "--out", tmp_path / "run", "--arch", "resnet18", "--crop-size", "16", "--flow-length", "2", "--workers", "0",
           "--device", "cpu", "--no-progress"]
    for args, status in ((["flowprep", "verify", shards], 2),
                         (["flowprep", "export-frames", shards, "--out", tmp_path / "exported"], 2), (fit, 1)):
        cmd = bound_by_file_modes([sys.executable, "-m", *map(str, args)])  # root: as one that modes bind
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == status, (args[1], proc.stderr)
        assert proc.stderr.strip() == f"Error: cannot read {shard}: permission denied (fix its permissions)", args[1]
    assert not (tmp_path / "exported").exists()


def test_frames_this_user_may_not_read_are_named_never_skipped_and_a_rerun_after_fixing_them_goes_on(
    tmp_path: Path
) -> None:
    """A class or video folder this user may not list was skipped without a word (4 of 8 videos imported, exit 0,
    'verify: OK'); a frame it may not read stopped the import with exit 75, 'rerun the same command to go on',
    which failed the same way forever."""
    import sys

    frames = mmaction(tmp_path / "rawframes", {f"{c}/v_{c}_g0{i}_c01": 2 for c in ("Jump", "Run") for i in (1, 2)})
    run = [sys.executable, "-m", "flowprep", "import-frames", "--frames", str(frames), "--layout", "mmaction",
           "--videos-per-shard", "2", "--workers", "1", "--out"]
    run = bound_by_file_modes(run)  # root: as one without the capabilities that bypass modes
    (frames / "Run").chmod(0)
    (frames / "Jump" / "v_Jump_g02_c01").chmod(0)
    try:
        res = subprocess.run([*run, str(tmp_path / "skipped")], capture_output=True, text=True, timeout=120)
    finally:
        (frames / "Run").chmod(0o755)
        (frames / "Jump" / "v_Jump_g02_c01").chmod(0o755)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == ["Error: Jump/v_Jump_g02_c01: cannot be read (Permission denied): fix its "
                                       "permissions", "Run: cannot be read (Permission denied): fix its permissions"]
    assert not (tmp_path / "skipped").exists()
    frame = frames / "Run" / "v_Run_g01_c01" / "flow_x_00002.jpg"
    frame.chmod(0)
    res = subprocess.run([*run, str(tmp_path / "shards")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (f"Error: {frame}: cannot be read (permission denied): fix its permissions (1 finished "
                                  "shard(s) are kept: fix it and rerun the same command to go on)")
    frame.chmod(0o644)
    res = subprocess.run([*run, str(tmp_path / "shards")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "resume: 1 shard(s)" in res.stdout and "4 videos imported" in res.stdout, res.stderr
