"""Issue 10: shards are intact or say they are not. One writer per output, reruns repair, every crash
has a status a scheduler can act on, a video's own problem never stops the run, inputs are read once."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_ucf_tree
from media import random_frames, translating_texture, write_video

from flowprep import exits
from flowprep.extract import lock as lock_mod
from flowprep.cli import main
from flowprep.errors import ERROR_LOG
from flowprep.config import DecodeConfig, FlowConfig, StorageConfig, TVL1Params
from flowprep.extract.flow import FlowEstimator, estimator_for, to_gray
from flowprep.extract.lock import OutputLock
from flowprep.extract.verify import format_report, verify_output
from flowprep.extract.worker import OutputError, VideoJob, extract_video
from flowprep.extract.writer import VideoMeta
from processes import bound_by_file_modes

FLOWPREP = Path(sys.executable).parent / "flowprep"


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def extract_args(videos: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--videos", str(videos), "--out", str(out), "--method", "farneback", "--workers", "2",
            "--videos-per-shard", "2", "--no-progress", *extra]


# --- 1. flow solvers are per thread ------------------------------------------------------------------


def test_two_threads_computing_tvl1_at_once_get_the_flow_each_would_get_alone() -> None:
    config = FlowConfig(method="tvl1", tvl1=TVL1Params(nscales=3, warps=3))
    pairs = []
    for i in range(6):
        frames = to_gray(translating_texture(2, 72, 96, 0.5 + 0.3 * i, -0.4 * i, seed=i))
        pairs.append((frames[0], frames[1]))
    alone = [FlowEstimator(method="tvl1", tvl1=config.tvl1)(a, b).copy() for a, b in pairs]
    results: dict[int, list[np.ndarray]] = {}

    def work(t: int) -> None:
        mine = pairs[t::2] * 3  # each thread runs its pairs repeatedly, overlapping the other thread's calls
        results[t] = [estimator_for(config)(a, b).copy() for a, b in mine]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(2):
        expected = alone[t::2] * 3
        for got, want in zip(results[t], expected):
            assert np.array_equal(got, want)


def test_each_thread_gets_its_own_solver_and_keeps_it() -> None:
    config = FlowConfig(method="tvl1")
    seen = []
    th = threading.Thread(target=lambda: seen.append(estimator_for(config)))
    th.start()
    th.join()
    assert estimator_for(config) is estimator_for(config)
    assert seen[0] is not estimator_for(config)


# --- 2. one writer per output ---------------------------------------------------------------------


def _hold_lock_in_another_process(path: Path) -> subprocess.Popen:
    code = ("import sys, time; from flowprep.extract.lock import OutputLock; l = OutputLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_of_the_same_task_is_refused_naming_the_holder(ucf_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    holder = _hold_lock_in_another_process(out / "manifest.json.lock")
    try:
        result = invoke(*extract_args(ucf_tree, out))
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == exits.BUSY.code, result.output
    assert f"host {socket.gethostname()}, pid {holder.pid}, started " in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json.lock"]  # nothing was written
    again = invoke(*extract_args(ucf_tree, out))  # the holder was killed (-9): its lock is stale now
    assert again.exit_code == 0, again.output
    assert f"took over the lock of a run that is gone (host {socket.gethostname()}, pid {holder.pid}" in again.output
    assert verify_output(out).ok and not (out / "manifest.json.lock").exists()


def test_array_tasks_with_different_indexes_share_one_out(ucf_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    holder = _hold_lock_in_another_process(out / "manifest-00000-of-00002.json.lock")
    try:
        task1 = invoke(*extract_args(ucf_tree, out, "--task-index", "1", "--task-count", "2"))
        task0 = invoke(*extract_args(ucf_tree, out, "--task-index", "0", "--task-count", "2"))
    finally:
        holder.kill()
        holder.wait()
    assert task1.exit_code == 0, task1.output
    assert task0.exit_code == exits.BUSY.code and "is being written by another run" in task0.output


def test_of_two_runs_with_other_task_counts_starting_at_one_instant_one_refuses(
        ucf_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # task 0 of 2 passes its check of --out; before it writes anything, a single run (another lock, another
    # task count) starts in a real second process, passes its own check and finishes
    from flowprep.extract import manifest as mf

    out, real_check, other = tmp_path / "out", mf.check_compatible, []

    def check_then_let_the_other_run_start(*args, **kwargs):
        result = real_check(*args, **kwargs)
        if not other:
            other.append(subprocess.run([str(FLOWPREP), *extract_args(ucf_tree, out)], capture_output=True, text=True))
        return result

    monkeypatch.setattr(mf, "check_compatible", check_then_let_the_other_run_start)
    task0 = invoke(*extract_args(ucf_tree, out, "--task-index", "0", "--task-count", "2"))
    assert other[0].returncode == 0, other[0].stderr
    assert task0.exit_code == exits.USAGE.code, task0.output
    assert "holds a run split into 1 task(s); this run has 2: use another --out" in task0.output
    assert not list(out.glob("manifest-*")) and not list(out.glob("task*"))  # the refused task left nothing
    assert verify_output(out).ok  # the other run's output, intact


def test_a_lock_of_another_host_counts_until_its_heartbeat_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json.lock"
    other = {"host": "node-17.cluster", "pid": 4242, "pid_start": "1", "started": "2026-11-30T01:02:03+00:00",
             "token": "abc"}
    path.write_text(json.dumps(other))
    with pytest.raises(exits.BusyError, match="host node-17.cluster, pid 4242.*touched the lock 0 s ago"):
        OutputLock(path).acquire()
    assert json.loads(path.read_text()) == other  # a refused contender leaves the holder's file as it was
    old = time.time() - lock_mod.STALE_AFTER_S - 5
    os.utime(path, (old, old))
    lock = OutputLock(path).acquire()
    try:
        assert lock.took_over == other
        assert json.loads(path.read_text())["token"] == lock.me["token"]
    finally:
        lock.release()
    assert not path.exists()


def test_a_dead_pid_on_this_host_is_stale_even_without_kernel_locks(tmp_path: Path, monkeypatch) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "manifest.json.lock"
    alive = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": lock_mod._process_start(os.getpid()),
             "started": "x", "token": "t1"}
    path.write_text(json.dumps(alive))

    def no_locks(fd: int, op: int) -> None:  # a file system without flock (ENOLCK), e.g. NFS mounted nolock
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_mod.fcntl, "flock", no_locks)
    with pytest.raises(exits.BusyError, match=f"pid {os.getpid()}"):
        OutputLock(path).acquire()
    path.write_text(json.dumps({**alive, "pid": dead.pid, "pid_start": "1"}))
    lock = OutputLock(path).acquire()
    assert lock.took_over["pid"] == dead.pid
    lock.release()


def test_a_run_whose_lock_was_taken_over_stops_with_the_retriable_status(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json.lock"
    lock = OutputLock(path, heartbeat_s=0.02).acquire()
    try:
        lock.check()
        path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "now", "token": "theirs"}))
        deadline = time.monotonic() + 5
        while lock._lost is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(exits.RetriableError, match="now names another run .host elsewhere"):
            lock.check()
    finally:
        lock.release()
    assert json.loads(path.read_text())["token"] == "theirs"  # a lost lock is not removed on release


@pytest.mark.slow
def test_two_extracts_into_one_out_at_random_offsets_one_works_the_other_is_refused_or_finds_it_done(
        tmp_path: Path, read_shards) -> None:
    """Two real processes, the second started 0-0.4 s after the first: while the first holds the output the
    second is refused (exit 4); a second that starts after the first has finished finds every video done
    (a fast machine can finish 4 small videos in that time). Either way the shards are the reference's."""
    videos = make_ucf_tree(tmp_path / "v", classes=("A", "B"), per_class=2, frames=16, height=48, width=64)
    rng = random.Random(0)
    reference = tmp_path / "ref"
    assert invoke(*extract_args(videos, reference, "--workers", "1")).exit_code == 0
    trials, refused_count = 6, 0
    for trial in range(trials):
        out = tmp_path / f"out{trial}"
        cmd = [str(FLOWPREP), *extract_args(videos, out, "--workers", "1")]
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(rng.uniform(0.0, 0.4))
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
        codes = [first.returncode, second.returncode]
        if exits.BUSY.code in codes:
            assert sorted(codes) == [0, exits.BUSY.code], (trial, codes, outputs)
            refused = outputs[codes.index(exits.BUSY.code)]
            assert "is being written by another run" in refused and "Traceback" not in refused, refused
            refused_count += 1
        else:  # one after the other: the later run extracted nothing
            assert codes == [0, 0], (trial, codes, outputs)
            assert any("(0 processed now, 4 from an earlier run" in o for o in outputs), (trial, outputs)
        assert verify_output(out).ok, trial
        assert read_shards(out) == read_shards(reference), trial
    assert refused_count >= trials // 2, f"only {refused_count} of {trials} trials overlapped: the test lost its point"


