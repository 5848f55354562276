"""trainer/distributed.py: single-process no-ops, device choice, and a real 2-process torchrun (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import checkpoint as ck
from trainer import distributed


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.init_distributed(torch.device("cpu"))
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object(5) == 5
    bn = torch.nn.BatchNorm1d(2)
    distributed.broadcast_buffers(bn)
    assert bn.running_mean.tolist() == [0.0, 0.0]
    assert distributed.world_size() == 1
    distributed.barrier()
    distributed.cleanup()


def test_resolve_device() -> None:
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    assert distributed.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu or cuda, got 'tpu'"):
        distributed.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(distributed.DeviceError, match="no CUDA device"):
            distributed.resolve_device("cuda")


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny_shards, tmp_path: Path) -> None:
    """torchrun --standalone --nproc_per_node 2 -m trainer fit ... --device cpu, gloo on loopback."""
    out = tmp_path / "run"
    one_val = tmp_path / "val1.txt"  # rank 1 gets no validation video and must still join the score all-reduce
    one_val.write_text(tiny_shards.val_list.read_text().splitlines()[0] + "\n")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "trainer", "fit", "--stream", "temporal", "--shards", str(tiny_shards.root),
        "--train-list", str(tiny_shards.all_list), "--val-list", str(one_val), "--out", str(out),
        "--arch", "resnet18", "--crop-size", "16", "--flow-length", "2", "--epochs", "2", "--batch-size", "3",
        "--workers", "1", "--val-samples", "2", "--device", "cpu", "--no-progress",
    ]  # a loader worker per rank: each rank's batch ring, running on from epoch 1 into epoch 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "checkpoint.pt", "metrics.jsonl"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        # 12 training videos split over 2 ranks: 6 each, none seen twice.
        assert m["samples_per_rank"] == [6, 6] and m["samples_total"] == 12 and m["overlap_samples"] == 0
        assert m["val_acc"] in (0.0, 1.0)
    assert proc.stdout.count("epoch 1:") == proc.stdout.count("epoch 2:") == 1  # only rank 0 reports
    ckpt = ck.load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == 2  # every rank's RNG state, for --resume
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped, loadable without DDP
