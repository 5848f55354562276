"""Dense optical flow between consecutive frames with OpenCV (TV-L1 or Farneback).

Layout everywhere in flowprep: a field is (2, H, W) float32, channel 0 = u (+ right), channel 1 =
v (+ down), and field i is the motion from frame i to frame i + 1 (``prev`` -> ``next``).
"""

from __future__ import annotations

import os
import threading
from typing import Iterable, Iterator

import cv2
import numpy as np

from flowprep.config import FarnebackParams, FlowConfig, TVL1Params
from flowprep.torchflow.client import FlowClient


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) RGB uint8 -> (n, H, W) gray uint8 (ITU-R 601 luma, as cv2.COLOR_RGB2GRAY)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"expected RGB uint8 frames (n, H, W, 3), got {rgb.dtype} {rgb.shape}")
    return np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in rgb])


class FlowEstimator:
    """``estimator(prev, next)`` -> (2, H, W) float32 flow from gray uint8 ``prev`` to ``next``.

    The TV-L1 solver object is created here once and reused for every frame pair: creating it
    allocates its pyramids, and each ``calc`` without an initial flow is independent anyway.
    """

    def __init__(
        self,
        *,
        method: str,
        tvl1: TVL1Params | None = None,
        farneback: FarnebackParams | None = None,
    ) -> None:
        if method not in ("tvl1", "farneback"):
            raise ValueError(f"method must be 'tvl1' or 'farneback', got {method!r}")
        self.method = method
        self.farneback = farneback or FarnebackParams()
        self._tvl1 = None
        if method == "tvl1":
            p = tvl1 or TVL1Params()
            self._nscales = p.nscales
            self._tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(
                tau=p.tau,
                lambda_=p.lambda_,
                theta=p.theta,
                nscales=p.nscales,
                warps=p.warps,
                epsilon=p.epsilon,
                innnerIterations=p.inner_iterations,  # sic: OpenCV's spelling
                outerIterations=p.outer_iterations,
                scaleStep=p.scale_step,
                gamma=p.gamma,
                medianFiltering=p.median_filtering,
            )

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if self._tvl1 is not None:
            flow = self._tvl1.calc(prev, nxt, None)
            # OpenCV lowers the solver's own scale count for good when a frame is too small for all of
            # them: without this, one tiny video would change the flow of every later video it computes.
            if self._tvl1.getScalesNumber() != self._nscales:
                self._tvl1.setScalesNumber(self._nscales)
        else:
            p = self.farneback
            flow = cv2.calcOpticalFlowFarneback(
                prev, nxt, None, p.pyr_scale, p.levels, p.winsize, p.iterations, p.poly_n, p.poly_sigma, 0
            )
        return flow.transpose(2, 0, 1)  # (H, W, 2) -> (2, H, W), a view: the caller stacks (copies)


def check_tvl1_params(params: TVL1Params) -> None:
    """Raise ``ValueError`` when these TV-L1 parameters give NaN flow (checked on one small pair, before a run).

    OpenCV (and the torch port) compute in float32: a theta under float32's smallest normal number
    (~1.2e-38), a tau or gamma near its largest (~3.4e38), or a tau / theta beyond it, turn every flow
    field into NaN. Each video would then fail on its own and the run end with exit 1, blaming the files.
    """
    y, x = np.mgrid[0:48, 0:48].astype(np.float32)
    prev = (127 + 60 * np.sin(x / 3) * np.cos(y / 4)).astype(np.uint8)
    nxt = (127 + 60 * np.sin((x - 1) / 3) * np.cos(y / 4)).astype(np.uint8)
    flow = FlowEstimator(method="tvl1", tvl1=params)(prev, nxt)
    if not np.isfinite(flow).all():
        shown = ", ".join(f"{k.rstrip('_')} {v:g}" for k, v in
                          (("tau", params.tau), ("lambda", params.lambda_), ("theta", params.theta),
                           ("gamma", params.gamma)))
        raise ValueError(f"TV-L1 with {shown} gives NaN flow (it computes in float32, where these values "
                         "overflow or underflow): use values nearer the defaults")


