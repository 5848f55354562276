"""Split one input set across the tasks of a cluster array job (SLURM, Kubernetes, AWS Batch).

Every task of an array runs the same command on the same ``--videos`` and ``--out``; each one must
pick its own videos without talking to the others. So the split is a pure function of the
(relative path, size) pairs and the task count: no listing order, hostname or hash seed enters it,
and every machine computes the same plan.
"""

from __future__ import annotations

import heapq
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence


class TaskError(ValueError):
    """The task index/count is missing, inconsistent or out of range (a usage error)."""


@dataclass(frozen=True)
class TaskSpec:
    """Which task of an array this process is, and where that came from."""

    index: int
    count: int
    source: str  # e.g. "SLURM array (SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_TASK_MIN=0, ...)"

    def __str__(self) -> str:
        return f"task {self.index} of {self.count} ({self.source})"


def assign_tasks(items: Sequence[tuple[str, int]], *, task_count: int) -> list[list[str]]:
    """Greedy longest-processing-time split of (path, weight) pairs into ``task_count`` lists.

    Items go heaviest first (ties: path order) onto the least-loaded task (ties: lowest index).
    The heaviest task then carries at most ``total / task_count + max weight``: the last item put on
    it went onto what was the least-loaded task, whose load was at most the mean. Each list is
    returned sorted by path.
    """
    if task_count < 1:
        raise TaskError(f"task count must be >= 1, got {task_count}")
    seen: set[str] = set()
    for path, weight in items:
        if path in seen:
            raise ValueError(f"every video must appear once, got {path!r} twice")
        seen.add(path)
        if weight < 0:
            raise ValueError(f"weights must be >= 0, got {weight} for {path!r}")
    heap = [(0, t) for t in range(task_count)]  # (load, task index): already a valid heap
    tasks: list[list[str]] = [[] for _ in range(task_count)]
    for path, weight in sorted(items, key=lambda item: (-item[1], item[0])):
        load, t = heapq.heappop(heap)
        tasks[t].append(path)
        heapq.heappush(heap, (load + weight, t))
    return [sorted(paths) for paths in tasks]


def split_videos(items: Sequence[tuple[str, int]], *, task_index: int, task_count: int) -> list[str]:
    """The paths (sorted) that task ``task_index`` of ``task_count`` processes; see ``assign_tasks``.

    ``items`` are (path relative to --videos, weight) pairs, e.g. from ``video_weights``: relative
    paths, so that machines that mount the data set at different places agree.
    """
    if task_count >= 1 and not 0 <= task_index < task_count:
        raise TaskError(f"task index must be in 0..{task_count - 1}, got {task_index}")
    return assign_tasks(items, task_count=task_count)[task_index]


def video_weights(root: str | Path, rel_paths: Iterable[str]) -> list[tuple[str, int]]:
    """(relative path, file size in bytes) pairs: size is a cheap stand-in for decode + flow work."""
    root = Path(root)
    return [(p, _size(root / p)) for p in rel_paths]


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:  # a dangling link or a vanished file: its worker records the failure
        return 0


# --- which task am I? -------------------------------------------------------------------------

_SLURM_VARS = (
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_TASK_COUNT",
)


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"[+-]?[0-9]+", raw):  # int() also reads "1_0" (10) and non-ASCII digits
        raise TaskError(f"expected an integer in ${name}, got {raw!r}")
    return int(raw)


def _shown(env: Mapping[str, str], names: Iterable[str]) -> str:
    return ", ".join(f"{n}={env[n]}" for n in names if env.get(n, "").strip())


