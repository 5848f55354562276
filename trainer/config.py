"""Training run parameters, one frozen dataclass per concern.

They are stored in every checkpoint as plain dicts (``dataclasses.asdict``), so a checkpoint says how
it was made and ``trainer evaluate`` can rebuild the network from the checkpoint alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Stream = Literal["spatial", "temporal", "joint"]
STREAMS: tuple[str, ...] = ("spatial", "temporal", "joint")  # joint: TwoStream(spatial, temporal, fusion)
JOINT_FUSIONS: tuple[str, ...] = ("average", "weighted", "learned", "feature")  # trainer.models.build.build_fusion
SCHEDULES: tuple[str, ...] = ("cosine", "step")
AMP_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "none")
AMP_FP16_ON_CPU = "--amp fp16 needs a CUDA device; on the CPU use --amp bf16 (or none)"  # trainer.distributed.amp_dtype_for

# Dropout before the classifier as in the two-stream paper (0.5 spatial, 0.7 temporal in TSN's recipe).
DEFAULT_DROPOUT = {"spatial": 0.5, "temporal": 0.7}


@dataclass(frozen=True)
class ModelConfig:
    """What network is trained; everything needed to rebuild it for evaluation."""

    stream: Stream
    num_classes: int
    arch: str = "resnet50"
    flow_length: int = 10  # L: flow fields per temporal sample (2L input channels)
    dropout: float = 0.5
    pretrained: str | None = None  # None | "imagenet" | path to a state dict (used only when building fresh)
    # Joint stream only (None otherwise). dropout above is then the spatial stream's.
    fusion: str | None = None  # one of JOINT_FUSIONS
    spatial_weight: float | None = None  # alpha of the weighted fusion
    temporal_dropout: float | None = None
    spatial_init: str | None = None  # RUN_DIR or checkpoint of a spatial run (used only when building fresh)
    temporal_init: str | None = None  # RUN_DIR or checkpoint of a temporal run (likewise)

    def __post_init__(self) -> None:
        if self.stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, got {self.stream!r}")
        self._check_joint_fields()
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.flow_length < 1:
            raise ValueError(f"flow_length must be >= 1, got {self.flow_length}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def _check_joint_fields(self) -> None:
        joint_only = ("fusion", "spatial_weight", "temporal_dropout", "spatial_init", "temporal_init")
        if self.stream != "joint":
            given = [k for k in joint_only if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} apply to the joint stream only, got stream {self.stream!r}")
            return
        if self.fusion not in JOINT_FUSIONS:
            raise ValueError(f"the joint stream needs fusion in {JOINT_FUSIONS}, got {self.fusion!r}")
        if (self.fusion == "weighted") != (self.spatial_weight is not None):
            raise ValueError(f"spatial_weight is required by the weighted fusion and only by it; "
                             f"got fusion {self.fusion!r} with spatial_weight {self.spatial_weight}")
        if self.spatial_weight is not None and not 0.0 <= self.spatial_weight <= 1.0:
            raise ValueError(f"spatial_weight must be in [0, 1], got {self.spatial_weight}")
        if self.temporal_dropout is not None and not 0.0 <= self.temporal_dropout < 1.0:
            raise ValueError(f"temporal_dropout must be in [0, 1), got {self.temporal_dropout}")

    def same_network(self, other: "ModelConfig") -> bool:
        """True if a checkpoint of one continues the other: its state dict fits, and the weighted fusion's alpha
        (a constant, not in the state dict) is the same (pretrained only affects initialisation)."""
        keys = ("stream", "num_classes", "arch", "flow_length", "fusion", "spatial_weight")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


@dataclass(frozen=True)
class DataConfig:
    """Where the samples come from and how they are batched."""

    shards: str
    train_list: str
    val_list: str | None = None
    list_format: str | None = None  # of both lists; None: detected from each file (flowprep.extract.labels.LIST_KINDS)
    crop_size: int = 224
    batch_size: int = 32  # per process
    workers: int = 4  # DataLoader worker processes per process
    val_samples: int = 5  # frames / stacks per validation video (video-level accuracy, centre crop)
    flip: bool = True  # random horizontal flip in training; off for classes a mirror swaps (left/right)
    # Workers write training batches into reused shared (on CUDA pinned) buffers: trainer/data/batches.py.
    # False: torch's default collate into fresh shared memory per batch (kept for comparison).
    shared_batches: bool = True

    def __post_init__(self) -> None:
        for name in ("crop_size", "batch_size", "val_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class OptimConfig:
    """SGD with momentum and a per-iteration learning-rate schedule."""

    epochs: int = 30
    lr: float = 0.01  # for the global batch (batch_size * world_size); not rescaled automatically
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step"] = "cosine"
    warmup_epochs: float = 0.0  # linear warmup from lr * warmup_factor
    warmup_factor: float = 0.1
    step_size: int = 10  # step schedule: epochs between decays
    gamma: float = 0.1  # step schedule: decay factor
    max_grad_norm: float | None = 40.0  # TSN's clip on the global gradient norm; None disables
    # Joint stream: loss = CE(fused) + stream_loss_weight * (CE(spatial) + CE(temporal)), so that each
    # stream keeps learning on its own instead of leaning on the other through the fusion.
    stream_loss_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {self.step_size}")
        if self.stream_loss_weight < 0:
            raise ValueError(f"stream_loss_weight must be >= 0, got {self.stream_loss_weight}")


@dataclass(frozen=True)
class RunConfig:
    """Where and how the run executes."""

    out: str
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"  # CUDA: auto = bf16 where supported, else fp16; CPU: auto = none, bf16, no fp16
    channels_last: bool = True  # applied on CUDA only (faster convolutions on tensor cores)
    resume: bool = False

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")


C = TypeVar("C")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """Rebuild a config from a checkpoint dict; unknown keys (from a newer version) are an error."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; expected a subset of {sorted(names)}")
    return cls(**d)
