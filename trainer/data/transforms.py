"""Sample transforms: flips of uint8 samples, and the device side (dequantize, normalise, batched crops).

Division of labour. A dataset item stays uint8 all the way to the device (4x less to copy than float32):
the dataset picks a crop box (``trainer.data.crops``), crops and resizes to ``crop_size`` with OpenCV and flips, all on uint8, and
returns the resize factors ``(sx, sy) = (crop_size / crop_w, crop_size / crop_h)``. ``prepare_batch`` then
runs on the device: flow is dequantized with the shard's own ``scale_factor``/``add_offset`` (never an
assumed bound), u is multiplied by sx and v by sy because a displacement of d pixels in the stored frame is
d * s pixels in the resized crop, and the result is divided by ``FLOW_NORM_PX``.

Flow normalisation: ``f_in = f_px * s / FLOW_NORM_PX`` with ``FLOW_NORM_PX = 20`` pixels, a fixed physical
unit rather than the shard's bound B, so that one trained model sees the same numbers for the same motion
whichever B the shards were quantized with; with the usual B = 20 the quantization range maps onto
[-1, 1] (before the crop's resize factor). RGB: ``/255`` then ImageNet mean/std (the backbones are
ImageNet-pretrained).

Flip. ``q = round((f + B) * 255 / (2B))`` makes ``255 - q`` the exact code of ``-f``
(``(255 - q) * 2B/255 - B = -(q * 2B/255 - B)``), so a horizontal flip is exact in uint8: mirror the
columns and replace every u channel (even channels of ``[u0, v0, u1, v1, ...]``) by ``255 - u``.

Training crops on the device. When every video has the same stored size (``frame_size``), the training
datasets skip the CPU crop/resize/flip: an item is a fixed-size window of the frame(s) that holds every
box the crop policy can draw (``crops.train_window``), and ``TRAIN_PARAMS`` = (y0, x0, h, w, flip, size) of the
box drawn, relative to that window, from the same RNG draws as the CPU path (so a resumed run crops
the same). ``prepare_train_batch`` then crops and resizes the whole batch in one
``torchvision.ops.roi_align`` call (aligned=True, one sample per output pixel: the same half-pixel
bilinear sampling as ``cv2.resize``), mirrors the flagged samples, negates their u at every time step,
multiplies u by sx and v by sy and normalises as ``prepare_batch``.

``BatchPreparer`` does all of this for a loader's batch, built once per run (``trainer fit``, ``trainer
evaluate``) with the shards' factors (``ShardIndex.scale_factor``/``add_offset``, from
``flowprep.format.scale_and_offset``) and handed to the loops of ``trainer.engine``: either path above,
the joint stream's two inputs, the memory format and the mixed precision the network runs in.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from flowprep import format as fmt

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)

FLOW_NORM_PX = 20.0  # pixels of (resized) motion that map to 1.0 at the network input; see module docstring
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_PARAMS = 6  # per-sample device-crop parameters: (y0, x0, h, w, flip, size), see prepare_train_batch
RESAMPLERS = ("roi_align", "grid_sample")

Inputs = Union[Tensor, tuple[Tensor, Tensor]]  # one stream's batch, or the joint stream's (rgb, flow)


def hflip_flow_uint8(q: ArrayOrTensor) -> ArrayOrTensor:
    """Mirror quantized flow left-right and negate u at EVERY time step (u -> 255 - u, exact).

    ``q``: uint8 with channels on axis -3 interleaved as [u0, v0, u1, v1, ...], e.g. (2L, H, W),
    (B, 2L, H, W) or (L, 2, H, W): even channel indices are u in all of these layouts.
    """
    if q.ndim < 3 or q.shape[-3] % 2 or q.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"expected uint8 flow (..., 2L, H, W) with u,v interleaved, got {q.dtype} {tuple(q.shape)}")
    if isinstance(q, Tensor):
        out = torch.flip(q, dims=(-1,))
    else:
        out = q[..., ::-1].copy()
    out[..., 0::2, :, :] = 255 - out[..., 0::2, :, :]
    return out


def hflip_rgb(x: np.ndarray) -> np.ndarray:
    """Mirror a (..., H, W) image left-right (a contiguous copy)."""
    return np.ascontiguousarray(x[..., ::-1])


def _normalize_rgb(x: Tensor) -> Tensor:
    """(..., 3, H, W) float in [0, 255] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1) * 255
    return (x - mean) / std


