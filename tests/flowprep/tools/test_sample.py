import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import decord
import numpy as np
import pytest
from click.testing import CliRunner

from flowprep.cli import main
from flowprep.tools.sample import make_sample, plan_clips, split_groups, video_path
from flowprep.tools.synth import ClipSpec, render_clip

CLASSES = ("MoveLeft", "RotateClockwise", "Expand", "Contract")
NAME = re.compile(r"^(\w+)/v_(\w+)_g(\d\d)_c(\d\d)\.(avi|mp4)$")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    # 4 groups of 1 clip per class -> test g01, val g02, train g03-g04
    make_sample(out, seed=3, videos_per_class=4, clips_per_group=1, width=64, height=48, frames=12, classes=CLASSES)
    return out


def read_list(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_layout_and_list_files(sample: Path) -> None:
    assert [line.split() for line in (sample / "classInd.txt").read_text().splitlines()] == [
        [str(i + 1), c] for i, c in enumerate(CLASSES)
    ]
    files = sorted(p.relative_to(sample / "videos").as_posix() for p in (sample / "videos").rglob("*.*"))
    assert len(files) == 4 * len(CLASSES)
    for f in files:
        m = NAME.match(f)
        assert m and m[1] == m[2] and m[1] in CLASSES, f
        assert m[5] == ("avi" if int(m[3]) % 2 else "mp4")  # odd groups MPEG-4 .avi, even H.264 .mp4
    listed = {}
    for part in ("train", "val", "test"):
        for row in read_list(sample / f"{part}list01.txt"):
            assert row[0] in files and row[0] not in listed
            listed[row[0]] = part
            if part == "test":
                assert len(row) == 1
            else:  # 1-based label of the folder's class
                assert len(row) == 2 and CLASSES[int(row[1]) - 1] == row[0].split("/")[0]
    assert sorted(listed) == files


def test_split_is_by_group_and_balanced(sample: Path) -> None:
    groups: dict[str, set[str]] = {}
    per_class: dict[str, Counter] = {}
    for part in ("train", "val", "test"):
        rows = read_list(sample / f"{part}list01.txt")
        groups[part] = {NAME.match(r[0])[3] for r in rows}
        per_class[part] = Counter(r[0].split("/")[0] for r in rows)
    assert groups == {"test": {"01"}, "val": {"02"}, "train": {"03", "04"}}
    assert per_class["train"] == {c: 2 for c in CLASSES}
    assert per_class["val"] == per_class["test"] == {c: 1 for c in CLASSES}


@pytest.mark.parametrize(
    "groups, test, val",
    [(2, [1], []), (3, [1], [2]), (6, [1, 2], [3]), (25, list(range(1, 9)), [9, 10, 11, 12])],
)
def test_split_groups(groups: int, test: list[int], val: list[int]) -> None:
    split = split_groups(groups)
    assert [g for g, p in split.items() if p == "test"] == test
    assert [g for g, p in split.items() if p == "val"] == val
    assert [g for g, p in split.items() if p == "train"] == [g for g in range(1, groups + 1) if g not in test + val]
    assert "val" not in split_groups(groups, val=False).values()
    with pytest.raises(ValueError, match="expected at least 2 groups per class"):
        split_groups(1)


def test_videos_decode_with_decord_close_to_the_raw_frames(sample: Path) -> None:
    for ext in ("avi", "mp4"):
        path = next((sample / "videos" / "Expand").glob(f"*.{ext}"))
        vr = decord.VideoReader(str(path))
        assert len(vr) == 12
        decoded = vr.get_batch(list(range(12))).asnumpy()
        assert decoded.shape == (12, 48, 64, 3)
        g, c = re.search(r"_g(\d\d)_c(\d\d)", path.name).groups()
        raw = render_clip(ClipSpec("Expand", 2, int(g), int(c), 64, 48, 12, seed=3))
        luma = np.array([0.299, 0.587, 0.114])
        mse = np.mean((decoded @ luma - raw @ luma) ** 2)
        assert 10 * np.log10(255**2 / mse) > 32, ext  # near-lossless luma (4:2:0 chroma is coarser)


def test_cli_writes_the_sample_and_refuses_to_mix_runs(tmp_path: Path) -> None:
    out = tmp_path / "s"
    args = ["sample", "--out", str(out), "--classes", "MoveUp,MoveDown", "--videos-per-class", "2"]
    args += ["--clips-per-group", "1", "--size", "64x32", "--frames", "6", "--no-val"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "2 classes, 2 train / 0 val / 2 test videos, 64x32, 6 frames" in res.output
    assert not (out / "vallist01.txt").exists() and (out / "sample.json").exists()
    assert decord.VideoReader(str(out / "videos/MoveUp/v_MoveUp_g02_c01.mp4"))[0].shape == (32, 64, 3)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "already holds videos; pass --force" in res.output
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "flowprep", "sample", "--out", str(tmp_path / "x"), "--classes", "MoveLeft,Jump"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "unknown class(es) Jump; expected some of MoveLeft, MoveRight" in res.stderr
    for bad, msg in (
        (["--size", "63"], "expected an even frame size of at least 32x32"),
        (["--size", "big"], "expected N or WxH"),
        (["--videos-per-class", "1"], "expected at least 2 groups per class"),
        (["--fps", "0"], "expected --fps >= 1, got 0"),  # was written as 24 fps, sample.json saying 0
        (["--fps", "-5"], "expected --fps >= 1, got -5"),  # was the encoder's 'avcodec_open2("mpeg4", {}) returned 22'
    ):
        res = CliRunner().invoke(main, ["sample", "--out", str(tmp_path / "y"), *bad])
        assert res.exit_code == 2 and msg in res.output, res.output


def test_plan_names_groups_and_labels() -> None:
    specs = plan_clips(
        classes=["Expand", "MoveUp"], videos_per_class=5, clips_per_group=2, width=64, height=64, frames=8
    )
    assert [video_path(s) for s in specs[:5]] == [
        "Expand/v_Expand_g01_c01.avi",
        "Expand/v_Expand_g01_c02.avi",
        "Expand/v_Expand_g02_c01.mp4",
        "Expand/v_Expand_g02_c02.mp4",
        "Expand/v_Expand_g03_c01.avi",
    ]
    assert [s.label for s in specs] == [0] * 5 + [1] * 5
    with pytest.raises(ValueError, match="expected at least 2 distinct classes"):
        plan_clips(classes=["Expand", "Expand"], videos_per_class=4, clips_per_group=2, width=64, height=64, frames=8)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to compare with one")
def test_the_sample_is_the_same_bytes_whatever_the_number_of_cores(sample: Path, tmp_path: Path) -> None:
    # FFmpeg's automatic thread count follows the cores a process may use, and MPEG-4's slices follow the
    # thread count: without a fixed count, a machine with other cores wrote other videos (and other demo
    # figures). A real process pinned to one core must write the bytes this one wrote on all of them.
    script = ("import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
              "from flowprep.tools.sample import make_sample; "
              f"make_sample(sys.argv[1], seed=3, videos_per_class=4, clips_per_group=1, width=64, height=48, "
              f"frames=12, classes={CLASSES!r})")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, capture_output=True, timeout=300)
    videos = sorted(p.relative_to(sample) for p in (sample / "videos").rglob("*") if p.is_file())
    assert any(str(p).endswith(".avi") for p in videos) and any(str(p).endswith(".mp4") for p in videos)
    differ = [str(p) for p in videos if (tmp_path / p).read_bytes() != (sample / p).read_bytes()]
    assert differ == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_one_line_exit_75_and_the_rerun_with_force_makes_the_sample(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        (disk / "fill").write_bytes(b"\0" * (1000 << 10))  # room for a few videos (a 4 kB page each), not all
        args = ["sample", "--out", str(disk / "s"), "--classes", "MoveUp,MoveDown", "--videos-per-class", "4",
                "--clips-per-group", "1", "--size", "64x32", "--frames", "6", "--no-val"]
        res = subprocess.run([sys.executable, "-m", "flowprep", *args], capture_output=True, text=True, timeout=120)
        assert res.returncode == 75 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith(f"Error: disk full ({disk / 's'}): ")
        assert res.stderr.strip().endswith("rerun the same command with --force")
        written = list((disk / "s" / "videos").rglob("*"))  # no video cut short (extract would fail on it) nor temporary
        assert written and all(p.is_dir() or decord.VideoReader(str(p))[5].shape == (32, 64, 3) for p in written)
        (disk / "fill").unlink()
        again = CliRunner().invoke(main, [*args, "--force"])
        assert again.exit_code == 0, again.output
        assert len(list((disk / "s" / "videos").rglob("*.*"))) == 8 and (disk / "s" / "sample.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
