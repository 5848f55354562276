"""flowprep/format.py: the one home of the shard format's names and rules."""

import json
import subprocess
import sys

import numpy as np
import pytest

from flowprep import format as fmt


def test_the_format_module_imports_neither_opencv_nor_torch() -> None:
    code = "import sys, flowprep.format; print(sorted(m for m in ('cv2', 'torch', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_bound_maps_to_the_attributes_and_back() -> None:
    scale, offset = fmt.scale_and_offset(12.0)  # not 20: a hard-coded default would fail here
    assert (scale, offset) == (24.0 / 255.0, -12.0)
    q = np.array([0, 128, 255], np.uint8)
    assert np.allclose(fmt.dequantize(q, scale, offset), [-12.0, 128 * 24 / 255 - 12, 12.0])
    torch = pytest.importorskip("torch")
    assert torch.allclose(fmt.dequantize(torch.tensor([0, 255], dtype=torch.uint8), scale, offset),
                          torch.tensor([-12.0, 12.0]))


@pytest.mark.parametrize(("path", "expected"), [("Jump/v_Jump_g01.avi", "Jump/v_Jump_g01"),
                                                ("Jump\\v_Jump_g01.AVI", "Jump/v_Jump_g01"),
                                                ("air drumming/x y.mp4", "air drumming/x y"),
                                                ("Jump/v_Jump_g01", "Jump/v_Jump_g01"),
                                                ("A/clip.v2.webm", "A/clip.v2")])
def test_a_path_in_any_form_names_one_video_id(path: str, expected: str) -> None:
    assert fmt.video_id(path) == expected


def test_lists_take_the_label_from_the_last_field_so_paths_may_hold_spaces(tmp_path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("Jump/v_Jump_g01.avi 1\n\nair drumming/abc def.mp4 2\nRun/v_Run_g02.avi\n")
    entries = fmt.read_list(path)
    assert [(e.video_id, e.label, e.lineno) for e in entries] == [
        ("Jump/v_Jump_g01", 0, 1), ("air drumming/abc def", 1, 3), ("Run/v_Run_g02", None, 4)]
    fmt.write_list(tmp_path / "again.txt", [(e.video_id, e.label) for e in entries[:2]], extension=".mp4")
    assert (tmp_path / "again.txt").read_text() == "Jump/v_Jump_g01.mp4 1\nair drumming/abc def.mp4 2\n"
    path.write_text("Jump/v_Jump_g01.avi 0\n")
    with pytest.raises(fmt.ListError, match="list.txt:1: labels are 1-based, got 0"):
        fmt.read_list(path)


def test_manifest_names_and_reading(tmp_path) -> None:
    assert fmt.manifest_name() == "manifest.json"
    assert fmt.manifest_name(task_index=3, task_count=16) == "manifest-00003-of-00016.json"
    assert fmt.shard_name(2, task_index=3, task_count=16) == "task00003-shard-00002.h5"
    (tmp_path / "manifest-00001-of-00002.json").write_text(json.dumps({"format": "flowprep-manifest", "format_version": 1}))
    (tmp_path / "manifest-1-of-2.json").write_text("{}")  # not a manifest name
    assert [p.name for p in fmt.manifest_paths(tmp_path)] == ["manifest-00001-of-00002.json"]
    assert fmt.read_manifest(tmp_path / "manifest-00001-of-00002.json")["format_version"] == 1
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(fmt.ManifestError, match="not a flowprep manifest"):
        fmt.read_manifest(tmp_path / "manifest.json")
