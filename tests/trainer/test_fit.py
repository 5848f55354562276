"""trainer/fit.py: real runs of resnet18 at a 16 px crop on the tiny shards (CPU, workers=0)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from flowprep import exits
from flowprep.stopping import StopFlag, Stopped, stop_flag
from trainer import checkpoint as ck
from trainer.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from trainer.data.errors import DataError
from trainer.distributed import amp_dtype_for
from trainer.fit import METRICS, fit, lr_lambda

TIMING = {"samples_per_s", "data_wait_frac"}  # wall-clock fields differ between runs


def _configs(shards, out: Path, *, epochs: int = 2, resume: bool = False, arch: str = "resnet18", stream: str = "temporal",
             val: bool = True, seed: int = 0, workers: int = 0):
    model = ModelConfig(stream=stream, num_classes=1, arch=arch, flow_length=2, dropout=0.5)
    data = DataConfig(shards=str(shards.root), train_list=str(shards.train_list),
                      val_list=str(shards.val_list) if val else None, crop_size=16, batch_size=3, workers=workers, val_samples=2)
    optim = OptimConfig(epochs=epochs, lr=0.01, warmup_epochs=0.5)
    run = RunConfig(out=str(out), device="cpu", seed=seed, resume=resume)
    return {"model": model, "data": data, "optim": optim, "run": run, "show_progress": False}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_and_resumed(tiny_shards, tmp_path_factory) -> tuple[Path, Path]:
    """The same 2-epoch run twice: uninterrupted in one process, and stopped after epoch 1 then resumed,
    with DataLoader worker processes (2, then 1): augmentation must not depend on who loads a sample."""
    a, b = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    fit(**_configs(tiny_shards, a))
    first = fit(**_configs(tiny_shards, b, workers=2), stop_after=1)
    assert first["epoch"] == 1 and len(_metrics(b)) == 1
    fit(**_configs(tiny_shards, b, resume=True, workers=1))
    return a, b


@pytest.mark.slow
def test_resume_gives_the_state_of_an_uninterrupted_run(straight_and_resumed) -> None:
    a, b = straight_and_resumed
    ca, cb = ck.load_checkpoint(a / ck.LAST), ck.load_checkpoint(b / ck.LAST)
    assert ca["epoch"] == cb["epoch"] == 2
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert ca["scheduler"]["last_epoch"] == cb["scheduler"]["last_epoch"] == 4  # 2 iterations x 2 epochs
    ma, mb = _metrics(a), _metrics(b)
    assert [m["epoch"] for m in ma] == [m["epoch"] for m in mb] == [1, 2]
    for x, y in zip(ma, mb):
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}


def _assert_same_run(a: Path, b: Path) -> None:
    """The same weights (bitwise), optimizer and scheduler state, and the same metrics but for the timing."""
    ca, cb = ck.load_checkpoint(a / ck.LAST), ck.load_checkpoint(b / ck.LAST)
    assert ca["epoch"] == cb["epoch"] and ca["partial_epoch"] is cb["partial_epoch"] is None
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert ca["scheduler"] == cb["scheduler"]
    ma, mb = _metrics(a), _metrics(b)
    assert [m["epoch"] for m in ma] == [m["epoch"] for m in mb]
    for x, y in zip(ma, mb):
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}


def _stop_after_steps(flag: StopFlag, steps: int):
    """Set ``flag`` as SIGTERM would, during optimizer step ``steps`` (counted over the whole run)."""
    done = 0

    def hook(optimizer, args, kwargs) -> None:
        nonlocal done
        done += 1
        if done == steps:
            flag.set(signal.SIGTERM)

    return register_optimizer_step_post_hook(hook)


@pytest.mark.slow
@pytest.mark.parametrize(("steps", "workers", "resume_workers"), [(3, 0, 0), (1, 2, 1), (2, 1, 0)],
                         ids=["epoch2-step1-no-workers", "epoch1-step1-workers", "epoch1-step2-before-validation"])
def test_a_run_stopped_by_a_signal_mid_epoch_resumes_to_the_bitwise_state_of_an_uninterrupted_run(
    straight_and_resumed, tiny_shards, tmp_path, steps, workers, resume_workers
) -> None:
    """2 steps per epoch. Stopped after optimizer step 3 (epoch 2, step 1), 1 (epoch 1, step 1; the shared batch
    ring of 2 workers, resumed with 1) or 2 (epoch 1's last step, before its validation)."""
    straight, run = straight_and_resumed[0], tmp_path / "run"
    flag = StopFlag()
    hook = _stop_after_steps(flag, steps)
    try:
        with pytest.raises(Stopped) as stopped:
            fit(**_configs(tiny_shards, run, workers=workers), stop=flag)
    finally:
        hook.remove()
    epoch, step = divmod(steps - 1, 2)
    assert str(stopped.value) == (f"stopped by SIGTERM at epoch {epoch + 1}, step {step + 1}/2; checkpoint saved: "
                                  "rerun with --resume to continue")
    assert stopped.value.exit_code == exits.TERMINATED_CODE == 143
    saved = ck.load_checkpoint(run / ck.LAST)
    assert saved["epoch"] == epoch and saved["scheduler"]["last_epoch"] == steps
    (sums,) = saved["partial_epoch"]  # one process
    assert sums["steps"] == step + 1 and sums["seen"] == 3 * (step + 1) and sums["elapsed"] > 0
    assert len(_metrics(run)) == epoch and not (run / ck.BEST).exists() or epoch == 1

    fit(**_configs(tiny_shards, run, resume=True, workers=resume_workers))
    _assert_same_run(straight, run)


@pytest.mark.slow
def test_a_signal_during_validation_stops_at_the_next_batch_and_the_resumed_run_validates_that_epoch_again(
    straight_and_resumed, tiny_shards, tmp_path
) -> None:
    """3 validation videos, one per batch: SIGTERM in the first batch's forward pass of epoch 1's validation stops
    the run before the second (a long validation would otherwise outlast the scheduler's grace period)."""
    straight, run = straight_and_resumed[0], tmp_path / "run"
    flag, validated = StopFlag(), []

    def in_validation(module, args, output) -> None:
        if not module.training and isinstance(module, torch.nn.Linear):  # the head: once per forward pass
            validated.append(1)
            flag.set(signal.SIGTERM)

    hook = torch.nn.modules.module.register_module_forward_hook(in_validation)
    try:
        with pytest.raises(Stopped) as stopped:
            fit(**_configs(tiny_shards, run), stop=flag)
    finally:
        hook.remove()
    assert len(validated) == 1  # the second validation batch was not run
    assert str(stopped.value) == ("stopped by SIGTERM in the validation of epoch 1; checkpoint saved: rerun with "
                                  "--resume to continue") and stopped.value.exit_code == 143
    saved = ck.load_checkpoint(run / ck.LAST)
    assert saved["epoch"] == 0 and saved["partial_epoch"][0]["steps"] == 2  # both steps of epoch 1 done
    assert _metrics(run) == [] and not (run / ck.BEST).exists()

    fit(**_configs(tiny_shards, run, resume=True))
    _assert_same_run(straight, run)


def test_a_second_ctrl_c_while_the_stop_is_saved_leaves_at_once_and_the_last_checkpoint_intact(
    tiny_shards, tmp_path, monkeypatch
) -> None:
    run = tmp_path / "run"
    fit(**_configs(tiny_shards, run, epochs=1, val=False))
    before = (run / ck.LAST).read_bytes()

    stepped = []

    def ctrl_c_in_step(optimizer, args, kwargs) -> None:
        stepped.append(1)
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: the run stops after this step

    real_fsync = os.fsync

    def ctrl_c_while_saving(fd: int) -> None:  # the checkpoint's temporary file is written by now
        real_fsync(fd)
        if stepped:  # not the lock's fsync before training
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "fsync", ctrl_c_while_saving)
    hook = register_optimizer_step_post_hook(ctrl_c_in_step)
    try:
        with stop_flag() as flag, pytest.raises(KeyboardInterrupt) as interrupted:
            fit(**_configs(tiny_shards, run, epochs=2, resume=True, val=False), stop=flag)
    finally:
        hook.remove()
    names = [entry.name for entry in interrupted.traceback]
    assert flag.signum == signal.SIGINT and stepped == [1] and names[-2:] == ["ctrl_c_while_saving", "handler"]
    assert "_save_stopped" in names and "save_checkpoint" in names
    assert (run / ck.LAST).read_bytes() == before  # epoch 1's, whole
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]  # no temporary file left


