"""An --out that cannot be created because a file stands in its path is a usage error (exit 2, one line).

It used to fail deep in the run with ENOTDIR: `extract`, `import-frames` and `export-frames` then said the
environment failed (exit 75, "rerun to resume", so a scheduler retried it forever), `sample` printed a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flowprep.cli import main


@pytest.mark.parametrize(
    "args",
    [
        ["extract", "--videos", "{tmp}", "--out", "{tmp}/a-file/out"],
        ["import-frames", "--frames", "{tmp}", "--out", "{tmp}/a-file/out", "--layout", "mmaction"],
        ["export-frames", "{tmp}", "--out", "{tmp}/a-file/out", "--layout", "mmaction"],
        ["sample", "--out", "{tmp}/a-file/out"],
        ["preview", "{tmp}", "A/x", "--out", "{tmp}/a-file/x.png"],
    ],
)
def test_an_out_below_a_file_is_a_usage_error_not_a_retriable_failure(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--out': '{tmp_path}/a-file/" in result.output
    assert f"cannot be created: {tmp_path / 'a-file'} is not a folder" in result.output
    assert (tmp_path / "a-file").read_text() == "not a folder\n"


@pytest.mark.parametrize(
    "args",
    [
        ["extract", "--videos", "{tmp}", "--out", "{tmp}/link"],
        ["import-frames", "--frames", "{tmp}", "--out", "{tmp}/link", "--layout", "mmaction"],
        ["export-frames", "{tmp}", "--out", "{tmp}/link", "--layout", "mmaction"],
        ["sample", "--out", "{tmp}/link"],
    ],
)
def test_an_out_folder_that_is_a_link_to_nothing_is_a_usage_error_not_a_retriable_failure(tmp_path: Path,
                                                                                        args: list[str]) -> None:
    """Creating it failed with EEXIST: exit 75, 'File exists: ... rerun the same command', which fails the same way."""
    (tmp_path / "link").symlink_to(tmp_path / "gone" / "out")
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert (f"Invalid value for '--out': '{tmp_path}/link' is a link to {tmp_path}/gone/out, which does not exist: "
            "create that folder or give another --out") in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"] and (tmp_path / "link").is_symlink()


def test_an_out_whose_folders_do_not_exist_yet_is_created(tmp_path: Path) -> None:
    from flowprep.errors import OutPath

    deep = tmp_path / "new" / "deeper" / "out"
    assert OutPath(file_okay=False).convert(str(deep), None, None) == str(deep)
