"""Training curves: loss and accuracy per epoch of one or more ``trainer fit`` runs, as one PNG.

Reads each RUN_DIR/metrics.jsonl (one JSON object per epoch: ``epoch``, ``loss``, ``acc`` and, with a
validation list, ``val_loss``, ``val_acc``) and draws two panels side by side: loss on the left,
accuracy on the right, one colour per run, training solid and validation dashed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

METRICS = "metrics.jsonl"  # the file trainer fit writes into RUN_DIR
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


class CurvesError(ValueError):
    """A run folder without usable metrics: reported as one line."""


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epochs of RUN_DIR/metrics.jsonl, in order; each needs at least ``epoch``, ``loss`` and ``acc``."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise CurvesError(f"expected {path} (written by trainer fit), found no such file")
    epochs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CurvesError(f"{path}:{n}: expected one JSON object per line, got {line[:60]!r} ({e.msg})") from None
        missing = [k for k in ("epoch", "loss", "acc") if k not in row]
        if missing:
            raise CurvesError(f"{path}:{n}: expected keys epoch, loss, acc; missing {', '.join(missing)}")
        epochs.append(row)
    if not epochs:
        raise CurvesError(f"{path} lists no finished epoch yet")
    return epochs


def plot_curves(
    runs: Mapping[str, list[dict[str, Any]]], path: str | Path, *, chance: float | None = None, dpi: int = 100,
) -> Path:
    """Write the loss and accuracy curves of ``runs`` (name -> epochs from :func:`read_metrics`) to ``path``.

    ``chance`` draws the accuracy of guessing (e.g. 1 / number of classes) as a grey line.
    """
    if not runs:
        raise CurvesError("expected at least one run to plot, got none")
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for (name, epochs), color in zip(runs.items(), COLORS * len(runs)):
        x = [e["epoch"] for e in epochs]
        ax_loss.plot(x, [e["loss"] for e in epochs], color=color, label=f"{name} train")
        ax_acc.plot(x, [e["acc"] for e in epochs], color=color, label=f"{name} train (clips)")
        val = [e for e in epochs if "val_acc" in e]
        if val:
            xv = [e["epoch"] for e in val]
            if all("val_loss" in e for e in val):
                ax_loss.plot(xv, [e["val_loss"] for e in val], color=color, ls="--", label=f"{name} val")
            ax_acc.plot(xv, [e["val_acc"] for e in val], color=color, ls="--", marker=".", label=f"{name} val (videos)")
    if chance is not None:
        ax_acc.axhline(chance, color="grey", lw=1, ls=":", label=f"chance ({100 * chance:.1f}%)")
    # Log scale: a validation loss can spike 10-50x in an early epoch (BatchNorm statistics still settling)
    # and would flatten every other curve on a linear axis.
    ax_loss.set(title="loss (cross-entropy, log scale)", xlabel="epoch", yscale="log")
    ax_acc.set(title="top-1 accuracy", xlabel="epoch", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path
