"""``trainer fit``: train one stream (or both jointly, with their fusion) on the shards, checkpoint every
epoch, keep the best on validation.

RUN_DIR/checkpoint.pt   latest epoch (model, optimizer, scheduler, scaler, epoch, RNG states, configs)
RUN_DIR/best.pt         best validation video accuracy so far, ties to the lower validation loss (only with a
                        validation list)
RUN_DIR/metrics.jsonl   one JSON line per epoch

``--resume`` continues bit for bit as if never interrupted, with any number of workers: each training
sample's augmentation is drawn from its own seed (run seed, epoch, dataset index), and the
checkpoint holds every process's RNG state (dropout, shuffling).

The joint stream trains ``TwoStream(spatial, temporal, fusion)`` on ``trainer.data.joint_datasets`` items (a flow stack
and its centre RGB frame, one crop and flip for both) with ``losses.JointLoss``; its validation accuracy,
which picks best.pt, is the fused output's, and metrics.jsonl adds each stream's (``val_acc_spatial``,
``val_acc_temporal``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from trainer import checkpoint as ckpt_io
from trainer import distributed
from trainer.config import DataConfig, ModelConfig, OptimConfig, RunConfig, from_dict, to_dict
from trainer.data.errors import DataError
from trainer.data.lists import read_video_list
from trainer.data.loaders import make_train_loader, make_val_loader
from trainer.data.shards import index_shards
from trainer.distributed import amp_dtype_for
from trainer.engine import evaluate, train_one_epoch
from trainer.models.build import build_model, init_streams
from trainer.models.losses import JointLoss

METRICS = "metrics.jsonl"


def lr_lambda(optim: OptimConfig, iters_per_epoch: int):
    """Multiplier of the base lr at iteration ``it`` (the scheduler steps once per iteration)."""
    total = optim.epochs * iters_per_epoch
    warmup = int(round(optim.warmup_epochs * iters_per_epoch))

    def f(it: int) -> float:
        if it < warmup:
            return optim.warmup_factor + (1.0 - optim.warmup_factor) * it / warmup
        if optim.schedule == "step":
            return optim.gamma ** ((it // iters_per_epoch) // optim.step_size)
        progress = min(1.0, (it - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_run_dir(run: RunConfig) -> Path:
    out = Path(run.out)
    last = out / ckpt_io.LAST
    if run.resume and not last.is_file():
        raise ckpt_io.CheckpointError(f"--resume: no checkpoint to resume at {last}")
    if not run.resume and last.is_file():
        raise ckpt_io.CheckpointError(f"{out} already holds a run ({last}); pass --resume or choose another --out")
    return out


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from the checkpoint's history (atomic), so it always matches the checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(h, sort_keys=True) + "\n" for h in history))
    os.replace(tmp, path)


def fit(
    *, model: ModelConfig, data: DataConfig, optim: OptimConfig, run: RunConfig, stop_after: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train ``model.stream`` as configured; ``model.num_classes`` is replaced by the shards' class count.

    ``stop_after``: leave after this many epochs in this invocation (a time-limited job slot); the run
    continues with ``run.resume``. Returns the last epoch's metrics (``{}`` if nothing was left to do).
    """
    device = distributed.resolve_device(run.device, local_rank=distributed.local_rank_from_env())
    dist = distributed.init_distributed(device)
    try:
        return _fit(model, data, optim, run, device, dist, stop_after, show_progress and dist.is_main)
    finally:
        distributed.cleanup()


