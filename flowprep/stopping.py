"""How the command lines stop on Ctrl-C (SIGINT) and SIGTERM (scancel, docker stop, a deleted pod).

Two ways, one home for both:

- ``stop_on_signals()`` (``flowprep extract``): both raise in the main thread (``KeyboardInterrupt``;
  ``Terminated`` for SIGTERM), so that the run unwinds: joblib ends the worker processes, the flow processes
  are stopped and their shared memory removed, unfinished shards are closed; the command line then prints
  one line and exits 130 or 143 (``exit_code``, from flowprep/exits.py).
- ``stop_flag()`` (``trainer fit``): both set a ``StopFlag`` instead, which the training loop asks before each
  step; it saves where it stands and then leaves, with the same exit statuses. A second Ctrl-C raises
  ``KeyboardInterrupt`` (leave now); a second SIGTERM is ignored (SLURM signals every process of a job step
  and torchrun forwards the signal again).

Python's default for SIGTERM would end the main process alone, at once, leaving all of that behind; as
PID 1 of a container, which has no default action, it would ignore SIGTERM until the SIGKILL.

CPython drops an exception raised while a finalizer or weakref callback runs, and prints it ("Exception
ignored in ..." and a traceback), so a signal's exception can be lost; the signal is also remembered, and the
run asks ``raise_if_stopped()`` at the points it would otherwise go on (each finished video, a dead worker);
``trainer fit``'s loop asks ``StopFlag.raise_if_leaving()`` at each step for a second Ctrl-C lost that way.
Within both blocks that report is left out for the signal's own exception (the stop still prints its one
line); any other exception a finalizer drops is reported as before.

The worker processes ignore SIGINT (``ignore_ctrl_c``, their initializer; ``ignore_stop_signals``, the
trainer's DataLoader workers', also a SIGTERM that their parent did not send): Ctrl-C reaches the whole
process group, SLURM's SIGTERM every process of the step, and a worker that died of it would be taken for a
crash; the main process ends them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from flowprep import exits


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run unwinds as on Ctrl-C."""


_received: int | None = None  # the stop signal received within stop_on_signals(), if any


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def _handling(handler: Callable[[int, object], None]) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM within the block, in the main thread only (a signal that is ignored,
    as under ``nohup`` or in a shell's background job, stays ignored); the previous handlers after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, before in previous.items():
        if before != signal.SIG_IGN:
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise in the main thread within the block. Ctrl-C raises each time, as Python's own
    handler does; SIGTERM only the first time, so that a second one does not cut the clean-up short."""
    global _received

    def handler(signum: int, frame: object) -> None:
        global _received
        first = _received is None
        _received = _received or signum
        if signum == signal.SIGINT or first:
            raise _exception(signum)

    try:
        with _quiet_when_dropped(lambda: _received is not None), _handling(handler):
            yield
    finally:
        _received = None


@contextmanager
def _quiet_when_dropped(signalled: Callable[[], bool]) -> Iterator[None]:
    """Within the block, CPython's report of a ``KeyboardInterrupt`` that a finalizer or weakref callback dropped
    ("Exception ignored in ...", a traceback) is left out once ``signalled()``: the stop signal's own, which the
    run recovers at its next check. Any other exception a finalizer drops is reported as CPython would."""
    def unraisable(report: "sys.UnraisableHookArgs") -> None:
        if not (isinstance(report.exc_value, KeyboardInterrupt) and signalled()):
            previous_hook(report)

    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook


class StopFlag:
    """The first stop signal received (``signum``, None until then), for a loop that stops at its own safe
    points instead of unwinding wherever the signal finds it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.leave_now = False  # a second Ctrl-C came (its KeyboardInterrupt may have been dropped in a finalizer)

    def raise_if_leaving(self) -> None:
        """Raise the second Ctrl-C's ``KeyboardInterrupt`` again, in case CPython dropped it in a finalizer or
        weakref callback: the user's "leave now" is not lost."""
        if self.leave_now:
            raise KeyboardInterrupt

    def set(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "no signal"

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum or signal.SIGINT)


class Stopped(Exception):
    """A run that stopped at a safe point on a stop signal, after saving: its message is the one line to print,
    ``exit_code`` its exit status (143 for SIGTERM, 130 for Ctrl-C)."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def stop_flag() -> Iterator[StopFlag]:
    """SIGINT and SIGTERM set the yielded flag within the block. A second Ctrl-C raises ``KeyboardInterrupt``
    (whoever presses it twice wants out now), and the flag remembers it (``raise_if_leaving``) in case a finalizer
    dropped it; a second SIGTERM is ignored."""
    flag = StopFlag()

    def handler(signum: int, frame: object) -> None:
        if flag.signum is not None and signum == signal.SIGINT:
            flag.leave_now = True
            raise KeyboardInterrupt
        flag.set(signum)

    with _quiet_when_dropped(lambda: flag.leave_now), _handling(handler):
        yield flag


def exit_code(signum: int) -> int:
    """The exit status of a run stopped by ``signum``: 143 for SIGTERM, 130 for Ctrl-C (flowprep/exits.py)."""
    return exits.TERMINATED_CODE if signum == signal.SIGTERM else exits.INTERRUPTED.code


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


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader's ``worker_init_fn``: SIGINT ignored, and SIGTERM too unless the parent process sends it, so
    that a worker keeps serving batches while the main process finishes its step and saves (Ctrl-C reaches the
    terminal's process group, SLURM's SIGTERM every process of the step).

    The parent's own SIGTERM (torch's last resort at shutdown, multiprocessing's at exit) still ends the worker:
    ignored, the parent's join at exit would wait for ever. Python's handlers do not see who sent a signal,
    so SIGTERM is blocked and a thread takes it with ``sigwaitinfo``, which does (``si_pid``); threads started
    later inherit the block. torch's own SIGTERM handler in a worker would end it whoever sent it, and the main
    process would then stop with "DataLoader worker ... is killed by signal" wherever it stood: as it still does
    for a SIGTERM that reaches a worker between its fork and this function (milliseconds, when workers start)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not Linux: torch's handler stays
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def take_sigterm() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)  # as torch's handler does for the parent's SIGTERM

    threading.Thread(target=take_sigterm, name="sigterm", daemon=True).start()
