"""``trainer fit``: train one stream (or both jointly, with their fusion) on the shards, checkpoint every
epoch, keep the best on validation.

RUN_DIR/checkpoint.pt   latest epoch (model, optimizer, scheduler, scaler, epoch, RNG states, configs), or the
                        step where a stop signal ended the run
RUN_DIR/best.pt         best validation video accuracy so far, ties to the lower validation loss (only with a
                        validation list)
RUN_DIR/metrics.jsonl   one JSON line per epoch

``--resume`` continues bit for bit as if never interrupted, with any number of workers: each training
sample's augmentation is drawn from its own seed (run seed, epoch, dataset index), and the
checkpoint holds every process's RNG state (dropout, shuffling).

SIGTERM (SLURM preemption, scancel, docker stop, a deleted pod) and Ctrl-C (``stop``, a
``flowprep.stopping.StopFlag`` that ``trainer fit`` passes in) do not end the run where they find it: the
training loop asks the flag before each step, all processes alike, and then saves checkpoint.pt with the
batches done in the epoch and each process's running sums of it, and raises ``flowprep.stopping.Stopped``
(exit status 143 or 130). ``--resume`` continues that epoch at its next batch (the sampler's order for the
epoch skips the batches done, unread), so the run is the same as one never stopped, and the epoch's metrics
line covers the whole epoch. Validation asks the flag before each batch too: a signal there saves the epoch's
training as done (with the RNG states it ended with) and --resume validates it again from the start, so a
long validation pass does not outlast a scheduler's grace period and lose the epoch.

The joint stream trains ``TwoStream(spatial, temporal, fusion)`` on ``trainer.data.joint_datasets`` items (a flow stack
and its centre RGB frame, one crop and flip for both) with ``losses.JointLoss``; its validation accuracy,
which picks best.pt, is the fused output's, and metrics.jsonl adds each stream's (``val_acc_spatial``,
``val_acc_temporal``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator, NoReturn

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from flowprep.extract.lock import OutputLock
from flowprep.stopping import StopFlag, Stopped
from trainer import checkpoint as ckpt_io
from trainer import distributed
from trainer.config import DataConfig, ModelConfig, OptimConfig, RunConfig, from_dict, to_dict
from trainer.data.datasets import short_for_stacks
from trainer.data.errors import DataError
from trainer.data.lists import read_video_list
from trainer.data.loaders import make_train_loader, make_val_loader
from trainer.data.shards import ShardIndex, VideoRecord, index_shards
from trainer.data.transforms import BatchPreparer
from trainer.distributed import amp_dtype_for
from trainer.engine import EpochSums, evaluate, train_one_epoch
from trainer.models.build import build_model, init_streams
from trainer.models.losses import JointLoss

METRICS = "metrics.jsonl"
LOCK = "run.lock"  # held by rank 0 while fit runs


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
    if run.resume and not os.path.lexists(last):  # there but unreadable or damaged: load_checkpoint says which
        raise ckpt_io.CheckpointError(f"--resume: no checkpoint to resume at {last}")
    if not run.resume and os.path.lexists(last):
        raise ckpt_io.CheckpointError(f"{out} already holds a run ({last}); pass --resume or choose another --out")
    return out


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from the checkpoint's history (atomic), so it always matches the checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(h, sort_keys=True) + "\n" for h in history))
    os.replace(tmp, path)


def fit(
    *, model: ModelConfig, data: DataConfig, optim: OptimConfig, run: RunConfig, stop_after: int | None = None,
    show_progress: bool = True, stop: StopFlag | None = None,
) -> dict[str, Any]:
    """Train ``model.stream`` as configured; ``model.num_classes`` is replaced by the shards' class count.

    ``stop_after``: leave after this many epochs in this invocation (a time-limited job slot); the run
    continues with ``run.resume``. Returns the last epoch's metrics (``{}`` if nothing was left to do).
    ``stop``: once set (``flowprep.stopping.stop_flag()``), the run saves at the next step and raises ``Stopped``.
    """
    device = distributed.resolve_device(run.device, local_rank=distributed.local_rank_from_env())
    dist = distributed.init_distributed(device)
    try:
        with _run_dir_lock(Path(run.out), dist) as lock:
            return _fit(model, data, optim, run, device, dist, stop_after, show_progress and dist.is_main, lock, stop)
    finally:
        distributed.cleanup()


@contextlib.contextmanager
def _run_dir_lock(out: Path, dist: distributed.DistInfo) -> Iterator[OutputLock | None]:
    """One run per RUN_DIR: rank 0 holds RUN_DIR/run.lock (flowprep's output lock), so a second ``fit`` into
    it, or a ``--resume`` while the first still trains, is refused at once (BusyError, naming the holder)
    instead of both writing checkpoint.pt and metrics.jsonl; the lock of a run that died is taken over."""
    if not dist.is_main:
        yield None
        return
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out / LOCK) as lock:
        for debris in out.glob(".*.tmp*"):  # a checkpoint being written when a run was killed: ours now
            debris.unlink(missing_ok=True)
        yield lock


@dataclasses.dataclass
class _Progress:
    """What the checkpoint carries from one epoch to the next, besides the weights and the RNG states."""

    epoch: int = 0  # epochs done
    best_acc: float = -1.0
    best_loss: float = math.inf  # the validation loss of best_acc's epoch
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    sums: EpochSums = dataclasses.field(default_factory=EpochSums)  # the epoch in progress, on this process

    def is_best(self, acc: float, loss: float) -> bool:
        """Record a validation result; True if it is the best so far.

        Ties on accuracy are common on a small validation list (16 videos: steps of 1/16, often 1.0 for many
        epochs); among them the lower validation loss wins, so a later, settled epoch beats the first lucky one.
        """
        best = acc > self.best_acc or (acc == self.best_acc and loss < self.best_loss)
        if best:
            self.best_acc, self.best_loss = acc, loss
        return best


def _fit(
    model_cfg: ModelConfig, data: DataConfig, optim: OptimConfig, run: RunConfig, device: torch.device,
    dist: distributed.DistInfo, stop_after: int | None, show_progress: bool, lock: OutputLock | None,
    stop: StopFlag | None,
) -> dict[str, Any]:
    out = _check_run_dir(run)
    seed_everything(run.seed + dist.rank)
    index, train_records, val_records = _read_data(model_cfg.stream, data)
    if model_cfg.stream != "spatial" and dist.is_main:  # stacks of L fields: say once if some videos are shorter
        for role, records in (("training", train_records), ("validation", val_records)):
            short = short_for_stacks(records, model_cfg.flow_length, role)
            if short:
                print(short, file=sys.stderr, flush=True)
    model_cfg = dataclasses.replace(model_cfg, num_classes=len(index.classes))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 parts (--amp none)
    resumed = _load_resumed(out / ckpt_io.LAST, model_cfg) if run.resume else None
    if resumed is not None and resumed["epoch"] >= optim.epochs:
        # Nothing left to train (a rerun of a finished job): no network, loaders or optimizer to build, which take
        # seconds; metrics.jsonl becomes exactly the checkpoint's epochs, as below.
        if dist.is_main:
            _write_metrics(out / METRICS, list(resumed["history"]))
        return {}
    prepare = BatchPreparer.for_shards(index, device=device, stream=model_cfg.stream,
                                       amp_dtype=amp_dtype_for(run.amp, device),
                                       channels_last=run.channels_last and device.type == "cuda")
    net = _build_network(model_cfg, fresh=resumed is None, classes=list(index.classes), prepare=prepare)
    ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) if dist.enabled else net

    # One stored frame size for all videos: training crops are made on the device, batched (BatchPreparer).
    frame_size = (index.height, index.width) if index.height else None
    train_loader, sampler = make_train_loader(model_cfg, data, train_records, frame_size=frame_size, dist=dist,
                                              seed=run.seed, device=device)
    val_loader = (make_val_loader(model_cfg, data, val_records, dist=dist, pin_memory=device.type == "cuda")
                  if val_records else None)
    capped = val_loader.dataset.capped("--val-samples", "validation") if val_loader is not None else None
    if capped and dist.is_main:
        print(capped, file=sys.stderr, flush=True)

    optimizer = torch.optim.SGD(ddp.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    steps = len(train_loader)  # per epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, steps))
    scaler = torch.amp.GradScaler(device.type, enabled=prepare.amp_dtype == torch.float16)
    criterion = (JointLoss(fused_output=net.fusion.output, stream_weight=optim.stream_loss_weight)
                 if model_cfg.stream == "joint" else nn.CrossEntropyLoss())
    progress = _Progress()
    if resumed is not None:
        progress = _restore(resumed, out / ckpt_io.LAST, net, optimizer, scheduler, scaler, dist)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_metrics(out / METRICS, progress.history)  # fresh run: empty; resumed: exactly the checkpoint's epochs

    configs = {"model": to_dict(model_cfg), "data": to_dict(data), "optim": to_dict(optim), "run": to_dict(run)}
    # The videos the network saw and was chosen on: trainer evaluate refuses a test list that holds any of them.
    videos = {"train": sorted({r.video_id for r in train_records}), "val": sorted({r.video_id for r in val_records})}
    end_epoch = optim.epochs if stop_after is None else min(optim.epochs, progress.epoch + stop_after)
    stats: dict[str, Any] = {}
    for epoch in range(progress.epoch, end_epoch):
        sampler.set_epoch(epoch, first_batch=progress.sums.steps)  # a resumed epoch goes on after its last step
        stats = train_one_epoch(ddp, criterion, optimizer, scheduler, scaler, train_loader, prepare, epoch + 1,
                                max_grad_norm=optim.max_grad_norm, show_progress=show_progress, sums=progress.sums,
                                stop=stop)
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "config": configs, "classes": list(index.classes), "videos": videos}
        if stats is None:  # a stop signal: every process stopped after the same step
            _stop(out, state, progress, dist, lock, stop, f"at epoch {epoch + 1}, step {progress.sums.steps}/{steps}")
        stats = {"epoch": epoch + 1, **stats, **_sampling_stats(stats.pop("samples"), sampler)}
        is_best = False
        if val_loader is not None:
            trained = ckpt_io.rng_state()  # validation draws a loader seed: a stop in it saves the state before
            val = _validate(net, val_loader, prepare, num_classes=model_cfg.num_classes, stop=stop)
            if val is None:  # a stop signal during validation: saved as the epoch's last step, validated on --resume
                ckpt_io.set_rng_state(trained)
                _stop(out, state, progress, dist, lock, stop, f"in the validation of epoch {epoch + 1}")
            stats.update(val)
            is_best = progress.is_best(val["val_acc"], val["val_loss"])
        progress.epoch, progress.sums = epoch + 1, EpochSums()
        progress.history.append(stats)
        if lock is not None:
            lock.check()  # a run whose lock was taken over (its host went silent) must not write on
        _save_epoch(out, state, progress, stats, is_best=is_best, dist=dist)
    return stats


def _read_data(stream: str, data: DataConfig) -> tuple[ShardIndex, list[VideoRecord], list[VideoRecord]]:
    """The shards' index and the training and validation videos (none without a validation list)."""
    index = index_shards(data.shards)
    train_records = read_video_list(data.train_list, index, role="train", kind=data.list_format)
    val_records = read_video_list(data.val_list, index, role="val", kind=data.list_format) if data.val_list else []
    if stream in ("spatial", "joint") and not index.has_rgb:
        raise DataError(f"the {stream} stream needs RGB frames, but the shards in {data.shards} were made "
                        "with --no-rgb")
    shared = {r.video_id for r in train_records} & {r.video_id for r in val_records}
    if shared:
        raise DataError(f"--val-list {data.val_list} shares {len(shared)} videos with --train-list {data.train_list} "
                        f"(e.g. {min(shared)}); the validation videos that choose best.pt must be held out of training")
    return index, train_records, val_records


def _load_resumed(path: Path, model_cfg: ModelConfig) -> dict[str, Any]:
    """The checkpoint to resume, if it holds the network ``model_cfg`` asks for."""
    resumed = ckpt_io.load_checkpoint(path)
    saved = from_dict(ModelConfig, resumed["config"]["model"])
    if not saved.same_network(model_cfg):
        raise ckpt_io.CheckpointError(
            f"--resume: {path} holds a {_network(saved)}; the options ask for {_network(model_cfg)}"
        )
    return resumed


def _build_network(model_cfg: ModelConfig, *, fresh: bool, classes: list[str], prepare: BatchPreparer) -> nn.Module:
    """The network on the device, in the memory format the batches come in. A fresh run starts from
    ``--pretrained`` and, for the joint stream, ``--spatial-init`` / ``--temporal-init``; a resumed run's
    weights come from its checkpoint (``_restore``)."""
    net = build_model(model_cfg, pretrained=model_cfg.pretrained if fresh else None)
    if fresh and model_cfg.stream == "joint":
        init_streams(net, model_cfg, classes=classes)  # --spatial-init / --temporal-init, if given
    net.to(prepare.device, memory_format=torch.channels_last if prepare.channels_last else torch.preserve_format)
    return net


def _restore(resumed: dict[str, Any], path: Path, net: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
             dist: distributed.DistInfo) -> _Progress:
    """Load a checkpoint's weights, optimizer, scheduler, scaler and this process's RNG states; its progress (with
    this process's sums of an epoch stopped part-way)."""
    ckpt_io.load_weights(net, resumed, path)
    optimizer.load_state_dict(resumed["optimizer"])
    scheduler.load_state_dict(resumed["scheduler"])
    scaler.load_state_dict(resumed["scaler"])
    progress = _Progress(epoch=resumed["epoch"], best_acc=resumed["best_acc"], history=list(resumed["history"]),
                         best_loss=resumed.get("best_loss", math.inf))  # absent from checkpoints before it was kept
    rngs, partial = resumed["rng"], resumed.get("partial_epoch")  # partial: None after a whole epoch
    if len(rngs) == dist.world_size:
        ckpt_io.set_rng_state(rngs[dist.rank])
        if partial:
            progress.sums = EpochSums(**partial[dist.rank])
        return progress
    if partial:  # the stopped epoch's steps on every process, its sums on rank 0 (the metrics count every sample)
        total = {k: sum(p[k] for p in partial) for k in partial[0]} if dist.is_main else {}
        progress.sums = EpochSums(**{**total, "steps": partial[0]["steps"]})
    if dist.is_main:
        warnings.warn(f"--resume: the checkpoint holds RNG states of {len(rngs)} processes, this run has "
                      f"{dist.world_size}: continuing from freshly seeded RNGs (not bit-exact"
                      f"{'; the rest of the stopped epoch comes from the new split of its samples' if partial else ''})",
                      stacklevel=3)
    return progress


def _sampling_stats(samples: int, sampler: DistributedSampler) -> dict[str, Any]:
    """Each rank's sample count, and how many samples two ranks shared (DistributedSampler's padding)."""
    samples_per_rank = distributed.all_gather_object(samples)
    per_rank = distributed.all_gather_object(list(iter(sampler)))  # disjoint unless DistributedSampler had to pad
    return {"samples_per_rank": samples_per_rank,
            "overlap_samples": sum(len(r) for r in per_rank) - len(set().union(*map(set, per_rank)))}


def _validate(net: nn.Module, loader: DataLoader, prepare: BatchPreparer, *, num_classes: int,
              stop: StopFlag | None) -> dict[str, Any] | None:
    """The epoch's validation metrics (``val_acc``: video accuracy; the joint stream's is the fused output's); None
    when a stop signal came first."""
    # The unwrapped network with rank 0's buffers: exactly the weights the checkpoint will hold, and no
    # DDP collectives inside forward (processes may get different numbers of validation batches).
    distributed.broadcast_buffers(net)
    val = evaluate(net, loader, prepare, num_classes=num_classes, stop=stop)
    if val is None:
        return None
    stats = {"val_loss": val["loss"], "val_clip_acc": val["clip_acc"], "val_acc": val["video_acc"]}
    if prepare.stream == "joint":
        stats.update(val_acc_spatial=val["video_acc_spatial"], val_acc_temporal=val["video_acc_temporal"])
    return stats


def _with_progress(state: dict[str, Any], progress: _Progress, rngs: list[Any], *,
                   partial: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A checkpoint: ``state`` (weights, optimizer, configs) with the run's progress and every process's RNG
    state; ``partial``: each process's sums of an epoch stopped part-way, None after a whole epoch."""
    return {**state, "epoch": progress.epoch, "best_acc": progress.best_acc, "best_loss": progress.best_loss,
            "rng": rngs, "history": progress.history, "partial_epoch": partial}


def _stop(out: Path, state: dict[str, Any], progress: _Progress, dist: distributed.DistInfo,
          lock: OutputLock | None, stop: StopFlag | None, where: str) -> NoReturn:
    """Save the run where a stop signal ended it (``_save_stopped``) and raise ``Stopped`` with its exit code."""
    assert stop is not None and stop.signum is not None
    stop.raise_if_leaving()  # a second Ctrl-C (one a finalizer dropped too): leave without saving
    if lock is not None:
        lock.check()
    _save_stopped(out, state, progress, dist)
    raise Stopped(f"stopped by {stop.name} {where}; checkpoint saved: rerun with --resume to continue",
                  exit_code=stop.exit_code)


def _save_stopped(out: Path, state: dict[str, Any], progress: _Progress, dist: distributed.DistInfo) -> None:
    """checkpoint.pt at the step where a stop signal ended the run: each process's sums of the epoch in progress
    besides its RNG states (rank 0 writes). best.pt and metrics.jsonl stay as the last whole epoch left them."""
    rngs = distributed.all_gather_object(ckpt_io.rng_state())
    partial = distributed.all_gather_object(dataclasses.asdict(progress.sums))
    if dist.is_main:
        ckpt_io.save_checkpoint(_with_progress(state, progress, rngs, partial=partial), out / ckpt_io.LAST)
    distributed.barrier()


def _save_epoch(out: Path, state: dict[str, Any], progress: _Progress, stats: dict[str, Any], *, is_best: bool,
                dist: distributed.DistInfo) -> None:
    """best.pt, checkpoint.pt, the epoch's line of metrics.jsonl and its summary; rank 0 writes.

    checkpoint.pt is the commit point, so it goes after best.pt: a run that dies between the two (a full
    disk) redoes the epoch on --resume, and best.pt is never older than the checkpoint says. metrics.jsonl
    is rewritten from the checkpoint's history on --resume."""
    rngs = distributed.all_gather_object(ckpt_io.rng_state())
    if dist.is_main:
        state = _with_progress(state, progress, rngs, partial=None)
        # best.pt first (see above); one serialization for both files
        ckpt_io.save_checkpoint(state, *([out / ckpt_io.BEST] if is_best else []), out / ckpt_io.LAST)
        with open(out / METRICS, "a") as f:
            f.write(json.dumps(stats, sort_keys=True) + "\n")
        print(_summary(stats), flush=True)
    distributed.barrier()


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
