"""docs/own-loop.md: both examples run as written on a small shard folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-loop.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_both_examples_of_about_thirty_lines() -> None:
    assert len(blocks()) == 2 and all(len(b.splitlines()) <= 30 for b in blocks())


def test_the_plain_pytorch_loop_trains_on_the_shards(make_tiny_shards) -> None:
    """In a fresh interpreter, as a user's script runs: in the test process, after tests that ran
    ``flowprep extract`` in-process, the DataLoader's forked workers hung in ``cv2.setNumThreads`` (trainer/data.py)."""
    tiny = make_tiny_shards(num_frames=14, height=32, width=40)
    code = blocks()[0].replace("crop_size=112", "crop_size=32")  # the tiny frames are 40x32
    script = (f"SHARDS, TRAIN_LIST = {str(tiny.root)!r}, {str(tiny.train_list)!r}\n" + code
              + "print(loss.item(), tuple(x.shape[1:]), len(ds), len(train))\n")
    # One intra-op thread (as tests/trainer/conftest.py sets in this process): beside the other pytest process of
    # make test, torch's second thread spins in OpenMP barriers for a core that is busy.
    env = {**os.environ, "PYTHONPATH": str(DOC.parents[1]), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=DOC.parents[1], env=env)
    assert run.returncode == 0, run.stderr
    words = run.stdout.split()  # loss, the stack's shape, len(ds), len(train)
    assert float(words[0]) > 0 and "(20, 32, 32)" in run.stdout and words[-1] == words[-2]


def test_the_h5py_example_reads_pixels_with_the_stored_factors(make_tiny_shards) -> None:
    tiny = make_tiny_shards(num_frames=14, bound=12.0)  # 12, not 20: hard-coded 20 would fail
    ns = {"SHARDS": str(tiny.root)}
    exec(compile(blocks()[1], str(DOC), "exec"), ns)
    assert len(ns["stacks"]) == len(ns["labels"]) == 12 and ns["stacks"][0].shape[0] == 20
    assert -12.0 <= min(s.min() for s in ns["stacks"]) and max(s.max() for s in ns["stacks"]) <= 12.0
    assert sorted(set(ns["labels"])) == [0, 1, 2]
    assert np.abs(np.concatenate([s.ravel() for s in ns["stacks"]])).max() > 1.0
