"""How ``flowprep extract`` stops on Ctrl-C (SIGINT) and SIGTERM (scancel, docker stop, a deleted pod).

Within ``stop_on_signals()``, both raise in the main thread (``KeyboardInterrupt``; ``Terminated`` for
SIGTERM), so that the run unwinds: joblib ends the worker processes, the flow processes are stopped and
their shared memory removed, unfinished shards are closed; the command line then prints one line and
exits 130 or 143 (flowprep/exits.py). Python's default for SIGTERM would end the main process alone, at
once, leaving all of that behind; as PID 1 of a container, which has no default action, it would ignore
SIGTERM until the SIGKILL.

CPython drops an exception raised while a finalizer or weakref callback runs ("Exception ignored
in ..."), so a signal's exception can be lost; the signal is also remembered, and the run asks
``raise_if_stopped()`` at the points it would otherwise go on (each finished video, a dead worker).

The worker processes ignore SIGINT (``ignore_ctrl_c``, their initializer): Ctrl-C reaches the whole
process group, and a worker that died of it would be taken for a crash; the main process ends them.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run unwinds as on Ctrl-C."""


_received: int | None = None  # the stop signal received within stop_on_signals(), if any


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise in the main thread within the block (a signal that is ignored, as under
    ``nohup`` or in a shell's background job, stays ignored). Ctrl-C raises each time, as Python's own
    handler does; SIGTERM only the first time, so that a second one does not cut the clean-up short."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        global _received
        first = _received is None
        _received = _received or signum
        if signum == signal.SIGINT or first:
            raise _exception(signum)

    for s, before in previous.items():
        if before != signal.SIG_IGN:
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)
        _received = None


def stopped() -> int | None:
    """The stop signal received within ``stop_on_signals()``, if any."""
    return _received


def raise_if_stopped() -> None:
    """Raise the stop signal's exception again, in case the first one was lost in a finalizer."""
    if _received is not None:
        raise _exception(_received)


def ignore_ctrl_c() -> None:
    """A worker process's initializer: SIGINT ignored (the main process ends the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