# --- 3. a rerun repairs what verify flags -----------------------------------------------------------


def test_a_rerun_extracts_the_videos_of_a_deleted_or_truncated_shard_again(ucf_tree: Path, tmp_path: Path,
                                                                          read_shards) -> None:
    out = tmp_path / "out"
    assert invoke(*extract_args(ucf_tree, out)).exit_code == 0
    before = read_shards(out)
    (out / "shard-00000.h5").unlink()
    with open(out / "shard-00001.h5", "r+b") as f:
        f.truncate(f.seek(0, os.SEEK_END) - 100)
    assert not verify_output(out).ok
    rerun = invoke(*extract_args(ucf_tree, out))
    assert rerun.exit_code == 0, rerun.output
    assert "repair: shard-00000.h5 (missing): extracting its 2 video(s) again" in rerun.output
    assert "repair: shard-00001.h5 (" in rerun.output and "4 of 4 videos extracted" in rerun.output
    assert "(4 processed now, 0 from an earlier run" in rerun.output
    assert verify_output(out).ok and read_shards(out) == before


def test_a_damaged_shard_of_the_same_size_is_repaired_with_check(ucf_tree: Path, tmp_path: Path, read_shards) -> None:
    out = tmp_path / "out"
    assert invoke(*extract_args(ucf_tree, out)).exit_code == 0
    before = read_shards(out)
    with open(out / "shard-00001.h5", "r+b") as f:
        f.seek(0)
        f.write(b"\0" * 512)  # the superblock: the shard no longer opens
    assert invoke(*extract_args(ucf_tree, out)).exit_code == 0  # size only: not noticed
    assert not verify_output(out).ok
    rerun = invoke(*extract_args(ucf_tree, out, "--check"))
    assert rerun.exit_code == 0, rerun.output
    assert "repair: shard-00001.h5 (sha256 differs from the manifest): extracting its 2 video(s) again" in rerun.output
    assert "(2 processed now, 2 from an earlier run" in rerun.output
    assert verify_output(out).ok and read_shards(out) == before


