"""The worker side of the flow process (flowprep/torchflow/service.py): frames out, codes back, one block each chunk.

The block a worker creates (and unlinks) holds the chunk's gray frames, (n, H, W) uint8, followed by room
for its codes, (n - 1, 2, H, W) uint8, which the flow process writes; the only pickled message is
``("flow", block name, n, H, W)``, answered by ``("ok",)`` or ``("error", text)``, after a ``("progress",)``
for every batch the flow process finished meanwhile: a worker that gets none for ``Address.answer_timeout_s``
gives up (``FlowProcessLost``: the flow process hangs).
"""

from __future__ import annotations

import _posixshmem
import contextlib
import os
import secrets
import threading
from multiprocessing import resource_tracker
from multiprocessing.connection import Client, Connection
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from flowprep.torchflow.service import Address, FlowProcessLost


class FlowError(RuntimeError):
    """The flow process answered a chunk with an error (recorded as the video's failure)."""


class FlowClient:
    """``codes(gray)``: (n, H, W) gray uint8 frames -> (n - 1, 2, H, W) uint8 flow codes, by a flow process.

    With several flow processes (GPUs), a worker sends its chunks to each in turn, starting at one chosen
    by its pid: every GPU gets an even share of every worker's chunks, whatever the workers' pids. A chunk's
    codes do not depend on the process that solved it (each pair is solved on its own).
    """

    def __init__(self, addresses: tuple[Address, ...]) -> None:
        self.addresses = addresses
        self._next = os.getpid() % len(addresses)
        self._conns: dict[int, Connection] = {}

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def codes(self, gray: np.ndarray) -> np.ndarray:
        n, h, w = gray.shape
        if n < 2:
            return np.empty((0, 2, h, w), np.uint8)
        i, self._next = self._next, (self._next + 1) % len(self.addresses)
        address = self.addresses[i]
        frame_bytes, code_bytes = n * h * w, (n - 1) * 2 * h * w
        # Named after the run and this process. Not left to the resource tracker: a worker killed while it
        # waits (joblib ends the others when one fails) would have its tracker unlink it with a warning on
        # stderr; the main process unlinks what its workers left instead (FlowProcesses), and a flow process
        # whose main process is gone the blocks it holds.
        block = SharedMemory(f"{address.block_prefix}{os.getpid()}-{secrets.token_hex(6)}", create=True,
                             size=frame_bytes + code_bytes)
        resource_tracker.unregister(block._name, "shared_memory")  # noqa: SLF001 - no public way before 3.13
        try:
            np.ndarray(gray.shape, np.uint8, block.buf)[:] = gray
            try:
                if i not in self._conns:
                    self._conns[i] = _connect(address)
                self._conns[i].send(("flow", block.name, n, h, w))
                reply = _answer(self._conns[i], address)
            except (OSError, EOFError) as exc:  # refused, reset, closed: the process is gone
                self.close()
                raise FlowProcessLost(f"the flow process ({address.device}) cannot be reached: "
                                      f"{type(exc).__name__}") from exc
            except BaseException:  # interrupted between question and answer: the next answer would be stale
                self.close()
                raise
            if reply[0] != "ok":  # the solver failed on these frames: the video fails, the run goes on
                raise FlowError(f"the flow process failed on this video's frames: {reply[1]}")
            return np.ndarray((n - 1, 2, h, w), np.uint8, block.buf, offset=frame_bytes).copy()
        finally:
            block.close()
            with contextlib.suppress(FileNotFoundError):  # by the flow process, if the main process is gone
                _posixshmem.shm_unlink(block._name)  # noqa: SLF001 - block.unlink() would unregister it again


def _connect(address: Address) -> Connection:
    """A connection to the flow process, within ``address.answer_timeout_s``: a hung process's socket still
    takes connections (the kernel's backlog), but the handshake would wait for it forever."""
    done: dict[str, object] = {}

    def connect() -> None:
        try:
            done["conn"] = Client(address.path, "AF_UNIX", authkey=address.authkey)
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            done["error"] = exc

    thread = threading.Thread(target=connect, name="flowprep-connect", daemon=True)
    thread.start()
    thread.join(address.answer_timeout_s)
    if thread.is_alive():  # left behind, blocked: the worker ends with the run
        raise FlowProcessLost(f"the flow process ({address.device}) took no connection in "
                              f"{address.answer_timeout_s:g} s: it hangs (a stuck kernel or a deadlock?)")
    if "error" in done:
        raise done["error"]
    return done["conn"]


def _answer(conn: Connection, address: Address) -> tuple:
    """The answer to the request just sent, skipping ``("progress",)``; ``FlowProcessLost`` when no batch was
    finished for ``address.answer_timeout_s`` (the flow process is alive but hung)."""
    while True:
        if not conn.poll(address.answer_timeout_s):
            raise FlowProcessLost(f"the flow process ({address.device}) finished no batch in "
                                  f"{address.answer_timeout_s:g} s: it hangs (a stuck kernel or a deadlock?)")
        reply = conn.recv()
        if reply[0] != "progress":
            return reply


_LOCAL = threading.local()


def client_for(addresses: tuple[Address, ...]) -> FlowClient:
    """One client (one connection) per thread of a worker process, reused across its videos; a worker
    process reused by a later run (loky keeps them) drops the connection of the earlier one."""
    client = getattr(_LOCAL, "client", None)
    if client is None or client.addresses != addresses:
        if client is not None:
            client.close()
        client = _LOCAL.client = FlowClient(addresses)
    return client