class TorchTVL1:
    """TV-L1 by the PyTorch port (flowprep/torchflow/tvl1.py) inside a worker: all the pairs of a chunk in one batch.

    The per-worker path: the Dask backend's workers (and ``run_extract(flow_process=False)``) use it; local
    worker processes send their frames to a flow process instead (flowprep/torchflow/service.py). On the CPU the
    port gives OpenCV's flow to the bit (tests/flowprep/torchflow/test_tvl1.py; every pair of the 64 px sample in
    BENCHMARKS.md), at about twice the time.
    ``device`` "cuda" uses every visible GPU, "cuda:0,1" those; each worker process takes one by its pid.
    """

    def __init__(self, params: TVL1Params, device: str) -> None:
        import torch

        self.params = params
        kind, _, which = device.partition(":")
        if kind == "cpu":
            torch.set_num_threads(1)  # one worker process per core, as with OpenCV
            self.device = torch.device("cpu")
        else:
            ids = [int(i) for i in which.split(",")] if which else list(range(torch.cuda.device_count()))
            self.device = torch.device(kind, ids[os.getpid() % len(ids)])

    def pairs(self, gray: np.ndarray) -> np.ndarray:
        """(n, H, W) uint8 frames -> (n - 1, 2, H, W) float32 flow between consecutive frames."""
        from flowprep.torchflow.tvl1 import tvl1_flow

        if len(gray) < 2:
            return np.empty((0, 2, *gray.shape[1:]), np.float32)
        return tvl1_flow(gray[:-1], gray[1:], self.params, device=self.device).cpu().numpy()


_LOCAL = threading.local()  # per thread: OpenCV releases the GIL inside calc(), so threads must not share a solver


def estimator_for(config: FlowConfig) -> FlowEstimator:
    """One estimator per configuration per thread (a worker reuses it across its videos).

    Per thread, not per process: a TV-L1 solver object keeps its pyramids and buffers between calls,
    and OpenCV runs ``calc`` without the GIL, so two threads of one process (a Dask worker with
    several threads) sharing it would overwrite each other's buffers and return wrong flow silently.
    """
    cache = _LOCAL.__dict__.setdefault("estimators", {})
    if config not in cache:
        if config.engine == "torch":
            cache[config] = TorchTVL1(config.tvl1, config.device)
        else:
            cache[config] = FlowEstimator(method=config.method, tvl1=config.tvl1, farneback=config.farneback)
    return cache[config]


def iter_flow(
    chunks: Iterable[np.ndarray], estimator: FlowEstimator | TorchTVL1 | FlowClient
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each RGB chunk (n, H, W, 3), yield it with the float32 flow (m, 2, H, W) it completes, or
    with its uint8 codes when a flow process computes them (``FlowClient``: it quantizes too).

    The last gray frame of a chunk is kept for the next one, so over the whole video the flows
    concatenate to T - 1 fields (the first chunk gives n - 1, later chunks n) and only one chunk
    is in memory at a time.
    """
    prev: np.ndarray | None = None
    for rgb in chunks:
        gray = to_gray(rgb)
        frames = gray if prev is None else np.concatenate([prev[None], gray])
        # Fill a C-contiguous array: np.stack of the (2, H, W) views would keep their (H, W, 2) memory
        # order, and quantize() would then copy the whole float32 chunk once more.
        if isinstance(estimator, FlowClient):
            flow = estimator.codes(frames)
        elif isinstance(estimator, TorchTVL1):
            flow = estimator.pairs(frames)
        else:
            flow = np.empty((max(len(frames) - 1, 0), 2, *gray.shape[1:]), np.float32)
            for i in range(len(frames) - 1):
                flow[i] = estimator(frames[i], frames[i + 1])
        prev = gray[-1]
        yield rgb, flow


def video_flow(chunks: Iterable[np.ndarray], estimator: FlowEstimator) -> Iterator[np.ndarray]:
    """Only the flow of ``iter_flow`` (for benchmarks: decode + flow, no quantization, no writing)."""
    for _, flow in iter_flow(chunks, estimator):
        yield flow
