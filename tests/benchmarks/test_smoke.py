"""The GPU benchmarks' scripts run end to end at tiny sizes on the CPU (--smoke), so that they do not rot
between the sessions that have a GPU machine: each writes its JSON with every row it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


def _run(module: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", module, "--out", str(out), "--work", str(tmp_path / "work"), "--smoke",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=600)
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
