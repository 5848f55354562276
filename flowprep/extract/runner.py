"""``flowprep extract``: plan shards, run one video per worker task, merge finished shards, resume.

State lives in files, so a killed run resumes where it stopped: the manifest lists finished shards
(and failures), ``OUT/.work/<shard>/<n>.h5`` holds finished videos of unfinished shards, and
``<n>.failed.json`` records videos that cannot be decoded. Nothing else is trusted: ``*.tmp`` and
``*.running`` files are debris of a killed run.

This module is the run: the plan, the lock, the workers (and flow processes), progress and the summary.
What happens to those files (cleaning, repair, retries, assembling shards, the manifest) is assemble.py.
"""

from __future__ import annotations

import errno
import json
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import decord
import h5py
import numpy as np
from joblib.parallel import ParallelBackendBase
from tqdm import tqdm

import flowprep
from flowprep import stopping
from flowprep.extract import manifest as mf
from flowprep.extract.assemble import WORK_DIR, Assembly, ShardPlan
from flowprep.extract.lock import SUFFIX as LOCK_SUFFIX, OutputLock, describe as describe_holder
from flowprep.extract.manifest import RunConflict  # noqa: F401  (raised by run_extract; callers catch runner.RunConflict)
from flowprep.config import DecodeConfig, FlowConfig, StorageConfig
from flowprep.torchflow.processes import FlowProcesses
from flowprep.torchflow.service import ANSWER_TIMEOUT_S, FLOW_BATCH, WAIT_S
from flowprep.extract.worker import VideoJob, VideoResult, run_jobs
from flowprep.extract.writer import VideoMeta

FAILURES = mf.FAILURES


@dataclass
class RunSummary:
    out: Path
    num_videos: int
    processed: int = 0  # videos a worker processed in this call (extracted or failed)
    reused: int = 0  # videos resolved by an earlier, interrupted call (extracted or failed)
    frames: int = 0  # frames decoded by this call
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)  # every failure of this task
    shards: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # what this call found damaged and redid, one line each
    retried: list[str] = field(default_factory=list)  # failed videos given another try (changed file, --retry-failed)
    notes: list[str] = field(default_factory=list)  # e.g. the stale lock that was taken over
    flow_processes: list[dict[str, Any]] = field(default_factory=list)  # each flow process's batch statistics


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


def run_params(*, flow: FlowConfig, decode: DecodeConfig, storage: StorageConfig) -> dict[str, Any]:
    """What the manifest and every shard record about how the data was made (JSON-normalised)."""
    flow_params = {"method": flow.method, "params": flow.method_params(), "bound": flow.bound}
    if flow.engine != "opencv":  # absent: OpenCV on the CPU (so runs made before engines existed still resume)
        flow_params.update(engine=flow.engine, device=flow.device_type)
    params = {
        "flow": flow_params,
        "decode": asdict(decode),
        "storage": asdict(storage),
        "versions": {
            "flowprep": flowprep.__version__,
            "opencv": cv2.__version__,
            "decord": decord.__version__,
            "h5py": h5py.__version__,
            "numpy": np.__version__,
        },
    }
    if flow.engine == "torch":
        import torch

        params["versions"]["torch"] = torch.__version__
    return json.loads(json.dumps(params))


def plan_shards(
    videos: Sequence[VideoMeta], *, videos_per_shard: int, task_index: int = 0, task_count: int = 1
) -> list[ShardPlan]:
    """Videos sorted by relative path, cut into consecutive shards of ``videos_per_shard``."""
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be >= 1, got {videos_per_shard}")
    ordered = sorted(videos, key=lambda v: v.source)
    return [
        ShardPlan(mf.shard_name(i, task_index=task_index, task_count=task_count), ordered[s : s + videos_per_shard])
        for i, s in enumerate(range(0, len(ordered), videos_per_shard))
    ]




