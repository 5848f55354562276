"""flowprep extract --engine torch: the PyTorch TV-L1 port inside the real pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import pytest
import torch
from click.testing import CliRunner

from flowprep.cli import main
from flowprep.extract.verify import verify_output
from flowprep.torchflow.service import devices


def extract(videos: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["extract", "--videos", str(videos), "--out", str(out), "--method", "tvl1",
                                     "--tvl1-nscales", "3", "--tvl1-warps", "2", "--workers", "2", "--no-progress",
                                     *extra])


def test_the_torch_engine_on_the_cpu_writes_opencvs_flow_to_the_bit(ucf_tree: Path, tmp_path: Path, read_shards) -> None:
    torch_run = extract(ucf_tree, tmp_path / "torch", "--engine", "torch", "--device", "cpu")
    assert torch_run.exit_code == 0, torch_run.output
    opencv_run = extract(ucf_tree, tmp_path / "opencv")
    assert opencv_run.exit_code == 0, opencv_run.output
    assert read_shards(tmp_path / "torch") == read_shards(tmp_path / "opencv")
    assert len(read_shards(tmp_path / "torch")) == 4 and verify_output(tmp_path / "torch").ok
    params = json.loads((tmp_path / "torch" / "manifest.json").read_text())["params"]
    assert (params["flow"]["engine"], params["flow"]["device"]) == ("torch", "cpu") and "torch" in params["versions"]
    assert "engine" not in json.loads((tmp_path / "opencv" / "manifest.json").read_text())["params"]["flow"]
    # every shard records them too, beside the solver's parameters and the other libraries' versions
    for shard in sorted((tmp_path / "torch").glob("*.h5")):
        with h5py.File(shard, "r") as f:
            recorded = json.loads(f.attrs["params"])
        assert recorded == params and recorded["flow"]["params"]["nscales"] == 3
        assert recorded["versions"]["torch"] == torch.__version__ and recorded["versions"]["opencv"] == cv2.__version__
    for shard in sorted((tmp_path / "opencv").glob("*.h5")):
        with h5py.File(shard, "r") as f:
            assert "torch" not in json.loads(f.attrs["params"])["versions"]
    mixed = extract(ucf_tree, tmp_path / "torch")  # resuming with the other engine is another run
    assert mixed.exit_code == 2 and "holds a run with different parameters: flow.device is 'cpu' there" in mixed.output


def test_devices_this_machine_lacks_are_usage_errors(ucf_tree: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        bad = extract(ucf_tree, tmp_path / "o", "--device", f"cuda:{torch.cuda.device_count()}")
    else:
        bad = extract(ucf_tree, tmp_path / "o", "--device", "cuda")
    assert bad.exit_code == 2 and "CUDA device(s) visible to PyTorch" in bad.output
    assert extract(ucf_tree, tmp_path / "o", "--device", "tpu").exit_code == 2
    farneback = CliRunner().invoke(main, ["extract", "--videos", str(ucf_tree), "--out", str(tmp_path / "o"),
                                          "--method", "farneback", "--engine", "torch"])
    assert farneback.exit_code == 2 and "Farneback runs on OpenCV" in farneback.output
    on_gpu = CliRunner().invoke(main, ["extract", "--videos", str(ucf_tree), "--out", str(tmp_path / "o"),
                                       "--method", "farneback", "--device", "cuda"])  # no --engine typed
    assert on_gpu.exit_code == 2 and "Farneback runs on OpenCV, on the CPU: drop --device cuda" in on_gpu.output
    assert "--engine torch" not in on_gpu.output


def test_a_list_of_gpus_is_one_flow_process_each() -> None:
    assert devices("cuda:0,1") == ["cuda:0", "cuda:1"] and devices("cuda:3") == ["cuda:3"] and devices("cpu") == ["cpu"]


@pytest.mark.parametrize(("device", "message"), [
    ("cuda:0,1", None),  # this machine's GPUs, if any, plus one
    ("cuda:0,x", "Error: --device must be cpu, cuda or cuda:0,1,..., got 'cuda:0,x'"),
    ("cuda:", "Error: --device must be cpu, cuda or cuda:0,1,..., got 'cuda:'"),
    ("cuda:1,1", "Error: --device cuda:1,1 names a GPU twice"),
])
def test_a_gpu_list_this_machine_cannot_serve_is_one_line_and_exit_2(ucf_tree: Path, tmp_path: Path, device: str,
                                                                     message: str | None) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if message is None:
        device = f"cuda:0,{max(count, 1)}"  # cuda:0,1 with fewer than 2 GPUs; one more than there are with more
        message = f"Error: --device {device}: this machine has {count} CUDA device(s) visible to PyTorch"
    result = extract(ucf_tree, tmp_path / "o", "--device", device)
    assert result.exit_code == 2 and result.output.splitlines()[-1] == message, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf"])
def test_a_flow_timeout_that_is_not_a_positive_number_of_seconds_is_one_line_and_exit_2(ucf_tree: Path, tmp_path: Path,
                                                                                        value: str) -> None:
    result = CliRunner().invoke(main, ["extract", "--videos", str(ucf_tree), "--out", str(tmp_path / "o"), "--engine",
                                       "torch", "--no-progress"], env={"FLOWPREP_FLOW_TIMEOUT_S": value})
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1] == f"Error: FLOWPREP_FLOW_TIMEOUT_S must be a number of seconds above 0, got {value!r}"
    assert not (tmp_path / "o").exists()
