"""A worker whose run was killed (kill -9, the OOM killer) stops instead of finishing its video.

loky's worker processes outlive a run killed with SIGKILL and finish the videos they hold. The rerun takes
the dead run's lock over at once and writes the same per-video files, so an orphan's rename moved the rerun's
half-written file into place (the rerun then stopped with exit 75 on its vanished .tmp), and an orphan's
debris removal deleted the rerun's files.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from media import random_frames, write_video
from processes import alive, stat

from flowprep.config import DecodeConfig, FlowConfig, StorageConfig
from flowprep.extract.worker import VideoJob, extract_video, running_path
from flowprep.extract.writer import VideoMeta


def test_a_worker_of_a_killed_run_stops_before_it_writes_anything_more(tmp_path: Path) -> None:
    video = tmp_path / "videos" / "A" / "long.mp4"
    write_video(video, np.tile(random_frames(16, 48, 64), (150, 1, 1, 1)))  # 2400 frames: seconds of work
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "flowprep", "extract", "--videos", str(tmp_path / "videos"),
                            "--out", str(out), "--method", "farneback", "--workers", "1", "--no-progress"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    work = out / ".work" / "shard-00000"
    marker = work / "00000.running"
    deadline = time.monotonic() + 60
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int(marker.read_text())
    process = (worker, stat(worker)[19])  # (pid, start time): not another process that gets the pid later
    time.sleep(0.3)  # into the video
    run.kill()
    run.wait()
    deadline = time.monotonic() + 3  # the video has seconds to go: an orphan that carried on would still run
    while alive(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = alive(process)
    if left:
        os.kill(worker, signal.SIGKILL)
    assert not left, "the worker of the killed run is still computing"
    assert not (work / "00000.h5").exists()


def test_a_job_queued_for_a_worker_whose_run_is_gone_is_not_started(tmp_path: Path) -> None:
    video = write_video(tmp_path / "A" / "v.mp4", random_frames(4, 48, 64))
    out = tmp_path / "work" / "00000.h5"
    out.parent.mkdir()
    meta = VideoMeta(video_id="A/v", label=0, class_name="A", source="A/v.mp4")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    job = VideoJob(str(video), meta, str(out), FlowConfig(method="farneback"), DecodeConfig(), StorageConfig(),
                   run_pid=int(gone.stdout))  # not this worker's parent: the run that queued the job died
    worker = multiprocessing.get_context("spawn").Process(target=extract_video, args=(job,))  # a real worker process
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    assert list(out.parent.iterdir()) == []  # no .running, no .tmp, no result, no failure record
    assert not running_path(out).exists()


def _orphaned_during_fsync(job: VideoJob) -> None:
    """In a real worker process: the run dies while the finished file is being made durable."""
    real_fsync = os.fsync

    def fsync_then_lose_the_run(fd: int) -> None:
        real_fsync(fd)
        os.kill(job.run_pid, signal.SIGKILL)  # the run is gone: this process is re-parented
        deadline = time.monotonic() + 10
        while os.getppid() == job.run_pid and time.monotonic() < deadline:
            time.sleep(0.01)

    os.fsync = fsync_then_lose_the_run
    extract_video(job)


def test_a_run_that_dies_while_its_worker_syncs_the_file_gets_no_rename_from_the_orphan(tmp_path: Path) -> None:
    # fsync can take long on a network file system: the check that the run lives comes after it, right
    # before the rename, so an orphan does not move a file into the rerun's place.
    video = write_video(tmp_path / "A" / "v.mp4", random_frames(4, 48, 64))
    out = tmp_path / "work" / "00000.h5"
    out.parent.mkdir()
    run = f"""
import multiprocessing, os, sys, time
sys.path[:0] = {[str(Path(__file__).parent), *sys.path]!r}
from flowprep.config import DecodeConfig, FlowConfig, StorageConfig
from flowprep.extract.worker import VideoJob
from flowprep.extract.writer import VideoMeta
from test_orphaned_workers import _orphaned_during_fsync
meta = VideoMeta(video_id="A/v", label=0, class_name="A", source="A/v.mp4")
job = VideoJob({str(video)!r}, meta, {str(out)!r}, FlowConfig(method="farneback"), DecodeConfig(), StorageConfig(),
               run_pid=os.getpid())
worker = multiprocessing.get_context("fork").Process(target=_orphaned_during_fsync, args=(job,))
worker.start()
print(worker.pid, flush=True)
time.sleep(60)
"""  # stands in for the run: the worker's parent, killed by the worker itself after its fsync
    parent = subprocess.Popen([sys.executable, "-c", run], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    process = (worker, stat(worker)[19])
    assert parent.wait(30) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while alive(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(process)
    assert not out.exists()  # the orphan did not rename its file into place
    assert Path(f"{out}.tmp").exists()  # debris, which the rerun removes
