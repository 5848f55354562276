"""``flowprep extract``: plan shards, run one video per worker task, merge finished shards, resume.

State lives in files, so a killed run resumes where it stopped: the manifest lists finished shards
(and failures), ``OUT/.work/<shard>/<n>.h5`` holds finished videos of unfinished shards, and
``<n>.failed.json`` records videos that cannot be decoded. Nothing else is trusted: ``*.tmp`` and
``*.running`` files are debris of a killed run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import cv2
import decord
import h5py
import numpy as np
from joblib.parallel import ParallelBackendBase
from tqdm import tqdm

import flowprep
from flowprep.extract import manifest as mf
from flowprep.extract.lock import SUFFIX as LOCK_SUFFIX, OutputLock, describe as describe_holder
from flowprep.extract.manifest import RunConflict  # noqa: F401  (raised by run_extract; callers catch runner.RunConflict)
from flowprep.config import DecodeConfig, FlowConfig, StorageConfig
from flowprep.torchflow.processes import FlowProcesses
from flowprep.torchflow.service import ANSWER_TIMEOUT_S, FLOW_BATCH, WAIT_S
from flowprep.extract.worker import VideoJob, VideoResult, failed_path, is_complete, read_failure, run_jobs
from flowprep.extract.writer import VideoMeta, write_file_attrs

WORK_DIR = ".work"
FAILURES = mf.FAILURES


@dataclass(frozen=True)
class ShardPlan:
    name: str
    videos: list[VideoMeta]


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


class _Run:
    def __init__(
        self, out: Path, videos_root: Path, shards: list[ShardPlan], manifest: dict, bar: tqdm, *, resume: bool
    ) -> None:
        self.out, self.videos_root, self.shards, self.manifest, self.bar = out, videos_root, shards, manifest, bar
        self.resume = resume
        self.manifest_path = out / mf.manifest_name(task_index=manifest["task"]["index"], task_count=manifest["task"]["count"])
        self.params = manifest["params"]
        self.done = {s["name"] for s in manifest["shards"]}
        self.failed = {f["path"]: f["error"] for f in manifest["failures"]}
        self.resolved: dict[str, dict[str, str | None]] = {s.name: {} for s in shards}  # video_id -> error or None
        self.logged = mf.failure_paths(out / FAILURES)
        self.assembling: dict[str, tuple[h5py.File, set[str]]] = {}  # shard -> its open .tmp file, videos in it

    def work_dir(self, shard: ShardPlan) -> Path:
        return self.out / WORK_DIR / shard.name.removesuffix(".h5")

    def work_file(self, shard: ShardPlan, n: int) -> Path:
        return self.work_dir(shard) / f"{n:05d}.h5"

    def is_done(self, shard: ShardPlan) -> bool:
        return shard.name in self.done or all(v.source in self.failed for v in shard.videos)

    def clean(self) -> None:
        """Remove what a killed run left half-written; keep every finished result."""
        for tmp in [self.manifest_path.with_name(self.manifest_path.name + ".tmp")] + [
            self.out / (s.name + ".tmp") for s in self.shards
        ]:
            tmp.unlink(missing_ok=True)
        for shard in self.shards:
            work = self.work_dir(shard)
            if (self.is_done(shard) or not self.resume) and work.exists():
                shutil.rmtree(work)  # without a manifest, leftovers are of unknown origin
            if self.is_done(shard):
                continue
            (self.out / shard.name).unlink(missing_ok=True)  # renamed, but the manifest never listed it
            work.mkdir(parents=True, exist_ok=True)
            for debris in list(work.glob("*.tmp")) + list(work.glob("*.running")):
                debris.unlink()
            for n, meta in enumerate(shard.videos):
                path, failure = self.work_file(shard, n), read_failure(self.work_file(shard, n))
                if meta.source in self.failed:
                    self.resolved[shard.name][meta.video_id] = self.failed[meta.source]
                elif failure is not None:
                    self.record(shard, meta, failure["error"])
                elif path.exists() and not is_complete(path, meta.video_id):
                    path.unlink()
                elif path.exists():
                    self.resolved[shard.name][meta.video_id] = None

    def stamp(self, meta: VideoMeta) -> dict[str, int]:
        """Size and mtime of a video's file: a failed video whose file changes is tried again."""
        try:
            st = (self.videos_root / meta.source).stat()
        except OSError:
            return {}
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def repair(self, *, check: bool) -> list[str]:
        """Drop listed shards that are missing or damaged, so that their videos are extracted again.

        Always checks that each listed shard exists with the recorded size (cheap); ``check`` also
        compares its sha256 (reads every byte). Returns one line per repaired shard.
        """
        repaired = []
        for entry in list(self.manifest["shards"]):
            path = self.out / entry["name"]
            if not path.is_file():
                problem = "missing"
            elif path.stat().st_size != entry["size"]:
                problem = f"{path.stat().st_size} bytes, the manifest says {entry['size']}"
            elif check and mf.file_digest(path) != entry["sha256"]:
                problem = "sha256 differs from the manifest"
            else:
                continue
            self.forget(entry)
            path.unlink(missing_ok=True)
            repaired.append(f"{entry['name']} ({problem}): extracting its {len(entry['videos'])} video(s) again")
        return repaired

    def forget(self, entry: dict) -> None:
        """Unlist a finished shard (manifest written at once, before its file is touched)."""
        self.manifest["shards"] = [s for s in self.manifest["shards"] if s["name"] != entry["name"]]
        self.done.discard(entry["name"])
        self.write_manifest()

    def retry_failures(self, *, everything: bool) -> list[str]:
        """Give failed videos another try: those whose file changed since (size or mtime), or all.

        A failed video of a finished shard reopens the shard: its extracted videos are copied back
        into per-video files (not recomputed) and the shard is made again once the retried video is done.
        """
        where = {meta.source: (shard, n, meta) for shard in self.shards for n, meta in enumerate(shard.videos)}
        retried = []
        for failure in list(self.manifest["failures"]):
            if failure["path"] not in where:
                continue
            shard, n, meta = where[failure["path"]]
            changed = {k: v for k, v in self.stamp(meta).items() if k in failure and failure[k] != v}
            if not (everything or changed):
                continue
            listed = next((s for s in self.manifest["shards"] if s["name"] == shard.name), None)
            if listed is not None:
                self.reopen(shard, listed)
            self.manifest["failures"].remove(failure)
            del self.failed[failure["path"]]
            failed_path(self.work_file(shard, n)).unlink(missing_ok=True)
            why = "its file changed" if changed else "--retry-failed"
            retried.append(f"{failure['path']} ({why}; it failed with: {failure['error']})")
        if retried:
            self.write_manifest()
        return retried

    def reopen(self, shard: ShardPlan, entry: dict) -> None:
        """Turn a finished shard back into per-video files, then unlist and remove it."""
        work = self.work_dir(shard)
        work.mkdir(parents=True, exist_ok=True)
        index = {meta.video_id: n for n, meta in enumerate(shard.videos)}
        with h5py.File(self.out / entry["name"], "r") as src:
            for video_id in entry["videos"]:
                dst = self.work_file(shard, index[video_id])
                tmp = dst.with_name(dst.name + ".tmp")
                tmp.unlink(missing_ok=True)
                with h5py.File(tmp, "x") as f:
                    parent = f.require_group(str(PurePosixPath("videos", video_id).parent))
                    src.copy(src[f"videos/{video_id}"], parent, name=PurePosixPath(video_id).name)
                os.replace(tmp, dst)
        self.forget(entry)
        (self.out / entry["name"]).unlink(missing_ok=True)

    def record(self, shard: ShardPlan, meta: VideoMeta, error: str | None) -> None:
        self.resolved[shard.name][meta.video_id] = error
        if error is None:
            return
        if meta.source not in self.failed:
            self.failed[meta.source] = error
            self.manifest["failures"].append({"path": meta.source, "error": error, **self.stamp(meta)})
        if meta.source not in self.logged:
            self.logged.add(meta.source)
            mf.append_failure(self.out / FAILURES, {"path": meta.source, "error": error})
            self.bar.write(f"skipped {self.videos_root / meta.source}: {error}")

    def maybe_finish(self, shard: ShardPlan) -> None:
        if shard.name in self.done or len(self.resolved[shard.name]) < len(shard.videos):
            return
        ok = [(n, v) for n, v in enumerate(shard.videos) if self.resolved[shard.name][v.video_id] is None]
        if ok:
            self.merge(shard, ok)
        self.write_manifest()
        if self.work_dir(shard).exists():
            shutil.rmtree(self.work_dir(shard))

    def add(self, shard: ShardPlan, n: int, meta: VideoMeta) -> None:
        """Copy a finished video into its shard's temporary file now, while the workers go on.

        Assembling shards as videos finish (not all at the end) keeps the main process's H5Ocopy and
        most of the shard's fsync off the end of the run; H5Ocopy moves compressed chunks as they are.
        """
        if shard.name not in self.assembling:
            f = h5py.File(self.out / (shard.name + ".tmp"), "x")  # clean() removed any debris; never "w"
            write_file_attrs(f, self.params)
            self.assembling[shard.name] = (f, set())
        f, copied = self.assembling[shard.name]
        parent = f.require_group(str(PurePosixPath("videos", meta.video_id).parent))
        with h5py.File(self.work_file(shard, n), "r") as src:
            src.copy(src[f"videos/{meta.video_id}"], parent, name=PurePosixPath(meta.video_id).name)
        copied.add(meta.video_id)
        f.flush()
        os.fdatasync(f.id.get_vfd_handle())  # write back now, so the final fsync has little left to do

    def merge(self, shard: ShardPlan, ok: list[tuple[int, VideoMeta]]) -> None:
        """Complete the shard's temporary file (videos finished before a crash are copied now), then
        fsync, rename to the final name and list it in the manifest."""
        for n, meta in ok:
            if meta.video_id not in self.assembling.get(shard.name, (None, set()))[1]:
                self.add(shard, n, meta)
        f, _ = self.assembling.pop(shard.name)
        f.close()
        tmp, final = self.out / (shard.name + ".tmp"), self.out / shard.name
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        mf.fsync_dir(self.out)
        entry = {
            "name": shard.name,
            "size": final.stat().st_size,
            "sha256": mf.file_digest(final),
            "videos": [meta.video_id for _, meta in ok],
        }
        self.manifest["shards"] = sorted(self.manifest["shards"] + [entry], key=lambda s: s["name"])
        self.done.add(shard.name)

    def close_unfinished(self, *, after_error: bool = False) -> None:
        """Close the ``.tmp`` files of unfinished shards: debris that the next run removes.

        After an error, a close that fails too (the full disk that stopped the run fails HDF5's
        final flush) must not replace the first error, which is the one the user needs to see.
        """
        for f, _ in self.assembling.values():
            try:
                f.close()
            except Exception:
                if not after_error:
                    raise

    def write_manifest(self) -> None:
        self.manifest["complete"] = all(self.is_done(s) for s in self.shards)
        mf.write_json_atomic(self.manifest_path, self.manifest)


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
    the tasks' records).

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
        summary = RunSummary(out=out, num_videos=len(videos))
        if lock.took_over:
            summary.notes.append(f"took over the lock of a run that is gone ({describe_holder(lock.took_over)})")
        existing, set_aside = mf.check_compatible(out, fresh)
        if set_aside:
            summary.repaired.append(set_aside)
        manifest = existing or fresh
        bar = tqdm(total=len(videos), unit="video", dynamic_ncols=True, disable=not progress, desc="extract")
        run = _Run(out, videos_root, shards, manifest, bar, resume=existing is not None)
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
                                 storage, chunk_frames, addresses))
        summary.reused = len(videos) - len(jobs)
        bar.update(summary.reused)

        def handle(result: VideoResult) -> None:
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
                    run_jobs(jobs, handle, workers=workers, backend=backend, write=bar.write)
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