def run_extract(
    *,
    videos_root: str | Path,
    out: str | Path,
    videos: Sequence[VideoMeta],
    classes: Sequence[str],
    flow: FlowConfig = FlowConfig(),
    decode: DecodeConfig = DecodeConfig(),
    storage: StorageConfig = StorageConfig(),
    workers: int | None = None,
    task_index: int = 0,
    task_count: int = 1,
    backend: str | ParallelBackendBase = "loky",
    chunk_frames: int = 32,
    progress: bool = True,
    inputs_sha256: str | None = None,
    inputs_num_videos: int | None = None,
    retry_failed: bool = False,
    check: bool = False,
    flow_batch: int = FLOW_BATCH,
    flow_process: bool = True,
    flow_wait_s: float = WAIT_S,
    flow_timeout_s: float = ANSWER_TIMEOUT_S,
) -> RunSummary:
    """Extract ``videos`` (this task's share, paths relative to ``videos_root``) into ``out``; resumable.

    Holds the task's lock (``lock.OutputLock``) throughout: a second run of the same task is refused
    with ``BusyError``. A rerun repairs: listed shards that are missing or damaged (size; sha256 with
    ``check``) are extracted again, and failed videos whose file changed (all with ``retry_failed``)
    are tried again. ``inputs_sha256`` records the listing the task planned from (``verify`` compares
    the tasks' records); ``inputs_num_videos`` its number of videos, all tasks' together (``verify`` counts
    what the tasks that never ran would have written).

    With ``flow.engine == "torch"`` on local worker processes (``backend`` "loky"), one flow process per
    device solves the flow of every worker (flowprep/torchflow/service.py: batches of up to ``flow_batch``
    pairs across videos of one frame size, waiting up to ``flow_wait_s`` for more; a worker gives up after
    ``flow_timeout_s`` without a finished batch: FlowProcessLost); ``flow_process=False``
    (and the Dask backend) computes it in each worker instead, one chunk per call.
    """
    videos_root, out = Path(videos_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock_path = out / (mf.manifest_name(task_index=task_index, task_count=task_count) + LOCK_SUFFIX)
    with OutputLock(lock_path) as lock:
        start = time.perf_counter()
        workers = workers or default_workers()
        shards = plan_shards(videos, videos_per_shard=storage.videos_per_shard, task_index=task_index, task_count=task_count)
        fresh = mf.new_manifest(
            task_index=task_index,
            task_count=task_count,
            params=run_params(flow=flow, decode=decode, storage=storage),
            classes=list(classes),
            num_videos=len(videos),
            videos_sha256=mf.videos_digest([v.source for s in shards for v in s.videos]),
        )
        if inputs_sha256 is not None:
            fresh["inputs_sha256"] = inputs_sha256
        if inputs_num_videos is not None:
            fresh["inputs_num_videos"] = inputs_num_videos
        fresh["labels_sha256"] = mf.labels_digest([(v.video_id, v.label, v.class_name) for s in shards for v in s.videos])
        summary = RunSummary(out=out, num_videos=len(videos))
        if lock.took_over:
            summary.notes.append(f"took over the lock of a run that is gone ({describe_holder(lock.took_over)})")
        existing, set_aside = mf.check_compatible(out, fresh)
        if existing is None:
            mf.start_part(out, fresh)  # another run's task starting at this instant: one of the two refuses
        if set_aside:
            summary.repaired.append(set_aside)
        manifest = existing or fresh
        bar = tqdm(total=len(videos), unit="video", dynamic_ncols=True, disable=not progress, desc="extract")
        run = Assembly(out, videos_root, shards, manifest, bar, resume=existing is not None)
        if existing is not None:
            summary.repaired += run.repair(check=check)
            summary.retried = run.retry_failures(everything=retry_failed)
        for line in summary.notes + [f"repair: {r}" for r in summary.repaired] + [f"retry: {r}" for r in summary.retried]:
            bar.write(line)
        run.clean()
        for shard in shards:
            run.maybe_finish(shard)  # shards whose videos were all resolved before a crash
        run.write_manifest()
        todo = [(shard, n, meta) for shard in shards for n, meta in enumerate(shard.videos)
                if not (run.is_done(shard) or meta.video_id in run.resolved[shard.name])]
        services = None
        if todo and flow_process and flow.engine == "torch" and backend == "loky":
            services = FlowProcesses(flow, max_batch=flow_batch, wait_s=flow_wait_s, answer_timeout_s=flow_timeout_s)
        addresses = services.addresses if services else ()
        jobs, shard_of = [], {}
        for shard, n, meta in todo:
            shard_of[meta.video_id] = (shard, n, meta)
            jobs.append(VideoJob(str(videos_root / meta.source), meta, str(run.work_file(shard, n)), flow, decode,
                                 storage, chunk_frames, addresses, run_pid=os.getpid() if backend == "loky" else 0))
        summary.reused = len(videos) - len(jobs)
        bar.update(summary.reused)

        def handle(result: VideoResult) -> None:
            stopping.raise_if_stopped()  # a Ctrl-C or SIGTERM whose exception a finalizer swallowed
            lock.check()  # a run that lost its lock must not write on
            shard, n, meta = shard_of[result.video_id]
            run.record(shard, meta, result.error)
            if result.ok:
                run.add(shard, n, meta)
            summary.processed += 1
            summary.frames += result.num_frames
            bar.update(1)
            bar.set_postfix_str(f"{summary.frames / (time.perf_counter() - start):.0f} frames/s", refresh=False)
            run.maybe_finish(shard)

        try:
            with warnings.catch_warnings():  # joblib warns that it cancelled the other jobs when one raises
                warnings.filterwarnings("ignore", message=".*tasks which were still being processed", category=UserWarning)
                with services or nullcontext():
                    # no more processes than videos: each loky worker is a whole Python with OpenCV and decord
                    # (--workers 1000 on a few videos started 1000 of them, minutes before the first video)
                    run_jobs(jobs, handle, workers=max(1, min(workers, len(jobs))), backend=backend, write=bar.write)
        except BaseException:
            run.close_unfinished(after_error=True)
            raise
        finally:
            bar.close()
        run.close_unfinished()
        lock.check()
        run.write_manifest()
        _remove_if_empty(out / WORK_DIR)
        summary.failures, summary.shards = list(manifest["failures"]), [s["name"] for s in manifest["shards"]]
        summary.seconds = time.perf_counter() - start
        summary.flow_processes = services.stats if services else []
        return summary


def _remove_if_empty(folder: Path) -> None:
    """Drop ``.work`` once no task uses it (tasks of an array run share it)."""
    try:
        folder.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
            raise