def test_a_damaged_manifest_is_set_aside_and_the_task_starts_over(ucf_tree: Path, tmp_path: Path, read_shards) -> None:
    out = tmp_path / "out"
    assert invoke(*extract_args(ucf_tree, out)).exit_code == 0
    before = read_shards(out)
    (out / "manifest.json").write_text('{"format": "flowprep-manif')
    rerun = invoke(*extract_args(ucf_tree, out))
    assert rerun.exit_code == 0, rerun.output
    assert "set aside as manifest.json.damaged; this task starts over" in rerun.output
    assert verify_output(out).ok and read_shards(out) == before


def test_a_manifest_edited_to_list_other_videos_or_a_shard_twice_is_repaired_by_a_rerun(ucf_tree: Path, tmp_path: Path,
                                                                                         read_shards) -> None:
    out = tmp_path / "out"
    assert invoke(*extract_args(ucf_tree, out)).exit_code == 0
    before = read_shards(out)
    m = json.loads((out / "manifest.json").read_text())
    m["shards"][1]["videos"] = ["Jump/nope"]  # valid JSON, but not what the shard holds
    m["shards"].append(m["shards"][0])
    (out / "manifest.json").write_text(json.dumps(m))
    assert not verify_output(out).ok
    rerun = invoke(*extract_args(ucf_tree, out))
    assert rerun.exit_code == 0, rerun.output
    assert "repair: shard-00000.h5 (listed 2 times in the manifest): extracting its 2 video(s) again" in rerun.output
    assert ("repair: shard-00001.h5 (the manifest lists other videos than the plan puts there): extracting its 2 "
            "video(s) again") in rerun.output
    assert verify_output(out).ok and read_shards(out) == before


