import json
import os
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from joblib.executor import get_memmapping_executor
from media import random_frames, write_video

from flowprep.config import DecodeConfig, FlowConfig, StorageConfig
from flowprep.extract.worker import (
    CRASH_ENV,
    VideoJob,
    extract_video,
    failed_path,
    is_complete,
    read_failure,
    run_jobs,
    running_path,
)
from flowprep.extract.writer import VideoMeta


def job_for(video: Path, out_dir: Path, name: str, *, rgb: bool = True, method: str = "farneback") -> VideoJob:
    meta = VideoMeta(video_id=f"C/{name}", source=f"C/{video.name}", label=0, class_name="C")
    return VideoJob(str(video), meta, str(out_dir / f"{name}.h5"), FlowConfig(method=method, bound=10.0),
                    DecodeConfig(), StorageConfig(rgb=rgb, jpeg_quality=95), chunk_frames=3)


def test_one_video_into_its_own_file(tmp_path: Path) -> None:
    frames = random_frames(7, 32, 64, seed=1)
    frames[..., 0] = np.maximum(frames[..., 0], 200)  # strongly red: catches an RGB/BGR swap in the JPEGs
    frames[..., 2] = np.minimum(frames[..., 2], 40)
    job = job_for(write_video(tmp_path / "v.mp4", frames, fps=24), tmp_path, "v")
    result = extract_video(job)
    assert result.ok and result.num_frames == 7 and result.error is None
    assert not Path(job.out + ".tmp").exists() and not running_path(job.out).exists()
    assert is_complete(job.out, "C/v")
    with h5py.File(job.out, "r") as f:
        g = f["videos/C/v"]
        assert dict(g.attrs) == {"label": 0, "class_name": "C", "source": "C/v.mp4", "num_frames": 7,
                                 "fps": pytest.approx(24.0), "rotation": 0}
        assert g["flow"].dtype == np.uint8 and g["flow"].shape == (6, 2, 32, 64)
        assert g["flow"].attrs["bound"] == 10.0
        assert g["flow"].compression == "gzip" and g["flow"].chunks == (1, 2, 32, 64)
        jpegs = g["rgb"][:]
    assert len(jpegs) == 7
    bgr = cv2.imdecode(jpegs[3], cv2.IMREAD_COLOR)  # any JPEG decoder: OpenCV hands back BGR
    assert bgr.shape == (32, 64, 3)
    assert bgr[..., 2].mean() > 190 and bgr[..., 0].mean() < 60


def test_no_rgb(tmp_path: Path) -> None:
    job = job_for(write_video(tmp_path / "v.avi", random_frames(4, 32, 32), codec="mpeg4"), tmp_path, "v", rgb=False)
    assert extract_video(job).ok
    with h5py.File(job.out, "r") as f:
        assert "rgb" not in f["videos/C/v"] and f["videos/C/v/flow"].shape == (3, 2, 32, 32)


def test_undecodable_video_is_a_recorded_failure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(2000))
    job = job_for(bad, tmp_path, "bad")
    result = extract_video(job)
    assert not result.ok and "not a readable video" in result.error
    assert read_failure(job.out) == {"path": "C/bad.mp4", "error": result.error}
    assert failed_path(job.out).name == "bad.failed.json"
    assert not Path(job.out).exists() and not Path(job.out + ".tmp").exists() and not running_path(job.out).exists()


def test_flow_with_nan_is_a_recorded_failure_not_stored_as_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flowprep.extract.worker as worker

    def nan_flow(chunks, estimator):  # a solver gone wrong on this video
        for rgb, flow in real_iter_flow(chunks, estimator):
            flow[-1, 0, 0, 0] = np.nan
            yield rgb, flow

    real_iter_flow = worker.iter_flow
    monkeypatch.setattr(worker, "iter_flow", nan_flow)
    job = job_for(write_video(tmp_path / "v.mp4", random_frames(5, 32, 32), fps=24), tmp_path, "v")
    result = extract_video(job)
    assert not result.ok and result.error == "NonFiniteFlow: the flow solver returned NaN at 1 of 4096 values"
    assert read_failure(job.out) == {"path": "C/v.mp4", "error": result.error}
    assert not Path(job.out).exists() and not Path(job.out + ".tmp").exists()


def test_is_complete_rejects_partial_files(tmp_path: Path) -> None:
    job = job_for(write_video(tmp_path / "v.mp4", random_frames(4, 32, 32)), tmp_path, "v")
    extract_video(job)
    data = Path(job.out).read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    assert is_complete(job.out, "C/v")
    assert not is_complete(job.out, "C/other")
    assert not is_complete(tmp_path / "cut.h5", "C/v")
    with h5py.File(tmp_path / "noattrs.h5", "w") as f:
        f.create_group("videos/C/v").create_dataset("flow", data=np.zeros((1, 2, 4, 4), np.uint8))
    assert not is_complete(tmp_path / "noattrs.h5", "C/v")  # attributes are written last


def test_run_jobs_uses_worker_processes(tmp_path: Path) -> None:
    jobs = [job_for(write_video(tmp_path / f"v{i}.mp4", random_frames(4, 32, 32, seed=i)), tmp_path, f"v{i}")
            for i in range(3)]
    for workers in (2, 1):
        results = []
        run_jobs(jobs, results.append, workers=workers)
        assert sorted(r.video_id for r in results) == ["C/v0", "C/v1", "C/v2"]
        assert all(r.ok for r in results)
        assert os.getpid() not in {r.pid for r in results}  # even --workers 1 decodes in a child process


@pytest.fixture
def fresh_workers():
    """Worker processes inherit the environment when they start: restart them around the test."""
    get_memmapping_executor(2).shutdown(kill_workers=True)  # workers start lazily: this spawns nothing
    yield
    get_memmapping_executor(2).shutdown(kill_workers=True)


@pytest.mark.parametrize("workers", [1, 2])  # one worker is a loky executor of our own, more are joblib's
def test_a_worker_crash_fails_only_the_video_that_caused_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_workers: None, workers: int
) -> None:
    jobs = [job_for(write_video(tmp_path / f"v{i}.mp4", random_frames(6, 32, 32, seed=i)), tmp_path, f"v{i}")
            for i in range(4)]
    monkeypatch.setenv(CRASH_ENV, "C/v1.mp4")  # the worker that takes v1 dies by SIGSEGV
    results, messages = {}, []
    run_jobs(jobs, lambda r: results.__setitem__(r.video_id, r), workers=workers, write=messages.append)
    assert sorted(results) == ["C/v0", "C/v1", "C/v2", "C/v3"]
    assert [v for v, r in results.items() if not r.ok] == ["C/v1"]
    assert "crashed the worker process" in results["C/v1"].error and "SIGSEGV" in results["C/v1"].error
    assert json.loads(failed_path(jobs[1].out).read_text())["path"] == "C/v1.mp4"
    assert any("a worker process died" in m for m in messages)
    assert all(is_complete(jobs[i].out, f"C/v{i}") for i in (0, 2, 3))