def prepare_batch(
    x: Tensor, scale: Tensor, *, stream: str, scale_factor: float, add_offset: float,
    flow_norm: float = FLOW_NORM_PX,
) -> Tensor:
    """uint8 batch on the device -> float32 network input (see the module docstring for the maths).

    ``x``: (..., C, S, S) uint8 with C = 3 (spatial) or 2L (temporal); ``scale``: (..., 2) float (sx, sy)
    per sample, same leading shape, e.g. (B,) for training batches and (B, N) for video evaluation.
    """
    if x.dtype != torch.uint8 or x.ndim < 3:
        raise ValueError(f"expected a uint8 batch (..., C, H, W), got {x.dtype} {tuple(x.shape)}")
    if stream == "spatial":
        if x.shape[-3] != 3:
            raise ValueError(f"spatial stream expects 3 channels, got {tuple(x.shape)}")
        return _normalize_rgb(x.float())
    if stream != "temporal":
        raise ValueError(f"stream must be 'spatial' or 'temporal', got {stream!r}")
    c = x.shape[-3]
    if c % 2 or tuple(scale.shape) != (*x.shape[:-3], 2):
        raise ValueError(
            f"temporal stream expects x (..., 2L, H, W) and scale (..., 2), got {tuple(x.shape)} and {tuple(scale.shape)}"
        )
    f = fmt.dequantize(x, scale_factor, add_offset)  # float32 pixels of the stored frame
    f = f.unflatten(-3, (c // 2, 2))  # (..., L, 2, S, S)
    s = scale.to(device=x.device, dtype=f.dtype)[..., None, :, None, None]  # (..., 1, 2, 1, 1): (sx, sy)
    return (f * (s / flow_norm)).flatten(-4, -3)


def _resample(x: Tensor, params: Tensor, size: int, method: str) -> Tensor:
    """(B, C, H, W) float -> (B, C, size, size): each sample's box resized bilinearly with half-pixel
    centres (as cv2.resize INTER_LINEAR), flagged samples mirrored."""
    b, _, height, width = x.shape
    y0, x0, h, w, flip = params[:, :5].unbind(1)
    if method == "roi_align":
        idx = torch.arange(b, device=x.device, dtype=x.dtype)
        boxes = torch.stack([idx, x0, y0, x0 + w, y0 + h], 1).to(x.dtype)
        out = roi_align(x, boxes, (size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)
        return torch.where(flip.bool()[:, None, None, None], out.flip(-1), out)
    if method == "grid_sample":
        # Normalised coordinates (align_corners=False): output column j samples x0 + (j + 0.5) w/size - 0.5;
        # a negative x scale mirrors the crop for free.
        sign = 1 - 2 * flip
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2] = sign * w / width, (2 * x0 + w) / width - 1
        theta[:, 1, 1], theta[:, 1, 2] = h / height, (2 * y0 + h) / height - 1
        grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    raise ValueError(f"method must be one of {RESAMPLERS}, got {method!r}")


def prepare_train_batch(
    x: Tensor, params: Tensor, *, stream: str, scale_factor: float, add_offset: float,
    flow_norm: float = FLOW_NORM_PX, method: str = "roi_align",
) -> Tensor:
    """Uncropped uint8 training batch on the device -> float32 network input (B, C, S, S).

    ``x``: (B, C, H, W) uint8 windows, C = 3 or 2L; ``params``: (B, 6) = (y0, x0, h, w, flip, S) per
    sample, boxes in window pixels, S the same for all. Crop + resize + flip happen here, then the
    flow scaling (u * S/w, v * S/h, flipped u negated) and normalisation of ``prepare_batch``.
    ``method``: ``roi_align`` (default: measured faster on CPU) or ``grid_sample`` (same sampling).
    """
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected a uint8 batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if tuple(params.shape) != (x.shape[0], TRAIN_PARAMS):
        raise ValueError(f"expected params (B, {TRAIN_PARAMS}) = (y0, x0, h, w, flip, size) for B = {x.shape[0]}, "
                         f"got {tuple(params.shape)}")
    sizes = params[:, 5].unique()
    if len(sizes) != 1:
        raise ValueError(f"expected one crop size per batch, got {sizes.tolist()}")
    size = int(sizes.item())
    p = params.to(device=x.device, dtype=torch.float32)
    if stream == "spatial":
        if x.shape[1] != 3:
            raise ValueError(f"spatial stream expects 3 channels, got {tuple(x.shape)}")
        return _normalize_rgb(_resample(x.float(), p, size, method))
    if stream != "temporal":
        raise ValueError(f"stream must be 'spatial' or 'temporal', got {stream!r}")
    if x.shape[1] % 2:
        raise ValueError(f"temporal stream expects 2L channels (u, v interleaved), got {tuple(x.shape)}")
    # Dequantization is affine, so resampling the codes and then dequantizing is exact (no rounding here); the
    # dequantization (fmt.dequantize: q * scale_factor + add_offset) is folded into the flow scaling k below.
    out = _resample(x.float(), p, size, method).unflatten(1, (x.shape[1] // 2, 2))  # (B, L, 2, S, S)
    sx = (1 - 2 * p[:, 4]) * size / p[:, 3]  # a flip negates u at every time step
    sy = size / p[:, 2]
    k = torch.stack([sx, sy], 1)[:, None, :, None, None] / flow_norm  # (B, 1, 2, 1, 1)
    return (out * (scale_factor * k) + add_offset * k).flatten(1, 2)


@dataclass(frozen=True)
class BatchPreparer:
    """A loader's uint8 batch -> the network's input on ``device``: dequantized with the shards' factors,
    cropped and flipped (training windows), normalised float32, channels-last if asked; and the precision the
    network runs in (``autocast``). One per run, built by ``for_shards`` and passed to the loops.
    """

    device: torch.device
    stream: str  # spatial, temporal, or joint (its batches carry (rgb, flow) sharing one crop)
    scale_factor: float  # the shards' flow quantization: f = q * scale_factor + add_offset (flowprep.format)
    add_offset: float
    amp_dtype: torch.dtype | None = None  # mixed precision of the forward pass; None: float32
    channels_last: bool = False

    @classmethod
    def for_shards(cls, index, *, device: torch.device, stream: str, amp_dtype: torch.dtype | None = None,
                   channels_last: bool = False) -> "BatchPreparer":
        """The preparer of ``index``'s batches (a ``trainer.data.shards.ShardIndex``: its factors)."""
        return cls(device=device, stream=stream, scale_factor=index.scale_factor, add_offset=index.add_offset,
                   amp_dtype=amp_dtype, channels_last=channels_last)

    def __call__(self, x: Tensor | list[Tensor] | tuple[Tensor, Tensor], scale: Tensor) -> Inputs:
        """``x`` (B, C, ., .) uint8 (a list or tuple (rgb, flow) for the joint stream) and ``scale``: (B, 2)
        resize factors of crops made on the CPU, or (B, TRAIN_PARAMS) of training windows to crop here."""
        if self.stream == "joint":
            # (rgb, flow) cut with the same box and flip: each half prepared as its own stream, with the shared scale.
            rgb, flow = x
            return self._one_stream(rgb, scale, "spatial"), self._one_stream(flow, scale, "temporal")
        return self._one_stream(x, scale, self.stream)  # type: ignore[arg-type]

    def _one_stream(self, x: Tensor, scale: Tensor, stream: str) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        factors = dict(stream=stream, scale_factor=self.scale_factor, add_offset=self.add_offset)
        if scale.shape[-1] == TRAIN_PARAMS:
            # Uncropped training windows + (y0, x0, h, w, flip, size): crop, resize and flip here, batched.
            # The params stay on the CPU until prepare_train_batch has read the crop size (no device sync).
            x = prepare_train_batch(x, scale, **factors)
        else:
            x = prepare_batch(x, scale.to(self.device, non_blocking=True), **factors)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def target(self, labels: Tensor) -> Tensor:
        return labels.to(self.device, non_blocking=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision: ``amp_dtype`` under autocast, else float32 (autocast off)."""
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)