def test_a_manifest_that_cannot_be_read_is_not_set_aside_and_no_finished_video_is_redone(ucf_tree: Path,
                                                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert invoke(*extract_args(ucf_tree, out)).exit_code == 0
    shards = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    cmd = [str(FLOWPREP), *extract_args(ucf_tree, out)]
    cmd = bound_by_file_modes(cmd)  # root: as one without the capabilities that bypass modes
    os.chmod(out / "manifest.json", 0o000)  # not damaged: unreadable for now (as with an I/O error)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(out / "manifest.json", 0o644)
    assert result.returncode == exits.USAGE.code, result.stdout + result.stderr
    assert result.stderr.strip() == f"Error: cannot write into {out}: permission denied ({out / 'manifest.json'})"
    assert not (out / "manifest.json.damaged").exists()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == shards
    rerun = invoke(*extract_args(ucf_tree, out))
    assert rerun.exit_code == 0 and "(0 processed now, 4 from an earlier run" in rerun.output, rerun.output


# --- 4. exit statuses: one line, a code that tells a scheduler what to do ---------------------------


def test_an_unexpected_error_is_one_line_exit_75_with_the_traceback_in_a_log(ucf_tree: Path, tmp_path: Path,
                                                                             monkeypatch) -> None:
    from flowprep.extract import runner

    def crash(**kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(runner, "run_extract", crash)
    out = tmp_path / "out"
    result = invoke(*extract_args(ucf_tree, out))
    assert result.exit_code == exits.RETRY.code == 75
    assert result.output.strip() == (f"Error: unexpected KeyError: 'a bug' (traceback in {out / ERROR_LOG}); "
                                     "rerun the same command to resume")
    assert "Traceback (most recent call last)" in (out / ERROR_LOG).read_text()
    with pytest.raises(KeyError):  # --debug: the traceback itself
        CliRunner().invoke(main, extract_args(ucf_tree, out, "--debug"), catch_exceptions=False)


def test_failed_videos_ok_exits_0_and_keeps_the_failures_listed(ucf_tree: Path, tmp_path: Path) -> None:
    (ucf_tree / "Jump" / "bad.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    assert invoke(*extract_args(ucf_tree, out)).exit_code == exits.SOME_INPUTS_FAILED.code
    result = invoke(*extract_args(ucf_tree, out, "--failed-videos-ok"))
    assert result.exit_code == 0 and "1 video(s) failed" in result.output
    assert [f["path"] for f in verify_output(out).failures] == ["Jump/bad.mp4"]


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def test_a_full_disk_that_hdf5_reports_says_no_space_left_in_the_line_not_past_its_cut(tmp_path: Path) -> None:
    """HDF5's message holds the errno's words after a few hundred characters of its own (seen in a full-disk run:
    the line was cut at 400 characters before them, and said only HDF5's "Disable slist on flush ...")."""
    from flowprep.errors import environment_failure

    name = tmp_path / ("d" * 120) / ".work" / "shard-00001" / "00000.h5.tmp"
    hdf5 = RuntimeError(f"Disable slist on flush dest failure failed (file write failed: time = Tue Dec  1 20:53:54 "
                        f"2026\n, filename = '{name}', file descriptor = 7, errno = 28, error message = 'No space left "
                        "on device', buf = 0x55bf1e0a5900, total write size = 4096, bytes this sub-write = 4096, "
                        "bytes actually written = 18446744073709551615, offset = 0)")
    line = str(environment_failure(hdf5, tmp_path, log=False).message)
    assert line.startswith(f"disk full ({tmp_path}): No space left on device: Disable slist"), line
    assert "\n" not in line and line.endswith("; rerun the same command to resume")
    words = environment_failure(OSError(28, "No space left on device", str(name)), tmp_path, log=False).message
    assert words.count("No space left on device") == 1, words  # said once where the error says it itself


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_one_line_retriable_and_a_rerun_after_freeing_space_resumes(tmp_path: Path,
                                                                                    read_shards) -> None:
    videos = make_ucf_tree(tmp_path / "v", classes=("A", "B"), per_class=3, frames=24, height=120, width=160)
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "700k")  # a few videos fit, not all
    try:
        out = disk / "out"
        cmd = [str(FLOWPREP), *extract_args(videos, out)]
        full = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        lines = (full.stdout + full.stderr).strip().splitlines()
        assert full.returncode == exits.RETRY.code, lines
        assert "Traceback" not in full.stdout + full.stderr
        assert lines[-1].startswith("Error: ") and "No space left on device" in lines[-1], lines
        assert lines[-1].endswith("rerun the same command to resume")
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "6 of 6 videos extracted" in rerun.stdout
        assert verify_output(out).ok
        assert invoke(*extract_args(videos, tmp_path / "ref")).exit_code == 0
        assert read_shards(out) == read_shards(tmp_path / "ref")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# --- 5. a video's own problem is recorded, the run goes on ---------------------------------------------


def _job(tmp_path: Path, source: Path) -> VideoJob:
    meta = VideoMeta(video_id="A/x", source="A/x.mp4", label=0, class_name="A")
    (tmp_path / "work").mkdir(exist_ok=True)
    return VideoJob(str(source), meta, str(tmp_path / "work" / "00000.h5"), FlowConfig(method="farneback"),
                    DecodeConfig(), StorageConfig())


@pytest.mark.parametrize("error", [MemoryError("Unable to allocate 7.9 GiB"), OSError(errno.EIO, "Input/output error"),
                                   __import__("cv2").error("OpenCV(5.0.0) error: (-215:Assertion failed) in calc")])
def test_any_error_of_the_video_itself_is_a_recorded_failure(tmp_path: Path, monkeypatch, error: Exception) -> None:
    source = write_video(tmp_path / "x.mp4", random_frames(6, 48, 64))
    from flowprep.extract import worker

    def broken(chunks, estimator):
        raise error

    monkeypatch.setattr(worker, "iter_flow", broken)
    result = extract_video(_job(tmp_path, source))
    assert not result.ok and result.error.startswith(type(error).__name__ + ": ")
    failed = json.loads((tmp_path / "work" / "00000.failed.json").read_text())
    assert failed == {"path": "A/x.mp4", "error": result.error}
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["00000.failed.json"]


def test_an_error_writing_the_output_stops_the_run_instead_of_blaming_the_video(tmp_path: Path, monkeypatch) -> None:
    source = write_video(tmp_path / "x.mp4", random_frames(6, 48, 64))
    from flowprep.extract import worker

    def disk_full(self, q):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(worker.VideoWriter, "append_flow", disk_full)
    with pytest.raises(OutputError, match="cannot write .*00000.h5.tmp: OSError: .Errno 28. No space left"):
        extract_video(_job(tmp_path, source))
    assert list((tmp_path / "work").iterdir()) == []  # no failure recorded, no debris


def test_a_dangling_link_among_the_videos_is_a_failed_video_not_a_crash(ucf_tree: Path, tmp_path: Path) -> None:
    (ucf_tree / "Run" / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    out = tmp_path / "out"
    result = invoke(*extract_args(ucf_tree, out))
    assert result.exit_code == exits.SOME_INPUTS_FAILED.code, result.output
    assert "Traceback" not in result.output and "4 of 5 videos extracted" in result.output
    assert [f["path"] for f in verify_output(out).failures] == ["Run/gone.mp4"]


# --- 6. inputs that would silently change the dataset ------------------------------------------------


def test_links_back_into_the_tree_are_read_once_with_a_note(ucf_tree: Path, tmp_path: Path) -> None:
    (ucf_tree / "Jump" / "up").symlink_to("..")
    (ucf_tree / "alias").symlink_to(".")
    out = tmp_path / "out"
    result = invoke(*extract_args(ucf_tree, out))
    assert result.exit_code == 0, result.output
    assert ("note: skipped 2 linked folder(s) already read: alias (the same folder as .); Jump/up (the same folder "
            "as .)") in result.output
    assert "4 of 4 videos extracted" in result.output
    assert json.loads((out / "manifest.json").read_text())["classes"] == ["Jump", "Run"]


def test_a_linked_class_folder_outside_the_tree_is_still_read(ucf_tree: Path, tmp_path: Path) -> None:
    shutil.move(str(ucf_tree / "Run"), str(tmp_path / "elsewhere"))
    (ucf_tree / "Run").symlink_to(tmp_path / "elsewhere")
    result = invoke(*extract_args(ucf_tree, tmp_path / "out"))
    assert result.exit_code == 0 and "4 of 4 videos extracted" in result.output, result.output


def test_an_unreadable_class_folder_is_one_line_and_exit_2(ucf_tree: Path, tmp_path: Path) -> None:
    os.chmod(ucf_tree / "Run", 0o000)
    out = tmp_path / "out"
    cmd = [str(FLOWPREP), *extract_args(ucf_tree, out)]
    cmd = bound_by_file_modes(cmd)  # root: as one without the capabilities that bypass modes
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(ucf_tree / "Run", 0o755)
    assert result.returncode == exits.USAGE.code, result.stdout + result.stderr
    assert result.stderr.strip() == (f"Error: cannot read the folder {ucf_tree / 'Run'}: Permission denied "
                                     "(fix its permissions, or move it out of --videos)")
    assert not out.exists()


def test_an_out_folder_that_cannot_be_written_is_one_line_and_exit_2(ucf_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o555)
    cmd = [str(FLOWPREP), *extract_args(ucf_tree, out)]
    cmd = bound_by_file_modes(cmd)  # root: as one without the capabilities that bypass modes
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == exits.USAGE.code, result.stdout + result.stderr
    assert result.stderr.strip() == f"Error: cannot write into {out}: permission denied ({out / 'manifest.json.lock'})"


def test_a_video_name_with_a_line_break_is_refused_in_one_line(ucf_tree: Path, tmp_path: Path) -> None:
    write_video(ucf_tree / "Run" / "two\nlines.mp4", random_frames(4, 48, 64))
    result = invoke(*extract_args(ucf_tree, tmp_path / "out"))
    assert result.exit_code == exits.USAGE.code
    assert "contains a tab or line break, which no list file can name" in result.output


def test_a_video_name_that_is_not_utf8_is_refused_in_one_line(ucf_tree: Path, tmp_path: Path) -> None:
    shutil.copy(ucf_tree / "Jump" / "v_Jump_g00.mp4", os.fsencode(ucf_tree / "Run") + b"/caf\xe9.mp4")  # Latin-1
    out = tmp_path / "out"
    result = subprocess.run([str(FLOWPREP), *extract_args(ucf_tree, out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == exits.USAGE.code, result.stdout + result.stderr
    assert result.stderr.strip() == ("Error: video path b'Run/caf\\xe9.mp4' is not UTF-8, so no shard or list file can "
                                     "name it: rename it (1 such path(s))")
    assert not (out / "manifest.json").exists()


def test_a_video_name_with_spaces_is_extracted(ucf_tree: Path, tmp_path: Path) -> None:
    write_video(ucf_tree / "air drumming" / "v_air drumming_g01.mp4", random_frames(4, 48, 64))
    out = tmp_path / "out"
    result = invoke(*extract_args(ucf_tree, out))
    assert result.exit_code == 0, result.output
    assert "air drumming/v_air drumming_g01" in {v for s in json.loads((out / "manifest.json").read_text())["shards"]
                                                 for v in s["videos"]}


# --- 7. failed videos can be retried; array tasks must plan from one listing -------------------------


def test_a_failed_video_is_retried_when_its_file_changed(ucf_tree: Path, tmp_path: Path) -> None:
    bad = ucf_tree / "Jump" / "v_Jump_g05.mp4"
    bad.write_bytes(b"not a video yet")
    out = tmp_path / "out"
    assert invoke(*extract_args(ucf_tree, out)).exit_code == exits.SOME_INPUTS_FAILED.code
    same = invoke(*extract_args(ucf_tree, out))
    assert same.exit_code == exits.SOME_INPUTS_FAILED.code and "(0 processed now" in same.output
    write_video(bad, random_frames(6, 48, 64, seed=5))  # the user replaced the file
    fixed = invoke(*extract_args(ucf_tree, out))
    assert fixed.exit_code == 0, fixed.output
    assert "retry: Jump/v_Jump_g05.mp4 (its file changed; it failed with: " in fixed.output
    assert "5 of 5 videos extracted" in fixed.output and "(1 processed now, 4 from an earlier run" in fixed.output
    report = verify_output(out)
    assert report.ok and report.failures == [] and report.num_extracted == 5


def test_retry_failed_tries_unchanged_failed_videos_again(ucf_tree: Path, tmp_path: Path) -> None:
    (ucf_tree / "Run" / "bad.mp4").write_bytes(b"still not a video")
    out = tmp_path / "out"
    assert invoke(*extract_args(ucf_tree, out)).exit_code == exits.SOME_INPUTS_FAILED.code
    again = invoke(*extract_args(ucf_tree, out, "--retry-failed"))
    assert again.exit_code == exits.SOME_INPUTS_FAILED.code
    assert "retry: Run/bad.mp4 (--retry-failed;" in again.output and "(1 processed now" in again.output
    assert verify_output(out).num_failed == 1


def test_a_retried_video_that_fails_again_is_shown_and_logged_with_its_new_error(ucf_tree: Path, tmp_path: Path) -> None:
    bad = ucf_tree / "Run" / "bad.mp4"
    bad.write_bytes(b"not a video")
    out = tmp_path / "out"
    assert invoke(*extract_args(ucf_tree, out)).exit_code == exits.SOME_INPUTS_FAILED.code
    write_video(bad, random_frames(6, 48, 64, seed=5))
    bad.write_bytes(bad.read_bytes()[:2000])  # replaced by a copy cut short: another error
    again = invoke(*extract_args(ucf_tree, out))
    assert again.exit_code == exits.SOME_INPUTS_FAILED.code
    (now,) = verify_output(out).failures
    assert now["error"].startswith("truncated:")
    assert f"skipped {ucf_tree / 'Run' / 'bad.mp4'}: {now['error']}" in again.output
    logged = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["error"] for f in logged][-1] == now["error"] and len(logged) == 2


def test_verify_names_array_tasks_that_planned_from_different_listings(ucf_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert invoke(*extract_args(ucf_tree, out, "--task-index", "0", "--task-count", "2")).exit_code == 0
    write_video(ucf_tree / "Run" / "v_Run_g00.mp4", random_frames(16, 48, 64, seed=77))  # changes its size
    assert invoke(*extract_args(ucf_tree, out, "--task-index", "1", "--task-count", "2")).exit_code == 0
    report = verify_output(out)
    assert not report.ok
    assert any("planned from different input listings (task(s) 0; task(s) 1)" in p for p in report.problems)
    # the way out is a new --out: a rerun with --check repairs damaged shards, not a split that changed
    assert "--check" not in format_report(report)


def test_a_tiny_video_does_not_change_the_flow_of_the_next_videos_of_a_worker() -> None:
    # OpenCV's calc() lowers the solver's scale count for good on a frame too small for all scales.
    small = to_gray(translating_texture(2, 24, 32, 1.0, 0.5))
    big = to_gray(translating_texture(2, 120, 160, 1.0, 0.5, seed=3))
    fresh = FlowEstimator(method="tvl1")(big[0], big[1]).copy()
    reused = FlowEstimator(method="tvl1")
    reused(small[0], small[1])
    assert np.array_equal(reused(big[0], big[1]), fresh)
