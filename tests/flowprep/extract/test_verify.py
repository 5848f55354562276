import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from conftest import make_ucf_tree

from flowprep.extract import manifest as mf
from flowprep.cli import main
from flowprep.config import FlowConfig, StorageConfig
from flowprep.extract.reader import plan_videos
from flowprep.extract.runner import run_extract
from flowprep.extract.verify import format_report, verify_output
from processes import bound_by_file_modes


def _extract(videos: Path, out: Path, metas=None, **kwargs) -> None:
    classes, all_metas = plan_videos(videos)
    run_extract(videos_root=videos, out=out, videos=all_metas if metas is None else metas, classes=classes,
                flow=FlowConfig(method="farneback"), storage=StorageConfig(videos_per_shard=2), workers=2,
                progress=False, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run: 4 videos in 3 shards, 1 undecodable video (Jump/bad.mp4, sorted first)."""
    root = tmp_path_factory.mktemp("verify")
    videos = make_ucf_tree(root / "videos")
    (videos / "Jump" / "bad.mp4").write_bytes(b"\x00" * 1000)
    _extract(videos, root / "out")
    return root / "out"


@pytest.fixture
def out(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "out"))


def edit_manifest(out: Path, change) -> None:
    m = json.loads((out / "manifest.json").read_text())
    change(m)
    (out / "manifest.json").write_text(json.dumps(m))


def test_intact_run_passes_and_lists_failures(out: Path) -> None:
    report = verify_output(out)
    assert report.ok and report.complete and report.problems == []
    assert (report.num_videos, report.num_extracted, report.num_failed) == (5, 4, 1)
    assert report.shards == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    text = format_report(report)
    assert text.splitlines()[-1] == "OK: 4 videos in 3 shard(s), 1 failed"
    assert "failed (not extracted): Jump/bad.mp4: not a readable video" in text


def test_flipped_byte(out: Path) -> None:
    shard = out / "shard-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    report = verify_output(out)
    assert not report.ok
    assert report.problems[0] == "shard-00001.h5: sha256 differs from the manifest (the file is corrupted or was modified)"


def test_a_byte_flipped_anywhere_in_a_shards_hdf5_metadata_is_a_problem_never_a_crash(out: Path) -> None:
    # flipped in an object header or heap, h5py raised KeyError or RuntimeError: verify crashed (exit 75, "run
    # verify again", which finds the same) instead of saying the shard is damaged
    shard = out / "shard-00001.h5"
    data = shard.read_bytes()
    for position in range(0, 4096, 97):  # the superblock, object headers and heaps of a small shard
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        shard.write_bytes(bytes(damaged))
        result = CliRunner().invoke(main, ["verify", str(out)])
        assert result.exit_code == 1, (position, result.output)
        assert "problem: shard-00001.h5: sha256 differs from the manifest" in result.output, position
    shard.write_bytes(data)
    damaged = bytearray(data)
    damaged[800] ^= 0xFF  # an object header of this shard (found by the loop above)
    shard.write_bytes(bytes(damaged))
    assert any(p.startswith("shard-00001.h5: its HDF5 structure cannot be read (") for p in verify_output(out).problems)


def test_a_damaged_flow_chunk_is_named_by_video_and_field(out: Path) -> None:
    shard = out / "shard-00001.h5"
    with h5py.File(shard, "r") as f:
        video = json.loads((out / "manifest.json").read_text())["shards"][1]["videos"][0]
        info = f[f"videos/{video}/flow"].id.get_chunk_info(2)  # field 2's compressed bytes
    with open(shard, "r+b") as fh:
        fh.seek(info.byte_offset + 4)
        fh.write(b"\xff" * 16)
    problems = verify_output(out).problems
    assert problems[0].endswith("sha256 differs from the manifest (the file is corrupted or was modified)")
    assert problems[1].startswith(f"shard-00001.h5: video {video}: flow[2] cannot be read (")


def _flip_bytes_of(shard: Path, old: bytes, new: bytes) -> None:
    """Overwrite, in place, the one occurrence of ``old`` in the file (damage below HDF5, as a disk does it)."""
    data = shard.read_bytes()
    assert data.count(old) == 1
    shard.write_bytes(data.replace(old, new))


def test_a_damaged_jpeg_frame_is_one_line_naming_the_video_and_the_frame(out: Path) -> None:
    video = json.loads((out / "manifest.json").read_text())["shards"][1]["videos"][0]
    with h5py.File(out / "shard-00001.h5", "r") as f:
        frame = f[f"videos/{video}/rgb"][0].tobytes()
    data = (out / "shard-00001.h5").read_bytes()
    start = data.index(frame[-64:]) + 64 - len(frame)  # the frame's end is unique; its header is not
    assert data[start:start + len(frame)] == frame
    with open(out / "shard-00001.h5", "r+b") as f:
        f.seek(start)
        f.write(b"\0\0")  # the JPEG start marker, damaged below HDF5 as a disk does it
    assert verify_output(out).problems == [
        "shard-00001.h5: sha256 differs from the manifest (the file is corrupted or was modified)",
        f"shard-00001.h5: video {video}: rgb[0] is not a 48x64 JPEG (decoded: None)"]


def test_a_source_attribute_that_names_another_video_is_named(out: Path) -> None:
    _flip_bytes_of(out / "shard-00001.h5", b"Jump/v_Jump_g01.avi", b"Jump/v_Jump_g11.avi")
    assert verify_output(out).problems[1:] == [
        "shard-00001.h5: video Jump/v_Jump_g01: attribute source is 'Jump/v_Jump_g11.avi', which names another video"]


def test_an_edited_scale_factor_is_named_by_video_and_attribute(out: Path) -> None:
    shard = out / "shard-00001.h5"
    with h5py.File(shard, "r+") as f:
        video = json.loads((out / "manifest.json").read_text())["shards"][1]["videos"][0]
        f[f"videos/{video}/flow"].attrs["scale_factor"] = 0.5
    problems = verify_output(out).problems
    assert any(p.startswith(f"shard-00001.h5: video {video}: flow scale_factor/add_offset 0.5/") for p in problems), problems


def test_a_run_bound_that_float32_cannot_hold_is_a_problem_not_a_crash(out: Path) -> None:
    """What an older extract --bound 1e308 wrote (infinite scale_factors); verify crashed with a ValueError."""
    edit_manifest(out, lambda m: m["params"]["flow"].update(bound=1e308))
    problems = verify_output(out).problems
    assert ("shard-00000.h5: video Jump/v_Jump_g00: the run's bound 1e+308 cannot be stored: the shards hold "
            "scale_factor (2*bound/255) and add_offset (-bound) as 32-bit floats, so the bound must be from 1.5e-36 "
            "to 3.4e+38") in problems, problems


def test_truncated_shard(out: Path) -> None:
    shard = out / "shard-00000.h5"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    problems = verify_output(out).problems
    assert len(problems) == 1 and problems[0].startswith(f"shard-00000.h5: size {len(data) // 2} bytes, the manifest says {len(data)}")


def test_missing_shard(out: Path) -> None:
    (out / "shard-00002.h5").unlink()
    report = verify_output(out)
    assert not report.ok and report.problems == ["shard-00002.h5: missing"]


def test_interrupted_run_is_incomplete(out: Path) -> None:
    # What a run killed after its second shard leaves: the manifest lists what was finished.
    edit_manifest(out, lambda m: m.update(shards=m["shards"][:2], complete=False))
    (out / "shard-00002.h5").unlink()
    report = verify_output(out)
    assert not report.ok and not report.complete and report.problems == []
    assert "incomplete: 4 of 5 videos" in format_report(report).splitlines()
    assert report.unfinished_tasks == [0] and "unfinished tasks" not in format_report(report)  # a single run: no task to name


def test_contract_checks_inside_a_shard(out: Path) -> None:
    shard = out / "shard-00002.h5"
    with h5py.File(shard, "r+") as f:
        del f["videos/Run/v_Run_g01/flow"].attrs["scale_factor"]
        f["videos/Run/v_Run_g01"].attrs["num_frames"] = 9
    def relist(m: dict) -> None:
        m["shards"][2].update(size=shard.stat().st_size, sha256=mf.file_digest(shard))
        m["shards"][2]["videos"].append("Run/ghost")
        m["shards"][1]["videos"].append("Jump/v_Jump_g00")  # also in shard 0
    edit_manifest(out, relist)
    problems = verify_output(out).problems
    assert "shard-00002.h5: lacks video Run/ghost that the manifest lists" in problems
    assert any(p.startswith("shard-00002.h5: video Run/v_Run_g01: flow should be uint8 (8, 2, H, W)") for p in problems)
    assert "shard-00001.h5: video Jump/v_Jump_g00 is also in shard-00000.h5" in problems
    assert "shard-00001.h5: lacks video Jump/v_Jump_g00 that the manifest lists" in problems


def test_array_run_names_missing_tasks(tmp_path: Path) -> None:
    videos = make_ucf_tree(tmp_path / "videos")
    _, metas = plan_videos(videos)
    for task, share in ((0, metas[:2]), (2, metas[3:])):
        _extract(videos, tmp_path / "out", metas=share, task_index=task, task_count=3)
    report = verify_output(tmp_path / "out")
    assert not report.ok and report.missing_tasks == [1] and report.problems == []
    text = format_report(report)
    assert "missing manifest parts: task(s) 1 of 3" in text
    # parts without inputs_num_videos (run_extract called without it, as by older versions): the tasks present
    assert ("incomplete: 1 of 3 tasks has not finished (task 1); 3 of the 3 videos the tasks present planned are "
            "done (manifest parts of older versions do not record how many the missing tasks hold)") in text
    _extract(videos, tmp_path / "out", metas=metas[2:3], task_index=1, task_count=3)
    assert verify_output(tmp_path / "out").ok
    # Task 2 killed after it wrote its manifest part, before it finished: named, so that it can be rerun.
    part = tmp_path / "out" / mf.manifest_name(task_index=2, task_count=3)
    m = json.loads(part.read_text())
    m.update(shards=[], complete=False)
    part.write_text(json.dumps(m))
    report = verify_output(tmp_path / "out")
    assert not report.ok and report.unfinished_tasks == [2] and report.missing_tasks == [] and report.problems == []
    assert "unfinished tasks: 2 of 3 (killed or still running: rerun the same task index to resume it)" in format_report(report)


def test_an_array_run_whose_tasks_never_ran_says_which_tasks_and_how_many_of_all_videos_are_done(
    tmp_path: Path
) -> None:
    # "incomplete: 4 of 4 videos (in the parts present)" once: every video of the tasks that ran, read as done
    videos = make_ucf_tree(tmp_path / "videos", classes=("A", "B", "C", "D"), per_class=2, frames=4)
    out = tmp_path / "out"
    common = ["extract", "--videos", str(videos), "--out", str(out), "--method", "farneback", "--workers", "1",
              "--videos-per-shard", "1", "--no-progress", "--task-count", "4"]
    for task in ("0", "2"):
        ran = CliRunner().invoke(main, [*common, "--task-index", task])
        assert ran.exit_code == 0, ran.output
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert result.exit_code == 1, result.output
    assert "incomplete: 2 of 4 tasks have not finished (tasks 1, 3); 4 of 8 videos done" in result.output.splitlines()
    assert json.loads(CliRunner().invoke(main, ["verify", "--json", str(out)]).output)["run_num_videos"] == 8
    part = out / mf.manifest_name(task_index=2, task_count=4)  # task 2 killed after it wrote its part
    part.write_text(json.dumps({**json.loads(part.read_text()), "shards": [], "complete": False}))
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert "incomplete: 3 of 4 tasks have not finished (tasks 1, 2, 3); 2 of 8 videos done" in result.output.splitlines()


def test_not_a_run(tmp_path: Path) -> None:
    report = verify_output(tmp_path)
    assert not report.ok and "no manifest" in report.problems[0]


def test_a_folder_without_a_readable_manifest_is_one_problem_line_and_no_count_of_videos(out: Path) -> None:
    (out / "manifest.json").write_text("{")
    assert format_report(verify_output(out)).splitlines() == [
        "problem: manifest.json: cannot read the manifest (Expecting property name enclosed in double quotes: line 1 "
        "column 2 (char 1))", "NOT OK: 0 videos in 0 shard(s), 0 failed"]


def test_a_manifest_that_cannot_be_read_is_one_line_and_exit_2_like_a_shard_that_cannot(out: Path) -> None:
    """Not a failed environment (exit 75 was retried for ever): one line naming the file, exit 2 as an unreadable
    folder."""
    cmd = [sys.executable, "-m", "flowprep", "verify", str(out)]
    cmd = bound_by_file_modes(cmd)  # root: as one without the capabilities that bypass modes
    for name in ("shard-00001.h5", "manifest.json"):
        os.chmod(out / name, 0o000)
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        finally:
            os.chmod(out / name, 0o644)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip() == f"Error: cannot read {out / name}: permission denied (fix its permissions)"


def test_cli_exit_status_and_json(out: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["verify", str(out), "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["ok"] is True and data["num_failed"] == 1 and data["failures"][0]["path"] == "Jump/bad.mp4"
    (out / "shard-00001.h5").unlink()
    bad = runner.invoke(main, ["verify", str(out)])
    assert bad.exit_code == 1 and "problem: shard-00001.h5: missing" in bad.output
    assert json.loads(runner.invoke(main, ["verify", str(out), "--json"]).output)["problems"] == ["shard-00001.h5: missing"]
    assert runner.invoke(main, ["verify", str(out / "nope")]).exit_code == 2


def test_verify_says_how_to_repair_a_damaged_shard(out: Path) -> None:
    (out / "shard-00002.h5").unlink()
    text = format_report(verify_output(out))
    assert "problem: shard-00002.h5: missing" in text
    assert "to repair damaged or missing shards: rerun the same flowprep extract command with --check" in text


def test_verify_that_cannot_read_a_shard_is_one_line_and_exit_75(out: Path, monkeypatch) -> None:
    def unreadable(path, chunk=0):
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(mf, "file_digest", unreadable)
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert result.exit_code == 75
    assert result.output.startswith("Error: I/O error (") and result.output.strip().endswith(
        "(traceback with --debug); run verify again")
    assert not (out / "flowprep-error.log").exists()  # verify only reads OUT
    assert len(result.output.strip().splitlines()) == 1
