"""trainer/checkpoint.py: atomic writes, checked loads, RNG round trips, run-dir resolution."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import checkpoint as ck


def _state(**extra: object) -> dict:
    return {
        "model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3,
        "config": {"model": {"stream": "temporal", "arch": "resnet18"}},
        "classes": ["a", "b", "c"], **extra,
    }


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = ck.save_checkpoint(_state(), tmp_path / "run" / "checkpoint.pt")
    got = ck.load_checkpoint(path)
    assert got["format"] == ck.FORMAT_NAME and got["format_version"] == ck.FORMAT_VERSION
    assert torch.equal(got["model"]["w"], torch.arange(6.0).view(2, 3))
    assert got["epoch"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary left behind


def test_one_save_writes_best_then_last_from_one_serialization(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: (calls.append(1), real_save(obj, f)))
    last = ck.save_checkpoint(_state(), tmp_path / ck.BEST, tmp_path / ck.LAST)
    assert last == tmp_path / ck.LAST and len(calls) == 1
    assert (tmp_path / ck.BEST).read_bytes() == last.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ck.BEST, ck.LAST])
    # checkpoint.pt, the commit point of an epoch, is written last (trainer/fit.py _save_epoch)
    assert (tmp_path / ck.BEST).stat().st_mtime_ns <= last.stat().st_mtime_ns


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ck.save_checkpoint(_state(), tmp_path / "checkpoint.pt")
    before = path.read_bytes()

    def broken_save(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(_state(epoch=4), path)
    assert path.read_bytes() == before
    assert ck.load_checkpoint(path)["epoch"] == 3


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ck.CheckpointError, match="no checkpoint at"):
        ck.load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a zip file at all" * 10)
    with pytest.raises(ck.CheckpointError, match="is damaged or not a checkpoint") as e:
        ck.load_checkpoint(garbage)
    assert "\n" not in str(e.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ck.CheckpointError, match="not a trainer checkpoint"):
        ck.load_checkpoint(foreign)
    future = tmp_path / "future.pt"
    torch.save({"format": ck.FORMAT_NAME, "format_version": 99}, future)
    with pytest.raises(ck.CheckpointError, match="format_version 99, expected 1"):
        ck.load_checkpoint(future)


def test_a_checkpoint_cut_short_is_a_checkpoint_error_not_an_environment_failure(tmp_path: Path) -> None:
    """torch's zip reader raises OSError(EINVAL) on a file cut short below 64 KiB: it read as a crash of the
    environment (exit 75, rerun), which no rerun fixes."""
    path = ck.save_checkpoint(_state(model={"w": torch.zeros(300_000)}), tmp_path / "checkpoint.pt")  # 1.2 MB
    path.write_bytes(path.read_bytes()[:10_000])  # (cut below 5 KB or above 64 KiB, torch says RuntimeError)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_checkpoint(path)
    assert str(e.value) == f"checkpoint {path} is damaged: not a whole zip archive (cut short?)"


def test_a_flipped_bit_in_the_weights_is_a_damaged_checkpoint_not_other_weights(tmp_path: Path) -> None:
    """torch.load does not check the zip records' CRC-32s: the flipped bit loaded as a changed weight."""
    w = torch.arange(300_000, dtype=torch.float32)
    path = ck.save_checkpoint(_state(model={"w": w}), tmp_path / "checkpoint.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the weights' record (1.2 MB of the file's ~1.2 MB)
    path.write_bytes(data)
    assert not torch.equal(torch.load(path, weights_only=False)["model"]["w"], w)  # what torch alone gives
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_checkpoint(path)
    assert str(e.value) == (f"checkpoint {path} is damaged: its record archive/data/0 fails its CRC-32 check (a "
                            "flipped bit or a torn copy); use another copy or checkpoint")


@pytest.mark.parametrize("missing", ["model", "config", "classes"])
def test_a_checkpoint_without_its_weights_config_or_classes_is_a_checkpoint_error(tmp_path: Path, missing: str) -> None:
    state = _state()
    del state[missing]  # it crashed later as an unexpected KeyError (exit 75)
    path = ck.save_checkpoint(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_checkpoint(path)
    assert str(e.value) == f"{path} is not a whole trainer checkpoint: it lacks its model weights, config or classes"


def test_weights_that_do_not_fit_the_network_are_a_one_line_checkpoint_error(tmp_path: Path) -> None:
    path = ck.save_checkpoint(_state(), tmp_path / "checkpoint.pt")
    with pytest.raises(ck.CheckpointError) as e:  # the network has weight and bias; the checkpoint holds w
        ck.load_weights(torch.nn.Linear(3, 2), ck.load_checkpoint(path), path)
    assert str(e.value).startswith(f"{path}: its weights do not fit the network its config describes (Error(s) in "
                                   "loading state_dict for Linear: Missing key(s) in state_dict: ")
    assert "\n" not in str(e.value)


def test_rng_state_round_trip() -> None:
    state = ck.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    ck.set_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])


def test_rng_state_survives_save_and_load(tmp_path: Path) -> None:
    path = ck.save_checkpoint(_state(rng=ck.rng_state()), tmp_path / "c.pt")
    expected = torch.rand(4)
    ck.set_rng_state(ck.load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(4), expected)


def test_resolve_checkpoint_prefers_best(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ck.CheckpointError, match="no checkpoint or run directory"):
        ck.resolve_checkpoint(run)
    run.mkdir()
    with pytest.raises(ck.CheckpointError, match="neither best.pt nor checkpoint.pt"):
        ck.resolve_checkpoint(run)
    ck.save_checkpoint(_state(), run / ck.LAST)
    assert ck.resolve_checkpoint(run) == run / ck.LAST
    ck.save_checkpoint(_state(), run / ck.BEST)
    assert ck.resolve_checkpoint(run) == run / ck.BEST
    assert ck.resolve_checkpoint(run / ck.LAST) == run / ck.LAST


def test_check_compatible() -> None:
    state = _state()
    ck.check_compatible(state, path="x.pt", stream="temporal", arch="resnet18", classes=["a", "b", "c"])
    with pytest.raises(ck.CheckpointError, match="x.pt is a temporal stream checkpoint, expected spatial"):
        ck.check_compatible(state, path="x.pt", stream="spatial")
    with pytest.raises(ck.CheckpointError, match="--arch resnet18, expected resnet50"):
        ck.check_compatible(state, path="x.pt", arch="resnet50")
    with pytest.raises(ck.CheckpointError, match="index 1: 'b' vs 'B'"):
        ck.check_compatible(state, path="x.pt", classes=["a", "B", "c"])
    with pytest.raises(ck.CheckpointError, match="lengths 3 vs 4"):
        ck.check_compatible(state, path="x.pt", classes=["a", "b", "c", "d"])
