import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from media import random_frames, translating_texture, write_video

from flowprep import exits
from flowprep.cli import main
from flowprep.extract.worker import CRASH_ENV

FLOWPREP = Path(sys.executable).parent / "flowprep"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_explains_defaults() -> None:
    text = " ".join(invoke("extract", "--help").output.split())
    for phrase in ["--method [tvl1|farneback]", "[default: tvl1]", "native size: flow at the source resolution",
                   "256 is recommended for Kinetics", "--tvl1-lambda FLOAT", "[default: 0.15;",
                   "--farneback-winsize INTEGER", "[default: 15;", "[default: 20.0;",
                   "all cores available", "Exit status (what a scheduler should do):"]:
        assert phrase in text, phrase


def test_help_lists_every_exit_status_of_the_table() -> None:
    text = " ".join(invoke("extract", "--help").output.split())
    for status in exits.STATUSES:
        assert f"{status.code} {status.short}" in text, status


def test_extract_then_verify(ucf_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    index = tmp_path / "classInd.txt"
    index.write_text("1 Run\n2 Jump\n")
    result = invoke("extract", "--videos", str(ucf_tree), "--out", str(out), "--method", "farneback",
                    "--workers", "2", "--class-index", str(index), "--size", "32x24", "--frame-step", "2",
                    "--no-rgb", "--farneback-levels", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "4 of 4 videos extracted into 1 shard(s)" in result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == ["Run", "Jump"]
    assert m["params"]["flow"]["params"]["levels"] == 2 and m["params"]["storage"]["rgb"] is False
    with h5py.File(out / "shard-00000.h5", "r") as f:
        g = f["videos/Jump/v_Jump_g01"]
        assert g.attrs["label"] == 1 and g.attrs["num_frames"] == 4 and g.attrs["fps"] == pytest.approx(12.5)
        assert g["flow"].shape == (3, 2, 24, 32) and "rgb" not in g
    assert invoke("verify", str(out)).exit_code == 0


def test_bad_videos_exit_1_with_one_line_each(ucf_tree: Path, tmp_path: Path) -> None:
    (ucf_tree / "Run" / "junk.avi").write_bytes(os.urandom(5000))
    (ucf_tree / "Run" / "empty.mkv").write_bytes(b"")
    result = invoke("extract", "--videos", str(ucf_tree), "--out", str(tmp_path / "out"), "--method", "farneback",
                    "--workers", "2", "--no-progress")
    assert result.exit_code == 1
    assert f"skipped {ucf_tree / 'Run' / 'empty.mkv'}: empty file (0 bytes)" in result.output
    assert f"skipped {ucf_tree / 'Run' / 'junk.avi'}: not a readable video" in result.output
    assert "4 of 6 videos extracted" in result.output and "2 video(s) failed" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "320"], "Invalid value for '--size': expected WxH such as 340x256, each side from 2 to 8192, got '320'"),
        (["--size", "100000x100000"], "each side from 2 to 8192, got '100000x100000'"),  # ffmpeg fails every video
        (["--short-side", "9000"], "Invalid value for '--short-side': 9000 is not in the range 2<=x<=8192"),
        (["--size", "48x36"], "Invalid value for '--size': decord cannot deliver frames 48 px wide"),
        (["--size", "32x24", "--short-side", "32"], "give at most one of --size and --short-side"),
        (["--method", "lk"], "'lk' is not one of 'tvl1', 'farneback'"),
        (["--bound", "0"], "--bound"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_usage_errors_exit_2(ucf_tree: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    result = invoke("extract", "--videos", str(ucf_tree), "--out", str(tmp_path / "out"), *extra)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_a_video_of_a_width_decord_cannot_deliver_is_a_failure_that_says_so_and_a_resize_extracts_it(
    tmp_path: Path,
) -> None:
    videos = tmp_path / "videos"
    write_video(videos / "A" / "narrow.mp4", random_frames(5, 36, 48))
    result = invoke("extract", "--videos", str(videos), "--out", str(tmp_path / "o1"), "--method", "farneback",
                    "--no-progress")
    assert result.exit_code == 1
    assert (f"skipped {videos / 'A' / 'narrow.mp4'}: decord cannot deliver frames 48 px wide (a decord limitation, "
            "widths 1, 2, 3, 4, 6, 8, 12, 16, 24, 48, 72): decode it resized (--size) to another width") in result.output
    result = invoke("extract", "--videos", str(videos), "--out", str(tmp_path / "o2"), "--method", "farneback",
                    "--no-progress", "--size", "64x48")
    assert result.exit_code == 0, result.output


def test_input_problems_are_one_line_and_exit_2(ucf_tree: Path, tmp_path: Path) -> None:
    index = tmp_path / "classInd.txt"
    index.write_text("1 Jump\n")
    result = invoke("extract", "--videos", str(ucf_tree), "--out", str(tmp_path / "o1"), "--class-index", str(index))
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: class 'Run' is not in {index}: 2 video(s), e.g. 'Run/v_Run_g00.mp4'"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("extract", "--videos", str(empty), "--out", str(tmp_path / "o2"))
    assert result.exit_code == 2 and "no videos" in result.output

    base = ["extract", "--videos", str(ucf_tree), "--out", str(tmp_path / "o3"), "--method", "farneback",
            "--workers", "2", "--no-progress"]
    assert invoke(*base).exit_code == 0
    result = invoke(*base, "--bound", "15")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == (f"Error: {tmp_path / 'o3'} holds a run with different parameters: "
                                     "flow.bound is 20.0 there and 15.0 now (use another --out)")


@pytest.mark.slow
def test_real_subprocess_with_two_workers_survives_a_worker_crash(ucf_tree: Path, tmp_path: Path) -> None:
    write_video(ucf_tree / "Run" / "v_Run_g07.mp4", random_frames(8, 48, 64, seed=9))
    (ucf_tree / "Jump" / "half.mp4").write_bytes((ucf_tree / "Jump" / "v_Jump_g00.mp4").read_bytes()[:900])
    out = tmp_path / "out"
    env = {**os.environ, CRASH_ENV: "Run/v_Run_g07.mp4"}  # its worker dies by SIGSEGV, as a decoder bug would
    result = subprocess.run([str(FLOWPREP), "extract", "--videos", str(ucf_tree), "--out", str(out), "--method",
                             "farneback", "--workers", "2", "--videos-per-shard", "2"],
                            capture_output=True, text=True, env=env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "a worker process died" in output
    assert f"skipped {ucf_tree / 'Run' / 'v_Run_g07.mp4'}: the decoder crashed the worker process" in output
    assert f"skipped {ucf_tree / 'Jump' / 'half.mp4'}: " in output
    assert "extract: 100%" in result.stderr  # the progress bar
    assert "4 of 6 videos extracted into 3 shard(s)" in result.stdout
    failures = [json.loads(line)["path"] for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(failures) == ["Jump/half.mp4", "Run/v_Run_g07.mp4"]
    check = invoke("verify", str(out))
    assert check.exit_code == 0, check.output


def test_every_extract_default_comes_from_the_run_dataclasses() -> None:
    from flowprep.cli import extract
    import inspect

    from flowprep.config import DecodeConfig, FarnebackParams, FlowConfig, StorageConfig, TVL1Params
    from flowprep.extract.runner import run_extract

    defaults = {p.name: p.default for p in extract.params}
    assert defaults["bound"] == FlowConfig().bound
    assert defaults["jpeg_quality"] == StorageConfig().jpeg_quality
    assert defaults["videos_per_shard"] == StorageConfig().videos_per_shard
    assert defaults["frame_step"] == DecodeConfig().frame_step
    assert defaults["flow_batch"] == inspect.signature(run_extract).parameters["flow_batch"].default
    assert defaults["tvl1_lambda_"] == TVL1Params().lambda_ and defaults["farneback_winsize"] == FarnebackParams().winsize


def test_a_turned_video_is_stored_upright_and_its_flow_points_where_the_picture_moves(tmp_path: Path) -> None:
    """Phone videos carry their rotation in the container; the flow must be computed on the upright frames."""
    shown = translating_texture(5, 80, 60, 1.0, 0.0, seed=5)  # upright: 60 wide, 80 high, moving right
    videos = tmp_path / "videos"
    for ext in ("mp4", "mkv"):  # decord turns MP4 by itself, MKV not
        for turn in (90, 180, 270):
            coded = np.rot90(shown, -turn // 90, axes=(1, 2))  # what the camera wrote; shown turned `turn`
            write_video(videos / ext / f"t{turn}.{ext}", coded, turned=turn)
    out = tmp_path / "out"
    result = invoke("extract", "--videos", str(videos), "--out", str(out), "--method", "farneback", "--workers", "1",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    with h5py.File(out / "shard-00000.h5", "r") as f:
        for ext in ("mp4", "mkv"):
            for turn in (90, 180, 270):
                g = f[f"videos/{ext}/t{turn}"]
                assert g.attrs["rotation"] == turn
                flow = g["flow"][:] * g["flow"].attrs["scale_factor"] + g["flow"].attrs["add_offset"]
                assert flow.shape == (4, 2, 80, 60) and (g["rgb"].attrs["height"], g["rgb"].attrs["width"]) == (80, 60)
                u, v = flow[:, 0, 8:-8, 8:-8], flow[:, 1, 8:-8, 8:-8]
                assert np.median(u) > 0.8 and abs(np.median(v)) < 0.2, (ext, turn, np.median(u), np.median(v))
                first = cv2.imdecode(g["rgb"][0], cv2.IMREAD_COLOR)[..., ::-1]
                assert np.abs(first.astype(int) - shown[0]).mean() < 8, (ext, turn)


def test_av1_videos_are_extracted_and_their_flow_points_where_the_picture_moves(tmp_path: Path) -> None:
    """YouTube serves AV1 (yt-dlp's Kinetics downloads): decord cannot decode it, PyAV does."""
    moving = translating_texture(5, 48, 64, 1.0, 0.0, seed=4)
    videos = tmp_path / "videos"
    for ext in ("mp4", "webm"):
        write_video(videos / "av1" / {"mp4": "v.mp4", "webm": "w.webm"}[ext], moving, codec="libsvtav1")
    out = tmp_path / "out"
    result = invoke("extract", "--videos", str(videos), "--out", str(out), "--method", "farneback", "--workers", "1",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert "2 of 2 videos extracted" in result.output and not (out / "failures.jsonl").exists()
    with h5py.File(out / "shard-00000.h5", "r") as f:
        for name in ("v", "w"):
            g = f[f"videos/av1/{name}"]
            flow = g["flow"][:] * g["flow"].attrs["scale_factor"] + g["flow"].attrs["add_offset"]
            assert flow.shape == (4, 2, 48, 64)
            u, v = flow[:, 0, 8:-8, 8:-8], flow[:, 1, 8:-8, 8:-8]
            assert np.median(u) > 0.8 and abs(np.median(v)) < 0.2, (name, np.median(u), np.median(v))
