"""Exit statuses of ``flowprep extract``: one table, read by ``--help``, the README, pipelines/ and the tests.

Each status tells a scheduler (SLURM, Kubernetes, AWS Batch) what to do: a status is either final
(retrying gives the same answer) or retriable (a rerun of the same command resumes where the run
stopped). The job files in pipelines/ retry exactly the retriable statuses; a test checks them
against ``RETRIABLE``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExitStatus:
    code: int
    meaning: str
    action: str  # what a scheduler should do
    retriable: bool
    short: str = ""  # the line of --help


OK = ExitStatus(0, "every video of this task extracted", "done", False, "done")
SOME_INPUTS_FAILED = ExitStatus(
    1, "finished, but some videos could not be read or decoded (listed in OUT/failures.jsonl)",
    "done: do not retry, the files themselves are bad (rerun with --retry-failed after replacing them)", False,
    "done, some videos failed (OUT/failures.jsonl): do not retry")
USAGE = ExitStatus(2, "usage error or unusable input (bad flag, unreadable folder, --out holds another run or "
                      "cannot be written: permission denied, read-only file system)",
                   "fix the command or the input; do not retry", False, "usage error or unusable input: do not retry")
CLUSTER = ExitStatus(3, "--backend dask: the cluster cannot be used (unreachable, no workers, a worker without "
                        "the shared folders or with other versions)", "retry after fixing the cluster", True,
                   "--backend dask: the cluster cannot be used: retry after fixing it")
BUSY = ExitStatus(4, "another live run holds the lock of this task's output (the line names its host, pid and "
                     "start)", "retry later: the other run is working on the same output", True,
                 "busy: another live run holds this task's output: retry later")
RETRY = ExitStatus(75, "the environment failed: disk full, I/O error, lost lock, lost cluster or any unexpected "
                       "error (one line; the traceback goes to OUT/flowprep-error.log)",
                   "retry: the rerun resumes without redoing finished videos", True,
                  "the environment failed (disk full, I/O error, lost lock or cluster, a crash): retry, it resumes")
INTERRUPTED = ExitStatus(130, "interrupted (Ctrl-C, SIGINT)", "rerun to resume", True, "interrupted: rerun to resume")

STATUSES = (OK, SOME_INPUTS_FAILED, USAGE, CLUSTER, BUSY, RETRY, INTERRUPTED)
RETRIABLE = tuple(s.code for s in STATUSES if s.retriable)
FINAL_FAILURES = tuple(s.code for s in STATUSES if not s.retriable and s.code != 0)
# A process killed by a signal (OOM killer, preemption, kill -9) exits 128 + N; schedulers see it
# as a failed attempt with no status of ours: retry it too. SIGTERM (scancel, docker stop, a pod's
# deletion) is caught by extract, which stops its workers and flow processes first and then exits
# 128 + 15 (flowprep/stopping.py).
TERMINATED_CODE = 128 + 15


class RetriableError(RuntimeError):
    """The run stopped because its environment failed (disk full, I/O error, lost lock): rerun to resume."""


class BusyError(RuntimeError):
    """Another live run holds the lock of this output."""


def help_text() -> str:
    """The table for ``--help`` (click keeps lines that follow a ``\\b`` line as they are)."""
    lines = ["\b", "Exit status (what a scheduler should do):"]
    lines += [f"  {s.code:>5}  {s.short}" for s in STATUSES]
    lines.append("  128+N  killed by signal N (OOM, preemption; SIGTERM: 143 after stopping the workers): retry, "
                 "it resumes")
    return "\n".join(lines)


def markdown_table() -> str:
    """The table as README.md and pipelines/README.md print it (a test compares them with this)."""
    rows = ["| status | meaning | what to do | retry? |", "| --- | --- | --- | --- |"]
    rows += [f"| {s.code} | {s.meaning} | {s.action} | {'yes' if s.retriable else 'no'} |" for s in STATUSES]
    rows.append("| 128+N | killed by signal N (OOM killer, preemption, `kill -9`); SIGTERM (`scancel`, `docker stop`, a "
                "deleted pod) first stops the workers and flow processes, then exits 143 | the rerun resumes | yes |")
    return "\n".join(rows)
