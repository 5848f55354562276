"""Run parameters, one dataclass per concern.

These are recorded verbatim (``dataclasses.asdict``) in every shard's root attributes and in the
manifest, so a shard says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

FlowMethod = Literal["tvl1", "farneback"]
ENGINES = ("opencv", "torch")


@dataclass(frozen=True)
class TVL1Params:
    """``cv2.optflow.DualTVL1OpticalFlow_create`` arguments (OpenCV's defaults)."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5


@dataclass(frozen=True)
class FarnebackParams:
    """``cv2.calcOpticalFlowFarneback`` arguments (the values used by most two-stream toolkits)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2


@dataclass(frozen=True)
class FlowConfig:
    """How flow is computed and quantized."""

    method: FlowMethod = "tvl1"
    tvl1: TVL1Params = field(default_factory=TVL1Params)
    farneback: FarnebackParams = field(default_factory=FarnebackParams)
    bound: float = 20.0  # pixels; every value is clipped to [-bound, bound] before quantization
    # TV-L1's implementation: OpenCV's (CPU), or the PyTorch port (flowprep/torchflow/tvl1.py) on ``device``
    # ("cpu", "cuda", "cuda:0,1"). Farneback is always OpenCV's.
    engine: str = "opencv"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "torch" and self.method != "tvl1":
            raise ValueError("--engine torch computes TV-L1 only; Farneback runs on OpenCV")
        if self.engine == "opencv" and self.device != "cpu":
            raise ValueError(f"OpenCV's {self.method} runs on the CPU: use --engine torch for --device {self.device}")

    @property
    def device_type(self) -> str:
        return self.device.split(":", 1)[0]

    def method_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self.tvl1 if self.method == "tvl1" else self.farneback)


@dataclass(frozen=True)
class DecodeConfig:
    """How frames are decoded. ``size`` (W, H) and ``short_side`` are exclusive; neither = native size."""

    size: tuple[int, int] | None = None
    short_side: int | None = None
    frame_step: int = 1

    def __post_init__(self) -> None:
        if self.size is not None and self.short_side is not None:
            raise ValueError("give at most one of size and short_side")
        if self.frame_step < 1:
            raise ValueError(f"frame_step must be >= 1, got {self.frame_step}")


@dataclass(frozen=True)
class StorageConfig:
    """How arrays are laid out in the shards."""

    rgb: bool = True  # store JPEG-encoded RGB frames for the spatial stream
    jpeg_quality: int = 90
    compression: str = "gzip"  # HDF5 filter for flow; gzip is readable by every HDF5 reader (deflated with ISA-L)
    compression_level: int = 1  # ISA-L level, 0-3
    videos_per_shard: int = 100


def to_json(obj: Any) -> str:
    """Stable JSON for dataclasses (sorted keys), used for attributes and the manifest."""
    return json.dumps(dataclasses.asdict(obj), sort_keys=True)
