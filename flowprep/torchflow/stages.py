"""The building blocks of the TV-L1 port (flowprep/torchflow/tvl1.py), each tested against its OpenCV counterpart.

Pyramid levels and the flow's upsampling (``pyramid_sizes``, ``resize_linear``), the bicubic warp
(``warp_bicubic``), the centred and forward gradients, the divergence of the dual field and the median
filter (``median_filter``), each doing the same float32 operations in the same order as OpenCV 5.0.0
(``tests/flowprep/torchflow/test_tvl1.py`` compares them one by one). The solver that puts them
together is in tvl1.py.

Two of OpenCV's building blocks are not plain C++ in that build, and are reproduced from their outputs:
``resize`` (INTER_LINEAR, float32) goes to Intel IPP, which interpolates as ``a + t * (b - a)`` with a
fused multiply-add and clamps the source coordinate on downscaling; ``remap`` (INTER_CUBIC, float maps) is
vectorised code with fused multiply-adds (weights and order in ``warp_bicubic``). fma is emulated in
float64 (exact product, then two roundings: a true fma differs only in rare ties).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

CUBIC_A = -0.75


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add a*b + c, emulated in float64: a*b is exact there, the sum is rounded to
    float64 and then to float32 (that double rounding differs from a true fma in rare ties only)."""
    return (a.double() * b.double() + c.double()).float()


def pyramid_sizes(height: int, width: int, scale_step: float, nscales: int) -> list[tuple[int, int]]:
    """(H, W) of every level OpenCV uses, finest first: each side is round(previous * scale_step)
    (``saturate_cast<int>``, half to even), and the first level with a side under 16 px ends the list."""
    sizes = [(height, width)]
    for _ in range(1, nscales):
        h, w = sizes[-1]
        nh, nw = round(h * scale_step), round(w * scale_step)
        if nh < 16 or nw < 16:
            break
        sizes.append((nh, nw))
    return sizes


