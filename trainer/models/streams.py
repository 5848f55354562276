"""The two streams: a spatial (RGB) and a temporal (stacked flow) ResNet with a dropout + linear head, and
their builders (``spatial_stream`` / ``temporal_stream``: ResNet arch, pretrained weights)."""

from __future__ import annotations

import os

import torchvision
from torch import Tensor, nn

from trainer.models.pretrained import load_pretrained

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

class _Stream(nn.Module):
    def __init__(
        self, backbone: nn.Module, *, in_channels: int, feature_dim: int, num_classes: int, dropout: float
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is not None and conv.in_channels != in_channels:
            raise ValueError(
                f"{type(self).__name__} expects a backbone with {in_channels} input channels, "
                f"its first conv has {conv.in_channels}"
            )
        self.in_channels = in_channels
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.backbone = backbone
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(feature_dim, num_classes)
        # A small new head on top of (pretrained) features, as in TSN: starts near uniform scores.
        nn.init.normal_(self.fc.weight, 0.0, 0.001)
        nn.init.zeros_(self.fc.bias)

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D); (B, T, C, H, W) -> (B, T, D)."""
        if x.dim() not in (4, 5) or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects (B, {self.in_channels}, H, W) or (B, T, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if x.dim() == 4:
            return self.backbone(x)
        b, t = x.shape[:2]
        # (B, T, C, H, W) -> (B*T, C, H, W) -> (B*T, D) -> (B, T, D)
        return self.backbone(x.flatten(0, 1)).reshape(b, t, -1)

    def classify(self, features: Tensor) -> Tensor:
        """Head on features: (B, D) -> (B, K); (B, T, D) -> (B, K), logits averaged over T."""
        logits = self.fc(self.dropout(features))
        return logits.mean(dim=1) if logits.dim() == 3 else logits

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


class SpatialStream(_Stream):
    """ResNet over single RGB frames: (B, 3, H, W) or (B, T, 3, H, W) -> logits (B, num_classes)."""

    def __init__(self, backbone: nn.Module, *, feature_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__(backbone, in_channels=3, feature_dim=feature_dim, num_classes=num_classes, dropout=dropout)


class TemporalStream(_Stream):
    """ResNet over L stacked flow fields [u0, v0, u1, v1, ...]: (B, 2L, H, W) or (B, T, 2L, H, W) -> logits."""

    def __init__(
        self, backbone: nn.Module, *, feature_dim: int, num_classes: int, dropout: float, flow_length: int = 10
    ) -> None:
        if flow_length < 1:
            raise ValueError(f"flow_length must be >= 1, got {flow_length}")
        super().__init__(
            backbone, in_channels=2 * flow_length, feature_dim=feature_dim, num_classes=num_classes, dropout=dropout
        )
        self.flow_length = flow_length


def _resnet_backbone(arch: str, *, in_channels: int, pretrained: str | None) -> tuple[nn.Module, int]:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")
    net = torchvision.models.get_model(arch, weights=None)
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()  # keep the global average pool: the backbone returns (N, feature_dim)
    if in_channels != 3:
        old = net.conv1
        net.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's ResNet init
    pretrained = None if pretrained is None else os.fspath(pretrained)  # a pathlib.Path works too
    if pretrained is not None and pretrained.lower() != "none":
        load_pretrained(net, pretrained, arch=arch, in_channels=in_channels)
    return net, feature_dim


def spatial_stream(
    *, arch: str = "resnet50", num_classes: int, dropout: float = 0.5, pretrained: str | None = None
) -> SpatialStream:
    """RGB stream. pretrained: None/"none", "imagenet" (torchvision weights) or a path to a ResNet state dict."""
    backbone, feature_dim = _resnet_backbone(arch, in_channels=3, pretrained=pretrained)
    return SpatialStream(backbone, feature_dim=feature_dim, num_classes=num_classes, dropout=dropout)


def temporal_stream(
    *, arch: str = "resnet50", num_classes: int, flow_length: int = 10, dropout: float = 0.7,
    pretrained: str | None = None,
) -> TemporalStream:
    """Flow stream with a 2L-channel conv1; RGB-pretrained conv1 weights go through
    ``pretrained.cross_modality_weight``.

    A state dict whose conv1 already has 2L input channels (e.g. a previous temporal run) is loaded as is.
    """
    if flow_length < 1:
        raise ValueError(f"flow_length must be >= 1, got {flow_length}")
    backbone, feature_dim = _resnet_backbone(arch, in_channels=2 * flow_length, pretrained=pretrained)
    return TemporalStream(
        backbone, feature_dim=feature_dim, num_classes=num_classes, dropout=dropout, flow_length=flow_length
    )
