import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowprep.demo.curves import CurvesError, plot_curves, read_metrics

BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's tab:blue and tab:orange, the first two runs


def write_run(run_dir: Path, epochs: list[dict]) -> Path:
    """RUN_DIR/metrics.jsonl as trainer fit writes it: one sorted-key JSON object per epoch."""
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in epochs))
    return run_dir


def epochs(n: int, *, val: bool = True, start_acc: float = 0.1, end_acc: float = 0.9) -> list[dict]:
    rows = []
    for i in range(n):
        acc = start_acc + (end_acc - start_acc) * i / max(n - 1, 1)
        row = {"epoch": i + 1, "loss": 2.0 - 1.5 * acc, "acc": acc, "lr": 0.01, "samples_per_s": 50.0}
        if val:
            row.update(val_loss=2.1 - 1.5 * acc, val_acc=acc - 0.05, val_clip_acc=acc - 0.1)
        rows.append(row)
    return rows


def has_color(img: np.ndarray, rgb: tuple[int, int, int], *, tol: int = 12, min_pixels: int = 30) -> bool:
    close = (np.abs(img[..., :3].astype(int) - rgb) <= tol).all(axis=-1)
    return int(close.sum()) >= min_pixels


def test_read_metrics_returns_epochs_in_order(tmp_path):
    run = write_run(tmp_path / "r", epochs(4))
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["acc"] == pytest.approx(0.9)


@pytest.mark.parametrize("content, message", [
    ("", "no finished epoch"),
    ('{"epoch": 1, "loss": 1.0}\n', "missing acc"),
    ('{"epoch": 1, "loss": 1.0, "acc": 0.5}\nnot json\n', "metrics.jsonl:2: expected one JSON object"),
])
def test_read_metrics_rejects_bad_files_with_one_line(tmp_path, content, message):
    (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(CurvesError, match=message) as info:
        read_metrics(tmp_path)
    assert "\n" not in str(info.value)


def test_read_metrics_missing_file_names_the_path(tmp_path):
    with pytest.raises(CurvesError, match=r"expected .*metrics\.jsonl \(written by trainer fit\)"):
        read_metrics(tmp_path / "nope")


def test_plot_curves_draws_both_runs_and_chance(tmp_path):
    runs = {"spatial": read_metrics(write_run(tmp_path / "s", epochs(6, start_acc=0.1, end_acc=0.3))),
            "temporal": read_metrics(write_run(tmp_path / "t", epochs(6)))}
    path = plot_curves(runs, tmp_path / "curves.png", chance=0.125)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (360, 900, 3)  # 9 x 3.6 inches at 100 dpi
    assert has_color(img, BLUE) and has_color(img, ORANGE)


def test_plot_curves_single_run_without_validation(tmp_path):
    runs = {"temporal": read_metrics(write_run(tmp_path / "t", epochs(3, val=False)))}
    img = np.asarray(Image.open(plot_curves(runs, tmp_path / "c.png")).convert("RGB"))
    assert has_color(img, BLUE)
    assert not has_color(img, ORANGE)  # only one run: the second colour is never used


def test_plot_curves_needs_a_run(tmp_path):
    with pytest.raises(CurvesError, match="at least one run"):
        plot_curves({}, tmp_path / "c.png")
