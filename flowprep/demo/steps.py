"""Running the demo's steps: ``Steps`` runs each command line as a subprocess (one at a time, or several side by
side), prints it first as a user would type it and times it (wall and CPU); ``DemoError``, the one-line failure
that carries the failed command's exit status; ``tool``, where a console script is found.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click


class DemoError(click.ClickException):
    """A step failed: one line, and the step's own exit status (at least 1)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code if exit_code > 0 else 1


def tool(name: str) -> str:
    """The console script ``name`` of this environment (next to its python), else the one on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        raise DemoError(f"expected the {name!r} command next to {sys.executable} or on PATH; "
                        "install the package first (make setup)")
    return found


class Steps:
    """Runs the steps as subprocesses, prints each command as a user would type it, times them."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet, self.timings, self.reused, self.start = quiet, [], [], time.perf_counter()

    def step(self, title: str) -> None:
        click.secho(f"\n== {title}", bold=True)

    def reuse(self, path: Path, why: str) -> None:
        self.reused.append(str(path))
        click.echo(f"   reusing {path} ({why})")

    def run(self, name: str, *args: str | Path | float, env: dict[str, str] | None = None) -> None:
        argv = [str(a) for a in args]
        click.secho("$ " + shlex.join([name, *argv]), fg="cyan")
        cpu0, t0 = _children_cpu(), time.perf_counter()
        proc = subprocess.run([tool(name), *argv], capture_output=self.quiet, text=True,
                              env={**os.environ, **env} if env else None)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
        self._done(name, argv, proc.returncode, proc.stderr or "", wall, cpu)

    def run_together(self, commands: list[tuple[str, list[Any]]], *, env: dict[str, str] | None = None) -> None:
        """Start all ``(name, args)`` commands at once, wait for all of them; their output (unless quiet) and
        times are shown as each ends, in the order given. A failure is raised once all have ended."""
        started = []
        for name, args in commands:
            argv = [str(a) for a in args]
            click.secho("$ " + shlex.join([name, *argv]), fg="cyan")
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            proc = subprocess.Popen([tool(name), *argv], stdout=out, stderr=err, text=True,
                                    env={**os.environ, **env} if env else None)
            started.append((name, argv, proc, out, err, time.perf_counter()))
        ended: dict[int, tuple[int, float, float]] = {}
        try:
            while len(ended) < len(started):
                for _, _, proc, _, _, t0 in started:
                    if proc.pid in ended:
                        continue
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:  # reaped here, so that each command's own CPU time is known
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        ended[pid] = (proc.returncode, time.perf_counter() - t0, usage.ru_utime + usage.ru_stime)
                time.sleep(0.1)
        finally:  # interrupted: the commands got the Ctrl-C too; let them stop where they can resume
            for _, _, proc, _, _, _ in started:
                if proc.pid not in ended:
                    proc.wait()
        failure = None
        for name, argv, proc, out, err, _ in started:
            code, wall, cpu = ended[proc.pid]
            out.seek(0)
            err.seek(0)
            stderr = err.read()
            if not self.quiet:
                click.secho(f"-- {shlex.join([name, *argv[:2]])} ...", dim=True)
                click.echo(out.read() + stderr, nl=False)
            try:
                self._done(name, argv, code, stderr, wall, cpu)
            except DemoError as e:
                failure = failure or e
        if failure is not None:
            raise failure

    def _done(self, name: str, argv: list[str], code: int, stderr: str, wall: float, cpu: float) -> None:
        self.timings.append({"command": shlex.join([name, *argv]), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
        if code != 0:
            status = f"exit {code}" if code > 0 else f"killed by signal {-code}"
            # Quiet: the command's own one-line error says why (otherwise it is already on screen).
            errors = [ln for ln in stderr.splitlines() if ln.startswith("Error:")]
            raise DemoError(f"step failed ({status}): {shlex.join([name, *argv])}"
                            + (f" ({errors[-1]})" if errors else "") + "; fix the cause and rerun to continue "
                            "(finished steps are reused), or add --force to start afresh", code)
        click.echo(f"   ({wall:.1f} s, {cpu:.1f} s CPU)")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
