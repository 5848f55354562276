"""Pretrained backbone weights: torchvision's ImageNet weights or a local state dict file, loaded into a ResNet
backbone; for a flow stream, TSN's cross-modality init of the first convolution from the RGB one.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pickle
import sys
from collections.abc import Mapping

import torch
import torchvision
from torch import Tensor, nn


class PretrainedError(RuntimeError):
    """Pretrained weights could not be found, read or matched to the network."""


class WeightsDownloadError(PretrainedError):
    """torchvision's ImageNet weights are not in the torch hub cache and could not be downloaded (no network, a
    proxy, a full disk): the environment's failure, which ``trainer`` reports with exit status 75 (retry), not 1."""


def cross_modality_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Cross-modality init (TSN): (O, 3, k, k) -> (O, in_channels, k, k), the RGB mean in every channel."""
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB conv weight of shape (O, 3, k, k), got {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1).contiguous()



def load_pretrained(backbone: nn.Module, pretrained: str, *, arch: str, in_channels: int) -> None:
    """Load ``pretrained`` ("imagenet": torchvision's weights of ``arch``; else a state dict file) into a ResNet
    ``backbone`` whose classifier was removed; an RGB conv1 goes through :func:`cross_modality_weight` when the
    backbone takes ``in_channels`` != 3. ``PretrainedError`` (one line) when the weights cannot be had or do not fit."""
    if pretrained.lower() == "imagenet":
        _load_backbone(backbone, _imagenet_state_dict(arch), source=f"imagenet ({arch})", in_channels=in_channels)
    else:
        _load_backbone(backbone, _file_state_dict(pretrained), source=pretrained, in_channels=in_channels)


_LOAD_ERRORS = (OSError, RuntimeError, EOFError, pickle.UnpicklingError)


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    downloads = not os.path.isfile(cached)
    try:
        # Reads the torch hub cache when the file is there; downloads into it otherwise. torch.hub says
        # 'Downloading: "URL" to FILE' on stdout, which is for results here: that note goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (*_LOAD_ERRORS, http.client.HTTPException) as e:
        if downloads:  # URLError (an OSError), a hash mismatch (RuntimeError), a connection cut short
            raise WeightsDownloadError(
                f"could not download ImageNet weights {weights} for {arch} from {weights.url} ({_one_line(e)}); "
                f"place the file at {cached} (the torch hub cache, $TORCH_HOME/hub/checkpoints) and rerun, or use "
                "--pretrained PATH with a local state dict"
            ) from e
        raise PretrainedError(
            f"could not load ImageNet weights {weights} for {arch} from the torch hub cache {cached} "
            f"({_one_line(e)}); replace it with {weights.url} (or delete it to download it again), or use "
            "--pretrained PATH with a local state dict"
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
        state["conv1.weight"] = cross_modality_weight(conv1, in_channels)
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
