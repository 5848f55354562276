"""trainer fit refuses NaN and infinite numbers as usage errors (exit 2), instead of a traceback with exit 1 (the
status of damaged data) or, worse, training NaN weights without a word (--lr inf, --weight-decay nan)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from trainer.cli import main


@pytest.mark.parametrize(
    "extra",
    [["--lr", "inf"], ["--lr", "nan"], ["--weight-decay", "nan"], ["--warmup-epochs", "inf"], ["--dropout", "nan"],
     ["--stream-loss-weight", "inf"]],
)
def test_a_non_finite_training_number_is_a_usage_error(tmp_path: Path, extra: list[str]) -> None:
    (tmp_path / "train.txt").write_text("A/x.avi 1\n")
    result = CliRunner().invoke(main, ["fit", "--stream", "spatial", "--shards", str(tmp_path), "--train-list",
                                       str(tmp_path / "train.txt"), "--out", str(tmp_path / "run"), *extra])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{extra[0]}'" in result.output and "is not a finite number" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_an_out_below_a_file_is_a_usage_error_not_a_traceback(tmp_path: Path, command: str) -> None:
    (tmp_path / "a-file").write_text("")
    (tmp_path / "list.txt").write_text("A/x.avi 1\n")
    args = (["fit", "--stream", "spatial", "--train-list", str(tmp_path / "list.txt"), "--out", str(tmp_path / "a-file/run")]
            if command == "fit" else
            ["evaluate", "--test-list", str(tmp_path / "list.txt"), "--spatial", str(tmp_path), "--out",
             str(tmp_path / "a-file/results.json")])
    result = CliRunner().invoke(main, [*args, "--shards", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"cannot be created: {tmp_path / 'a-file'} is not a folder" in result.output


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_amp_fp16_on_the_cpu_is_a_usage_error_that_names_bf16(tmp_path: Path, device: str, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --device auto: this machine has no CUDA
    (tmp_path / "train.txt").write_text("A/x.avi 1\n")
    result = CliRunner().invoke(main, ["fit", "--stream", "spatial", "--shards", str(tmp_path), "--train-list",
                                       str(tmp_path / "train.txt"), "--out", str(tmp_path / "run"), "--amp", "fp16",
                                       "--device", device])
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert line == "Error: --amp fp16 needs a CUDA device; on the CPU use --amp bf16 (or none)"
    assert not (tmp_path / "run").exists()


def test_fit_help_says_what_amp_does_on_the_cpu() -> None:
    text = " ".join(CliRunner().invoke(main, ["fit", "--help"]).output.split())
    assert "CPU: auto = none (float32, bit-exact runs); bf16 runs in bfloat16" in text and "fp16 is refused" in text
