"""One writer per output task: a lock file beside the task's manifest (``manifest.json.lock``).

Two runs of the same task into one ``--out`` would write the same files; the second one is refused
at once, naming the holder (host, pid, start time). Array tasks with different indexes lock
different files, so they keep sharing one ``--out``.

How a lock is held and when it is stale:

- The holder keeps an exclusive ``flock`` on the file for the whole run and writes its host, pid,
  process start time and a random token into it. The kernel (or the NFSv4 / CephFS / Lustre lock
  manager) drops the ``flock`` when the process dies, ``kill -9`` included, so on the same host a
  dead run's lock is free at once and is taken over.
- A second host may not see our ``flock`` (an NFS mount with ``nolock`` or ``local_lock``). So the
  holder also touches the file every ``HEARTBEAT_S`` seconds, and a lock written by *another host*
  whose file was touched less than ``STALE_AFTER_S`` seconds ago counts as held even when its
  ``flock`` is free: a vanished host's lock is taken over after ``STALE_AFTER_S`` (2 minutes).
- On a file system without locks at all, the same-host rule falls back to "is that pid, with that
  start time, still alive".
- A run whose lock file disappears or names another holder has lost its lock: it stops with the
  retriable status (``exits.RETRY``) instead of writing on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flowprep.exits import BusyError, RetriableError

SUFFIX = ".lock"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (/proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    return start is None or _process_start(pid) in (None, start)


def describe(holder: dict[str, Any]) -> str:
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"


class OutputLock:
    """``with OutputLock(path):`` holds the lock for the block; ``check()`` raises once it is lost."""

    def __init__(self, path: str | Path, *, heartbeat_s: float | None = None,
                 stale_after_s: float | None = None) -> None:
        self.path = Path(path)
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.stale_after_s = STALE_AFTER_S if stale_after_s is None else stale_after_s
        self.took_over: dict[str, Any] | None = None  # the dead holder whose lock was taken, if any
        self._fd: int | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                   "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "token": secrets.token_hex(8)}

    # -- acquiring -----------------------------------------------------------------------------
    def acquire(self) -> "OutputLock":
        for _ in range(10):  # the file can be replaced between open and flock: then try again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                kernel_lock = self._flock(fd)
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    raise FileNotFoundError  # released and removed by its holder meanwhile
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                self._check_previous(fd, kernel_lock)
                self._write_me(fd)
            except BaseException:
                os.close(fd)  # drops our flock; the file (another holder's) stays as it is
                raise
            self._fd = fd
            self._thread = threading.Thread(target=self._beat, name="flowprep-lock-heartbeat", daemon=True)
            self._thread.start()
            return self
        raise RetriableError(f"cannot take the lock {self.path}: it keeps being replaced")

    def _flock(self, fd: int) -> bool:
        """True when the kernel lock is ours; False on a file system without locks."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            raise BusyError(self._busy_text(self._read(fd))) from None
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                return False
            raise

    def _check_previous(self, fd: int, kernel_lock: bool) -> None:
        prev = self._read(fd)
        if not prev.get("token"):
            return  # a new file, or one a holder released
        if prev.get("host") != self.me["host"]:
            age = time.time() - os.fstat(fd).st_mtime
            if age < self.stale_after_s:
                raise BusyError(self._busy_text(prev, age=age))
        elif not kernel_lock and _pid_alive(int(prev.get("pid", 0)), prev.get("pid_start")):
            raise BusyError(self._busy_text(prev))
        self.took_over = prev  # its process is gone (same host) or silent for too long (another host)

    def _busy_text(self, holder: dict[str, Any], age: float | None = None) -> str:
        out = self.path.parent
        text = f"{out} is being written by another run ({describe(holder)}; lock {self.path.name})"
        if age is not None:
            text += (f"; it is on another host and touched the lock {age:.0f} s ago: it counts as gone after "
                     f"{self.stale_after_s:.0f} s without a heartbeat")
        return text + ": wait for it to finish, or use another --out"

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            data = os.pread(fd, 1 << 16, 0)
            holder = json.loads(data) if data.strip() else {}
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _write_me(self, fd: int) -> None:
        data = json.dumps(self.me).encode() + b"\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    # -- holding -------------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._touch()

    def _touch(self) -> None:
        try:
            with open(self.path, "rb") as f:
                holder = json.loads(f.read() or b"{}")
            if holder.get("token") != self.me["token"]:
                self._lost = f"lock {self.path} now names another run ({describe(holder)})"
                return
            os.utime(self.path)
        except FileNotFoundError:
            self._lost = f"lock {self.path} was removed"
        except (OSError, ValueError) as exc:
            self._lost = f"lock {self.path} cannot be read ({exc})"

    def check(self) -> None:
        """Raise ``RetriableError`` when the lock was lost (removed, or taken over by another run)."""
        if self._lost:
            raise RetriableError(f"lost the lock of {self.path.parent}: {self._lost}; this run stopped writing")

    def release(self, *, remove: bool = True) -> None:
        """Give the lock up; its file is removed unless ``remove`` is False (a marker that the output is unfinished,
        which the next run takes over and finds in ``took_over``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._fd is None:
            return
        try:
            self._touch()
            if not self._lost and remove:
                self.path.unlink(missing_ok=True)  # contenders re-check the inode after their flock
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
