"""The main process's side of the flow processes (flowprep/torchflow/service.py): start one per device, stop them,
and turn an error of the run while one of them is dead into ``FlowProcessLost`` naming it."""

from __future__ import annotations

import glob
import json
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flowprep.config import FlowConfig
from flowprep.torchflow.service import (ANSWER_TIMEOUT_S, START_TIMEOUT_S, WAIT_S, Address, FlowProcessLost,
                                        devices)

SHM = "/dev/shm"  # where Linux keeps POSIX shared memory blocks


class FlowProcesses:
    """``with FlowProcesses(flow, ...) as addresses:`` one flow process per device for the block.

    Each is ``python -m flowprep.torchflow.service`` (a plain subprocess: nothing of the caller's ``__main__``
    is imported again, and no CUDA or OpenMP state is inherited), configured through its stdin, which
    then stays open: "stop" ends it, and so does end of file (the main process is gone). An error in the
    block while a flow process is dead becomes ``FlowProcessLost`` naming it; after a ``FlowProcessLost``
    (a worker's: dead, unreachable, or hung past ``answer_timeout_s``) a flow process still alive a second
    later is killed, not asked to stop: a hung one would not answer. ``stats`` holds each process's batch
    statistics after the block; ``pids`` their process ids, in the order of the addresses, while it runs.
    """

    def __init__(self, flow: FlowConfig, *, max_batch: int, wait_s: float = WAIT_S,
                 answer_timeout_s: float = ANSWER_TIMEOUT_S) -> None:
        self.flow, self.max_batch, self.wait_s = flow, max_batch, wait_s
        self.folder = tempfile.mkdtemp(prefix="flowprep-flow-")  # 0700: the sockets are this user's
        self.addresses = tuple(Address(os.path.join(self.folder, f"{i}.sock"), os.urandom(16), dev, answer_timeout_s)
                               for i, dev in enumerate(devices(flow.device)))
        self.procs: list[tuple[subprocess.Popen, Address]] = []
        self.stats: list[dict[str, Any]] = []

    def __enter__(self) -> tuple[Address, ...]:
        env = dict(os.environ)  # the children import this flowprep, wherever it was imported from
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        try:
            for address in self.addresses:
                # Its own session: Ctrl-C at a terminal reaches the main process, which stops it (even while
                # it imports); if the main process dies anyhow, the end of its stdin stops it.
                proc = subprocess.Popen([sys.executable, "-m", "flowprep.torchflow.service"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, start_new_session=True)
                self.procs.append((proc, address))
                blob = pickle.dumps((address, self.flow, self.max_batch, self.wait_s))
                proc.stdin.write(len(blob).to_bytes(8, "little") + blob)
                proc.stdin.flush()
            for proc, address in self.procs:
                if _read_line(proc, START_TIMEOUT_S) != b"ready\n":
                    raise FlowProcessLost(f"the flow process ({address.device}) did not start ({_exit(proc)})")
        except BaseException:
            self._stop()
            raise
        return self.addresses

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.procs]

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        hung = []
        if isinstance(exc, FlowProcessLost):  # a worker saw its socket close (the process is ending) or timed out
            for proc, address in self.procs:
                try:
                    proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    hung.append(proc)  # alive after all: hung, or lost otherwise (the worker's message says how)
        dead = [(proc, address) for proc, address in self.procs if proc.poll() is not None]
        for proc in hung:  # SIGKILL ends a stopped or stuck process too; the run ends anyway
            proc.kill()
            proc.wait()
        self._stop()
        if exc is not None and dead and not isinstance(exc, KeyboardInterrupt):
            proc, address = dead[0]
            raise FlowProcessLost(f"the flow process ({address.device}) died ({_exit(proc)})") from exc

    def _stop(self) -> None:
        for proc, address in self.procs:
            stats: dict[str, Any] = {"error": f"it had ended ({_exit(proc)})"}
            if proc.poll() is None:
                try:
                    proc.stdin.write(b"stop\n")
                    proc.stdin.flush()
                    line = _read_line(proc, 10.0)
                    stats = json.loads(line) if line else {"error": "no answer to stop"}
                except OSError as exc:  # it died just now (broken pipe)
                    stats = {"error": f"died before stopping ({type(exc).__name__})"}
            self.stats.append({"device": address.device, **stats})
            proc.stdin.close()  # end of file: it stops if it has not
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self.procs = []
        shutil.rmtree(self.folder, ignore_errors=True)
        # Blocks of workers killed while they waited (joblib ends the others when one fails); the workers
        # do not hand them to the resource tracker (flowprep/torchflow/client.py)
        for block in Path(SHM).glob(glob.escape(self.addresses[0].block_prefix) + "*") if self.addresses else ():
            block.unlink(missing_ok=True)


def _read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    """One line of the process's stdout; b"" when it ends or stays silent for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return b""
        byte = os.read(proc.stdout.fileno(), 1)  # unbuffered: nothing after the line is taken
        if not byte:
            return b""
        line += byte
    return line


def _exit(proc: subprocess.Popen) -> str:
    code = proc.poll()
    if code is None:
        return "no answer"
    if code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exit status {code}"
