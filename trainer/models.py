"""Two-stream networks: a spatial (RGB) and a temporal (stacked flow) ResNet, and their fusion."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import torch
import torchvision
from torch import Tensor, nn

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class PretrainedError(RuntimeError):
    """Pretrained weights could not be found, read or matched to the network."""


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Cross-modality init (TSN): (O, 3, k, k) -> (O, in_channels, k, k), the RGB mean in every channel."""
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB conv weight of shape (O, 3, k, k), got {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1).contiguous()


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
    if pretrained is None or pretrained.lower() == "none":
        return net, feature_dim
    if pretrained.lower() == "imagenet":
        _load_backbone(net, _imagenet_state_dict(arch), source=f"imagenet ({arch})", in_channels=in_channels)
    else:
        _load_backbone(net, _file_state_dict(pretrained), source=pretrained, in_channels=in_channels)
    return net, feature_dim


_LOAD_ERRORS = (OSError, RuntimeError, EOFError, pickle.UnpicklingError)


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        # Reads the torch hub cache when the file is there; downloads into it otherwise.
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except _LOAD_ERRORS as e:
        raise PretrainedError(
            f"could not load ImageNet weights {weights} for {arch} from {cached} or {weights.url} ({_one_line(e)}); "
            f"place the file at {cached} or use --pretrained PATH with a local state dict"
        ) from e


def _file_state_dict(path: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise PretrainedError(f"--pretrained must be none, imagenet or a state dict file; {path!r} is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as e:
        raise PretrainedError(f"could not read a state dict from {path} ({_one_line(e)})") from e
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedError(
            f"{path} holds no state dict: expected a mapping of tensor names to tensors "
            f"(or one under 'model' or 'state_dict'), got {type(obj).__name__}"
        )
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):  # a whole SpatialStream/TemporalStream: keep its backbone
        state = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state.items()}
    return state


def _load_backbone(backbone: nn.Module, state: Mapping[str, Tensor], *, source: str, in_channels: int) -> None:
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is replaced by the head
    conv1 = state.get("conv1.weight")
    if in_channels != 3 and conv1 is not None and conv1.dim() == 4 and conv1.shape[1] == 3:
        state["conv1.weight"] = adapt_input_conv(conv1, in_channels)
    own = backbone.state_dict()
    shared = own.keys() & state.keys()
    found = {
        "missing": sorted(own.keys() - state.keys()),
        "unexpected": sorted(state.keys() - own.keys()),
        "mis-shaped": sorted(
            f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
            for k in shared
            if state[k].shape != own[k].shape
        ),
    }
    problems = [f"{what}: {', '.join(keys[:8])}{' ...' * (len(keys) > 8)}" for what, keys in found.items() if keys]
    if problems:
        raise PretrainedError(f"weights from {source} do not match the backbone; " + "; ".join(problems))
    backbone.load_state_dict(state, strict=True)


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
    """Flow stream with a 2L-channel conv1; RGB-pretrained conv1 weights go through adapt_input_conv.

    A state dict whose conv1 already has 2L input channels (e.g. a previous temporal run) is loaded as is.
    """
    if flow_length < 1:
        raise ValueError(f"flow_length must be >= 1, got {flow_length}")
    backbone, feature_dim = _resnet_backbone(arch, in_channels=2 * flow_length, pretrained=pretrained)
    return TemporalStream(
        backbone, feature_dim=feature_dim, num_classes=num_classes, dropout=dropout, flow_length=flow_length
    )


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
