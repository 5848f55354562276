"""Checkpoints: atomic save, checked load, and the RNG state that makes ``--resume`` exact.

A checkpoint is one ``torch.save`` dict::

    {"format": "trainer-checkpoint", "format_version": 1,
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ...,
     "epoch": last finished epoch (0-based), "best_acc": float, "best_loss": float (its validation loss),
     "rng": [rng_state() of each process],
     "partial_epoch": None, or, written when a stop signal ended the run mid-epoch, each process's
                      engine.EpochSums of the epoch in progress as a dict (steps done, running sums),
     "config": {"model": {...}, "data": {...}, "optim": {...}, "run": {...}},
     "classes": [class names],
     "videos": {"train": [video ids], "val": [video ids]}}  (what it saw and was chosen on: trainer evaluate
                      refuses a test list holding any of them; absent from checkpoints written before it)

No flow quantization factors: a network's flow input is in pixels / ``transforms.FLOW_NORM_PX`` whatever the
bound of the shards, which are always dequantized with their own ``scale_factor``/``add_offset`` (checkpoints
written before this kept the training shards' factors, which nothing read; they still load).

``RUN_DIR/checkpoint.pt`` is the latest epoch (or the step a stop signal ended the run at), ``RUN_DIR/best.pt``
the best on the validation list. ``load_checkpoint`` checks the file whole (the zip records' CRC-32s, which
torch.load skips) and of this format; every way it can fail is a one-line ``CheckpointError`` that says whether the
file cannot be read (a folder, no permission) or is damaged (empty, cut short, a failed CRC-32).
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_NAME = "trainer-checkpoint"
FORMAT_VERSION = 1
LAST = "checkpoint.pt"
BEST = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit what is asked of it."""


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop draws from (python, numpy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    # A run resumed on a machine with a different GPU count restores what it can.
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        for i, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, device=i)


def save_checkpoint(state: dict[str, Any], path: str | Path, *more: str | Path) -> Path:
    """Write ``state`` to ``path`` (then to each of ``more``, in order) atomically: a reader sees the old file or
    the new one, never half. Serialized once for all of them; returns the last path written."""
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **state}
    # Serialized in memory first: torch.save into a file turns a full disk into "unexpected pos" (a RuntimeError
    # without the errno); our own write raises OSError(ENOSPC), which the command line reports as such.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    for p in (path, *more):
        path = Path(p)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a partial file would hold the space a rerun needs
            raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU."""
    path = Path(path)
    _check_readable(path)
    _check_crcs(path)
    try:
        # weights_only=False: the RNG state holds numpy arrays and python tuples. Only load your own runs.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint ({type(e).__name__}: {e})") from None
    except OSError as e:
        if e.errno != errno.EINVAL:  # an I/O error: the environment's (exit 75)
            raise
        # torch's zip reader on a file cut short below 64 KiB (a copy that stopped): a damaged file, not the disk
        raise CheckpointError(f"checkpoint {path} is damaged: not a whole zip archive (cut short?)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a trainer checkpoint (expected format {FORMAT_NAME!r})")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format_version {ckpt.get('format_version')}, expected {FORMAT_VERSION}"
        )
    config = ckpt.get("config")
    if not (isinstance(ckpt.get("model"), dict) and isinstance(config, dict) and isinstance(config.get("model"), dict)
            and isinstance(ckpt.get("classes"), list)):
        raise CheckpointError(f"{path} is not a whole trainer checkpoint: it lacks its model weights, config or classes")
    return ckpt


def _check_readable(path: Path) -> None:
    """A checkpoint this user cannot read (a folder of that name, no read permission) says so, naming the file: the
    permission error would otherwise read as one on the output (``cannot write into RUN_DIR``, exit 2). An empty
    file is a damaged one (a save or copy that never wrote it)."""
    if path.is_dir():
        raise CheckpointError(f"cannot read checkpoint {path}: it is a folder, not a file")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except PermissionError:
        raise CheckpointError(f"cannot read checkpoint {path}: permission denied (unreadable for this user; "
                              "the file itself may be intact)") from None
    if empty:
        raise CheckpointError(f"checkpoint {path} is damaged: it is empty (0 bytes; a save or copy that stopped?)")


def _check_crcs(path: Path) -> None:
    """A checkpoint is a zip archive whose records carry CRC-32s that torch.load does not check: a flipped bit in
    the weights (a bad disk, a torn copy) would load as other weights without a word."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError):  # not a zip archive, or one cut short: torch.load says so
        return
    if damaged is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: its record {damaged} fails its CRC-32 check (a flipped "
                              "bit or a torn copy); use another copy or checkpoint")


def load_weights(net: torch.nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """``net.load_state_dict`` of a checkpoint's weights; weights that do not fit the network its config describes
    (an edited file, or one of another version) are a one-line ``CheckpointError``, not a crash."""
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = " ".join(str(e).split())
        raise CheckpointError(f"{path}: its weights do not fit the network its config describes "
                              f"({first[:300]}{' ...' if len(first) > 300 else ''})") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its best checkpoint (or the last one if no validation was run)."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"run directory {path} has neither {BEST} nor {LAST}")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint or run directory at {path}")
    return path


def check_compatible(
    ckpt: dict[str, Any], *, path: str | Path, stream: str | None = None, arch: str | None = None,
    classes: list[str] | None = None, flow_length: int | None = None,
) -> None:
    """Raise a one-line CheckpointError if ``ckpt`` was trained for another stream, arch, flow length or class list."""
    model = ckpt["config"]["model"]
    if stream is not None and model["stream"] != stream:
        raise CheckpointError(f"{path} is a {model['stream']} stream checkpoint, expected {stream}")
    if arch is not None and model["arch"] != arch:
        raise CheckpointError(f"{path} was trained with --arch {model['arch']}, expected {arch}")
    if flow_length is not None and model["flow_length"] != flow_length:
        raise CheckpointError(f"{path} was trained with --flow-length {model['flow_length']}, expected {flow_length}")
    if classes is not None and list(ckpt["classes"]) != list(classes):
        raise CheckpointError(
            f"{path} was trained on {len(ckpt['classes'])} classes that differ from the shards' "
            f"{len(classes)} classes (first difference: "
            f"{_first_difference(list(ckpt['classes']), list(classes))})"
        )


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"index {i}: {x!r} vs {y!r}"
    return f"lengths {len(a)} vs {len(b)}"
