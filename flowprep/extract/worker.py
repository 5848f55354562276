"""One video, start to finish, in a worker process: decode -> flow -> quantize -> own HDF5 file.

The worker writes ``<n>.h5.tmp`` and renames it to ``<n>.h5`` only when the video is complete, so a
killed run leaves either a finished per-video file or garbage the next run discards. A video the
decoder rejects is a recorded failure (``<n>.failed.json``), so a resume does not retry it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import h5py
import numpy as np
from joblib import Parallel, delayed, parallel_config
from joblib.executor import get_memmapping_executor
from joblib.externals.loky.process_executor import TerminatedWorkerError

from flowprep import stopping
from flowprep.config import DecodeConfig, FlowConfig, StorageConfig
from flowprep.extract.decode import DecodeError, VideoStream
from flowprep.extract.flow import estimator_for, iter_flow
from flowprep.torchflow.client import client_for
from flowprep.torchflow.service import Address, FlowProcessLost
from flowprep.extract.writer import VideoMeta, VideoWriter

# Test-only fault injection: a worker given this source path dies by SIGSEGV, as a decoder crash
# would. It is the only way to test the runner's crash handling deterministically.
CRASH_ENV = "FLOWPREP_TEST_CRASH_SOURCE"
CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class VideoJob:
    path: str  # the video file
    meta: VideoMeta
    out: str  # the per-video result file, ``.../<n>.h5``
    flow: FlowConfig
    decode: DecodeConfig
    storage: StorageConfig
    chunk_frames: int = 32
    flow_service: tuple[Address, ...] = ()  # flow processes to send frames to (--engine torch), else flow here
    run_pid: int = 0  # the run's process when it is this worker's parent (local loky workers); 0: no check


class _Orphaned(BaseException):
    """The run that started this worker is gone (kill -9, OOM): stop without touching any file."""


def _check_run(job: VideoJob) -> None:
    """Raise ``_Orphaned`` once the run's process has died (this worker was re-parented).

    loky's workers outlive a run killed with SIGKILL and finish the videos they hold. A rerun takes the
    lock over at once and writes the same ``<n>.h5.tmp`` names: an orphan's rename would then move the
    rerun's half-written file into place (the rerun then stops with exit 75 on its vanished ``.tmp``),
    and its debris removal would delete the rerun's files. So an orphan checks before each step that
    touches the output and stops.
    """
    if job.run_pid and os.getppid() != job.run_pid:
        raise _Orphaned


@dataclass(frozen=True)
class VideoResult:
    video_id: str
    out: str
    ok: bool
    num_frames: int = 0
    error: str | None = None
    seconds: float = 0.0
    pid: int = 0  # the process that ran it


def failed_path(out: str | Path) -> Path:
    return Path(str(out)[: -len(".h5")] + ".failed.json")


def running_path(out: str | Path) -> Path:
    """Exists while a worker is on this video (names the suspects when a worker process dies)."""
    return Path(str(out)[: -len(".h5")] + ".running")


def _write_failure(path: Path, record: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def encode_jpegs(rgb: np.ndarray, quality: int) -> list[bytes]:
    """RGB frames -> JPEG files (OpenCV encodes BGR, so swap first: decoders must see true colours)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    out = []
    for frame in rgb:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError(f"cv2.imencode failed on a {frame.shape} frame")
        out.append(buf.tobytes())
    return out


class OutputError(RuntimeError):
    """Writing a video's own file failed (disk full, I/O error): a failure of the run, not of the video."""


