"""The GPU benchmarks' scripts run end to end at tiny sizes on the CPU (--smoke), so that they do not rot
between the sessions that have a GPU machine: each writes its JSON with every row it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

REPO = Path(__file__).parents[2]


def _run(module: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "out.json"
    # One intra-op thread per process, as the demo's and the torchrun tests do: make test runs two pytest processes
    # on two cores, and torch's second thread spins in OpenMP barriers while the other process wants the core
    # (gpu_train's smoke, one busy core beside it: 52 s of CPU with two threads, 36-40 s with one).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", module, "--out", str(out), "--work", str(tmp_path / "work"), "--smoke",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


@pytest.mark.slow
def test_gpu_train_smoke_runs_trainer_fit_with_both_loaders(tmp_path) -> None:
    res = _run("benchmarks.gpu_train", tmp_path, "--streams", "temporal")
    assert set(res["fit"]) == {"temporal_ring", "temporal_collate"}
    for run in res["fit"].values():
        assert run["rc"] == 0 and run["samples_per_s"] > 0 and 0 <= run["data_wait_frac"] < 1
        assert [e["epoch"] for e in run["epochs"]] == [1, 2]
    assert res["ceiling_samples_per_s"]["temporal_device_crop"] > 0


@pytest.mark.slow
def test_loader_device_smoke_measures_both_loaders(tmp_path) -> None:
    res = _run("benchmarks.loader_device", tmp_path, "--workers", "2", "--reps", "1")
    assert set(res["loader_items_per_s"]) == {"ring_1", "collate_1", "ring_2", "collate_2"}
    assert all(rate > 0 for rate in res["loader_items_per_s"].values())
    assert res["read_ms"] > 0 and res["item_ms"] > 0


@pytest.mark.slow
def test_flow_quality_smoke_measures_agreement_and_epe_for_both_engines(tmp_path) -> None:
    res = _run("benchmarks.flow_quality", tmp_path)
    pooled = res["agreement"]["pooled"]
    assert len(res["agreement"]["pairs"]) >= 2 and 0.99 <= pooled["within1"] <= 1
    assert set(res["agreement"]["gate"]) >= {"within1>=0.995", "exact>=0.85", "mean_abs_stored<=0.04"}
    assert [r["flow"].split()[0] for r in res["epe"]["rows"]] == ["translation", "rotation", "zoom", "smooth"]
    assert all(r["epe_opencv_px"] > 0 and r["epe_torch_px"] > 0 for r in res["epe"]["rows"])
    assert res["facts"]["opencv"] == cv2.__version__


@pytest.mark.slow
def test_tvl1_gpu_smoke_measures_opencv_per_core_the_solver_per_batch_and_the_pipeline(tmp_path) -> None:
    res = _run("benchmarks.tvl1_gpu", tmp_path, "--profile", "--cpu-ratio-reps", "1")
    assert res["opencv_pairs_per_s_per_core"] > 0
    assert [r["batch"] for r in res["torch"]] == [1, 2]
    assert all(r["pairs_per_s"] > 0 and r["ratio_vs_one_core"] > 0 for r in res["torch"])
    assert res["profile"]["table"] and res["cpu_ratio"]["median_torch_over_opencv"] > 0
    row = res["pipeline"]  # the whole flowprep extract through one flow process
    assert (row["pairs"], row["workers"], [s["device"] for s in row["flow_processes"]]) == (8, 2, ["cpu"])
    assert row["pairs_per_s_wall"] > 0 and row["vs_solver_best"] > 0 and 0 < row["solver_busy_fraction"][0] <= 1


def test_import_frames_benchmark_smoke_measures_one_worker_and_one_per_core(tmp_path) -> None:
    res = _run("benchmarks.import_frames", tmp_path)
    assert res["setup"]["pairs"] == 16 and res["setup"]["smoke"] is True
    assert "workers_1" in res["pairs_per_s"] and all(rate > 0 for rate in res["pairs_per_s"].values())
    assert res["decode_only_pairs_per_s"] > 0 and not (tmp_path / "work").exists()
