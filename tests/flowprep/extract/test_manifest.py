import json
from pathlib import Path

import pytest

from flowprep.extract import manifest as mf


def test_names() -> None:
    assert mf.manifest_name() == "manifest.json" and mf.shard_name(7) == "shard-00007.h5"
    assert mf.manifest_name(task_index=3, task_count=8) == "manifest-00003-of-00008.json"
    assert mf.shard_name(0, task_index=3, task_count=8) == "task00003-shard-00000.h5"
    with pytest.raises(ValueError, match="expected 0 <= task_index < task_count, got task 8 of 8"):
        mf.shard_name(0, task_index=8, task_count=8)


def part(index: int, count: int) -> dict:
    return mf.new_manifest(task_index=index, task_count=count, params={}, classes=["a"], num_videos=1,
                           videos_sha256=mf.videos_digest(["a/x.avi"]))


def test_parts_are_read_in_task_order_and_missing_tasks_named(tmp_path: Path) -> None:
    for i in (4, 0, 2):
        mf.write_json_atomic(tmp_path / mf.manifest_name(task_index=i, task_count=5), part(i, 5))
    (tmp_path / "manifest-1-of-5.json").write_text("{}")  # not a part name: ignored
    parts = mf.read_manifests(tmp_path)
    assert [p["task"]["index"] for p in parts] == [0, 2, 4]
    assert mf.missing_tasks(parts) == [1, 3]
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(mf.ManifestError, match="mixed: task counts"):
        mf.missing_tasks(parts + [part(0, 1)])


def test_not_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(mf.ManifestError, match="manifest.json: not a flowprep manifest"):
        mf.read_manifests(tmp_path)
    (tmp_path / "manifest.json").write_text("{trunc")
    with pytest.raises(mf.ManifestError, match="cannot read the manifest"):
        mf.read_manifests(tmp_path)


def test_failures_log_survives_a_cut_line(tmp_path: Path) -> None:
    log = tmp_path / "failures.jsonl"
    mf.append_failure(log, {"path": "a.avi", "error": "x"})
    with open(log, "a") as f:
        f.write('{"path": "b.avi", "err')  # a crash in the middle of a write
    assert mf.failure_paths(log) == {"a.avi"}
    mf.append_failure(log, {"path": "b.avi", "error": "y"})
    lines = log.read_text().splitlines()
    assert json.loads(lines[-1]) == {"path": "b.avi", "error": "y"} and len(lines) == 3
    assert mf.failure_paths(log) == {"a.avi", "b.avi"}


def test_failures_log_stays_valid_utf8_json_for_any_name_and_reads_back_what_it_wrote(tmp_path: Path) -> None:
    log = tmp_path / "failures.jsonl"
    names = ["Café/é_動画.avi",  # UTF-8 text, as written
             "A/bad_\udcff.avi",  # a byte that is not UTF-8, as os.listdir decodes it (surrogateescape)
             "A/line\u2028sep\x85.avi"]  # line breaks for str.splitlines, not for JSON lines
    for name in names:
        mf.append_failure(log, {"path": name, "error": f"{name} is no video"})
    text = log.read_bytes().decode("utf-8")  # strict: valid UTF-8 throughout
    lines = text.split("\n")[:-1]
    assert [json.loads(line)["path"] for line in lines] == names and "Café/é_動画.avi" in lines[0]
    assert "\\udcff" in lines[1]  # escaped, the only way JSON in UTF-8 can hold it
    assert mf.failure_paths(log) == set(names)
    with open(log, "ab") as f:
        f.write('{"path": "Café/動'.encode()[:-1])  # a crash in the middle of a character
    assert mf.failure_paths(log) == set(names)
    mf.append_failure(log, {"path": "Café/動.avi", "error": "x"})
    assert mf.failure_paths(log) == set(names) | {"Café/動.avi"}
