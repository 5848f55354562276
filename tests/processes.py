"""Processes seen from /proc, for tests that kill, stop or signal a real run and then check what it left
behind (``from processes import descendants, alive``; tests/ is on sys.path through tests/conftest.py); and
``bound_by_file_modes``, for a real second process that file permissions must stop, also when tests run as root."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def bound_by_file_modes(cmd: list[str]) -> list[str]:
    """``cmd`` so that file modes bind it: as root, through setpriv without the capabilities that bypass them
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), since root reads and writes everywhere; the test is skipped where
    setpriv (util-linux) is missing. Unchanged for any other user."""
    if os.geteuid() != 0:
        return list(cmd)
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) when run as root")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]


def stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, parent, ..., start time), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> list[tuple[int, str]]:
    """Every live process below ``pid`` (from /proc: each one's parent), as (pid, start time)."""
    stats = {int(p.name): stat(int(p.name)) for p in Path("/proc").glob("[0-9]*")}
    stats = {p: fields for p, fields in stats.items() if fields}
    found, frontier = [], {pid}
    while frontier:
        kids = {p for p, fields in stats.items() if int(fields[1]) in frontier}
        found += [(p, stats[p][19]) for p in kids]
        frontier = kids
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(process: tuple[int, str]) -> bool:
    """Still running (not a zombie), and not another process that got its pid since."""
    fields = stat(process[0])
    return fields is not None and fields[0] != "Z" and fields[19] == process[1]
