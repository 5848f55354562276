"""A DataLoader with workers after an in-process ``flowprep extract``: the workers must not hang.

A forked loader worker inherits the state of OpenCV's thread pool but not its threads, and its
``cv2.setNumThreads(1)`` waited forever (trainer/data/read.py now forks with the pool at one thread).
A real second interpreter, as a user's script would run both steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[3]
SCRIPT = """
import sys
from pathlib import Path
sys.path.append({tests!r})
from click.testing import CliRunner
from flowprep.cli import main
from media import random_frames, write_video
tmp = Path({tmp!r})
for i, name in enumerate(["A/a.mp4", "B/b.mp4"]):
    write_video(tmp / "v" / name, random_frames(14, 48, 64, seed=i), codec="libx264")
r = CliRunner().invoke(main, ["extract", "--videos", str(tmp / "v"), "--out", str(tmp / "out"),
                              "--method", "farneback", "--workers", "1", "--no-progress"])
assert r.exit_code == 0, r.output
from torch.utils.data import DataLoader
from trainer.data.datasets import FlowStackDataset
from trainer.data.shards import index_shards
ds = FlowStackDataset(list(index_shards(tmp / "out").videos.values()), flow_length=2, crop_size=32, train=True)
print("items", sum(x.shape[0] for x, *_ in DataLoader(ds, batch_size=2, num_workers=2)), flush=True)
"""


@pytest.mark.slow
def test_loader_workers_after_an_in_process_extract_read_the_shards(tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests"), tmp=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env,
                              cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("the DataLoader's workers hung after an in-process extract")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "items 2" in proc.stdout