@contextmanager
def _output(path: Path) -> Iterator[None]:
    """Errors inside the block are the output's: raised as ``OutputError``, never recorded against the video."""
    try:
        yield
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(f"cannot write {path}: {one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (h5py and OpenCV messages span several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _write(job: VideoJob, stream: VideoStream, tmp: Path) -> int:
    info, storage, bound = stream.info, job.storage, job.flow.bound
    frames = 0
    tmp.unlink(missing_ok=True)  # debris of a killed attempt; the task's lock keeps other runs out
    with _output(tmp):
        f = h5py.File(tmp, "x")  # never "w": it would truncate a file before HDF5's own lock refuses it
    try:
        with _output(tmp):
            writer = VideoWriter(
                f,
                job.meta,
                height=info.height,
                width=info.width,
                bound=bound,
                rgb=storage.rgb,
                jpeg_quality=storage.jpeg_quality,
                compression=storage.compression,
                compression_level=storage.compression_level,
            )
        # A chunk holds RGB (3 B/px) and float32 flow (8 B/px): cap it near CHUNK_BYTES so that
        # full-HD videos on many workers do not exhaust memory; it does not change the output.
        chunk = max(2, min(job.chunk_frames, CHUNK_BYTES // (11 * info.height * info.width)))
        estimator = client_for(job.flow_service) if job.flow_service else estimator_for(job.flow)
        for rgb, flow in iter_flow(stream.chunks(chunk), estimator):  # the video's own errors
            _check_run(job)
            # A flow process sends codes, quantized there by the same function (flowprep.extract.quantize).
            q = (flow if flow.dtype == np.uint8 else writer.quantize(flow)) if len(flow) else None
            jpegs = encode_jpegs(rgb, storage.jpeg_quality) if storage.rgb else None
            with _output(tmp):
                if q is not None:
                    writer.append_flow(q)
                if jpegs is not None:
                    writer.append_rgb(jpegs)
            frames += len(rgb)
        with _output(tmp):
            writer.finish(num_frames=frames, fps=info.fps, rotation=info.rotation)
    finally:
        with _output(tmp):
            f.close()
    with _output(tmp), open(tmp, "rb") as fh:  # durable before the rename makes it count as finished
        os.fsync(fh.fileno())
    return frames


def extract_video(job: VideoJob) -> VideoResult:
    """Process one video into ``job.out``.

    Anything that goes wrong with the video itself (the decoder rejects it, reading it fails, OpenCV
    or memory give out on it) is a recorded failure, not an exception, and the run goes on. Writing
    the output is different: an ``OutputError`` (disk full, I/O error) is raised, so the run stops
    with the retriable status instead of blaming the video.
    """
    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would only contend
    start = time.perf_counter()
    out, tmp, running = Path(job.out), Path(job.out + ".tmp"), running_path(job.out)
    try:
        return _extract_video(job, start, out, tmp, running)
    except _Orphaned:
        os._exit(0)  # nobody waits for the result, and every file may be the rerun's by now


def _extract_video(job: VideoJob, start: float, out: Path, tmp: Path, running: Path) -> VideoResult:
    _check_run(job)  # a job the dead run had queued for this worker
    running.write_text(str(os.getpid()))
    if os.environ.get(CRASH_ENV) == job.meta.source:
        os.kill(os.getpid(), signal.SIGSEGV)
    try:
        stream = VideoStream(
            job.path,
            size=job.decode.size,
            short_side=job.decode.short_side,
            frame_step=job.decode.frame_step,
            num_threads=1,
        )
        frames = _write(job, stream, tmp)
    except (OutputError, FlowProcessLost):  # the run's problem, not the video's: the run stops, retriable
        tmp.unlink(missing_ok=True)
        running.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - the video's own problem: recorded, the run goes on
        _check_run(job)
        tmp.unlink(missing_ok=True)
        error = str(exc) if isinstance(exc, DecodeError) else one_line(exc)
        _write_failure(failed_path(out), {"path": job.meta.source, "error": error})
        running.unlink()
        return VideoResult(
            job.meta.video_id, job.out, False, error=error, seconds=time.perf_counter() - start, pid=os.getpid()
        )
    _check_run(job)  # last, right before the rename: the fsync above may take long on a network file system
    os.replace(tmp, out)
    running.unlink()
    return VideoResult(
        job.meta.video_id, job.out, True, num_frames=frames, seconds=time.perf_counter() - start, pid=os.getpid()
    )


def read_failure(out: str | Path) -> dict | None:
    """The recorded failure of a per-video file, if its worker wrote one."""
    path = failed_path(out)
    return json.loads(path.read_text()) if path.is_file() else None


def is_complete(out: str | Path, video_id: str) -> bool:
    """A per-video file survives a resume only if it opens and its attributes (written last) exist."""
    try:
        with h5py.File(out, "r") as f:
            return "num_frames" in f[f"videos/{video_id}"].attrs
    except (OSError, KeyError):  # not HDF5 / truncated, or the group is missing
        return False


def _imap_unordered(jobs: Sequence[VideoJob], *, workers: int, backend: str) -> Iterator[VideoResult]:
    if workers == 1 and backend == "loky":
        # joblib runs n_jobs=1 in the calling process, where a decoder crash would end the whole
        # run: keep one worker process instead (joblib's own loky executor: sharing it keeps joblib working).
        executor = get_memmapping_executor(1, initializer=stopping.ignore_ctrl_c)
        try:
            for job in jobs:
                yield executor.submit(extract_video, job).result()
        except BaseException:  # Ctrl-C, SIGTERM, the run's own error: end the worker, as joblib does
            executor.terminate(kill_workers=True)
            raise
    else:
        # Ctrl-C reaches the workers too: they ignore it, the main process ends them (flowprep/stopping.py)
        with parallel_config(backend, **({"initializer": stopping.ignore_ctrl_c} if backend == "loky" else {})):
            yield from Parallel(n_jobs=workers, return_as="generator_unordered")(
                delayed(extract_video)(job) for job in jobs
            )


def run_jobs(
    jobs: Sequence[VideoJob],
    handle: Callable[[VideoResult], None],
    *,
    workers: int,
    backend: str = "loky",
    write: Callable[[str], None] = print,
) -> None:
    """Run every job on worker processes, ``handle`` each result as it comes (in any order).

    When a worker process dies (joblib's TerminatedWorkerError: a decoder segfault, the OOM
    killer), the videos that were in progress (their ``.running`` markers) are retried one at a
    time in a fresh process; one that kills its worker again is recorded as failed.
    """
    pending = {job.meta.video_id: job for job in jobs}

    def take(result: VideoResult) -> None:
        del pending[result.video_id]
        handle(result)

    while pending:
        try:
            for result in _imap_unordered(list(pending.values()), workers=workers, backend=backend):
                take(result)
        except TerminatedWorkerError as exc:
            stopping.raise_if_stopped()  # a Ctrl-C or SIGTERM that ended the workers too: stop, do not retry
            for job in list(pending.values()):
                finished = _result_on_disk(job)  # finished, but the result never reached us
                if finished is not None:
                    running_path(job.out).unlink(missing_ok=True)
                    take(finished)
            suspects = [job for job in pending.values() if running_path(job.out).exists()]
            if pending and not suspects:
                raise  # no video was in progress: the worker processes themselves cannot run
            write(f"a worker process died ({_exit_text(exc)}); retrying {len(suspects)} video(s) one at a time")
            for job in suspects:
                running_path(job.out).unlink()
                Path(job.out + ".tmp").unlink(missing_ok=True)
                take(_isolated(job, workers=workers, backend=backend))


def _result_on_disk(job: VideoJob) -> VideoResult | None:
    failure = read_failure(job.out)
    if failure is not None:
        return VideoResult(job.meta.video_id, job.out, False, error=failure["error"])
    if Path(job.out).exists() and is_complete(job.out, job.meta.video_id):
        with h5py.File(job.out, "r") as f:
            frames = int(f[f"videos/{job.meta.video_id}"].attrs["num_frames"])
        return VideoResult(job.meta.video_id, job.out, True, num_frames=frames)
    return None


def _isolated(job: VideoJob, *, workers: int, backend: str) -> VideoResult:
    """Run ``job`` alone (on the same kind of executor, so it is not restarted for nothing)."""
    try:
        return next(_imap_unordered([job], workers=workers, backend=backend))
    except TerminatedWorkerError as exc:
        running_path(job.out).unlink(missing_ok=True)
        Path(job.out + ".tmp").unlink(missing_ok=True)
        error = f"the decoder crashed the worker process ({_exit_text(exc)})"
        _write_failure(failed_path(job.out), {"path": job.meta.source, "error": error})
        return VideoResult(job.meta.video_id, job.out, False, error=error)


def _exit_text(exc: TerminatedWorkerError) -> str:
    """loky's message names the exit codes ("The exit codes of the workers are {SIGSEGV(-11)}")."""
    text = str(exc)
    at = text.find("exit codes")
    return text[at:].split("\n")[0].rstrip(". ") if at >= 0 else "terminated"