def _slurm(env: Mapping[str, str], task_count: int | None) -> tuple[int, int, str]:
    """(index, count, description) of a SLURM array task.

    Without --task-count the index is the task's position in the array's range MIN-MAX:STEP, so
    --array=1-8 and --array=0-15:4 both give indexes 0..N-1. With --task-count the array IDs are the
    task indexes themselves: that keeps a resubmitted subset (sbatch --array=3,7 after tasks 3 and 7
    failed) on its original work, which positions within "3,7" would not.
    """
    task_id = _env_int(env, "SLURM_ARRAY_TASK_ID")
    assert task_id is not None
    shown = _shown(env, _SLURM_VARS)
    if task_count is not None:
        if not 0 <= task_id < task_count:
            raise TaskError(
                f"with --task-count {task_count} the SLURM array IDs are the task indexes 0..{task_count - 1}, "
                f"got SLURM_ARRAY_TASK_ID={task_id}: submit --array=0-{task_count - 1} (or a subset of it)"
            )
        return task_id, task_count, f"SLURM array ({shown}; IDs are task indexes with --task-count)"
    lo = _env_int(env, "SLURM_ARRAY_TASK_MIN")
    hi = _env_int(env, "SLURM_ARRAY_TASK_MAX")
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP")
    step = 1 if step is None else step
    total = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    if lo is None or hi is None:
        if total is None:
            raise TaskError(f"SLURM array ({shown}) does not tell the task count: pass --task-count")
        return task_id, total, f"SLURM array ({shown})"
    if step < 1 or (task_id - lo) % step or not lo <= task_id <= hi:
        raise TaskError(f"SLURM_ARRAY_TASK_ID is not on the array's range MIN-MAX:STEP ({shown})")
    count = (hi - lo) // step + 1
    if total is not None and total != count:
        raise TaskError(
            f"SLURM array is not a plain range ({shown}: {total} tasks, but MIN-MAX:STEP spans {count}); "
            "submit --array=0-N-1, or pass --task-count N so that array IDs are used as task indexes"
        )
    return (task_id - lo) // step, count, f"SLURM array ({shown})"


def _kubernetes(env: Mapping[str, str], task_count: int | None) -> tuple[int, int, str]:
    index = _env_int(env, "JOB_COMPLETION_INDEX")
    assert index is not None
    source = f"Kubernetes Indexed Job (JOB_COMPLETION_INDEX={index}"
    if task_count is None:  # the pod is not told spec.completions
        raise TaskError(f"{source}) does not tell the task count: pass --task-count (= spec.completions)")
    return index, task_count, f"{source}; count from --task-count)"


def _aws_batch(env: Mapping[str, str], task_count: int | None) -> tuple[int, int, str]:
    index = _env_int(env, "AWS_BATCH_JOB_ARRAY_INDEX")
    size = _env_int(env, "AWS_BATCH_JOB_ARRAY_SIZE")
    assert index is not None
    source = f"AWS Batch array ({_shown(env, ['AWS_BATCH_JOB_ARRAY_INDEX', 'AWS_BATCH_JOB_ARRAY_SIZE'])}"
    if task_count is not None:
        return index, task_count, f"{source}; count from --task-count)"
    if size is None:
        raise TaskError(f"{source}) does not tell the task count: pass --task-count (= array size)")
    return index, size, f"{source})"


_SCHEDULERS = {  # the variable that marks each scheduler's array tasks -> its reader
    "SLURM_ARRAY_TASK_ID": _slurm,
    "JOB_COMPLETION_INDEX": _kubernetes,
    "AWS_BATCH_JOB_ARRAY_INDEX": _aws_batch,
}


def detect_task(env: Mapping[str, str], *, task_index: int | None, task_count: int | None) -> TaskSpec:
    """This process's task of an array job: explicit flags win, else the scheduler's variables.

    SLURM (``SLURM_ARRAY_TASK_ID`` with ``SLURM_ARRAY_TASK_MIN/MAX/STEP`` or ``_COUNT``), Kubernetes
    Indexed Jobs (``JOB_COMPLETION_INDEX``; the count from ``--task-count``) and AWS Batch arrays
    (``AWS_BATCH_JOB_ARRAY_INDEX`` with ``AWS_BATCH_JOB_ARRAY_SIZE`` or ``--task-count``). Neither
    flags nor variables: task 0 of 1.
    """
    if task_count is not None and task_count < 1:
        raise TaskError(f"--task-count must be >= 1, got {task_count}")
    if task_index is not None:
        if task_count is None:
            raise TaskError(f"--task-index {task_index} needs --task-count")
        index, count, source = task_index, task_count, "--task-index/--task-count"
    else:
        found = [var for var in _SCHEDULERS if env.get(var, "").strip()]
        if len(found) > 1:
            shown = _shown(env, found)
            raise TaskError(f"array variables of several schedulers are set ({shown}): pass --task-index")
        if not found:
            if task_count not in (None, 1):
                raise TaskError(
                    f"--task-count {task_count} given but no task index: pass --task-index, or run as a "
                    "SLURM / Kubernetes Indexed Job / AWS Batch array task"
                )
            return TaskSpec(0, 1, "single task: no --task-index and no scheduler array variables")
        index, count, source = _SCHEDULERS[found[0]](env, task_count)
    if count < 1:
        raise TaskError(f"the task count must be at least 1, got {count} from {source}")
    if not 0 <= index < count:
        raise TaskError(f"task index must be in 0..{count - 1}, got {index} from {source}")
    return TaskSpec(index, count, source)
