"""One training epoch and one evaluation pass, read top to bottom (torchvision references style).

Batches arrive as uint8, from a DataLoader or, in training, from ``batches.SharedBatchLoader`` (already on a
CUDA device then); the run's ``transforms.BatchPreparer`` (``prepare``) turns them into the network's input
on the device (dequantize, crop, flip, normalise, memory format) and gives the forward pass's precision.

The joint stream (``TwoStream``) runs through the same loops: its batches carry a tuple of inputs
(rgb, flow) that share one crop's ``scale``/``params``, its output is a dict of the two streams' logits
and the fused output, and ``losses.JointLoss`` scores that dict. Accuracy and the video scores are the fused
output's; ``evaluate`` also reports each stream's video accuracy and scores.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from flowprep.stopping import StopFlag
from trainer import distributed
from trainer.data.batches import SharedBatchLoader
from trainer.data.datasets import VideoEvalDataset
from trainer.data.transforms import BatchPreparer, Inputs
from trainer.models.losses import class_log_probs

Output = Union[Tensor, dict[str, Tensor]]  # logits, or TwoStream's {"spatial", "temporal", "fused"}


def _forward(model: nn.Module, x: Inputs) -> Output:
    return model(*x) if isinstance(x, tuple) else model(x)


def _main_output(output: Output) -> Tensor:
    """What accuracy is measured on: the logits of a stream, the fused output of the joint stream."""
    return output["fused"] if isinstance(output, dict) else output


@dataclasses.dataclass
class EpochSums:
    """A training epoch so far, on this process: the steps done and the sums its metrics are made of."""

    steps: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    wait: float = 0.0  # seconds blocked on the loader
    elapsed: float = 0.0  # seconds of the epoch (a stopped and resumed epoch: both parts, not the time between)


def train_one_epoch(
    model: nn.Module, criterion: Callable[[Output, Tensor], Tensor], optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
    loader: torch.utils.data.DataLoader | SharedBatchLoader, prepare: BatchPreparer, epoch: int, *,
    max_grad_norm: float | None = None, show_progress: bool = True, sums: EpochSums | None = None,
    stop: StopFlag | None = None,
) -> dict[str, Any] | None:
    """Train for one pass over ``loader``; the scheduler steps once per iteration.

    ``criterion``: cross-entropy on the logits (``nn.CrossEntropyLoss()``), or the joint stream's ``JointLoss``.
    ``epoch`` (1-based) names the progress bar and a divergence. Returns this process's ``samples`` and the
    all-process ``loss``, ``acc``, ``samples_per_s``, ``data_wait_frac`` (fraction of the epoch spent blocked on
    the loader) and ``lr`` (at the end).

    ``sums``, updated after every step: a resumed epoch passes its checkpoint's, and ``loader`` then starts at
    batch ``sums.steps`` (``loaders.EpochSampler``); the metrics cover the whole epoch. ``stop``: asked before
    every step, all processes alike (one all-reduce of one number); once set, returns None, ``sums`` as they
    stand after the last step done.
    """
    model.train()
    sums = EpochSums() if sums is None else sums
    done = sums.steps  # before this call
    bar = tqdm(total=done + len(loader), initial=done, desc=f"epoch {epoch}", disable=not show_progress,
               dynamic_ncols=True, leave=False)
    start = time.perf_counter() - sums.elapsed
    it = iter(loader)
    while True:
        if _stop_agreed(stop, prepare.device):
            bar.close()
            return None
        t0 = time.perf_counter()
        batch = next(it, None)
        sums.wait += time.perf_counter() - t0
        if batch is None:
            break
        x, scale, target = batch
        x, target = prepare(x, scale), prepare.target(target)

        with prepare.autocast():
            output = _forward(model, x)  # logits (B, K), or the joint stream's dict of them
            loss = criterion(output, target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        # .item() waits for the step: the wait measured above is then time the device had nothing to do.
        batch_loss = loss.item()
        if not math.isfinite(batch_loss):
            raise FloatingPointError(f"loss is {batch_loss} at epoch {epoch}, iteration {sums.steps}")
        n = target.shape[0]
        sums.steps += 1
        sums.loss_sum += batch_loss * n
        sums.correct += int((_main_output(output).argmax(dim=1) == target).sum().item())
        sums.seen += n
        sums.elapsed = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{batch_loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    sums.elapsed = time.perf_counter() - start

    totals = torch.tensor([sums.loss_sum, sums.correct, sums.seen, sums.wait, sums.elapsed], dtype=torch.float64,
                          device=prepare.device)
    distributed.all_reduce_sum(totals)
    loss_sum_all, correct_all, seen_all, wait_all, elapsed_all = totals.tolist()
    world = distributed.world_size()
    return {
        "loss": loss_sum_all / max(seen_all, 1),
        "acc": correct_all / max(seen_all, 1),
        "samples": sums.seen,
        "samples_total": int(seen_all),
        # Processes run in lockstep (DDP), so the mean wall time is the epoch's wall time.
        "samples_per_s": seen_all / max(elapsed_all / world, 1e-9),
        "data_wait_frac": wait_all / max(elapsed_all, 1e-9),
        "lr": optimizer.param_groups[0]["lr"],
    }


def _stop_agreed(stop: StopFlag | None, device: torch.device) -> bool:
    """Whether to stop before the next step. A signal reaches the processes at slightly different moments, so
    they agree first: all stop if one has it (and all name the same signal, the highest number: SIGTERM)."""
    if stop is None:
        return False
    stop.raise_if_leaving()  # a second Ctrl-C that a finalizer dropped: leave now, as it would have
    signum = distributed.max_over_processes(stop.signum or 0, device=device)
    if signum:
        stop.signum = signum  # the same on every process
    return bool(signum)


def _heads(output: Output, *, stream: str, fused_kind: str) -> dict[str, tuple[Tensor, str]]:
    """Each head's float32 (B, K) output and its kind, the one accuracy is measured on first."""
    if not isinstance(output, dict):
        return {stream: (output.float(), "logits")}
    return {"fused": (output["fused"].float(), fused_kind), "spatial": (output["spatial"].float(), "logits"),
            "temporal": (output["temporal"].float(), "logits")}


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: torch.utils.data.DataLoader, prepare: BatchPreparer, *, num_classes: int | None = None,
    show_progress: bool = False, stop: StopFlag | None = None,
) -> dict[str, Any] | None:
    """Accuracy of ``model`` over ``loader``, its batches prepared by ``prepare``.

    Clip batches ``(x, scale, label)`` give ``loss`` and ``clip_acc``. Video batches from
    ``VideoEvalDataset`` ``(x (B, N, C, S, S), scale (B, N, 2), label, index)`` also give
    ``video_acc`` and ``scores``: (num_videos, K) softmax averaged over each video's N samples,
    collected from every process (each process fills the rows of the videos it saw).
    ``num_classes`` defaults to the model's ``num_classes`` attribute (each stream has one; TwoStream does not).

    The joint stream (``prepare.stream == "joint"``: x a tuple (rgb, flow), a TwoStream model): loss, accuracies
    and ``scores`` are the fused output's (a fusion that outputs probabilities is averaged as is, logits through
    softmax), and video batches add ``scores_spatial``/``scores_temporal`` and ``video_acc_spatial``/``video_acc_temporal``.

    ``stop``: asked before every batch, all processes alike (as in ``train_one_epoch``; a process that has run out of
    batches goes on asking until the one with the most has done its last); once set, returns None.
    """
    model.eval()
    device, stream = prepare.device, prepare.stream
    net = getattr(model, "module", model)
    fused_kind = net.fusion.output if stream == "joint" else "logits"
    names = ("fused", "spatial", "temporal") if stream == "joint" else (stream,)
    loss_sum, clip_correct, clips = 0.0, 0, 0
    scores: dict[str, Tensor] = {}
    labels: Tensor | None = None
    if isinstance(loader.dataset, VideoEvalDataset):
        # Allocated up front: a process may get no video at all and must still join the all-reduce.
        if num_classes is None:
            num_classes = int(net.num_classes)
        scores = {name: torch.zeros(len(loader.dataset), num_classes, dtype=torch.float64, device=device)
                  for name in names}
        labels = torch.zeros(len(loader.dataset), dtype=torch.float64, device=device)
    # Processes may hold different numbers of batches (no padding duplicates): with a stop flag, every process
    # takes part in as many agreements as the one with the most.
    rounds = len(loader) if stop is None else distributed.max_over_processes(len(loader), device=device)
    batches = iter(loader)
    for _ in tqdm(range(rounds), desc="eval", disable=not show_progress, dynamic_ncols=True, leave=False):
        if _stop_agreed(stop, device):
            return None
        batch = next(batches, None)
        if batch is None:  # this process's videos are done; the others' are not
            continue
        x, scale, target = batch[:3]
        video = len(batch) == 4
        if video:
            b, n = scale.shape[:2]
            # (B, N, C, S, S) -> (B*N, C, S, S), each part of a joint batch alike
            x = [part.flatten(0, 1) for part in x] if stream == "joint" else x.flatten(0, 1)
            scale = scale.flatten(0, 1)
        x, target = prepare(x, scale), prepare.target(target)
        with prepare.autocast():
            heads = _heads(_forward(model, x), stream=stream, fused_kind=fused_kind)  # (B, K) or (B*N, K) each
        main, kind = heads[names[0]]
        clip_target = target.repeat_interleave(n) if video else target
        loss_sum += F.nll_loss(class_log_probs(main, kind), clip_target, reduction="sum").item()  # = CE for logits
        clip_correct += int((main.argmax(dim=1) == clip_target).sum().item())
        clips += clip_target.shape[0]
        if video:
            assert labels is not None, "4-tuple batches come from VideoEvalDataset"
            index = batch[3].to(device)
            for name, (out, kind) in heads.items():
                probs = out if kind == "probabilities" else out.softmax(dim=1)
                scores[name][index] = probs.view(b, n, -1).mean(dim=1).double()  # (B, K)
            labels[index] = target.double()

    totals = torch.tensor([loss_sum, clip_correct, clips], dtype=torch.float64, device=device)
    distributed.all_reduce_sum(totals)
    out: dict[str, Any] = {"loss": totals[0].item() / max(totals[2].item(), 1), "clip_acc": totals[1].item() / max(totals[2].item(), 1)}
    if labels is not None:
        distributed.all_reduce_sum(labels)
        y = labels.cpu().numpy().astype(np.int64)
        out["labels"] = y
        for name in names:
            distributed.all_reduce_sum(scores[name])
            s = scores[name].cpu().numpy()
            suffix = "" if name == names[0] else f"_{name}"
            out.update({f"scores{suffix}": s, f"video_acc{suffix}": float((s.argmax(axis=1) == y).mean())})
    return out
