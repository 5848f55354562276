"""trainer/distributed.py: single-process no-ops, device choice, and real 2-process torchruns (gloo): one never
stopped, one whose rank 1 alone gets SIGTERM mid-epoch and is resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import checkpoint as ck
from trainer.cli import EXIT_STATUS_DIR
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


def _torchrun(tiny_shards, out: Path, *args: str, script: list[str] | None = None) -> subprocess.CompletedProcess:
    """torchrun --standalone --nproc_per_node 2 -m trainer fit ... --device cpu, gloo on loopback (or ``script``
    instead of ``-m trainer``)."""
    one_val = out.parent / "val1.txt"  # rank 1 gets no validation video and must still join the score all-reduce
    one_val.write_text(tiny_shards.val_list.read_text().splitlines()[0] + "\n")
    train = out.parent / "train11.txt"  # every other video: validation videos are held out of training
    train.write_text("".join(line + "\n" for line in tiny_shards.all_list.read_text().splitlines()
                             if line.split()[0] != one_val.read_text().split()[0]))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        *(script or ["-m", "trainer"]), "fit", "--stream", "temporal", "--shards", str(tiny_shards.root),
        "--train-list", str(train), "--val-list", str(one_val), "--out", str(out),
        "--arch", "resnet18", "--crop-size", "16", "--flow-length", "2", "--epochs", "2", "--batch-size", "3",
        "--workers", "1", "--val-samples", "20", "--device", "cpu", "--no-progress", *args,
    ]  # a loader worker per rank: each rank's batch ring, running on from epoch 1 into epoch 2; --val-samples above
    # the 10 distinct stacks a 12-frame video has: capped, with a note that rank 0 alone prints
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[2])


@pytest.fixture(scope="module")
def torchrun_straight(tiny_shards, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-epoch run of 2 processes, never stopped."""
    out = tmp_path_factory.mktemp("torchrun") / "run"
    return out, _torchrun(tiny_shards, out)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(torchrun_straight) -> None:
    out, proc = torchrun_straight
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "checkpoint.pt", "metrics.jsonl"]
    metrics = _metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        # 11 training videos split over 2 ranks: 6 each, DistributedSampler's padding repeats one on the other rank.
        assert m["samples_per_rank"] == [6, 6] and m["samples_total"] == 12 and m["overlap_samples"] == 1
        assert m["val_acc"] in (0.0, 1.0)
    assert proc.stdout.count("epoch 1:") == proc.stdout.count("epoch 2:") == 1  # only rank 0 reports
    # so are the notes: one line for the whole run, though every rank's validation set is capped alike
    note = ("--val-samples 20: the validation videos have at most 10 distinct flow stacks of 2 fields; scoring 10 "
            "per video")
    assert proc.stderr.count(note) == 1, proc.stderr[-3000:]
    ckpt = ck.load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == 2  # every rank's RNG state, for --resume
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped, loadable without DDP


# `trainer fit` whose rank 1 alone gets SIGTERM, during optimizer step K (counted over the run): a signal reaches
# the processes of a job at different moments, or only some of them.
_SIGTERM_RANK_1 = """
import os, signal, sys
from torch.optim.optimizer import register_optimizer_step_post_hook
k, steps = int(sys.argv.pop(1)), 0
def hook(optimizer, args, kwargs):
    global steps
    steps += 1
    if steps == k and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGTERM)
register_optimizer_step_post_hook(hook)
from trainer.cli import main
main(sys.argv[1:], prog_name="trainer")
"""


@pytest.mark.slow
def test_when_one_of_two_processes_gets_sigterm_mid_epoch_both_stop_at_the_same_step_and_resume_as_never_stopped(
    torchrun_straight, tiny_shards, tmp_path
) -> None:
    straight, run = torchrun_straight[0], tmp_path / "run"
    script = tmp_path / "sigterm_rank_1.py"
    script.write_text(_SIGTERM_RANK_1)
    stopped = _torchrun(tiny_shards, run, script=[str(script), "3"])  # step 3: epoch 2, step 1 of 2
    assert stopped.returncode != 0  # torchrun's own status for workers that exited 143
    assert stopped.stderr.count("stopped by SIGTERM") == 1, stopped.stderr[-3000:]  # rank 0's line alone
    assert "stopped by SIGTERM at epoch 2, step 1/2; checkpoint saved: rerun with --resume to continue" in stopped.stderr
    saved = ck.load_checkpoint(run / "checkpoint.pt")
    assert saved["epoch"] == 1 and saved["scheduler"]["last_epoch"] == 3
    assert [p["steps"] for p in saved["partial_epoch"]] == [1, 1] and [p["seen"] for p in saved["partial_epoch"]] == [3, 3]
    # torchrun's 1 hides the ranks' 143: each leaves it for pipelines/torchrun_train.sh to exit with
    statuses = {p.name: p.read_text() for p in (run / EXIT_STATUS_DIR).iterdir()}
    assert statuses == {"rank-0": "143\n", "rank-1": "143\n"}

    resumed = _torchrun(tiny_shards, run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list((run / EXIT_STATUS_DIR).iterdir()) == []  # a run that ends well removes its rank's status
    a, b = ck.load_checkpoint(straight / "checkpoint.pt"), ck.load_checkpoint(run / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    timing = ("samples_per_s", "data_wait_frac")
    assert ([{k: v for k, v in m.items() if k not in timing} for m in _metrics(straight)]
            == [{k: v for k, v in m.items() if k not in timing} for m in _metrics(run)])
