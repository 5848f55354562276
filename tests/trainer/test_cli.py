"""trainer/cli.py: help, exit codes and one-line errors for bad input, and fit -> evaluate -> fuse end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
from click.testing import CliRunner, Result

from trainer import cli
from trainer.models import streams
from trainer.cli import main
from processes import bound_by_file_modes

REPO = Path(__file__).parents[2]
TINY = ["--arch", "resnet18", "--crop-size", "16", "--flow-length", "2", "--batch-size", "3", "--workers", "0",
        "--val-samples", "2", "--device", "cpu", "--no-progress"]


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught exception
    assert "Traceback" not in result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    for fragment in fragments:
        assert fragment in line, line


def _fit_args(shards, out: Path, stream: str = "temporal") -> list[str]:
    return ["fit", "--stream", stream, "--shards", shards.root, "--train-list", shards.train_list,
            "--val-list", shards.val_list, "--out", out, "--epochs", "1", *TINY]


def test_cli_arch_choices_are_the_models() -> None:
    assert cli.ARCHS == streams.ARCHS


def test_help_explains_every_command() -> None:
    top = _invoke("--help")
    assert top.exit_code == 0 and all(c in top.output for c in ("fit", "evaluate", "fuse", "torchrun"))
    text = " ".join(top.output.split())  # as wrapped for any terminal width
    assert "Exit status: 0 done; 1 unusable data" in text and "a damaged shard" in text and "2 usage error" in text
    assert "130 interrupted (Ctrl-C), 143 terminated (SIGTERM): fit first finishes its training step and saves it" in text
    fit = _invoke("fit", "--help")
    fit_text = " ".join(fit.output.split())
    assert "saves RUN_DIR/checkpoint.pt there, and exits 143 (SIGTERM) or 130 (Ctrl-C)" in fit_text
    assert "--resume continues that epoch at its next batch" in fit_text
    for opt in ("--stream", "--shards", "--train-list", "--val-list", "--out", "--arch", "--pretrained", "--epochs",
                "--batch-size", "--lr", "--flow-length", "--crop-size", "--workers", "--device", "--seed", "--resume"):
        assert opt in fit.output, opt
    ev = _invoke("evaluate", "--help")
    for opt in ("--test-list", "--spatial", "--temporal", "--fusion", "--spatial-weight", "--val-list", "--samples",
                "--crops", "--out"):
        assert opt in ev.output, opt


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["fit"], ["evaluate"]])
def test_python_m_trainer_reports_a_missing_shard_in_one_line(make_tiny_shards, tmp_path, argv) -> None:
    """A real process: exit status 1 and one line on stderr, no traceback."""
    shards = make_tiny_shards()
    (shards.root / "shard-00001.h5").unlink()
    if argv == ["fit"]:
        args = _fit_args(shards, tmp_path / "run")
    else:
        args = ["evaluate", "--shards", shards.root, "--test-list", shards.test_list, "--temporal", tmp_path,
                "--out", tmp_path / "r.json"]
    proc = subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("Error: ") and str(shards.root / "shard-00001.h5") in line and "missing" in line


def test_bad_lists_exit_1_with_one_line(tiny_shards, tmp_path) -> None:
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("Drift/v_Drift_g01_c01.avi 1\nDrift/v_Drift_g99_c01.avi 1\n")
    args = _fit_args(tiny_shards, tmp_path / "run")
    args[args.index("--train-list") + 1] = unknown
    _one_line_error(_invoke(*args), 1, "unknown.txt:2", "Drift/v_Drift_g99_c01", "not in the shards")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    args[args.index("--train-list") + 1] = empty
    _one_line_error(_invoke(*args), 1, "empty.txt", "empty")
    utf16 = tmp_path / "utf16.txt"  # UTF-16 without a byte order mark: the line flowprep extract gives (exit 2 there)
    utf16.write_bytes(tiny_shards.train_list.read_bytes().decode().encode("utf-16-le"))
    args[args.index("--train-list") + 1] = utf16
    _one_line_error(_invoke(*args), 1, f"{utf16}:1: not UTF-8 text (a NUL byte: UTF-16?); save it as UTF-8")
    _one_line_error(_invoke("evaluate", "--shards", tiny_shards.root, "--test-list", unknown, "--temporal", tmp_path,
                            "--out", tmp_path / "r.json"), 1, "Drift/v_Drift_g99_c01")


def _damage_flow_chunks(shard: Path) -> list[str]:
    """Overwrite 8 bytes inside every compressed flow chunk of ``shard`` (its size, as the manifest says, kept);
    returns its video ids."""
    spots, videos = [], []
    with h5py.File(shard, "r") as f:
        for cls in f["videos"].values():
            for g in cls.values():
                videos.append(g.name.removeprefix("/videos/"))
                chunks = g["flow"].id
                spots += [chunks.get_chunk_info(i) for i in range(chunks.get_num_chunks())]
    with open(shard, "r+b") as f:
        for c in spots:
            f.seek(c.byte_offset + c.size // 2)
            f.write(b"\xff" * 8)
    return videos


def _names_a_damaged_video(line: str, shard: Path, videos: list[str]) -> None:
    assert line.startswith(f"Error: {shard}: field ") and any(f" of {v} " in line for v in videos), line
    assert line.endswith("(read by DataLoader worker process 0)") or line.endswith("process 1)"), line
    assert len(line) < 400 and "Traceback" not in line, line


def test_a_corrupt_flow_chunk_read_by_loader_workers_is_one_line_naming_shard_and_video(make_tiny_shards, tmp_path,
                                                                                       capfd) -> None:
    """Real worker processes (--workers 2) in the ring loader, torch's collate, fit's validation and evaluate:
    exit status 1 and one line naming the shard and the video, not the worker's traceback; the workers write
    nothing to the terminal themselves (capfd sees their file descriptors)."""
    ts = make_tiny_shards()
    clean = tmp_path / "clean"
    assert _invoke(*_fit_args(ts, clean)).exit_code == 0  # a checkpoint to evaluate, made before the damage
    shard = ts.root / "shard-00000.h5"
    videos = _damage_flow_chunks(shard)  # Drift g01-g04, Expand g01: in every list
    intact = tmp_path / "intact.txt"  # training videos of the other shards, to fail in validation (Drift g03)
    intact.write_text("".join(f"{v}.avi {ts.labels[v] + 1}\n" for v in ts.video_ids
                              if v not in videos and v[-6:-4] in ("01", "02")))
    evaluate = ["evaluate", "--shards", ts.root, "--test-list", ts.test_list, "--temporal", clean, "--samples", "2",
                "--device", "cpu", "--no-progress", "--out", tmp_path / "r.json"]
    capfd.readouterr()
    for name, args in (("ring", _fit_args(ts, tmp_path / "ring")),
                       ("collate", [*_fit_args(ts, tmp_path / "collate"), "--no-shared-batches"]),
                       ("validation", [*_fit_args(ts, tmp_path / "validation"), "--train-list", intact]),
                       ("evaluate", evaluate)):
        result = _invoke(*args, "--workers", "2")
        _one_line_error(result, 1)
        _names_a_damaged_video(result.stderr.strip(), shard, videos)
        only = {"validation": "Drift/v_Drift_g03_c01", "evaluate": "Drift/v_Drift_g04_c01"}  # the damaged one listed
        assert name not in only or f" of {only[name]} " in result.stderr, result.stderr
        assert capfd.readouterr() == ("", ""), name


@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_damaged_shards_and_edited_quantization_stop_fit_and_evaluate_in_one_line(make_tiny_shards, tmp_path,
                                                                                  command) -> None:
    ts = make_tiny_shards()
    args = (_fit_args(ts, tmp_path / "run") if command == "fit" else
            ["evaluate", "--shards", ts.root, "--test-list", ts.test_list, "--temporal", tmp_path, "--out",
             tmp_path / "r.json"])
    vid = "Rotate/v_Rotate_g04_c01"  # in the test list and, with all_list, in training
    if command == "fit":
        args[args.index("--train-list") + 1] = ts.all_list
    with h5py.File(ts.root / "shard-00002.h5", "r+") as f:
        f[f"videos/{vid}/flow"].attrs["scale_factor"] = 0.5
    _one_line_error(_invoke(*args), 1, f"{ts.root / 'shard-00002.h5'}: video {vid} has flow scale_factor 0.5 / "
                                       "add_offset -12, but the shard's params say bound 12 px")
    with open(ts.root / "shard-00001.h5", "r+b") as f:
        f.write(bytes(4096))
    _one_line_error(_invoke(*args), 1, f"{ts.root / 'shard-00001.h5'}: cannot be opened as HDF5", "is damaged")


def test_usage_errors_exit_2(tiny_shards, tmp_path) -> None:
    run = tmp_path / "run"
    _one_line_error(_invoke(*_fit_args(tiny_shards, run), "--resume"), 2, "--resume: no checkpoint at")
    _one_line_error(_invoke(*_fit_args(tiny_shards, run), "--pretrained", tmp_path / "nope.pth"), 2, "nope.pth")
    no_stream = _fit_args(tiny_shards, run)
    del no_stream[1:3]
    _one_line_error(_invoke(*no_stream), 2, "Missing option '--stream'")
    missing = _fit_args(tiny_shards, run)
    missing[missing.index("--shards") + 1] = tmp_path / "no-such-dir"
    _one_line_error(_invoke(*missing), 2, "--shards", "does not exist")
    ev = ["evaluate", "--shards", tiny_shards.root, "--test-list", tiny_shards.test_list, "--out", tmp_path / "r.json"]
    _one_line_error(_invoke(*ev), 2, "give --spatial and/or --temporal")
    both = [*ev, "--spatial", tmp_path, "--temporal", tmp_path]
    _one_line_error(_invoke(*both, "--spatial-weight", "auto"), 2, "--spatial-weight auto", "--val-list")
    _one_line_error(_invoke(*both, "--fusion", "learned"), 2, "--fusion learned", "--val-list")
    _one_line_error(_invoke(*both, "--fusion", "weighted"), 2, "needs --spatial-weight")
    _one_line_error(_invoke(*both, "--spatial-weight", "1.5"), 2, "in [0, 1] or 'auto', got '1.5'")
    _one_line_error(_invoke(*both, "--fusion", "average", "--spatial-weight", "0.3"), 2, "applies to --fusion weighted")
    _one_line_error(_invoke(*ev, "--temporal", tmp_path, "--fusion", "learned"), 2, "fusion needs both streams")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda(tiny_shards, tmp_path) -> None:
    args = _fit_args(tiny_shards, tmp_path / "run")
    args[args.index("--device") + 1] = "cuda"
    _one_line_error(_invoke(*args), 1, "no CUDA device")


@pytest.mark.slow
def test_fit_evaluate_fuse_end_to_end(tiny_shards, tmp_path) -> None:
    runs = {s: tmp_path / s for s in ("spatial", "temporal")}
    for stream, run in runs.items():
        result = _invoke(*_fit_args(tiny_shards, run, stream))
        assert result.exit_code == 0, result.output
        assert "epoch 1: loss" in result.stdout
        assert {p.name for p in run.iterdir()} == {"best.pt", "checkpoint.pt", "metrics.jsonl"}

    # the same run again without --resume would overwrite it: refused
    _one_line_error(_invoke(*_fit_args(tiny_shards, runs["temporal"])), 2, "already holds a run")
    # resuming a finished run with another arch: the checkpoint does not fit
    wrong = _fit_args(tiny_shards, runs["temporal"])
    wrong[wrong.index("--arch") + 1] = "resnet34"
    _one_line_error(_invoke(*wrong, "--resume"), 1, "holds a temporal resnet18 network")
    # a spatial checkpoint given as --temporal
    out = tmp_path / "eval" / "results.json"
    ev = ["evaluate", "--shards", tiny_shards.root, "--test-list", tiny_shards.test_list, "--samples", "2",
          "--workers", "0", "--device", "cpu", "--no-progress", "--out", out]
    _one_line_error(_invoke(*ev, "--temporal", runs["spatial"]), 1, "is a spatial stream checkpoint, expected temporal")

    result = _invoke(*ev, "--spatial", runs["spatial"], "--temporal", runs["temporal"], "--fusion", "learned",
                     "--val-list", tiny_shards.val_list, "--crops", "10")
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert {"spatial", "temporal", "fused"} <= res.keys() and res["fusion"] == "learned" and res["num_videos"] == 3
    assert res["crops"] == 10 and res["samples"] == 2
    for name in ("spatial", "temporal", "fused"):
        assert set(res[name]) == {"top1", "top5", "mean_class"} and Path(res["confusion"][name]).is_file()
        assert f"{name:>8}: top1" in result.stdout

    fused = tmp_path / "fusions" / "weighted.json"  # a folder that does not exist yet: fuse makes it
    result = _invoke("fuse", "--scores", out.with_name("results.scores.npz"), "--spatial-weight", "auto", "--out", fused)
    assert result.exit_code == 0, result.output
    again = json.loads(fused.read_text())
    assert again["fusion"] == "weighted" and 0.0 <= again["alpha"] <= 1.0 and again["fusion_fitted_on"] == 3
    assert again["alpha_criterion"]["name"] == "validation log-likelihood"
    assert "chosen by validation log-likelihood on 3 videos" in result.output
    assert again["spatial"] == res["spatial"] and again["temporal"] == res["temporal"]

    only = tmp_path / "eval" / "only.json"
    _invoke(*ev[:-1], only, "--temporal", runs["temporal"])
    result = _invoke("fuse", "--scores", only.with_name("only.scores.npz"), "--fusion", "learned", "--out", fused)
    _one_line_error(result, 2, "fusion needs both streams")


@pytest.mark.parametrize("stream", ["spatial", "temporal"])
def test_no_flip_turns_the_training_flip_off(tiny_shards, tmp_path, monkeypatch, stream) -> None:
    """A mirrored MoveLeft clip is a MoveRight clip: --no-flip must stop every training flip, --flip keep them."""
    from trainer import checkpoint
    from trainer.data import datasets

    flips = []
    for name in ("hflip_rgb", "hflip_flow_uint8"):
        real = getattr(datasets, name)
        monkeypatch.setattr(datasets, name, lambda x, real=real: flips.append(1) or real(x))
    from trainer.data import transforms

    real_step = transforms.prepare_train_batch  # device-side crops: each sample's params carry its flip flag
    monkeypatch.setattr(transforms, "prepare_train_batch",
                        lambda x, params, **kw: flips.extend([1] * int(params[:, 4].sum())) or real_step(x, params, **kw))
    counts = {}
    for flag in ("--flip", "--no-flip"):
        flips.clear()
        run = tmp_path / flag
        result = _invoke(*_fit_args(tiny_shards, run, stream), "--epochs", "3", flag)
        assert result.exit_code == 0, result.output
        counts[flag] = len(flips)
        assert checkpoint.load_checkpoint(run / "checkpoint.pt")["config"]["data"]["flip"] is (flag == "--flip")
    assert counts["--no-flip"] == 0
    assert counts["--flip"] > 0  # 3 epochs x 6 samples, each flipped with probability 1/2


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_stops_fit_in_one_line_with_exit_75_and_the_resumed_run_finishes_with_both_checkpoints(
    tiny_shards, tmp_path
) -> None:
    """A real full disk (a tmpfs that holds epoch 1's best.pt and checkpoint.pt, ~90 MB each, and not a third):
    torch.save would fail with "unexpected pos"; we say disk full, leave no partial file, and --resume works."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(disk)], check=True)
    try:
        run = disk / "run"
        args = [*_fit_args(tiny_shards, run), "--epochs", "2"]  # the last --epochs counts
        _one_line_error(_invoke(*args), 75, f"disk full ({run}): ", "No space left on device",
                        f"(traceback in {run / cli.ERROR_LOG}); rerun the same command with --resume to continue "
                        f"from {run / 'checkpoint.pt'}")
        assert sorted(p.name for p in run.iterdir()) == ["best.pt", "checkpoint.pt", "metrics.jsonl", cli.ERROR_LOG]
        assert "OSError: [Errno 28] No space left on device" in (run / cli.ERROR_LOG).read_text()
        subprocess.run(["mount", "-o", "remount,size=400m", str(disk)], check=True)
        result = _invoke(*args, "--resume")
        assert result.exit_code == 0, result.output
        assert "epoch 2: loss" in result.stdout and "epoch 1:" not in result.stdout
        assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
        assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == 2
        assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _stop_line(signal_name: str, epoch: int | str, step: int | str, steps: int | str) -> str:
    return (f"stopped by {signal_name} at epoch {epoch}, step {step}/{steps}; checkpoint saved: rerun with --resume "
            "to continue")


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` exists; fails (with the process's output) if ``proc`` ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)


@pytest.mark.slow
def test_ctrl_c_stops_fit_at_the_next_step_saves_it_and_exits_130_in_one_line(tiny_shards, tmp_path) -> None:
    run = tmp_path / "run"
    args = [sys.executable, "-m", "trainer", *map(str, _fit_args(tiny_shards, run)), "--epochs", "100", "--workers", "2"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    try:
        _wait_for(run / "checkpoint.pt", proc)  # the first epoch is saved
        os.killpg(proc.pid, signal.SIGINT)  # the loader workers get it too, and ignore it
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.strip()]
    match = re.fullmatch(_stop_line("SIGINT", r"(\d+)", r"(\d+)", 2), line)  # 2 steps per epoch
    assert match, line
    epoch, step = int(match[1]), int(match[2])
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == epoch - 1 and saved["scheduler"]["last_epoch"] == 2 * (epoch - 1) + step
    assert saved["partial_epoch"][0]["steps"] == step


# Run as `python -c` with `trainer fit`'s arguments: the process waits inside optimizer step K (counted over the
# run) until the test has sent its signal, so that the signal arrives at a known step, mid-step.
_WAIT_IN_STEP = """
import os, sys, time
from torch.optim.optimizer import register_optimizer_step_post_hook
k, at, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]
steps = 0
def hook(optimizer, args, kwargs):
    global steps
    steps += 1
    if steps == k:
        open(at, "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)
register_optimizer_step_post_hook(hook)
from trainer.cli import main
main(sys.argv[4:], prog_name="trainer")
"""


@pytest.mark.slow
def test_sigterm_to_fit_and_its_workers_mid_epoch_saves_the_step_exits_143_and_resume_gives_the_uninterrupted_run(
    tiny_shards, tmp_path
) -> None:
    """As SLURM preempts a job (SIGTERM to every process of the step, loader workers included), in step 1 of epoch
    2 of 2: the run finishes that step, saves, exits 143 with one line; --resume (other worker count) ends with the
    weights of a run never stopped, bit for bit, and the same metrics."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert _invoke(*_fit_args(tiny_shards, straight), "--epochs", "2").exit_code == 0
    at, go = tmp_path / "in-step", tmp_path / "signal-sent"
    args = [sys.executable, "-c", _WAIT_IN_STEP, "3", str(at), str(go),
            *map(str, _fit_args(tiny_shards, run)), "--epochs", "2", "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    try:
        _wait_for(at, proc)
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.2)  # the loader workers have it too by now
        go.touch()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [_stop_line("SIGTERM", 2, 1, 2)]
    assert "epoch 1: loss" in stdout and "epoch 2" not in stdout
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 1 and saved["partial_epoch"][0]["steps"] == 1 and saved["scheduler"]["last_epoch"] == 3

    result = _invoke(*_fit_args(tiny_shards, run), "--epochs", "2", "--workers", "1", "--resume")
    assert result.exit_code == 0, result.output
    assert "epoch 2: loss" in result.stdout and "epoch 1:" not in result.stdout
    a, b = (torch.load(r / "checkpoint.pt", weights_only=False) for r in (straight, run))
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    timing = ("samples_per_s", "data_wait_frac")
    ma, mb = ([{k: v for k, v in json.loads(line).items() if k not in timing}
               for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (straight, run))
    assert ma == mb and len(ma) == 2


def test_a_second_fit_into_a_run_dir_another_live_process_holds_is_refused_with_exit_4_and_debris_goes_after(
    tiny_shards, tmp_path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(  # a second process holding RUN_DIR's lock, as a running fit's rank 0 does
        [sys.executable, "-c", "import sys, time; from flowprep.extract.lock import OutputLock; "
         "lock = OutputLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)",
         str(run / "run.lock")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        _one_line_error(_invoke(*_fit_args(tiny_shards, run)), 4, f"{run} is being written by another run",
                        f"pid {holder.pid}")
        assert not (run / "checkpoint.pt").exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    (run / ".checkpoint.pt.tmp-99999").write_bytes(b"half a checkpoint of a run killed while it saved")
    result = _invoke(*_fit_args(tiny_shards, run))  # the holder is gone: its lock is taken over
    assert result.exit_code == 0, result.output
    assert {p.name for p in run.iterdir()} == {"best.pt", "checkpoint.pt", "metrics.jsonl"}


def test_imagenet_weights_that_cannot_be_downloaded_are_one_line_naming_the_file_and_where_it_goes_exit_75(
    tiny_shards, tmp_path, monkeypatch
) -> None:
    """An offline machine (no network in the test: the download raises URLError, as without DNS) with an empty
    torch hub cache: the environment's failure (75, retry), not bad data (1); the line says which file to put where,
    and a rerun once it is there uses it without a download."""
    import urllib.error

    import torchvision

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name  # resnet18-f37072fd.pth
    run = tmp_path / "run"
    args = [*_fit_args(tiny_shards, run), "--pretrained", "imagenet"]
    _one_line_error(_invoke(*args), 75,
                    f"could not download ImageNet weights {weights} for resnet18 from {weights.url}", "URLError",
                    f"place the file at {cached} (the torch hub cache, $TORCH_HOME/hub/checkpoints)")
    assert not cached.exists() and not (run / "checkpoint.pt").exists()

    state = torchvision.models.resnet18(weights=None).state_dict()  # the file torchvision wanted, as if copied in
    state["layer4.1.conv2.weight"].fill_(0.25)  # far from any random init (~0.02), and one epoch moves it little
    torch.save(state, cached)
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    trained = torch.load(run / "checkpoint.pt", weights_only=False)["model"]["backbone.layer4.1.conv2.weight"]
    assert torch.allclose(trained, torch.full_like(trained, 0.25), atol=0.01)


@pytest.mark.parametrize("what", ["folder", "empty", pytest.param("no_permission", marks=pytest.mark.slow)])
def test_resume_from_a_checkpoint_that_cannot_be_read_or_is_damaged_names_it_and_says_which_with_exit_1(
    tiny_shards, tmp_path, what
) -> None:
    """--resume reads RUN_DIR/checkpoint.pt: a folder of that name was '--resume: no checkpoint at' (a usage error),
    and a file this user may not read 'cannot write into RUN_DIR' (exit 2), although nothing was to be written."""
    run = tmp_path / "run"
    run.mkdir()
    last = run / "checkpoint.pt"
    args = [*_fit_args(tiny_shards, run), "--resume"]
    expected = {"folder": f"Error: cannot read checkpoint {last}: it is a folder, not a file",
                "empty": f"Error: checkpoint {last} is damaged: it is empty (0 bytes; a save or copy that stopped?)",
                "no_permission": f"Error: cannot read checkpoint {last}: permission denied (unreadable for this user; "
                                 "the file itself may be intact)"}[what]
    if what == "folder":
        last.mkdir()
    else:
        last.write_bytes(b"" if what == "empty" else b"PK\x03\x04 a checkpoint of another user")
    if what != "no_permission":
        result = _invoke(*args)
        _one_line_error(result, 1)
        assert result.stderr.strip() == expected
        return
    last.chmod(0)
    cmd = bound_by_file_modes([sys.executable, "-m", "trainer", *map(str, args)])  # root: as one that modes bind
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == expected


def test_fuse_and_evaluate_say_that_a_spatial_weight_without_a_fusion_implies_weighted_fusion(tmp_path) -> None:
    """The default fusion is average; --spatial-weight W alone gave weighted fusion without a word. It still does
    (the demo's evaluate and fit --stream joint rely on it), now with a note on stderr and in --help."""
    import numpy as np

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=(4, 6))  # test spatial, test temporal, val spatial, val temporal: 6 videos
    scores = tmp_path / "r.scores.npz"
    np.savez(scores, classes=np.array(["A", "B", "C"]), labels=np.arange(6) % 3, spatial=p[0], temporal=p[1],
             val_spatial=p[2], val_temporal=p[3], val_labels=np.arange(6) % 3)
    note = "note: --spatial-weight 0.3 implies --fusion weighted (the default is --fusion average)"
    implied = _invoke("fuse", "--scores", scores, "--spatial-weight", "0.3", "--out", tmp_path / "implied.json")
    assert implied.exit_code == 0, implied.output
    assert implied.stderr.splitlines() == [note]
    explicit = _invoke("fuse", "--scores", scores, "--fusion", "weighted", "--spatial-weight", "0.3",
                       "--out", tmp_path / "explicit.json")
    assert explicit.exit_code == 0 and explicit.stderr == "", explicit.output
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("implied", "explicit"))
    assert a["fusion"] == b["fusion"] == "weighted" and a["alpha"] == b["alpha"] == 0.3 and a["fused"] == b["fused"]
    # a combination that does not work is its usage error alone, without the note first
    refused = _invoke("fuse", "--scores", scores, "--fusion", "average", "--spatial-weight", "0.3", "--out",
                      tmp_path / "x.json")
    _one_line_error(refused, 2, "--spatial-weight applies to --fusion weighted, not --fusion average")
    assert "note:" not in refused.stderr
    for command in ("fuse", "evaluate"):
        text = " ".join(_invoke(command, "--help").output.split())
        assert "Implies --fusion weighted (a note on stderr says so)." in text, command


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_on_one_core_the_default_loader_workers_are_one_and_torch_does_not_warn_about_too_many(tiny_shards,
                                                                                                tmp_path) -> None:
    """The --workers defaults (fit 4, evaluate 2) are capped at the cores this process may use: on one core
    (taskset) both are 1, --help says so, and fit does not get torch's 'will create 4 worker processes' warning."""
    one_core = ["taskset", "-c", "0", sys.executable]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = ("from trainer.cli import main\n"
            "for name in ('fit', 'evaluate'):\n"
            "    print(name, [p.default for p in main.commands[name].params if p.name == 'workers'][0])\n"
            "main(['fit', '--help'])")
    helped = subprocess.run([*one_core, "-c", code], capture_output=True, text=True, env=env)
    assert helped.stdout.splitlines()[:2] == ["fit 1", "evaluate 1"], helped.stdout + helped.stderr
    assert "at most the cores available to this process, here 1]" in " ".join(helped.stdout.split())
    no_workers = [a for i, a in enumerate(TINY) if a != "--workers" and TINY[i - 1] != "--workers"]
    args = [str(a) for a in _fit_args(tiny_shards, tmp_path / "run")[:-len(TINY)] + no_workers]
    fitted = subprocess.run([*one_core, "-m", "trainer", *args], capture_output=True, text=True, env=env, timeout=300)
    assert fitted.returncode == 0, fitted.stdout + fitted.stderr
    assert "worker processes in total" not in fitted.stderr, fitted.stderr


def test_fuse_names_the_scores_it_read_and_a_file_that_is_not_one_is_bad_input_in_one_line(tmp_path) -> None:
    """fuse's results.json named '<out stem>.scores.npz' beside --out, a file that fuse never writes; and a --scores
    cut short, damaged, a results.json given by mistake or arrays that do not fit together exited 75 ('unexpected
    BadZipFile ... rerun'), which a rerun never gets past."""
    import numpy as np

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=(2, 6))
    scores = tmp_path / "run" / "results.scores.npz"
    scores.parent.mkdir()
    np.savez_compressed(scores, classes=np.array(["A", "B", "C"]), labels=np.arange(6) % 3, spatial=p[0],
                        temporal=p[1])  # as evaluate saves them
    fused = tmp_path / "fusions" / "average.json"
    assert _invoke("fuse", "--scores", scores, "--out", fused).exit_code == 0
    assert json.loads(fused.read_text())["scores"] == str(scores)
    data = scores.read_bytes()
    bad = {"short.npz": data[: len(data) // 2], "results.json": fused.read_bytes(), "empty.npz": b""}
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    bad["flipped.npz"] = bytes(flipped)
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        _one_line_error(_invoke("fuse", "--scores", tmp_path / name, "--out", tmp_path / "x.json"), 1,
                        f"{tmp_path / name} is not a scores file of trainer evaluate")
    np.savez(tmp_path / "wrong.npz", classes=np.array(["A", "B"]), labels=np.arange(6) % 3, spatial=p[0])
    _one_line_error(_invoke("fuse", "--scores", tmp_path / "wrong.npz", "--out", tmp_path / "x.json"), 1,
                    "labels are not 2 classes' numbers")
    assert not (tmp_path / "x.json").exists()


def test_fuse_into_its_own_scores_file_is_a_usage_error_and_the_scores_stay(tmp_path) -> None:
    """fuse --scores X --out X wrote its results.json over the scores it had read, exit 0: the scores were lost."""
    import numpy as np

    scores = tmp_path / "r.scores.npz"
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=(2, 6))
    np.savez_compressed(scores, classes=np.array(["A", "B", "C"]), labels=np.arange(6) % 3, spatial=p[0], temporal=p[1])
    kept = scores.read_bytes()
    _one_line_error(_invoke("fuse", "--scores", scores, "--out", scores), 2,
                    f"--out {scores} is the --scores file, which it would replace")
    assert scores.read_bytes() == kept and sorted(x.name for x in tmp_path.iterdir()) == ["r.scores.npz"]
