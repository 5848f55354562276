"""flowprep extract --engine torch: the PyTorch TV-L1 port inside the real pipeline."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from flowprep.cli import main
from flowprep.extract.verify import verify_output


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
    mixed = extract(ucf_tree, tmp_path / "torch")  # resuming with the other engine is another run
    assert mixed.exit_code == 2 and "holds a run with different parameters: flow.device is 'cpu' there" in mixed.output


def test_devices_this_machine_lacks_are_usage_errors(ucf_tree: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        bad = extract(ucf_tree, tmp_path / "o", "--device", f"cuda:{torch.cuda.device_count()}")
    else:
        bad = extract(ucf_tree, tmp_path / "o", "--device", "cuda")
    assert bad.exit_code == 2 and "CUDA device(s) visible to PyTorch" in bad.output
    assert extract(ucf_tree, tmp_path / "o", "--device", "tpu").exit_code == 2
    farneback = CliRunner().invoke(main, ["extract", "--videos", str(ucf_tree), "--out", str(tmp_path / "o"),
                                          "--method", "farneback", "--engine", "torch"])
    assert farneback.exit_code == 2 and "Farneback runs on OpenCV" in farneback.output
