"""TV-L1 optical flow in PyTorch, a port of OpenCV's ``DualTVL1OpticalFlow`` (CPU path) for batches.

``tvl1_flow(prev, next, params)`` takes gray frame pairs as tensors (N, H, W) (0..255, any dtype, any
device) and returns float32 flow (N, 2, H, W), channel 0 = u (+ right), 1 = v (+ down), the layout used
everywhere in flowprep. Every pair in a batch is solved independently, exactly as OpenCV would solve it
alone: each image has its own stopping test, and an image that has stopped is frozen while the others
go on (masks, so a batch can mix pairs from many videos of one frame size).

The algorithm follows opencv_contrib's ``modules/optflow/src/tvl1flow.cpp`` (procOneScale / calc) as
built into opencv-contrib-python 5.0.0, checked against that source and against the library itself
(``tests/flowprep/torchflow/test_tvl1.py``):

* frames as float32 in 0..255, no pre-smoothing;
* pyramid: level s is level s-1 resized by ``scale_step`` with bilinear interpolation (size
  ``round(side * scale_step)``, half-pixel centres, the sampling step is ``1/scale_step``, not the
  actual size ratio); levels stop before the first one with a side under 16 px;
* flow starts at zero on the coarsest level; dual variables are zeroed once per level (not per warp);
* the centred gradient of the second frame is computed once per level (half the one-sided difference on
  the borders) and warped with the frame; warping is bicubic (A = -0.75) at the exact coordinate
  ``(x + u, y + v)`` with taps outside the image counting as 0 (OpenCV 5 does not round the coordinate
  to 1/32 px as 4.x did);
* for every warp: data term from the warped frame; then up to ``outer_iterations`` outer iterations, each
  starting with a ``median_filtering`` x ``median_filtering`` median of u and v (replicated border), each
  running up to ``inner_iterations`` primal-dual steps; the loops stop (per image) as soon as the sum of
  squared flow updates of one step is at most ``epsilon**2 * H * W`` at that level;
* between levels the flow is resized bilinearly to the finer size (sampling step = size ratio) and
  multiplied by ``1/scale_step`` as a double (``multiply`` by a ``Scalar``: the float32 flow times the
  float64 factor, rounded once to float32; not times float32(1/scale_step), which differs unless the
  factor is exact in float32, as with 0.8 and 0.5); the u3 channel of the gamma term is resized, not scaled.

Floating point: each step does the same float32 operations in the same order as OpenCV 5.0.0, and on
the CPU the flow is bit-identical to ``cv2.optflow.DualTVL1OpticalFlow`` (tested on generated frames and on a
real pair of flowprep's sample; measured on real frames and on every pair of the 64 px sample in BENCHMARKS.md,
``benchmarks/port_vs_opencv.py``). The building blocks (pyramid, warp, gradients,
median, divergence; how IPP's ``resize`` and the vectorised ``remap`` are reproduced) are in stages.py.
The sum of squared updates of the stopping test is OpenCV's float32 running sum in row order (numpy's
sequential cumsum on the host; on other devices only for images whose float64 sum is within rounding
distance of the threshold, ``stop_sum``); ``hypot`` is computed in float64 as glibc's hypotf does it
(``hypot_as_opencv``; torch's float32 hypot is 1 ulp off on rare inputs, on the CPU too). The reference is OpenCV as the x86-64 wheels run it (IPP on, remap's AVX2/FMA3
code); an OpenCV build without IPP or on a CPU without FMA differs from this (and from the wheel) in the
last bits.

Not reproduced on purpose: OpenCV's ``calc`` lowers the solver object's ``nscales`` for good when a frame
is too small for all levels, so later, larger frames through the same object get fewer levels; here every
call uses ``params.nscales``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from flowprep.config import TVL1Params
from flowprep.torchflow.stages import (centered_gradient, divergence, forward_gradient, median_filter, pyramid_sizes,
                                       resize_linear, warp_bicubic)

FLT_EPSILON = float(np.finfo(np.float32).eps)


@dataclass
class SolveStats:
    """What the solver did, for tests and benchmarks: inner iterations run per image (all levels)."""

    iterations: torch.Tensor | None = None  # (N,) int64, filled by tvl1_flow


def _as_frames(x: torch.Tensor | np.ndarray, device: torch.device | str | None) -> torch.Tensor:
    t = torch.as_tensor(x)
    if device is not None:
        t = t.to(device)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"expected frames (N, H, W) or (H, W), got shape {tuple(t.shape)}")
    return t.float()


def primal_dual_step(
    u: torch.Tensor,
    p: torch.Tensor,
    ivec: torch.Tensor,
    rho_c: torch.Tensor,
    lg: torch.Tensor,
    neg_lg: torch.Tensor,
    grad: torch.Tensor,
    has_grad: torch.Tensor,
    d_low: torch.Tensor,
    d_high: torch.Tensor,
    theta: torch.Tensor,
    taut: torch.Tensor,
    gamma: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One inner iteration (estimateV, divergence, estimateU, forwardGradient, estimateDualVariables) for
    flow u (n, K, H, W) and duals p (n, K, 2, H, W); the per-warp constants come from ``solve_level``
    (``grad`` there is |grad I1w|^2 with 1 where it is <= FLT_EPSILON, ``has_grad`` says where it is not).
    Returns (new u, new p, squared update per pixel (n, H, W), float32)."""
    # estimateV: v = u + d, d from the thresholding of rho
    rho = rho_c + (ivec[:, 0] * u[:, 0] + ivec[:, 1] * u[:, 1])
    if u.shape[1] == 3:
        rho = rho + gamma * u[:, 2]
    fi = torch.where(has_grad, -rho / grad, torch.zeros_like(rho))
    d = torch.where((rho < neg_lg)[:, None], d_low, torch.where((rho > lg)[:, None], d_high, fi[:, None] * ivec))
    # estimateU: u = v + theta * div(p), and the squared update
    u_new = (u + d) + theta * divergence(p)
    du = u_new - u
    sq = du[:, 0] * du[:, 0] + du[:, 1] * du[:, 1]
    if u.shape[1] == 3:
        sq = sq + du[:, 2] * du[:, 2]
    # estimateDualVariables
    gu = forward_gradient(u_new)  # (n, K, 2, H, W)
    norm = hypot_as_opencv(gu[:, :, 0], gu[:, :, 1])
    ng = 1.0 + taut * norm
    p_new = (p + taut * gu) / ng[:, :, None]
    return u_new, p_new, sq


