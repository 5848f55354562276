"""Checks of the command line's options that click's types cannot make: usage errors (exit 2), one line each.

Kept apart from trainer/cli.py's command definitions; like them, they import no torch (``amp`` does, only to resolve
``--device auto`` when ``--amp fp16`` asks).
"""

from __future__ import annotations

import os
from typing import Any

import click

from trainer.config import AMP_FP16_ON_CPU, DEFAULT_DROPOUT

DEFAULT = (None, click.core.ParameterSource.DEFAULT)


def given(ctx: click.Context, *names: str) -> list[str]:
    """The options among ``names`` (parameter names) that the user set, as ``--option``."""
    return [f"--{n.replace('_', '-')}" for n in names if ctx.get_parameter_source(n) not in DEFAULT]


def pretrained(ctx: click.Context, param: click.Parameter, value: str) -> str | None:
    """--pretrained: None for none, else imagenet or an existing file."""
    if value.lower() == "none":
        return None
    if value.lower() == "imagenet" or os.path.isfile(value):
        return value
    raise click.BadParameter(f"expected none, imagenet or a state dict file, got {value!r} (no such file)")


def spatial_weight(ctx: click.Context, param: click.Parameter, value: str | None) -> float | str | None:
    """--spatial-weight of evaluate / fuse: a number in [0, 1] or "auto"."""
    if value is None or value == "auto":
        return value
    try:
        alpha = float(value)
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise click.BadParameter(f"expected a number in [0, 1] or 'auto', got {value!r}")
    return alpha


def amp(mode: str, device: str) -> None:
    """``trainer fit`` / ``evaluate``: ``--amp fp16`` on the CPU (``--device cpu``, or ``auto`` without a CUDA
    device) is a usage error naming bf16 (``trainer.distributed.amp_dtype_for``), instead of a run in float32
    without a word."""
    if mode != "fp16" or device == "cuda":
        return
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return
    raise click.UsageError(AMP_FP16_ON_CPU)


def joint_options(ctx: click.Context, o: dict[str, Any]) -> dict[str, Any]:
    """``trainer fit``: the joint stream's ModelConfig fields (empty for one stream), or a UsageError for options
    that do not fit. ``--spatial-weight`` alone implies ``--fusion weighted``, as in ``trainer evaluate``; the
    joint stream's dropout is 0.5 (spatial) and 0.7 (temporal) unless ``--dropout`` sets both."""
    names = ("fusion", "spatial_weight", "stream_loss_weight", "spatial_init", "temporal_init")
    if o["stream"] != "joint":
        extra = given(ctx, *names)
        if extra:
            raise click.UsageError(f"{', '.join(extra)} appl{'ies' if len(extra) == 1 else 'y'} to --stream joint only")
        return {}
    fusion = o["fusion"] or ("weighted" if o["spatial_weight"] is not None else "average")
    if (fusion == "weighted") != (o["spatial_weight"] is not None):
        raise click.UsageError("--fusion weighted needs --spatial-weight F (in [0, 1])" if fusion == "weighted"
                               else f"--spatial-weight applies to --fusion weighted, not --fusion {fusion}")
    if o["spatial_init"] and o["temporal_init"] and o["pretrained"] is not None:
        raise click.UsageError("--pretrained has no effect when both --spatial-init and --temporal-init are given")
    temporal_dropout = DEFAULT_DROPOUT["temporal"] if o["dropout"] is None else o["dropout"]
    return {"fusion": fusion, "spatial_weight": o["spatial_weight"], "temporal_dropout": temporal_dropout,
            "spatial_init": o["spatial_init"], "temporal_init": o["temporal_init"]}


def check_fusion(
    ctx: click.Context, *, both: bool, fusion: str, weight: float | str | None, has_val: bool,
    no_val: str = "give --val-list (never the test list)",
) -> str:
    """``trainer evaluate`` / ``fuse``: the fusion to use, or a UsageError for combinations that cannot work.
    ``--spatial-weight`` without ``--fusion`` implies ``--fusion weighted`` (as ``fit --stream joint`` does; their
    --help says so), with a note on stderr: the default fusion is average, which a weight does not apply to."""
    explicit = bool(given(ctx, "fusion"))
    implied = weight is not None and not explicit
    default, fusion = fusion, "weighted" if implied else fusion
    if weight is not None and fusion != "weighted":
        raise click.UsageError(f"--spatial-weight applies to --fusion weighted, not --fusion {fusion}")
    if fusion == "weighted" and weight is None:
        raise click.UsageError("--fusion weighted needs --spatial-weight F (in [0, 1]) or --spatial-weight auto")
    if not both and (explicit or weight is not None):
        raise click.UsageError("fusion needs both streams; give --spatial and --temporal")
    if both and not has_val and (weight == "auto" or fusion == "learned"):
        what = "--spatial-weight auto" if weight == "auto" else "--fusion learned"
        raise click.UsageError(f"{what} is fitted on validation videos: {no_val}")
    if implied:  # once the combination is known to work: no note before a usage error
        click.echo(f"note: --spatial-weight {weight} implies --fusion weighted (the default is --fusion {default})",
                   err=True)
    return fusion