def _fit(
    model_cfg: ModelConfig, data: DataConfig, optim: OptimConfig, run: RunConfig, device: torch.device,
    dist: distributed.DistInfo, stop_after: int | None, show_progress: bool,
) -> dict[str, Any]:
    out = _check_run_dir(run)
    seed_everything(run.seed + dist.rank)
    index = index_shards(data.shards)
    train_records = read_video_list(data.train_list, index, role="train", kind=data.list_format)
    val_records = read_video_list(data.val_list, index, role="val", kind=data.list_format) if data.val_list else []
    if model_cfg.stream in ("spatial", "joint") and not index.has_rgb:
        raise DataError(f"the {model_cfg.stream} stream needs RGB frames, but the shards in {data.shards} were made "
                        "with --no-rgb")
    model_cfg = dataclasses.replace(model_cfg, num_classes=len(index.classes))

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 parts (--amp none)
    resumed = ckpt_io.load_checkpoint(out / ckpt_io.LAST) if run.resume else None
    if resumed is not None:
        saved = from_dict(ModelConfig, resumed["config"]["model"])
        if not saved.same_network(model_cfg):
            raise ckpt_io.CheckpointError(
                f"--resume: {out / ckpt_io.LAST} holds a {_network(saved)}; the options ask for {_network(model_cfg)}"
            )
    net = build_model(model_cfg, pretrained=None if resumed else model_cfg.pretrained)
    if resumed is None and model_cfg.stream == "joint":
        init_streams(net, model_cfg, classes=list(index.classes))  # --spatial-init / --temporal-init, if given
    channels_last = run.channels_last and device.type == "cuda"
    net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) if dist.enabled else net

    # One stored frame size for all videos: training crops are made on the device, batched (engine._to_model_input).
    frame_size = (index.height, index.width) if index.height else None
    pin = device.type == "cuda"
    train_loader, sampler = make_train_loader(model_cfg, data, train_records, frame_size=frame_size, dist=dist,
                                              seed=run.seed, device=device)
    val_loader = make_val_loader(model_cfg, data, val_records, dist=dist, pin_memory=pin) if val_records else None

    optimizer = torch.optim.SGD(ddp.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, len(train_loader)))
    amp_dtype = amp_dtype_for(run.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = None  # cross-entropy on the logits
    if model_cfg.stream == "joint":
        criterion = JointLoss(fused_output=net.fusion.output, stream_weight=optim.stream_loss_weight)

    start_epoch, best_acc, best_loss, history = 0, -1.0, math.inf, []
    if resumed is not None:
        net.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        start_epoch, best_acc, history = resumed["epoch"], resumed["best_acc"], list(resumed["history"])
        best_loss = resumed.get("best_loss", math.inf)  # absent from checkpoints written before it was kept
        rngs = resumed["rng"]
        if len(rngs) == dist.world_size:
            ckpt_io.set_rng_state(rngs[dist.rank])
        elif dist.is_main:
            warnings.warn(f"--resume: the checkpoint holds RNG states of {len(rngs)} processes, this run has "
                          f"{dist.world_size}: continuing from freshly seeded RNGs (not bit-exact)", stacklevel=2)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_metrics(out / METRICS, history)  # fresh run: empty; resumed: exactly the checkpoint's epochs
    configs = {"model": to_dict(model_cfg), "data": to_dict(data), "optim": to_dict(optim), "run": to_dict(run)}
    end_epoch = optim.epochs if stop_after is None else min(optim.epochs, start_epoch + stop_after)
    stats: dict[str, Any] = {}
    for epoch in range(start_epoch, end_epoch):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(
            ddp, train_loader, optimizer, scheduler, scaler, device=device, stream=model_cfg.stream,
            scale_factor=index.scale_factor, add_offset=index.add_offset, epoch=epoch + 1, amp_dtype=amp_dtype,
            channels_last=channels_last, max_grad_norm=optim.max_grad_norm, criterion=criterion,
            show_progress=show_progress,
        )
        stats = {"epoch": epoch + 1, **stats, "samples_per_rank": distributed.all_gather_object(stats.pop("samples"))}
        # Each rank's sampler indices for this epoch: disjoint unless DistributedSampler had to pad.
        per_rank = distributed.all_gather_object(list(iter(sampler)))
        stats["overlap_samples"] = sum(len(r) for r in per_rank) - len(set().union(*map(set, per_rank)))
        is_best = False
        if val_loader is not None:
            # The unwrapped network with rank 0's buffers: exactly the weights the checkpoint will hold, and no
            # DDP collectives inside forward (processes may get different numbers of validation batches).
            distributed.broadcast_buffers(net)
            val = evaluate(
                net, val_loader, device=device, stream=model_cfg.stream, scale_factor=index.scale_factor,
                add_offset=index.add_offset, amp_dtype=amp_dtype, channels_last=channels_last,
                num_classes=model_cfg.num_classes,
            )
            stats.update(val_loss=val["loss"], val_clip_acc=val["clip_acc"], val_acc=val["video_acc"])
            if model_cfg.stream == "joint":  # val_acc above is the fused output's
                stats.update(val_acc_spatial=val["video_acc_spatial"], val_acc_temporal=val["video_acc_temporal"])
            # Ties on accuracy are common on a small validation list (16 videos: steps of 1/16, often 1.0 for many
            # epochs); among them the lower validation loss wins, so a later, settled epoch beats the first lucky one.
            is_best = val["video_acc"] > best_acc or (val["video_acc"] == best_acc and val["loss"] < best_loss)
            if is_best:
                best_acc, best_loss = val["video_acc"], val["loss"]
        history.append(stats)
        rngs = distributed.all_gather_object(ckpt_io.rng_state())
        if dist.is_main:
            state = {
                "model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch + 1, "best_acc": best_acc, "best_loss": best_loss,
                "rng": rngs,
                "config": configs, "classes": list(index.classes), "history": history,
                "scale_factor": index.scale_factor, "add_offset": index.add_offset,
            }
            ckpt_io.save_checkpoint(state, out / ckpt_io.LAST)
            if is_best:
                ckpt_io.save_checkpoint(state, out / ckpt_io.BEST)
            with open(out / METRICS, "a") as f:
                f.write(json.dumps(stats, sort_keys=True) + "\n")
            print(_summary(stats), flush=True)
        distributed.barrier()
    return stats


def _network(cfg: ModelConfig) -> str:
    fusion = f" with {cfg.fusion} fusion" if cfg.fusion else ""
    if cfg.spatial_weight is not None:
        fusion += f" (spatial weight {cfg.spatial_weight:g})"
    return f"{cfg.stream} {cfg.arch} network{fusion} (flow_length {cfg.flow_length}, {cfg.num_classes} classes)"


def _summary(stats: dict[str, Any]) -> str:
    line = f"epoch {stats['epoch']}: loss {stats['loss']:.4f} acc {stats['acc']:.3f}"
    if "val_acc" in stats:
        line += f" val_acc {stats['val_acc']:.3f}"
    if "val_acc_spatial" in stats:
        line += f" (spatial {stats['val_acc_spatial']:.3f}, temporal {stats['val_acc_temporal']:.3f})"
    return line + f" | {stats['samples_per_s']:.1f} samples/s, data wait {100 * stats['data_wait_frac']:.1f}%"
