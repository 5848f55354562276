"""One training epoch and one evaluation pass, read top to bottom (torchvision references style).

Batches arrive as uint8 from the DataLoader (cheap to pin and copy); ``transforms.prepare_batch``
dequantizes and normalises them on the device.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from trainer import distributed
from trainer.data import VideoEvalDataset
from trainer.transforms import TRAIN_PARAMS, prepare_batch, prepare_train_batch


def _to_model_input(
    x: torch.Tensor, scale: torch.Tensor, *, device: torch.device, stream: str, scale_factor: float,
    add_offset: float, channels_last: bool,
) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if scale.shape[-1] == TRAIN_PARAMS:
        # Uncropped training windows + (y0, x0, h, w, flip, size): crop, resize and flip here, batched.
        # The params stay on the CPU until prepare_train_batch has read the crop size (no device sync).
        x = prepare_train_batch(x, scale, stream=stream, scale_factor=scale_factor, add_offset=add_offset)
    else:
        scale = scale.to(device, non_blocking=True)
        x = prepare_batch(x, scale, stream=stream, scale_factor=scale_factor, add_offset=add_offset)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    *,
    device: torch.device,
    stream: str,
    scale_factor: float,
    add_offset: float,
    epoch: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    max_grad_norm: float | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train for one pass over ``loader``; the scheduler steps once per iteration.

    Returns this process's ``samples`` and the all-process ``loss``, ``acc``, ``samples_per_s``,
    ``data_wait_frac`` (fraction of the epoch spent blocked on the loader) and ``lr`` (at the end).
    """
    model.train()
    criterion = nn.CrossEntropyLoss()
    loss_sum, correct, seen = 0.0, 0, 0
    wait = 0.0
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}", disable=not show_progress, dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        wait += time.perf_counter() - t0
        if batch is None:
            break
        x, scale, target = batch
        x = _to_model_input(
            x, scale, device=device, stream=stream, scale_factor=scale_factor, add_offset=add_offset,
            channels_last=channels_last,
        )
        target = target.to(device, non_blocking=True)

        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)  # (B, K)
            loss = criterion(logits, target)
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
            raise FloatingPointError(f"loss is {batch_loss} at epoch {epoch}, iteration {bar.n}")
        n = target.shape[0]
        loss_sum += batch_loss * n
        correct += int((logits.argmax(dim=1) == target).sum().item())
        seen += n
        bar.update(1)
        bar.set_postfix(loss=f"{batch_loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    elapsed = time.perf_counter() - start

    totals = torch.tensor([loss_sum, correct, seen, wait, elapsed], dtype=torch.float64, device=device)
    distributed.all_reduce_sum(totals)
    loss_sum_all, correct_all, seen_all, wait_all, elapsed_all = totals.tolist()
    world = distributed.world_size()
    return {
        "loss": loss_sum_all / max(seen_all, 1),
        "acc": correct_all / max(seen_all, 1),
        "samples": seen,
        "samples_total": int(seen_all),
        # Processes run in lockstep (DDP), so the mean wall time is the epoch's wall time.
        "samples_per_s": seen_all / max(elapsed_all / world, 1e-9),
        "data_wait_frac": wait_all / max(elapsed_all, 1e-9),
        "lr": optimizer.param_groups[0]["lr"],
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    *,
    device: torch.device,
    stream: str,
    scale_factor: float,
    add_offset: float,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    num_classes: int | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of ``model`` over ``loader``.

    Clip batches ``(x, scale, label)`` give ``loss`` and ``clip_acc``. Video batches from
    ``VideoEvalDataset`` ``(x (B, N, C, S, S), scale (B, N, 2), label, index)`` also give
    ``video_acc`` and ``scores``: (num_videos, K) softmax averaged over each video's N samples,
    collected from every process (each process fills the rows of the videos it saw).
    ``num_classes`` defaults to the model's ``num_classes`` attribute (the two-stream models have one).
    """
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, clip_correct, clips = 0.0, 0, 0
    scores: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    if isinstance(loader.dataset, VideoEvalDataset):
        # Allocated up front: a process may get no video at all and must still join the all-reduce.
        if num_classes is None:
            num_classes = int(getattr(model, "module", model).num_classes)
        scores = torch.zeros(len(loader.dataset), num_classes, dtype=torch.float64, device=device)
        labels = torch.zeros(len(loader.dataset), dtype=torch.float64, device=device)
    for batch in tqdm(loader, desc="eval", disable=not show_progress, dynamic_ncols=True, leave=False):
        x, scale, target = batch[:3]
        video = len(batch) == 4
        if video:
            b, n = x.shape[:2]
            x, scale = x.flatten(0, 1), scale.flatten(0, 1)  # (B, N, C, S, S) -> (B*N, C, S, S)
        x = _to_model_input(
            x, scale, device=device, stream=stream, scale_factor=scale_factor, add_offset=add_offset,
            channels_last=channels_last,
        )
        target = target.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x).float()  # (B, K) or (B*N, K)
        clip_target = target.repeat_interleave(n) if video else target
        loss_sum += criterion(logits, clip_target).item()
        clip_correct += int((logits.argmax(dim=1) == clip_target).sum().item())
        clips += clip_target.shape[0]
        if video:
            assert scores is not None and labels is not None, "4-tuple batches come from VideoEvalDataset"
            index = batch[3].to(device)
            scores[index] = logits.softmax(dim=1).view(b, n, -1).mean(dim=1).double()  # (B, K)
            labels[index] = target.double()

    totals = torch.tensor([loss_sum, clip_correct, clips], dtype=torch.float64, device=device)
    distributed.all_reduce_sum(totals)
    out: dict[str, Any] = {"loss": totals[0].item() / max(totals[2].item(), 1), "clip_acc": totals[1].item() / max(totals[2].item(), 1)}
    if scores is not None and labels is not None:
        distributed.all_reduce_sum(scores)
        distributed.all_reduce_sum(labels)
        s, y = scores.cpu().numpy(), labels.cpu().numpy().astype(np.int64)
        out.update(scores=s, labels=y, video_acc=float((s.argmax(axis=1) == y).mean()))
    return out
