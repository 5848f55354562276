"""What a demo run is made with, and its folder: ``DemoPlan`` with the two sizes ``FULL`` (``make demo``) and
``QUICK`` (``--quick``, the end-to-end test), the trainer's thread setting, the TV-L1 options, and
``prepare_out``, which records the plan in DIR/demo.json (``PLAN_FILE``) and refuses a folder made with
another one (``recorded_plan`` reads plans recorded before a setting existed); ``code_version``, the commit the
summaries record.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

PLAN_FILE = "demo.json"  # the settings a demo folder was made with; a rerun must ask for the same
# Settings added to DemoPlan later, with the value that folders and records made before them used.
EARLIER_DEFAULTS = {"engine": "opencv"}


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run (see ``FULL`` for why these numbers)."""

    videos_per_class: int
    clips_per_group: int
    size: int  # frames are size x size
    frames: int
    method: str  # flow method of flowprep extract
    arch: str
    crop: int
    spatial_epochs: int
    temporal_epochs: int
    batch_size: int
    lr: float
    dropout: float  # before the classifier, both streams
    eval_samples: int  # frames / stacks per test video
    seed: int = 0
    engine: str = "opencv"  # TV-L1 of flowprep extract: OpenCV's, or its PyTorch port ("torch", on the CPU)


# 8 classes x 16 videos (80 train, 16 val, 32 test), 64x64, 16 frames: 1920 flow fields. TV-L1, the
# two-stream standard, with 3 pyramid scales and 3 warps instead of 5 and 5: OpenCV's defaults are meant
# for 320x240 frames; at 64x64 the flow differs by 0.025 px on average (below the 0.16 px quantization
# step) at half the cost, ~50 ms a field on one core, so ~1 min on 2 cores. Farneback would take ~5 s but
# its flow is blurrier at this size and the temporal stream learned less from it (one comparison with
# equal training settings: validation accuracy peaked at 0.81 with Farneback, 1.0 with TV-L1).
#
# Training (issue 13): with 15 epochs of 10 steps (batch 8) the temporal stream was still learning at the end, and
# its test accuracy swung between 69% and 91% with the seed and with small code changes. It now trains for
# TEMPORAL_EPOCHS (over seeds 0-4, 94-100% on the test list: README); the spatial stream, which cannot learn
# anything that carries over to new videos, keeps 15 (it gets 50-78% of its training videos right, the curve
# that shows why it fails). The two fits run at the same time, each on one thread (see THREADS_ENV), so on 2
# cores the longer temporal fit costs little wall time.
TEMPORAL_EPOCHS = 30
FULL = DemoPlan(videos_per_class=16, clips_per_group=2, size=64, frames=16, method="tvl1", arch="resnet18",
                crop=56, spatial_epochs=15, temporal_epochs=TEMPORAL_EPOCHS, batch_size=8, lr=0.01, dropout=0.3,
                eval_samples=6)
# The end-to-end test: 96 videos (48 train, 16 val, 32 test; one clip per group for more appearances),
# 32x32 crops, Farneback, 6 spatial and 12 temporal epochs, 4 samples per test video: a fifth of the work of
# FULL; still 8 classes (chance 12.5%). `python -m flowprep.demo --quick --seeds 0-3 --jobs 2` gave temporal
# 62.5-78.1%, spatial 3.1-12.5%, fused within one test video of the better stream; the test asks for
# temporal >= 47.5% and spatial <= 32.5%.
QUICK = dataclasses.replace(FULL, videos_per_class=12, clips_per_group=1, crop=32, method="farneback",
                            spatial_epochs=6, temporal_epochs=12, eval_samples=4)
# One intra-op thread per trainer command: the same arithmetic whatever the number of cores (torch would otherwise
# use one thread per core), and on 2 cores the two fits running side by side use one core each.
THREADS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TVL1_OPTIONS = ("--tvl1-nscales", "3", "--tvl1-warps", "3")  # see FULL


def prepare_out(out: Path, plan: DemoPlan, *, force: bool) -> None:
    """Create ``out`` (or empty it with ``force``); refuse a folder made with other settings."""
    plan_file = out / PLAN_FILE
    if out.exists() and any(out.iterdir()):
        if not plan_file.is_file():
            raise click.UsageError(f"{out} exists and is not a demo folder (no {PLAN_FILE}); choose another --out")
        if force:
            shutil.rmtree(out)
        elif recorded_plan(json.loads(plan_file.read_text())) != dataclasses.asdict(plan):
            raise click.UsageError(f"{out} holds a demo made with other settings ({plan_file}); "
                                   "pass --force to start afresh or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(dataclasses.asdict(plan), indent=2) + "\n")


def recorded_plan(recorded: dict[str, Any]) -> dict[str, Any]:
    """A plan as recorded (demo.json, summary.json), completed with ``EARLIER_DEFAULTS`` where it predates them."""
    return {**EARLIER_DEFAULTS, **recorded}


def code_version() -> str | None:
    """The git commit of this checkout (``+modified`` when flowprep/ or trainer/ differ from it), else None."""
    root = Path(__file__).resolve().parents[2]  # the checkout: git's pathspecs below are relative to it
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "flowprep", "trainer"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+modified" if changed.stdout.strip() else "")
