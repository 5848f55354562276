"""The command line's failures: one exception class per domain, each with its exit status (flowprep/exits.py).

A crash of the environment (disk full, I/O error, lost lock, lost cluster, a bug) becomes one line and
exit status 75 through ``environment_failure``; its traceback goes to ``OUT/flowprep-error.log``.
"""

from __future__ import annotations

import errno
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import click

from flowprep import exits


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinity (which compare False with every bound, so a plain
    range lets them through: ``--bound nan`` would fail inside every worker, ``--bound inf`` store infinite
    ``scale_factor``s)."""

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Bound(FiniteFloat):
    """``--bound``: a positive finite number the shards can store (``scale_factor`` and ``add_offset`` are float32;
    ``--bound 1e308`` stored infinity, ``--bound 1e-50`` zero, and the shards passed verify)."""

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        from flowprep.format import scale_and_offset

        number = super().convert(value, param, ctx)
        try:
            scale_and_offset(number)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return number


class OutPath(click.Path):
    """``click.Path`` for an output that may not exist yet: the nearest existing path above it must be a folder.

    Otherwise creating it fails with ENOTDIR deep inside the run, which read as a crash of the environment
    (exit 75, "rerun to resume") or a traceback, while the command line itself is what is wrong. So does an output
    folder that is a link to nothing (EEXIST: "File exists", exit 75, forever)."""

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        path = super().convert(value, param, ctx)
        if not self.file_okay and os.path.islink(path) and not os.path.exists(path):
            self.fail(f"{os.fsdecode(path)!r} is a link to {os.fsdecode(os.readlink(path))}, which does not exist: "
                      "create that folder or give another --out", param, ctx)
        for parent in Path(os.fsdecode(path)).absolute().parents:
            if os.path.lexists(parent):
                if not parent.is_dir():
                    self.fail(f"{os.fsdecode(path)!r} cannot be created: {parent} is not a folder", param, ctx)
                break
        return path


class RunError(click.ClickException):
    """Input the command cannot use, found after parsing (one line, exit status 2 like usage errors)."""

    exit_code = exits.USAGE.code


_UNWRITABLE_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                      errno.EROFS: "read-only file system"}


def unwritable_cause(exc: BaseException) -> str | None:
    """"permission denied" or "read-only file system" for an error on a named file that no rerun gets past (not a
    failed environment: the mount or the modes must change first); None for any other error."""
    if not isinstance(exc, OSError) or exc.filename is None:
        return None
    return _UNWRITABLE_ERRNOS.get(exc.errno) or ("permission denied" if isinstance(exc, PermissionError) else None)


def unwritable_output(exc: BaseException, out: Path) -> RunError | None:
    """``cannot write into OUT: permission denied (FILE)`` (or ``read-only file system``), exit 2 as ``flowprep
    extract`` says it (a rerun fails the same way: not a failed environment), when the file denied is ``out``, one
    in it or a folder above it; None when it is another (an input) or the error is another."""
    cause = unwritable_cause(exc)
    if cause is None or not isinstance(exc, OSError):
        return None
    denied, mine = Path(os.path.abspath(os.fsdecode(exc.filename))), Path(os.path.abspath(out))
    if not (denied == mine or mine in denied.parents or denied in mine.parents):
        return None
    return RunError(f"cannot write into {out}: {cause} ({os.fsdecode(exc.filename)})")


def unreadable_input(exc: PermissionError, where: Path) -> RunError:
    """``cannot read FILE: permission denied (fix its permissions)``, exit 2: an input this user may not read is
    unusable input, as an unreadable folder is (a rerun fails the same way: not a failed environment); ``where``
    stands for the file when the error does not name it."""
    name = os.fsdecode(exc.filename) if exc.filename is not None else f"a file in {where}"
    return RunError(f"cannot read {name}: permission denied (fix its permissions)")


class ClusterError(click.ClickException):
    """The Dask cluster cannot run the job; retrying later may help (exit status 3)."""

    exit_code = exits.CLUSTER.code


class BusyOutput(click.ClickException):
    """Another live run holds this task's output (exit status 4)."""

    exit_code = exits.BUSY.code


class EnvironmentFailure(click.ClickException):
    """The run stopped because its environment failed; a rerun resumes (exit status 75)."""

    exit_code = exits.RETRY.code


ERROR_LOG = "flowprep-error.log"
_ENVIRONMENT_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EIO: "I/O error",
                       errno.EROFS: "read-only file system"}


def environment_cause(exc: BaseException) -> str | None:
    """"disk full" and the like, found anywhere in the exception's chain (HDF5 puts the errno in its text)."""
    number = _environment_errno(exc)
    return None if number is None else _ENVIRONMENT_ERRNOS[number]


def _environment_errno(exc: BaseException) -> int | None:
    """The first errno of ``_ENVIRONMENT_ERRNOS`` in the exception's chain: an OSError's, or one in its text."""
    seen: BaseException | None = exc
    visited: set[int] = set()  # a chain can loop (an exception re-raised as its own cause's context)
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, OSError) and seen.errno in _ENVIRONMENT_ERRNOS:
            return seen.errno
        for number in _ENVIRONMENT_ERRNOS:
            if f"errno = {number}," in str(seen) or os.strerror(number) in str(seen):
                return number
        seen = seen.__cause__ or seen.__context__
    return None


def environment_failure(exc: BaseException, out: Path, *, action: str = "rerun the same command to resume",
                         log: bool = True, log_name: str = ERROR_LOG,
                         unsaved: str = "traceback with --debug") -> EnvironmentFailure:
    """One line for a crash of the run (disk full, I/O error, lost lock, a bug); the traceback goes to
    OUT/flowprep-error.log (``log``, ``log_name``; commands that only read OUT do not write there; where it
    cannot be written, the line says ``unsaved``)."""
    import traceback

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        strerror = " ".join(str(exc.strerror).split())  # h5py's holds HDF5's whole message, line breaks and all
        if strerror not in text:
            text = f"{strerror}: {text}"
    number = _environment_errno(exc)
    if number is not None:
        # the system's own words first: HDF5's message puts them after a few hundred characters of its own
        strerror = os.strerror(number)
        text = f"{_ENVIRONMENT_ERRNOS[number]} ({out}): {text if strerror in text[:200] else f'{strerror}: {text}'}"
    elif not isinstance(exc, (exits.RetriableError, OSError)):
        text = f"unexpected {type(exc).__name__}: {text}"
    if len(text) > 400:
        text = text[:400] + " ..."
    where = unsaved
    if log:
        try:
            with open(out / log_name, "a") as f:
                f.write(f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} pid {os.getpid()}\n")
                f.write("".join(traceback.format_exception(exc)))
            where = f"traceback in {out / log_name}"
        except OSError:
            pass  # the disk that failed the run; --debug shows the traceback
    return EnvironmentFailure(f"{text} ({where}); {action}")
