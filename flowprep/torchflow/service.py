"""The flow process: one per device, solving TV-L1 (flowprep/torchflow/tvl1.py) for every worker process.

With ``--engine torch`` (and the local worker processes), the workers decode and write their per-video
files as with OpenCV, but send each chunk's gray frames here instead of computing its flow:

    worker                                          flow process (one per GPU; one for --device cpu)
    frames -> shared memory block  --("flow", name, n, H, W)-->  attach, queue (flow_batch.Batcher):
                                                                 pairs of several workers' chunks of one
                                                                 frame size form a batch; solve; quantize;
    codes <- the same block        <--("ok") or ("error", text)--  codes written into the block
                                   <--("progress")--  to every waiting worker, each time a batch is finished

The main thread receives requests and solves batches; a finisher thread puts each solved batch's flow
into its requests, quantizes the complete ones and answers, while the next batch is being solved.

Only the small messages are pickled (over a Unix socket, ``multiprocessing.connection``); frames and
codes stay in the block the worker created (and unlinks). The worker side is flowprep/torchflow/client.py,
the main process's (start, stop, report a death) flowprep/torchflow/processes.py.
A worker whose flow process is gone raises ``FlowProcessLost`` (retriable: the run ends with exit 75
and a rerun resumes), never a video failure; so does one whose flow process finished no batch for
``Address.answer_timeout_s`` while it waited (alive but hung; the main process then kills it). An error
of the solver on a batch (``("error", ...)``) is a failure of the videos in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import AuthenticationError, resource_tracker
from multiprocessing.connection import Connection, Listener, wait
from multiprocessing.shared_memory import SharedMemory
from typing import BinaryIO

import numpy as np

from flowprep.config import FlowConfig
from flowprep.exits import RetriableError
from flowprep.torchflow.batching import Batch, Batcher, Request

# Test-only fault injection: the flow process kills itself (SIGKILL, as kill -9) on this request number.
KILL_ENV = "FLOWPREP_TEST_KILL_FLOW_AT"
WAIT_S = 0.005  # how long a batch waits for the chunks of workers that are still decoding
FLOW_BATCH = 128  # most pairs per solver call (--flow-batch); out of memory lowers it
START_TIMEOUT_S = 300.0
# A worker waiting for an answer gives up (FlowProcessLost: exit 75, the rerun resumes) when its flow process
# finished no batch for this long: the process is alive but hung (a stuck kernel, a deadlock). Generous: the
# first batch of a size includes importing torch and, on a GPU, compiling; a CPU batch of --flow-batch large
# pairs takes minutes. Queueing behind other workers' batches does not count (every finished batch tells the
# waiting workers). Set by FLOWPREP_FLOW_TIMEOUT_S (seconds) for a run; not a flag: a scheduler's wall time
# bounds a run anyway, and tests need it short.
ANSWER_TIMEOUT_S = 1800.0
TIMEOUT_ENV = "FLOWPREP_FLOW_TIMEOUT_S"


class FlowProcessLost(RetriableError):
    """The flow process died or cannot be reached: the run stops (exit 75); a rerun resumes."""


@dataclass(frozen=True)
class Address:
    path: str  # the flow process's Unix socket
    authkey: bytes
    device: str
    answer_timeout_s: float = ANSWER_TIMEOUT_S  # a worker waits this long for a batch to finish (see above)

    @property
    def block_prefix(self) -> str:
        """The names of the run's shared memory blocks (``<prefix><worker pid>-<random>``): its folder's name."""
        return os.path.basename(os.path.dirname(self.path)) + "-"


def devices(device: str) -> list[str]:
    """``--device`` -> one device per flow process: "cpu", every visible GPU for "cuda", or the listed ones."""
    kind, _, which = device.partition(":")
    if kind == "cpu":
        return ["cpu"]
    if which:
        return [f"{kind}:{i}" for i in which.split(",")]
    import torch

    return [f"{kind}:{i}" for i in range(torch.cuda.device_count())]


# ------------------------------------------------------------------------------------- flow process side


def _attach(name: str) -> SharedMemory:
    block = SharedMemory(name=name)
    # Python < 3.13 registers attached blocks too, and its resource tracker would unlink the worker's
    # block when this process exits (and warn): the worker owns it.
    resource_tracker.unregister(block._name, "shared_memory")  # noqa: SLF001 - no public way before 3.13
    return block


def _torch_solver(flow: FlowConfig, device: str):
    import torch

    from flowprep.torchflow.tvl1 import tvl1_flow

    dev = torch.device(device)

    def solve(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        a, b = torch.from_numpy(prev).to(dev), torch.from_numpy(nxt).to(dev)
        return tvl1_flow(a, b, flow.tvl1).cpu().numpy()

    return solve


def serve(address: Address, flow: FlowConfig, max_batch: int, wait_s: float = WAIT_S, *,
          control_in: int = 0, control_out: BinaryIO | None = None) -> None:
    """The flow process's main loop, until the main process writes "stop" (answered with the batch
    statistics as one JSON line) or goes away (end of file on ``control_in``).

    It listens (and says "ready") before importing torch: the workers start meanwhile, and their first
    requests wait in the socket until the solver is there.
    """
    out = control_out or sys.stdout.buffer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C sent to us too: the main process stops us

    def log(text: str) -> None:
        print(f"flow process ({address.device}): {text}", file=sys.stderr, flush=True)

    listener = Listener(address.path, "AF_UNIX", backlog=64, authkey=address.authkey)
    accepted: queue.SimpleQueue[Connection] = queue.SimpleQueue()
    wake_r, wake_w = os.pipe()
    closing = threading.Event()

    def accept() -> None:
        while True:
            try:
                conn = listener.accept()
            except (AuthenticationError, EOFError, ConnectionError) as exc:  # a stranger, or a worker that died
                log(f"refused a connection ({type(exc).__name__})")  # during the handshake: go on
                continue
            except OSError as exc:  # the socket itself failed: workers that cannot connect end the run (75)
                if not closing.is_set():
                    log(f"cannot accept connections any more: {exc}")
                return
            accepted.put(conn)
            os.write(wake_w, b"x")

    threading.Thread(target=accept, daemon=True).start()
    out.write(b"ready\n")
    out.flush()

    import torch

    # One thread: on the CPU, intra-op threads of a process beside busy workers contend (a batch of 7
    # tiny pairs took 15 s with 2 threads on a loaded 2-core machine, 1 s with one); on a GPU the host
    # side is only copies.
    torch.set_num_threads(1)
    if address.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(address.device))
    batcher = Batcher(_torch_solver(flow, address.device), bound=flow.bound, max_batch=max_batch, log=log)
    kill_at = int(os.environ.get(KILL_ENV, "0"))
    clients: list[Connection] = []
    busy: dict[Connection, tuple[Request, SharedMemory]] = {}  # the finisher answers: guarded by ``lock``
    lock = threading.Lock()
    # Solving runs here; putting flow into the blocks, quantizing and answering run on one finisher thread,
    # batch after batch in order, beside the next solve (both release the GIL in their heavy parts).
    finisher = ThreadPoolExecutor(1, thread_name_prefix="flowprep-finish")
    pending: deque[Future] = deque()
    first_arrival = None

    def finish(batch: Batch) -> None:
        try:
            for request in batcher.finish(batch):
                conn = request.client
                with lock:
                    entry = busy.pop(conn, None)
                if entry is None:
                    continue  # its worker was dropped and the block released
                _release(*entry)
                try:
                    conn.send(("ok",) if request.error is None else ("error", request.error))
                except OSError:  # the worker died meanwhile; the main loop drops it when it reads its end of file
                    continue
            with lock:
                waiting = list(busy)
            for conn in waiting:  # alive and solving: their clocks (answer_timeout_s) start again
                with contextlib.suppress(OSError):
                    conn.send(("progress",))
            batcher.stats.serving_seconds = time.monotonic() - first_arrival
        finally:
            os.write(wake_w, b"f")  # wake the main loop: its batch conditions changed (or this failed)

    def release(conn: Connection) -> None:
        """After the batches already solved are finished (it runs on the finisher): the block of a dropped worker."""
        with lock:
            entry = busy.pop(conn, None)
        if entry is not None:
            _release(*entry)

    def drop(conn: Connection) -> None:
        """Forget a worker that is gone (killed) and its request."""
        clients.remove(conn)
        batcher.cancel(conn)
        pending.append(finisher.submit(release, conn))

    def in_flight() -> int:
        """Finisher jobs not done yet (a bug in one ends the process here, with its traceback)."""
        while pending and pending[0].done():
            pending.popleft().result()
        return len(pending)

    def due() -> float | None:
        """Seconds until the next batch should run (0: now), None while nothing waits. A batch runs when
        one is full, when every connected worker waits for an answer from here (nobody can add to it; with
        several GPUs, workers alternate between them, so this is rare), or when its oldest request has
        waited ``wait_s`` for the chunks of workers still decoding; and only while fewer than two solved
        batches wait for the finisher (their flow is held in memory)."""
        oldest = batcher.oldest()
        if oldest is None or in_flight() >= 2:
            return None
        with lock:
            everyone = len(busy) == len(clients)
        if batcher.full() or everyone:
            return 0.0
        return max(0.0, oldest + wait_s - time.monotonic())

    while True:
        for ready in wait([control_in, wake_r, *clients], due()):
            if ready == control_in:  # "stop", or end of file: the main process is gone (killed, perhaps)
                finisher.shutdown(wait=True)
                in_flight()
                if os.read(control_in, 64):
                    out.write(json.dumps(asdict(batcher.stats)).encode() + b"\n")
                    out.flush()
                else:  # nobody will clean up after workers killed with the main process: their waiting blocks
                    with lock:
                        for _, block in busy.values():
                            with contextlib.suppress(OSError):
                                block.unlink()
                closing.set()
                listener.close()  # removes the socket file
                with contextlib.suppress(OSError):  # not empty (another device's socket) or removed already
                    os.rmdir(os.path.dirname(address.path))
                return
            if ready == wake_r:
                os.read(wake_r, 4096)
                while not accepted.empty():
                    clients.append(accepted.get())
                continue
            try:
                _, name, n, h, w = ready.recv()
            except (EOFError, OSError):  # the worker is gone (killed)
                drop(ready)
                continue
            if kill_at and batcher.stats.requests + 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                block = _attach(name)
            except FileNotFoundError:  # unlinked: the worker died after asking (it unlinks only after an answer)
                drop(ready)
                continue
            frames = np.ndarray((n, h, w), np.uint8, block.buf)
            codes = np.ndarray((n - 1, 2, h, w), np.uint8, block.buf, offset=n * h * w)
            request = Request(frames, codes, client=ready)
            first_arrival = first_arrival or request.arrived
            with lock:
                busy[ready] = (request, block)
            batcher.add(request)
        if due() == 0.0:
            batch = batcher.take()
            batcher.solve(batch)
            pending.append(finisher.submit(finish, batch))


def _release(request: Request, block: SharedMemory) -> None:
    request.frames = request.codes = None  # the views must go before the block can close
    block.close()


def _read_exact(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError("the main process went away before configuring the flow process")
        data += chunk
    return data


if __name__ == "__main__":  # started by FlowProcesses: configuration on stdin (length, pickle)
    _config = pickle.loads(_read_exact(0, int.from_bytes(_read_exact(0, 8), "little")))
    serve(*_config)
