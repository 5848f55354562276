from pathlib import Path

import pytest

from flowprep.extract.reader import DatasetError, find_videos, plan_videos, read_class_index


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_find_videos_recursive_case_insensitive_sorted(tmp_path: Path) -> None:
    touch(tmp_path, "B/b.AVI", "A/deep/er/a.mp4", "A/c.MKV", "A/d.webm", "A/e.Mov", "A/notes.txt",
          "A/.hidden.mp4", ".cache/x.mp4", "A/noext")
    assert find_videos(tmp_path) == ["A/c.MKV", "A/d.webm", "A/deep/er/a.mp4", "A/e.Mov", "B/b.AVI"]


def test_class_index_sets_labels_and_handles_crlf(tmp_path: Path) -> None:
    touch(tmp_path / "v", "Zoo/z.avi", "Ant/a.avi")
    index = tmp_path / "classInd.txt"
    index.write_bytes(b"1 Zoo\r\n2 Bee\r\n3 Ant\r\n\r\n")
    assert read_class_index(index) == ["Zoo", "Bee", "Ant"]
    classes, videos = plan_videos(tmp_path / "v", class_index=index)
    assert classes == ["Zoo", "Bee", "Ant"]
    assert [(v.source, v.video_id, v.label, v.class_name) for v in videos] == [
        ("Ant/a.avi", "Ant/a", 2, "Ant"),
        ("Zoo/z.avi", "Zoo/z", 0, "Zoo"),
    ]


def test_labels_default_to_sorted_folders(tmp_path: Path) -> None:
    touch(tmp_path, "b/x.mp4", "a/y/z.avi", "c/readme.md")
    classes, videos = plan_videos(tmp_path)
    assert classes == ["a", "b"]  # a folder without videos is not a class
    assert [(v.video_id, v.label) for v in videos] == [("a/y/z", 0), ("b/x", 1)]


@pytest.mark.parametrize(
    ("files", "index", "message"),
    [
        (["Other/x.avi"], "1 Zoo\n", "class 'Other' is not in"),
        (["x.avi", "A/y.avi"], None, "must sit in class folders"),
        (["A/x.avi", "A/x.mp4"], None, "would both be stored as 'A/x'"),
        (["A/readme.txt"], None, "no videos"),
        (["A/x.avi"], "1 A\n3 B\n", "expected index 2, got 3"),
        (["A/x.avi"], "A 1\n", "expected '<index> <ClassName>'"),
        (["A/x.avi"], "1 A\n2 A\n", "listed twice"),
    ],
)
def test_unusable_trees_are_clear_errors(tmp_path: Path, files: list[str], index: str | None, message: str) -> None:
    touch(tmp_path / "v", *files)
    index_path = None
    if index is not None:
        index_path = tmp_path / "classInd.txt"
        index_path.write_text(index)
    with pytest.raises(DatasetError, match=message):
        plan_videos(tmp_path / "v", class_index=index_path)


def test_videos_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="must be a folder"):
        find_videos(tmp_path / "missing")