def hypot_as_opencv(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``(float)hypot(x, y)`` of float32 x, y: glibc computes it as ``sqrt((double)x*x + (double)y*y)``
    rounded once to float (x*x and y*y are exact in double; IEEE add and sqrt, on every device).

    Not ``torch.hypot`` in float32: on the CPU its vectorised path (SLEEF, 0.5001 ulp) is 1 ulp off on rare
    inputs (hypot(-1.0073404, 0.14464371) gives 1.0176721, glibc 1.0176722), and one such value in one inner
    iteration moves the whole flow field by a few ulp (and, quantized, a few codes by one); CUDA's hypotf
    is not correctly rounded either."""
    xd, yd = x.double(), y.double()
    return torch.sqrt(xd * xd + yd * yd).float()


STOP_SUMS = ("sequential", "guarded", "float64")


def _sequential_sum(sq: torch.Tensor) -> torch.Tensor:
    """OpenCV's float32 running sum of each (H, W) plane in row order (numpy's cumsum is sequential), float64."""
    flat = sq.reshape(len(sq), -1).cpu().numpy()
    return torch.from_numpy(np.cumsum(flat, axis=1)[:, -1].astype(np.float64)).to(sq.device)


def _stop_error(sq: torch.Tensor, stop_sum: str, scaled_eps: float, band: float) -> torch.Tensor:
    """The stopping test's sum of squared updates per image (float64 tensor (n,)).

    "sequential": OpenCV's float32 running sum, exactly (on the host). "float64": an accurate sum, which
    may decide differently from OpenCV when the sum is within ~n * 2**-24 of the threshold (rare).
    "guarded": the float64 sum, and OpenCV's running sum (on the host) only for the images whose sum is
    that close to the threshold, so the decisions are OpenCV's at the cost of one host sync per step."""
    if stop_sum == "sequential":
        return _sequential_sum(sq)
    error = sq.double().sum(dim=(1, 2))
    if stop_sum == "guarded":
        near = ((error - scaled_eps).abs() <= band * error).nonzero().flatten()
        if len(near):
            error[near] = _sequential_sum(sq[near])
    return error