@pytest.mark.slow
def test_checkpoint_metrics_and_best_on_validation(straight_and_resumed, tiny_shards) -> None:
    run = straight_and_resumed[0]
    metrics = _metrics(run)
    for m in metrics:
        assert {"loss", "acc", "val_acc", "val_clip_acc", "lr", "samples_per_s", "data_wait_frac"} <= m.keys()
        assert 0.0 <= m["data_wait_frac"] <= 1.0 and m["samples_per_s"] > 0
        assert m["samples_per_rank"] == [6] and m["overlap_samples"] == 0
    best = ck.load_checkpoint(run / ck.BEST)
    accs = [m["val_acc"] for m in metrics]
    # the best validation accuracy; among epochs that tie on it, the lowest validation loss (then the first)
    keys = [(m["val_acc"], -m["val_loss"]) for m in metrics]
    assert best["epoch"] == 1 + keys.index(max(keys)) and best["best_acc"] == max(accs)
    assert best["best_loss"] == metrics[best["epoch"] - 1]["val_loss"]
    last = ck.load_checkpoint(run / ck.LAST)
    assert last["classes"] == tiny_shards.classes
    assert last["config"]["model"] == {"stream": "temporal", "num_classes": 3, "arch": "resnet18", "flow_length": 2,
                                       "dropout": 0.5, "pretrained": None, "fusion": None, "spatial_weight": None,
                                       "temporal_dropout": None, "spatial_init": None, "temporal_init": None}
    assert last["config"]["optim"]["momentum"] == 0.9 and last["config"]["optim"]["weight_decay"] == 5e-4
    assert "scale_factor" not in last and "add_offset" not in last  # evaluation uses the shards' own
    assert {"python", "numpy", "torch"} <= last["rng"][0].keys()
    assert last["history"] == metrics
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "checkpoint.pt", "metrics.jsonl"]


