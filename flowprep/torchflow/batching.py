"""Batches of frame pairs across videos, for the flow process (flowprep/torchflow/service.py).

A request is the frames of one chunk of one video, (n, H, W) gray uint8, and the array its n - 1 flow
codes go to, (n - 1, 2, H, W) uint8. Requests wait in one queue per frame size; a batch takes up to
the size's batch limit of pairs from the oldest requests of one size (a request may be split across
batches) and solves them in one call (``take`` and ``solve``, on the flow process's main thread); then
``finish`` (on its finisher thread) puts the flow into the requests. When all the pairs of a request are
solved, its float flow is quantized by ``flowprep.extract.quantize.quantize`` as one array, exactly as a worker
quantizes its chunk:
``cv2.addWeighted`` rounds with a fused multiply-add in its SIMD body and without one in its scalar tail,
so at exact ties a code can depend on where the value sits in the array; quantizing the same array as
the worker does gives the same codes to the bit. (That is also why quantization stays on the CPU: a
device twin of the formula cannot reproduce that position dependence.)

A device out-of-memory error halves that size's batch limit and the same pairs are solved again in
smaller batches; the limit it settles on is logged once. It never ends the run: only a single pair
that does not fit fails, as a failure of its video(s).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from flowprep.extract.quantize import NonFiniteFlow, quantize

# solve(prev (B, H, W) uint8, next (B, H, W) uint8) -> flow (B, 2, H, W) float32
Solve = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _out_of_memory_types() -> tuple[type[BaseException], ...]:
    import torch

    return tuple({torch.cuda.OutOfMemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)})


@dataclass(eq=False)
class Request:
    frames: np.ndarray  # (n, H, W) uint8, n >= 2
    codes: np.ndarray  # (n - 1, 2, H, W) uint8, written here
    client: object = None  # who is answered when it is done (the service's connection)
    arrived: float = field(default_factory=time.monotonic)
    taken: int = 0  # pairs handed to batches so far
    solved: int = 0  # pairs solved (their flow is in ``flow``)
    flow: np.ndarray | None = None  # (n - 1, 2, H, W) float32 until all pairs are solved and quantized
    error: str | None = None

    @property
    def pairs(self) -> int:
        return len(self.frames) - 1

    @property
    def size(self) -> tuple[int, int]:
        return self.frames.shape[1], self.frames.shape[2]


@dataclass
class BatchStats:
    pairs: int = 0
    batches: int = 0
    requests: int = 0
    clients: int = 0  # distinct clients (worker processes) that sent requests
    mixed_batches: int = 0  # batches holding pairs of more than one client
    largest_batch: int = 0
    limits: dict[str, int] = field(default_factory=dict)  # "HxW" -> batch limit in force at the end
    solve_seconds: float = 0.0  # in the solver (device time, as the host waits for it), copies included
    finish_seconds: float = 0.0  # putting flow into requests and quantizing (beside the next solve)
    serving_seconds: float = 0.0  # from the first request's arrival to the last answer (set by the service)


@dataclass(eq=False)
class Batch:
    size: tuple[int, int]
    parts: list[tuple[Request, int, int]]  # (request, its first pair here, pairs)
    prev: np.ndarray | None  # (B, H, W) uint8, until solved
    nxt: np.ndarray | None
    flow: np.ndarray | None = None  # (B, 2, H, W) float32, once solved
    error: str | None = None  # or why the solver failed on it


class Batcher:
    """Queues requests per frame size; ``take``, ``solve`` and ``finish`` one batch after another (``run_batch``
    does the three), ``finish`` returning the requests the batch finished."""

    def __init__(self, solve: Solve, *, bound: float, max_batch: int, log: Callable[[str], None] = print) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._solver, self.bound, self.max_batch, self.log = solve, bound, max_batch, log
        self.queues: dict[tuple[int, int], deque[Request]] = {}
        self.limits: dict[tuple[int, int], int] = {}
        self.stats = BatchStats()
        self._clients: set[int] = set()
        self._oom = _out_of_memory_types()

    def add(self, request: Request) -> None:
        if request.pairs < 1 or request.codes.shape != (request.pairs, 2, *request.size):
            raise ValueError(f"bad request: frames {request.frames.shape}, codes {request.codes.shape}")
        self.queues.setdefault(request.size, deque()).append(request)
        self.limits.setdefault(request.size, self.max_batch)
        self.stats.requests += 1
        self._clients.add(id(request.client))
        self.stats.clients = len(self._clients)

    def cancel(self, client: object) -> None:
        """Drop the waiting requests of a client that is gone."""
        for size, queue in self.queues.items():
            self.queues[size] = deque(r for r in queue if r.client is not client)

    def pending(self, size: tuple[int, int]) -> int:
        return sum(r.pairs - r.taken for r in self.queues.get(size, ()))

    def oldest(self) -> float | None:
        """Arrival time of the oldest waiting request, None when nothing waits."""
        heads = [q[0].arrived for q in self.queues.values() if q]
        return min(heads) if heads else None

    def full(self) -> bool:
        """Some frame size has a whole batch waiting."""
        return any(self.pending(size) >= self.limits[size] for size, q in self.queues.items() if q)

    def run_batch(self) -> list[Request]:
        """Take, solve and finish one batch; the requests it finished (the flow process runs the three
        steps itself, finishing a batch on another thread while it solves the next)."""
        batch = self.take()
        self.solve(batch)
        return self.finish(batch)

    def take(self) -> Batch:
        """The next batch: up to the limit of pairs of the frame size whose oldest request waited longest."""
        size = min((q[0].arrived, s) for s, q in self.queues.items() if q)[1]
        queue, limit = self.queues[size], self.limits[size]
        parts: list[tuple[Request, int, int]] = []
        count = 0
        for request in queue:
            if count == limit:
                break
            take = min(limit - count, request.pairs - request.taken)
            parts.append((request, request.taken, take))
            request.taken += take
            count += take
        while queue and queue[0].taken == queue[0].pairs:
            queue.popleft()
        prev = np.concatenate([r.frames[a : a + k] for r, a, k in parts])
        nxt = np.concatenate([r.frames[a + 1 : a + k + 1] for r, a, k in parts])
        return Batch(size, parts, prev, nxt)

    def solve(self, batch: Batch) -> None:
        """Solve the batch's pairs into ``batch.flow``, or its error into ``batch.error``: then the rest of its
        requests leave the queues (their videos fail)."""
        start = time.perf_counter()
        try:
            batch.flow = self._solve(batch.size, batch.prev, batch.nxt)
        except Exception as exc:  # noqa: BLE001 - the batch's videos fail (the solver rejected these frames)
            from flowprep.extract.worker import one_line

            batch.error = one_line(exc)
            failed = {id(r) for r, _, _ in batch.parts}
            for size, queue in self.queues.items():
                self.queues[size] = deque(r for r in queue if id(r) not in failed)
            return
        finally:
            batch.prev = batch.nxt = None
        self.stats.solve_seconds += time.perf_counter() - start
        self.stats.pairs += len(batch.flow)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch.flow))
        self.stats.mixed_batches += len({id(r.client) for r, _, _ in batch.parts}) > 1
        self.stats.limits = {f"{h}x{w}": n for (h, w), n in self.limits.items()}

    def finish(self, batch: Batch) -> list[Request]:
        """Put a solved batch's flow into its requests; quantize each request whose pairs are all solved, as
        one array. Returns the requests this batch finished (done, or failed). Touches only the batch's
        requests, so it may run on another thread than ``take``/``solve``, one batch at a time, in order."""
        start = time.perf_counter()
        finished = []
        at = 0
        for request, first, k in batch.parts:
            if request.error is not None:  # failed in an earlier batch, already answered
                continue
            if batch.error is not None:
                request.error, request.flow = batch.error, None
                finished.append(request)
                continue
            if request.flow is None:
                request.flow = np.empty((request.pairs, 2, *batch.size), np.float32)
            request.flow[first : first + k] = batch.flow[at : at + k]
            request.solved += k
            at += k
            if request.solved == request.pairs:
                try:
                    request.codes[:] = quantize(request.flow, self.bound)
                except NonFiniteFlow as exc:  # the video's failure, like the solver's own errors
                    from flowprep.extract.worker import one_line

                    request.error = one_line(exc)
                request.flow = None
                finished.append(request)
        self.stats.finish_seconds += time.perf_counter() - start
        return finished

    def _solve(self, size: tuple[int, int], prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """All the pairs, in batches of at most the size's limit; out of memory halves the limit."""
        out, at, shrunk_from = [], 0, None
        while at < len(prev):
            limit = self.limits[size]
            try:
                out.append(self._solver(prev[at : at + limit], nxt[at : at + limit]))
            except self._oom as exc:
                if limit == 1:
                    raise RuntimeError(f"out of device memory on a single {size[1]}x{size[0]} frame pair") from exc
                shrunk_from = shrunk_from or limit
                self.limits[size] = limit // 2
                _release_cached_memory()
                continue
            at += limit
        if shrunk_from is not None:
            self.log(f"out of device memory with {shrunk_from} pairs of {size[1]}x{size[0]} per batch: "
                     f"batches of at most {self.limits[size]} from now on")
        return out[0] if len(out) == 1 else np.concatenate(out)


def _release_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
