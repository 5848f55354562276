"""A run starts no more worker processes than it has videos to compute."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from flowprep.cli import main
from flowprep.extract import runner


def test_more_workers_than_videos_start_one_process_per_video(ucf_tree: Path, tmp_path: Path, monkeypatch) -> None:
    asked = []
    real = runner.run_jobs

    def run_jobs(jobs, handle, *, workers, **kwargs):
        asked.append((len(jobs), workers))
        return real(jobs, handle, workers=workers, **kwargs)

    monkeypatch.setattr(runner, "run_jobs", run_jobs)
    result = CliRunner().invoke(main, ["extract", "--videos", str(ucf_tree), "--out", str(tmp_path / "out"),
                                       "--method", "farneback", "--workers", "64", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert asked == [(4, 4)]  # not 64 processes, each a whole Python with OpenCV, for 4 videos