@functools.lru_cache(maxsize=None)
def _compiled_step():
    return torch.compile(primal_dual_step, dynamic=True)


def solve_level(
    i0: torch.Tensor,
    i1: torch.Tensor,
    u: torch.Tensor,
    params: TVL1Params,
    *,
    check_every: int = 1,
    stats: SolveStats | None = None,
    compile: bool = False,
    stop_sum: str = "sequential",
) -> torch.Tensor:
    """OpenCV's ``procOneScale`` on a batch: frames (N, H, W), flow u (N, K, H, W) with K = 2 (u, v) or
    K = 3 (u, v and the gamma term's u3). Returns the updated flow (a new tensor).

    Every ``check_every`` inner iterations the host looks at which images are still running (a sync on
    a GPU) and goes on with those only. In between, images that stop are frozen by masks, so the
    result does not depend on ``check_every``; 1 (the default, right for CPUs) needs no masks at all.
    """
    n, h, w = i0.shape
    k = u.shape[1]
    use_gamma = k == 3
    dev = i0.device
    f32 = torch.float32
    l_t = torch.tensor(np.float32(params.lambda_ * params.theta), device=dev)
    neg_l_t = -l_t
    taut = torch.tensor(np.float32(params.tau / params.theta), device=dev)
    theta = torch.tensor(np.float32(params.theta), device=dev)
    gamma = torch.tensor(np.float32(params.gamma), device=dev)
    scaled_eps = float(np.float32(params.epsilon * params.epsilon * h * w))
    masked = check_every > 1
    step = _compiled_step() if compile else primal_dual_step
    if stop_sum not in STOP_SUMS:
        raise ValueError(f"stop_sum must be one of {STOP_SUMS}, got {stop_sum!r}")
    # the float32 running sum of n non-negative terms is within (n - 1) * 2**-24 * sum of the exact sum
    band = 2.0 * (h * w) * 2.0**-24

    i1x, i1y = centered_gradient(i1)
    to_warp = torch.stack([i1, i1x, i1y], dim=1)
    u = u.clone()
    p = torch.zeros((n, k, 2, h, w), dtype=f32, device=dev)  # dual variables, reset once per level
    xs = torch.arange(w, dtype=f32, device=dev)
    ys = torch.arange(h, dtype=f32, device=dev)[:, None]

    for _ in range(params.warps):
        warped = warp_bicubic(to_warp, xs + u[:, 0], ys + u[:, 1])
        i1w, i1wx, i1wy = warped.unbind(1)
        grad = i1wx * i1wx + i1wy * i1wy
        rho_c = ((i1w - i1wx * u[:, 0]) - i1wy * u[:, 1]) - i0
        # the data term's direction per component: I1wx, I1wy (and gamma for u3)
        ivec = torch.stack([i1wx, i1wy] + ([gamma.expand(n, h, w)] if use_gamma else []), dim=1)
        consts_full = {
            "ivec": ivec,
            "rho_c": rho_c,
            "lg": l_t * grad,
            "neg_lg": neg_l_t * grad,
            "grad": torch.where(grad > FLT_EPSILON, grad, torch.ones_like(grad)),
            "has_grad": grad > FLT_EPSILON,
            "d_low": l_t * ivec,  # rho < -l_t * grad
            "d_high": neg_l_t * ivec,  # rho > l_t * grad
        }
        sel = torch.arange(n, device=dev)  # the images being computed (a superset of the running ones)
        c = consts_full
        us, ps = u, p
        active = torch.ones(n, dtype=torch.bool, device=dev)  # per image in sel: still running

        def shrink(keep: torch.Tensor) -> None:
            nonlocal sel, c, us, ps, active
            u.index_copy_(0, sel, us)
            p.index_copy_(0, sel, ps)
            sel = sel[keep]
            c = {key: val.index_select(0, sel) for key, val in consts_full.items()}
            us, ps, active = us[keep], ps[keep], active[keep]

        for _ in range(params.outer_iterations):
            if len(sel) == 0:
                break
            if params.median_filtering > 1:
                uv = median_filter(us[:, :2], params.median_filtering)
                if masked:
                    uv = torch.where(active[:, None, None, None], uv, us[:, :2])
                us = torch.cat([uv, us[:, 2:]], dim=1) if use_gamma else uv
            for it in range(params.inner_iterations):
                u_new, p_new, sq = step(us, ps, c["ivec"], c["rho_c"], c["lg"], c["neg_lg"], c["grad"],
                                        c["has_grad"], c["d_low"], c["d_high"], theta, taut, gamma)
                error = _stop_error(sq, stop_sum, scaled_eps, band)
                if masked:
                    m = active[:, None, None, None]
                    us = torch.where(m, u_new, us)
                    ps = torch.where(m[..., None], p_new, ps)
                else:
                    us, ps = u_new, p_new
                if stats is not None:
                    stats.iterations.index_add_(0, sel, active.long())
                active = active & (error > scaled_eps)
                if (it + 1) % check_every == 0 or it + 1 == params.inner_iterations:
                    running = active.nonzero().flatten()
                    if len(running) < len(sel):
                        shrink(running)
                    if len(sel) == 0:
                        break
        u.index_copy_(0, sel, us)
        p.index_copy_(0, sel, ps)
    return u