def _linear_axis(n_out: int, n_in: int, step: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (i0, i1) and float32 weights t of a bilinear resize along one axis.

    Half-pixel centres: x_src = (x_dst + 0.5) * step - 0.5. Downscaling (step > 1) clamps x_src to
    [0, n_in - 1] and interpolates between i0 <= n_in - 2 and i0 + 1 (so the last sample is
    a + 1 * (b - a)); upscaling uses OpenCV's own rule (outside the image: the edge pixel, t = 0).
    These are what IPP's resize (used by OpenCV 5.0.0 for float32 INTER_LINEAR) does, to the bit.
    """
    x = (torch.arange(n_out, dtype=torch.float64) + 0.5) * step - 0.5
    if step > 1 and n_in >= 2:
        x = x.clamp(0, n_in - 1)
        i0 = torch.floor(x).clamp(max=n_in - 2)
        t = x - i0
    else:
        i0 = torch.floor(x)
        t = x - i0
        low = i0 < 0
        high = i0 >= n_in - 1
        i0 = torch.where(low, torch.zeros_like(i0), torch.where(high, torch.full_like(i0, n_in - 1), i0))
        t = torch.where(low | high, torch.zeros_like(t), t)
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0.to(device), i1.to(device), t.float().to(device)


def resize_linear(x: torch.Tensor, size: tuple[int, int], step: tuple[float, float] | None = None) -> torch.Tensor:
    """Bilinear resize of the last two dims of ``x`` to ``size`` (H, W), as OpenCV 5.0.0 ``cv2.resize``.

    ``step`` (sy, sx) is the sampling step in source pixels per destination pixel; by default the size
    ratio (``cv2.resize(x, (W, H))``). ``cv2.resize(x, None, fx=f, fy=f)`` is ``step=(1/f, 1/f)``.
    Horizontal pass first, then vertical, each ``a + t * (b - a)`` with one rounding (fma).
    """
    h_in, w_in = x.shape[-2:]
    h_out, w_out = size
    sy, sx = step if step is not None else (h_in / h_out, w_in / w_out)
    x = x.float()
    i0, i1, t = _linear_axis(w_out, w_in, sx, x.device)
    a = x[..., i0]
    x = _fma(x[..., i1] - a, t, a)
    i0, i1, t = _linear_axis(h_out, h_in, sy, x.device)
    a = x[..., i0, :]
    return _fma(x[..., i1, :] - a, t[:, None], a)


def centered_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dy) of (..., H, W): 0.5 * (next - previous) inside, 0.5 * one-sided difference on the borders."""
    dx = torch.empty_like(img)
    dy = torch.empty_like(img)
    dx[..., 1:-1] = 0.5 * (img[..., 2:] - img[..., :-2])
    dx[..., 0] = 0.5 * (img[..., 1] - img[..., 0])
    dx[..., -1] = 0.5 * (img[..., -1] - img[..., -2])
    dy[..., 1:-1, :] = 0.5 * (img[..., 2:, :] - img[..., :-2, :])
    dy[..., 0, :] = 0.5 * (img[..., 1, :] - img[..., 0, :])
    dy[..., -1, :] = 0.5 * (img[..., -1, :] - img[..., -2, :])
    return dx, dy


def _cubic_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """The 4 bicubic weights (A = -0.75) of taps at offsets -1, 0, 1, 2 for fractional positions t (float32),
    computed as OpenCV 5.0.0's remap does, to the bit (float32, fma where it uses one):
    w0 = A t (1-t)^2, w1 = ((A+2) t - (A+3)) t^2 + 1, w3 = A (1-t) t^2, w2 = 1 - w0 - w1 - w3."""
    a = torch.tensor(np.float32(CUBIC_A), device=t.device)
    y = 1 - t
    w0 = a * (t * (y * y))
    t2 = t * t
    w1 = _fma(_fma(torch.full_like(t, CUBIC_A + 2), t, torch.full_like(t, -(CUBIC_A + 3))), t2, torch.ones_like(t))
    w3 = a * (y * t2)
    w2 = ((1 - w0) - w1) - w3
    return [w0, w1, w2, w3]


def warp_bicubic(src: torch.Tensor, map_x: torch.Tensor, map_y: torch.Tensor) -> torch.Tensor:
    """``cv2.remap(src, map_x, map_y, INTER_CUBIC, BORDER_CONSTANT, 0)`` for src (N, C, H, W) and maps
    (N, H, W) in source pixel coordinates: exact coordinates, taps outside the image count as 0.

    Bit-identical to OpenCV 5.0.0: each of the 4 rows is interpolated horizontally with a chain of fused
    multiply-adds in tap order (w0*v0, then fma(w1, v1, .), ...), then the 4 row values vertically the same
    way (fma emulated in float64)."""
    n, c, h, w = src.shape
    # Far outside, every tap is outside: clamping there changes nothing and keeps the indices small.
    mx = torch.nan_to_num(map_x, nan=-8.0).clamp(-8, w + 8)
    my = torch.nan_to_num(map_y, nan=-8.0).clamp(-8, h + 8)
    x0 = torch.floor(mx)
    y0 = torch.floor(my)
    wx = [wt.reshape(n, 1, h * w) for wt in _cubic_weights(mx - x0)]
    wy = [wt.reshape(n, 1, h * w) for wt in _cubic_weights(my - y0)]
    x0 = x0.long()
    y0 = y0.long()
    flat = src.reshape(n, c, h * w)
    cols = []
    for i in range(4):
        xi = x0 + (i - 1)
        cols.append(((xi >= 0) & (xi < w), xi.clamp(0, w - 1)))
    out = None
    for j in range(4):
        yi = y0 + (j - 1)
        row_ok = (yi >= 0) & (yi < h)
        row = yi.clamp(0, h - 1) * w
        acc = None
        for i in range(4):
            col_ok, xi = cols[i]
            idx = (row + xi).reshape(n, 1, h * w).expand(n, c, h * w)
            ok = (row_ok & col_ok).reshape(n, 1, h * w)
            vals = torch.where(ok, torch.gather(flat, 2, idx), torch.zeros((), dtype=src.dtype, device=src.device))
            acc = vals * wx[i] if acc is None else _fma(vals, wx[i], acc)
        out = acc * wy[j] if out is None else _fma(acc, wy[j], out)
    return out.reshape(n, c, h, w)


@functools.lru_cache(maxsize=None)
def _selection_network(n: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """Comparators (a, b, want_min, want_max) that leave the median of n inputs (n odd) on wire 0.

    Batcher's odd-even merge sort on the next power of two, the extra wires padded with -inf / +inf so
    that the median of the n real inputs lands on a middle wire; comparators whose outcome is fixed by
    the padding, and those that do not lead to the median, are dropped. Wire indices refer to a list
    of n input planes; each comparator writes min to a and max to b (only the wanted ones are computed).
    """
    size = 1 << (n - 1).bit_length()
    low = (size - n) // 2  # -inf pads below, +inf pads above, so the median sits at index size // 2 - 1 + ...
    high = size - n - low
    target = low + n // 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    # symbolic pass: wire -> ("x", id) for real inputs, ("lo",) / ("hi",) for pads
    wires = [("lo",)] * low + [("x", i) for i in range(n)] + [("hi",)] * high
    ops = []  # (src_a, src_b, dst_min, dst_max) on value ids
    next_id = n
    for a, b in pairs:
        wa, wb = wires[a], wires[b]
        if wa[0] == "lo" or wb[0] == "hi":
            continue  # already in order
        if wa[0] == "hi" or wb[0] == "lo":
            wires[a], wires[b] = wb, wa  # a swap of known order
            continue
        lo_id, hi_id = next_id, next_id + 1
        next_id += 2
        ops.append((wa[1], wb[1], lo_id, hi_id))
        wires[a], wires[b] = ("x", lo_id), ("x", hi_id)
    out = wires[target][1]
    # prune: keep only what the median depends on
    live = {out}
    kept = []
    for sa, sb, dmin, dmax in reversed(ops):
        want_min, want_max = dmin in live, dmax in live
        if want_min or want_max:
            kept.append((sa, sb, dmin if want_min else -1, dmax if want_max else -1))
            live.update((sa, sb))
    kept.reverse()
    return tuple(kept) + ((out, -2, -2, -2),)


def median_filter(x: torch.Tensor, ksize: int = 5) -> torch.Tensor:
    """``cv2.medianBlur(x, ksize)`` (replicated border) of every (H, W) plane of x (..., H, W).

    A selection network of elementwise min / max over the ksize**2 shifted planes: exact (the median
    is one of the inputs) and far faster than sorting windows."""
    r = ksize // 2
    shape = x.shape
    h, w = shape[-2:]
    planes = x.reshape(-1, 1, h, w)
    padded = F.pad(planes, (r, r, r, r), mode="replicate")[:, 0]
    values: dict[int, torch.Tensor] = {}
    for dy in range(ksize):
        for dx in range(ksize):
            values[dy * ksize + dx] = padded[:, dy : dy + h, dx : dx + w].contiguous()
    network = _selection_network(ksize * ksize)
    last_use = _last_uses(network)
    for step, (sa, sb, dmin, dmax) in enumerate(network[:-1]):
        a, b = values[sa], values[sb]
        if dmin >= 0:
            values[dmin] = torch.minimum(a, b)
        if dmax >= 0:
            values[dmax] = torch.maximum(a, b)
        for src in (sa, sb):  # free planes no later comparator reads (a batch on a GPU has many)
            if last_use[src] == step:
                values.pop(src, None)
    return values[network[-1][0]].reshape(shape)


@functools.lru_cache(maxsize=None)
def _last_uses(network: tuple[tuple[int, int, int, int], ...]) -> dict[int, int]:
    last: dict[int, int] = {}
    for step, (sa, sb, _, _) in enumerate(network[:-1]):
        last[sa] = last[sb] = step
    last[network[-1][0]] = len(network)  # the result
    return last


def forward_gradient(u: torch.Tensor) -> torch.Tensor:
    """(..., 2, H, W) forward differences (x, y) of u (..., H, W); 0 on the last column / row."""
    g = torch.zeros((*u.shape[:-2], 2, *u.shape[-2:]), dtype=u.dtype, device=u.device)
    g[..., 0, :, :-1] = u[..., :, 1:] - u[..., :, :-1]
    g[..., 1, :-1, :] = u[..., 1:, :] - u[..., :-1, :]
    return g


def divergence(p: torch.Tensor) -> torch.Tensor:
    """Divergence (backward differences) of the dual field p (..., 2, H, W), OpenCV's float order."""
    p1, p2 = p[..., 0, :, :], p[..., 1, :, :]
    div = torch.empty_like(p1)
    # body: (p1[x] - p1[x-1]) + (p2[y] - p2[y-1]); first row: (p1[x] - p1[x-1]) + p2
    div[..., 1:, 1:] = (p1[..., 1:, 1:] - p1[..., 1:, :-1]) + (p2[..., 1:, 1:] - p2[..., :-1, 1:])
    div[..., 0, 1:] = (p1[..., 0, 1:] - p1[..., 0, :-1]) + p2[..., 0, 1:]
    # first column: (p1 + p2[y]) - p2[y-1]; corner: p1 + p2
    div[..., 1:, 0] = (p1[..., 1:, 0] + p2[..., 1:, 0]) - p2[..., :-1, 0]
    div[..., 0, 0] = p1[..., 0, 0] + p2[..., 0, 0]
    return div
