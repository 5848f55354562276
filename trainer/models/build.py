"""The network a ``ModelConfig`` describes: one stream, or ``TwoStream(spatial, temporal, fusion)`` for the
joint stream, plus the joint stream's start from separately trained stream runs (``--spatial-init`` /
``--temporal-init``).
"""

from __future__ import annotations

from torch import nn

from trainer import checkpoint as ckpt_io
from trainer.config import JOINT_FUSIONS, ModelConfig
from trainer.models.fusion import AverageFusion, FeatureFusion, LearnedFusion, TwoStream, WeightedFusion
from trainer.models.streams import spatial_stream, temporal_stream


def build_fusion(
    kind: str, *, num_classes: int, spatial_dim: int, temporal_dim: int, alpha: float | None = None,
) -> nn.Module:
    """One of trainer.models.fusion's modules by name (``JOINT_FUSIONS``); ``alpha`` for ``weighted`` only."""
    if kind == "average":
        return AverageFusion()
    if kind == "weighted":
        if alpha is None:
            raise ValueError("the weighted fusion needs alpha (the spatial weight), got None")
        return WeightedFusion(alpha=alpha)
    if kind == "learned":
        return LearnedFusion(num_classes=num_classes)
    if kind == "feature":
        return FeatureFusion(spatial_dim=spatial_dim, temporal_dim=temporal_dim, num_classes=num_classes)
    raise ValueError(f"fusion must be one of {JOINT_FUSIONS}, got {kind!r}")


def build_model(cfg: ModelConfig, *, pretrained: str | None) -> nn.Module:
    """A fresh network for ``cfg``; ``pretrained`` (None, "imagenet" or a state dict file) initialises the
    backbone(s). Joint: a stream with a ``*_init`` run is built without ``pretrained`` (``init_streams``
    replaces its weights anyway, and ImageNet weights need not be at hand for it)."""
    if cfg.stream == "spatial":
        return spatial_stream(arch=cfg.arch, num_classes=cfg.num_classes, dropout=cfg.dropout, pretrained=pretrained)
    if cfg.stream == "temporal":
        return temporal_stream(arch=cfg.arch, num_classes=cfg.num_classes, flow_length=cfg.flow_length,
                               dropout=cfg.dropout, pretrained=pretrained)
    spatial = spatial_stream(arch=cfg.arch, num_classes=cfg.num_classes, dropout=cfg.dropout,
                             pretrained=None if cfg.spatial_init else pretrained)
    temporal = temporal_stream(
        arch=cfg.arch, num_classes=cfg.num_classes, flow_length=cfg.flow_length,
        dropout=cfg.dropout if cfg.temporal_dropout is None else cfg.temporal_dropout,
        pretrained=None if cfg.temporal_init else pretrained,
    )
    assert cfg.fusion is not None, "ModelConfig checks that a joint stream names its fusion"
    fusion = build_fusion(cfg.fusion, num_classes=cfg.num_classes, spatial_dim=spatial.feature_dim,
                          temporal_dim=temporal.feature_dim, alpha=cfg.spatial_weight)
    return TwoStream(spatial, temporal, fusion)


def init_streams(net: TwoStream, cfg: ModelConfig, *, classes: list[str]) -> dict[str, str]:
    """Load ``cfg.spatial_init`` / ``cfg.temporal_init`` into the matching sub-network of ``net``.

    Each is a RUN_DIR (its best.pt, else checkpoint.pt) or a checkpoint file of a separately trained
    stream; its stream, arch, flow length (temporal) and classes must match, else a one-line
    ``CheckpointError``. Returns {stream: checkpoint file} of what was loaded.
    """
    loaded = {}
    for stream, source in (("spatial", cfg.spatial_init), ("temporal", cfg.temporal_init)):
        if source is None:
            continue
        file = ckpt_io.resolve_checkpoint(source)
        ckpt = ckpt_io.load_checkpoint(file)
        ckpt_io.check_compatible(ckpt, path=file, stream=stream, arch=cfg.arch, classes=classes,
                                 flow_length=cfg.flow_length if stream == "temporal" else None)
        ckpt_io.load_weights(getattr(net, stream), ckpt, file)
        loaded[stream] = str(file)
    return loaded