def test_run_dir_and_resume_mistakes(tiny_shards, tmp_path) -> None:
    with pytest.raises(ck.CheckpointError, match="--resume: no checkpoint to resume at"):
        fit(**_configs(tiny_shards, tmp_path / "nothing", resume=True))
    (tmp_path / "odd" / ck.LAST).mkdir(parents=True)  # a folder by that name: the end-of-epoch save would fail
    with mock.patch("trainer.fit._build_network", side_effect=AssertionError("built a network")):
        with pytest.raises(ck.CheckpointError, match="already holds a run"):  # so it is refused before any training
            fit(**_configs(tiny_shards, tmp_path / "odd", epochs=1, val=False))
    run = tmp_path / "run"
    fit(**_configs(tiny_shards, run, epochs=1, val=False))
    assert not (run / ck.BEST).exists()  # no validation list, no best
    with pytest.raises(ck.CheckpointError, match="already holds a run"):
        fit(**_configs(tiny_shards, run, epochs=1, val=False))
    with pytest.raises(ck.CheckpointError, match="holds a temporal resnet18 network .* ask for temporal resnet34"):
        fit(**_configs(tiny_shards, run, epochs=2, resume=True, arch="resnet34", val=False))
    metrics = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text("")  # cut short by a crash between the checkpoint and the metrics
    with mock.patch("trainer.fit._build_network", side_effect=AssertionError("built a network")):
        assert fit(**_configs(tiny_shards, run, epochs=1, resume=True, val=False)) == {}  # nothing left to do
    assert (run / "metrics.jsonl").read_text() == metrics  # rewritten from the checkpoint
    edited = ck.load_checkpoint(run / ck.LAST)
    edited["model"].pop("fc.bias")  # weights that do not fit the network its config describes: not a crash (75)
    ck.save_checkpoint(edited, run / ck.LAST)
    with pytest.raises(ck.CheckpointError, match=r"checkpoint.pt: its weights do not fit the network .*fc\.bias"):
        fit(**_configs(tiny_shards, run, epochs=2, resume=True, val=False))


def test_spatial_stream_needs_rgb(make_tiny_shards, tmp_path) -> None:
    shards = make_tiny_shards(rgb=False)
    with pytest.raises(DataError, match="spatial stream needs RGB frames"):
        fit(**_configs(shards, tmp_path / "run", stream="spatial"))


def test_a_validation_list_that_shares_videos_with_the_training_list_is_refused_before_anything_is_written(
    tiny_shards, tmp_path
) -> None:
    cfg = _configs(tiny_shards, tmp_path / "run")
    cfg["data"] = DataConfig(**{**cfg["data"].__dict__, "val_list": str(tiny_shards.train_list)})
    with pytest.raises(DataError, match=r"--val-list .* shares 6 videos with --train-list .*\(e\.g\. .*\); the validation "
                                        "videos that choose best.pt must be held out of training"):
        fit(**cfg)
    assert not (tmp_path / "run" / ck.LAST).exists()


def test_the_checkpoint_records_the_videos_it_was_trained_and_chosen_on(tiny_shards, tmp_path) -> None:
    fit(**_configs(tiny_shards, tmp_path / "run", epochs=1))
    videos = ck.load_checkpoint(tmp_path / "run" / ck.LAST)["videos"]
    listed = lambda path: sorted(line.split()[0].rsplit(".", 1)[0] for line in path.read_text().splitlines())  # noqa: E731
    assert videos == {"train": listed(tiny_shards.train_list), "val": listed(tiny_shards.val_list)}
    assert ck.load_checkpoint(tmp_path / "run" / ck.BEST)["videos"] == videos