def tvl1_flow(
    prev: torch.Tensor | np.ndarray,
    nxt: torch.Tensor | np.ndarray,
    params: TVL1Params | None = None,
    *,
    device: torch.device | str | None = None,
    check_every: int | None = None,
    stats: SolveStats | None = None,
    compile: bool = False,
    stop_sum: str | None = None,
) -> torch.Tensor:
    """TV-L1 flow from ``prev`` to ``nxt``: gray frames (N, H, W) or (H, W), values 0..255 (uint8 or
    float). Returns float32 (N, 2, H, W) on the frames' device (or ``device``): u (+ right), v (+ down).

    ``check_every``: see ``solve_level``; by default 1 on CPUs and 10 elsewhere (fewer host syncs on a
    GPU; the result is the same).
    ``stop_sum``: how the stopping test sums squared updates (see ``_stop_error``): by default "sequential"
    (OpenCV's own float32 running sum) on CPUs and "guarded" (the same decisions; a host sync per step) on
    other devices; "float64" avoids the syncs and may, rarely, stop an iteration earlier or later.
    ``compile``: run the inner iteration through ``torch.compile`` (experimental, for GPUs: fused kernels
    may contract a*b + c into fma, so results are no longer OpenCV's to the bit; eager is the reference).
    """
    p = params or TVL1Params()
    i0 = _as_frames(prev, device)
    i1 = _as_frames(nxt, device)
    if i0.shape != i1.shape:
        raise ValueError(f"prev and next differ in shape: {tuple(i0.shape)} vs {tuple(i1.shape)}")
    n, h, w = i0.shape
    if h < 3 or w < 3:
        raise ValueError(f"frames must be at least 3x3, got {h}x{w}")
    if p.median_filtering > 1 and p.median_filtering % 2 == 0:
        raise ValueError(f"median_filtering must be odd, got {p.median_filtering}")
    if stats is not None:
        stats.iterations = torch.zeros(n, dtype=torch.long, device=i0.device)
    if check_every is None:
        check_every = 1 if i0.device.type == "cpu" else 10
    if stop_sum is None:
        stop_sum = "sequential" if i0.device.type == "cpu" else "guarded"
    sizes = pyramid_sizes(h, w, p.scale_step, p.nscales)
    pyr0, pyr1 = [i0], [i1]
    step = (1.0 / p.scale_step, 1.0 / p.scale_step)
    for size in sizes[1:]:
        pyr0.append(resize_linear(pyr0[-1], size, step))
        pyr1.append(resize_linear(pyr1[-1], size, step))
    k = 3 if p.gamma != 0 else 2
    coarsest = len(sizes) - 1
    u = torch.zeros((n, k, *sizes[coarsest]), dtype=torch.float32, device=i0.device)
    up = 1.0 / p.scale_step  # a float64 factor, as OpenCV's multiply by Scalar::all(1 / scaleStep)
    for s in range(coarsest, -1, -1):
        u = solve_level(pyr0[s], pyr1[s], u, p, check_every=check_every, stats=stats, compile=compile,
                        stop_sum=stop_sum)
        if s == 0:
            break
        u = resize_linear(u, sizes[s - 1])
        u = torch.cat([(u[:, :2].double() * up).float(), u[:, 2:]], dim=1)
    return u[:, :2].contiguous()
