"""Shared test setup: tests/ on sys.path (for ``media``) and small real video trees."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from media import random_frames, write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as a terminal gives it, even when the suite runs as a shell's background job (``make test &``,
    nohup): there SIGINT arrives ignored, the commands under test rightly keep it ignored, and every Ctrl-C test
    would fail. Runs in each xdist worker too; the processes the tests start inherit the default."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def make_ucf_tree(
    root: Path, *, classes: tuple[str, ...] = ("Jump", "Run"), per_class: int = 2, frames: int = 8,
    height: int = 48, width: int = 64,
) -> Path:
    """``root/<Class>/v_<Class>_gNN.(mp4|avi)``: H.264 .mp4 and MPEG-4 .avi alternating, distinct content."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            ext, codec = (".mp4", "libx264") if i % 2 == 0 else (".avi", "mpeg4")
            write_video(
                root / name / f"v_{name}_g{i:02d}{ext}",
                random_frames(frames, height, width, seed=100 * c + i),
                codec=codec,
            )
    return root


@pytest.fixture
def ucf_tree(tmp_path: Path) -> Path:
    """A fresh 2-class x 2-video tree (8 frames of 64x48) per test: tests may add or break files."""
    return make_ucf_tree(tmp_path / "videos")


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """An empty folder on a read-only file system (a tmpfs mounted ro): writing into it fails with EROFS, also as
    root. Skipped where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    import os
    import shutil
    import subprocess

    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def read_run(out: Path) -> dict[str, dict]:
    """Every video of every shard in ``out``: {video_id: {"attrs", "flow" bytes, "rgb" bytes list, "shard"}}."""
    import h5py

    videos: dict[str, dict] = {}
    for shard in sorted(out.glob("*.h5")):
        with h5py.File(shard, "r") as f:

            def collect(name: str, obj: object) -> None:
                if isinstance(obj, h5py.Group) and "flow" in obj:
                    assert name not in videos, f"{name} is in two shards"
                    videos[name] = {
                        "shard": shard.name,
                        "attrs": {k: (v.item() if hasattr(v, "item") else v) for k, v in obj.attrs.items()},
                        "flow": obj["flow"][:].tobytes(),
                        "rgb": [b.tobytes() for b in obj["rgb"][:]] if "rgb" in obj else None,
                    }

            f["videos"].visititems(collect)
    return videos


@pytest.fixture
def read_shards():
    """``read_shards(out)``: the videos of a run, to compare runs byte for byte."""
    return read_run