def test_spatial_stream_trains_one_epoch(tiny_shards, tmp_path) -> None:
    stats = fit(**_configs(tiny_shards, tmp_path / "run", stream="spatial", epochs=1))
    assert stats["samples_total"] == 6 and 0.0 <= stats["val_acc"] <= 1.0
    assert ck.load_checkpoint(tmp_path / "run" / ck.LAST)["config"]["model"]["stream"] == "spatial"


def test_val_samples_beyond_the_distinct_stacks_of_the_validation_videos_are_capped_with_one_note(
        tiny_shards, tmp_path, capsys) -> None:
    import dataclasses

    runs = {}
    for n in (10, 1000):  # 12 frames, L = 2: 10 distinct stacks per validation video
        configs = _configs(tiny_shards, tmp_path / str(n), epochs=1)
        configs["data"] = dataclasses.replace(configs["data"], val_samples=n)
        runs[n] = fit(**configs)
        assert capsys.readouterr().err == ("" if n == 10 else "--val-samples 1000: the validation videos have at "
                                           "most 10 distinct flow stacks of 2 fields; scoring 10 per video\n")
    assert {k: v for k, v in runs[10].items() if k not in TIMING} == {k: v for k, v in runs[1000].items() if k not in TIMING}


@pytest.mark.parametrize("stream", ["temporal", "joint", "spatial"])
def test_videos_shorter_than_a_flow_stack_are_counted_in_one_line_per_list(make_tiny_shards, tmp_path, capsys,
                                                                           stream) -> None:
    # class-major g01..g04: g01-g02 train, g03 val; with L = 4, fewer than 5 frames pads the stack
    shards = make_tiny_shards(num_frames=[4, 12, 12, 12, 12, 5, 3, 12, 12, 12, 12, 4])
    configs = _configs(shards, tmp_path / "run", epochs=1)
    configs["model"] = ModelConfig(stream=stream, num_classes=1, arch="resnet18", flow_length=4, dropout=0.5,
                                   **({"fusion": "average", "temporal_dropout": 0.5} if stream == "joint" else {}))
    fit(**configs)
    notes = ["1 of 6 training videos has fewer than 5 frames: their stacks repeat the last flow field",
             "1 of 3 validation videos has fewer than 5 frames: their stacks repeat the last flow field"]
    assert capsys.readouterr().err.splitlines() == ([] if stream == "spatial" else notes)


def test_learning_rate_schedules() -> None:
    cos = lr_lambda(OptimConfig(epochs=10, lr=0.1, warmup_epochs=1, warmup_factor=0.1), iters_per_epoch=10)
    assert cos(0) == pytest.approx(0.1) and cos(5) == pytest.approx(0.55)  # linear warmup over 10 iterations
    assert cos(10) == pytest.approx(1.0) and cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    step = lr_lambda(OptimConfig(epochs=30, lr=0.1, schedule="step", step_size=10, gamma=0.1), iters_per_epoch=4)
    assert [step(i) for i in (0, 39, 40, 79, 80)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_mixed_precision_on_the_cpu_is_float32_unless_bf16_is_asked_for_and_fp16_is_refused_there() -> None:
    assert amp_dtype_for("auto", torch.device("cpu")) is None
    assert amp_dtype_for("none", torch.device("cpu")) is None
    assert amp_dtype_for("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="--amp bf16"):
        amp_dtype_for("fp16", torch.device("cpu"))
    assert amp_dtype_for("none", torch.device("cuda", 0)) is None
    assert amp_dtype_for("fp16", torch.device("cuda", 0)) is torch.float16


@pytest.mark.parametrize("amp", ["bf16", "auto"])
def test_amp_bf16_runs_the_forward_pass_on_the_cpu_in_bfloat16_and_auto_leaves_it_in_float32(
        tiny_shards, tmp_path, amp) -> None:
    seen: dict[bool, set[torch.dtype]] = {True: set(), False: set()}  # training / validation: conv outputs' dtypes

    def record(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            seen[module.training].add(output.dtype)

    configs = _configs(tiny_shards, tmp_path / "run", epochs=1)
    configs["run"] = RunConfig(out=str(tmp_path / "run"), device="cpu", amp=amp)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        stats = fit(**configs)
    finally:
        handle.remove()
    expected = torch.bfloat16 if amp == "bf16" else torch.float32
    assert seen == {True: {expected}, False: {expected}}
    assert stats["samples_total"] == 6 and ck.load_checkpoint(tmp_path / "run" / ck.LAST)["config"]["run"]["amp"] == amp
