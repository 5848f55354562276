"""Devices and processes: the device a run uses and its mixed precision, and the process group of ``torchrun``
(one process per GPU, or several CPU processes with gloo).

Single-process runs never touch ``torch.distributed``; every helper here degrades to a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainer.config import AMP_FP16_ON_CPU


class DeviceError(RuntimeError):
    """The requested device, or the memory a run needs on it or its host, is not available on this machine."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, *, local_rank: int = 0) -> torch.device:
    """``auto`` = CUDA when available; under torchrun each process takes GPU ``LOCAL_RANK``."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for, but torch sees no CUDA device on this machine")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def amp_dtype_for(mode: str, device: torch.device) -> torch.dtype | None:
    """The forward pass's autocast dtype, None for float32.

    On CUDA ``auto`` prefers bf16 (no loss scaling needed) where supported, else fp16. On the CPU ``auto`` is
    float32 (the runs stay bit-exact, and bf16 is only fast on CPUs with AVX-512 BF16 or AMX), ``bf16`` is
    ``torch.autocast("cpu", dtype=torch.bfloat16)``, and ``fp16`` is refused (ValueError; ``trainer fit`` says so
    as a usage error before this): torch's CPU autocast in fp16 covers few ops and is slow, and there is no
    loss scaling on the CPU to go with it.
    """
    if mode == "none":
        return None
    if device.type != "cuda":
        if mode == "fp16":
            raise ValueError(AMP_FP16_ON_CPU)
        return torch.bfloat16 if mode == "bf16" else None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else do nothing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if device.type == "cuda":
            kwargs["device_id"] = device  # binds NCCL to this GPU up front (no guessing in barrier())
        dist.init_process_group(**kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def local_rank_from_env() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes in place (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def max_over_processes(value: int, *, device: torch.device) -> int:
    """The largest ``value`` of all processes: one all-reduce of one number (``value`` when not distributed).
    ``trainer fit`` asks it once per training step; on gloo loopback, 2 processes on 2 busy CPU cores, a call
    took about 1.2 ms (a tiny resnet18 step there takes tens of ms, a GPU step of resnet50 at batch 32 ~100 ms)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_buffers(module: torch.nn.Module, *, src: int = 0) -> None:
    """Give every process rank ``src``'s buffers (BatchNorm running statistics drift apart per rank)."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, src=src)


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, *, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
