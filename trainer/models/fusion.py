"""Fusion of the two streams, and ``TwoStream``: both streams and a fusion trained as one network (the joint stream).

A fusion module says what it takes (``inputs``: the streams' "logits" or pooled "features") and what it
outputs (``output``: "logits" or "probabilities", which ``losses.class_log_probs`` scores alike).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.models.streams import SpatialStream, TemporalStream


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class AverageFusion(nn.Module):
    """Mean of the two streams' softmax scores -> probabilities."""

    inputs = "logits"
    output = "probabilities"

    def forward(self, spatial_logits: Tensor, temporal_logits: Tensor) -> Tensor:
        return 0.5 * (spatial_logits.softmax(dim=-1) + temporal_logits.softmax(dim=-1))


class WeightedFusion(nn.Module):
    """alpha * softmax(spatial) + (1 - alpha) * softmax(temporal) -> probabilities."""

    inputs = "logits"
    output = "probabilities"

    def __init__(self, *, alpha: float) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (the spatial weight) must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def forward(self, spatial_logits: Tensor, temporal_logits: Tensor) -> Tensor:
        return self.alpha * spatial_logits.softmax(dim=-1) + (1.0 - self.alpha) * temporal_logits.softmax(dim=-1)


class LearnedFusion(nn.Module):
    """MLP over concat(softmax(spatial), softmax(temporal)) -> logits."""

    inputs = "logits"
    output = "logits"

    def __init__(self, *, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.mlp = _mlp(2 * num_classes, hidden, num_classes)

    def forward(self, spatial_logits: Tensor, temporal_logits: Tensor) -> Tensor:
        # (B, K) + (B, K) -> (B, 2K) -> (B, K)
        return self.mlp(torch.cat([spatial_logits.softmax(dim=-1), temporal_logits.softmax(dim=-1)], dim=-1))


class FeatureFusion(nn.Module):
    """MLP over concat(pooled spatial features, pooled temporal features) -> logits."""

    inputs = "features"
    output = "logits"

    def __init__(self, *, spatial_dim: int, temporal_dim: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        self.mlp = _mlp(spatial_dim + temporal_dim, hidden, num_classes)

    def forward(self, spatial_features: Tensor, temporal_features: Tensor) -> Tensor:
        # (B, T, D) features are averaged over T first: the two streams may see different numbers of samples.
        s = spatial_features.mean(dim=1) if spatial_features.dim() == 3 else spatial_features
        t = temporal_features.mean(dim=1) if temporal_features.dim() == 3 else temporal_features
        return self.mlp(torch.cat([s, t], dim=-1))  # (B, Ds + Dt) -> (B, K)


class TwoStream(nn.Module):
    """forward(rgb, flow) -> {"spatial": logits, "temporal": logits, "fused": per fusion.output}."""

    def __init__(self, spatial: SpatialStream, temporal: TemporalStream, fusion: nn.Module) -> None:
        super().__init__()
        self.spatial = spatial
        self.temporal = temporal
        self.fusion = fusion

    def forward(self, rgb: Tensor, flow: Tensor) -> dict[str, Tensor]:
        fs, ft = self.spatial.features(rgb), self.temporal.features(flow)
        s, t = self.spatial.classify(fs), self.temporal.classify(ft)
        uses_features = getattr(self.fusion, "inputs", "logits") == "features"
        fused = self.fusion(fs, ft) if uses_features else self.fusion(s, t)
        return {"spatial": s, "temporal": t, "fused": fused}
