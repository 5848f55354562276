"""trainer fit refuses NaN and infinite numbers as usage errors (exit 2), instead of a traceback with exit 1 (the
status of damaged data) or, worse, training NaN weights without a word (--lr inf, --weight-decay nan)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from trainer.cli import main
from processes import bound_by_file_modes


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


@pytest.mark.slow
@pytest.mark.parametrize("where", ["run_dir", "above_run_dir", "results_folder", "results_folder_before_loading",
                                   "above_results_folder"])
def test_an_output_that_cannot_be_written_is_one_line_naming_the_folder_and_exit_2_not_a_retry(
        tiny_shards, tmp_path: Path, where: str) -> None:
    """Permission denied on --out will not fix itself on a rerun: exit 2, as flowprep extract, not 75 (retry).
    evaluate finds it before it loads a network (the *_before_loading / above_* cases name a checkpoint that is not
    one: found after the scoring, the damaged checkpoint would have stopped the run first, with exit 1)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    common = ["--shards", tiny_shards.root, "--workers", "0", "--device", "cpu", "--no-progress"]
    if where == "results_folder":
        import torch

        from trainer import checkpoint as ck
        from trainer.config import DataConfig, ModelConfig, to_dict
        from trainer.models.build import build_model

        cfg = ModelConfig(stream="temporal", num_classes=3, arch="resnet18", flow_length=2)
        data = DataConfig(shards="unused", train_list="unused", crop_size=16)
        torch.manual_seed(0)
        state = {"model": build_model(cfg, pretrained=None).state_dict(), "epoch": 1, "classes": tiny_shards.classes,
                 "config": {"model": to_dict(cfg), "data": to_dict(data)}}  # an untrained network, as fit saves it
        ck.save_checkpoint(state, tmp_path / "run" / ck.BEST)
        out, folder, denied = locked / "r.json", locked, locked / "r.json.lock"  # the first file it writes
        args = ["evaluate", "--test-list", tiny_shards.test_list, "--temporal", tmp_path / "run", "--samples", "1"]
    elif where in ("results_folder_before_loading", "above_results_folder"):
        (tmp_path / "damaged.pt").write_bytes(b"not a checkpoint")
        out = locked / "r.json" if where == "results_folder_before_loading" else locked / "sub" / "r.json"
        folder, denied = out.parent, (locked / "r.json.lock" if out.parent == locked else out.parent)
        args = ["evaluate", "--test-list", tiny_shards.test_list, "--temporal", tmp_path / "damaged.pt"]
    else:
        out = locked if where == "run_dir" else locked / "run"
        folder, denied = out, (out / "run.lock" if where == "run_dir" else out)
        args = ["fit", "--stream", "temporal", "--train-list", tiny_shards.train_list, "--epochs", "1", "--arch",
                "resnet18", "--crop-size", "16", "--flow-length", "2"]
    cmd = [sys.executable, "-m", "trainer", *map(str, [*args, *common, "--out", out])]
    cmd = bound_by_file_modes(cmd)  # root: as one without the capabilities that bypass modes
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"Error: cannot write into {folder}: permission denied ({denied})"
    assert sorted(locked.iterdir()) == []


def test_an_output_on_a_read_only_file_system_is_one_line_naming_the_folder_and_exit_2_not_a_retry(
        tiny_shards, tmp_path: Path, read_only_folder: Path) -> None:
    """fit's RUN_DIR and evaluate's and fuse's results' folder on a read-only mount (or to be made in one) exited 75,
    'read-only file system ... rerun the same command', which a rerun never gets past; now the line and exit 2 of a
    folder this user may not write. evaluate still finds it before it loads a network (the checkpoint is not one)."""
    import numpy as np

    ro = read_only_folder
    (tmp_path / "damaged.pt").write_bytes(b"not a checkpoint")
    scores = tmp_path / "r.scores.npz"
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=(2, 6))
    np.savez_compressed(scores, classes=np.array(["A", "B", "C"]), labels=np.arange(6) % 3, spatial=p[0],
                        temporal=p[1])  # as evaluate saves them
    common = ["--shards", tiny_shards.root, "--workers", "0", "--device", "cpu", "--no-progress"]
    fit = ["fit", "--stream", "temporal", "--train-list", tiny_shards.train_list, "--epochs", "1", "--arch", "resnet18",
           "--crop-size", "16", "--flow-length", "2", *common]
    evaluate = ["evaluate", "--test-list", tiny_shards.test_list, "--temporal", tmp_path / "damaged.pt", *common]
    fuse = ["fuse", "--scores", scores]
    for args, out, folder, denied in ((fit, ro, ro, ro / "run.lock"), (fit, ro / "run", ro / "run", ro / "run"),
                                      (evaluate, ro / "r.json", ro, ro / "r.json.lock"),
                                      (evaluate, ro / "sub" / "r.json", ro / "sub", ro / "sub"),
                                      (fuse, ro / "f.json", ro, ro / "f.json.lock"),
                                      (fuse, ro / "sub" / "f.json", ro / "sub", ro / "sub")):
        result = CliRunner().invoke(main, [str(a) for a in [*args, "--out", out]])
        assert result.exit_code == 2, (args[0], result.output)
        assert result.output.strip().splitlines()[-1] == \
            f"Error: cannot write into {folder}: read-only file system ({denied})", args[0]
