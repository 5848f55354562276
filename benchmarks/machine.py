"""What the extraction benchmark records about the machine, and how it measures CPU time and free cores."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import cv2
import decord
import h5py
import joblib
import numpy as np
from joblib import Parallel, delayed
from joblib.executor import get_memmapping_executor

import flowprep
from benchmarks.compression import hdf5plugin

def machine_facts() -> dict[str, Any]:
    info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in
            Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)}  # the last CPU's lines win
    here = Path(__file__).parent
    git = [subprocess.run(["git", *a], capture_output=True, text=True, cwd=here).stdout.strip()
           for a in (["rev-parse", "HEAD"], ["status", "--porcelain"])]
    plugin = hdf5plugin()
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": info.get("model name", platform.processor()),
            # 2 means the "cores" are SMT siblings: then 2 workers cannot reach 2x
            "threads_per_core": int(info["siblings"]) / int(info["cpu cores"]) if "cpu cores" in info else None,
            "platform": platform.platform(), "python": sys.version.split()[0], "flowprep": flowprep.__version__,
            "opencv": cv2.__version__, "decord": decord.__version__, "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version, "numpy": np.__version__, "joblib": joblib.__version__,
            "av": av.__version__, "hdf5plugin": plugin.version if plugin else None,
            "git_commit": git[0] or None, "git_dirty": bool(git[1])}

def _touch() -> None:
    import flowprep.extract.worker  # noqa: F401  (what the pipeline's tasks import)
    time.sleep(0.3)  # long enough that every worker of the pool takes one


def warm_pool(workers: int) -> None:
    """Start the loky pool exactly as the next timed call uses it (joblib recreates it when the arguments differ)."""
    if workers == 1:  # flowprep.extract.worker runs --workers 1 on joblib's executor directly
        get_memmapping_executor(1).submit(_touch).result()
    else:
        Parallel(n_jobs=workers, backend="loky")(delayed(_touch)() for _ in range(workers))


def _spin(seconds: float) -> float:
    """Busy-loop for ``seconds`` of CPU time; the share of one core this process got meanwhile."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while time.process_time() - cpu0 < seconds:
        sum(range(10_000))
    return (time.process_time() - cpu0) / (time.perf_counter() - wall0)


def free_cores(workers: int) -> float:
    """Cores that ``workers`` busy processes actually get now (= workers on an idle machine)."""
    warm_pool(workers)
    return sum(Parallel(n_jobs=workers, backend="loky")(delayed(_spin)(1.0) for _ in range(workers)))


def cpu_seconds() -> tuple[float, float]:
    """CPU time used so far by (this process, its live children: the worker pool), from /proc.

    Other people's load stretches wall time but hardly CPU time: on a shared machine, the CPU time per
    frame is the stable measure of the pipeline's extra work, and the wall time (the target) is not."""
    me, tick, own = os.getpid(), os.sysconf("SC_CLK_TCK"), os.times()
    children = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == me:
            children += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return own.user + own.system, children
