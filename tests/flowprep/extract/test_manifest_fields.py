"""A manifest that is valid JSON but lacks a field or holds one of the wrong type is damaged like an unreadable
one: verify names it (exit 1) and a rerun sets it aside and starts the task over, instead of a KeyError or
TypeError that read as a crash of the environment (exit 75, "rerun to resume") on every rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowprep.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    from conftest import make_ucf_tree

    root = tmp_path_factory.mktemp("finished")
    videos = make_ucf_tree(root / "videos", per_class=1, frames=4)
    assert invoke(*extract_args(videos, root / "out")).exit_code == 0
    return videos, root / "out"


def extract_args(videos: Path, out: Path) -> list:
    return ["extract", "--videos", videos, "--out", out, "--method", "farneback", "--workers", "1", "--no-progress"]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda m: m["shards"][0].pop("videos"), "shards[0] is not {'name': file name, 'size': bytes"),
        (lambda m: m.update(shards=None), "shards is None, expected a list"),
        (lambda m: m.update(failures=[{}]), "failures[0] is not {'path': ..., 'error': ...}"),
        (lambda m: m.pop("classes"), "no classes"),
    ],
)
def test_a_manifest_with_a_missing_or_mistyped_field_is_damaged_and_a_rerun_repairs_it(
    finished: tuple[Path, Path], tmp_path: Path, damage, problem: str
) -> None:
    videos, done = finished
    out = tmp_path / "out"
    shutil.copytree(done, out)
    manifest = json.loads((out / "manifest.json").read_text())
    damage(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))

    result = invoke("verify", out)
    assert result.exit_code == 1, result.output
    assert f"problem: manifest.json: damaged manifest ({problem}" in result.output

    result = invoke(*extract_args(videos, out))
    assert result.exit_code == 0, result.output
    assert "set aside as manifest.json.damaged; this task starts over" in result.output
    assert invoke("verify", out).exit_code == 0
