"""Where joblib runs the per-video jobs: local loky processes, or the workers of a Dask cluster.

With ``--backend dask --scheduler tcp://HOST:PORT`` the parent connects a ``distributed.Client`` and
routes joblib through joblib's own dask backend; the jobs are the same as with loky. Workers write
their per-video files into the shared ``--out`` and the parent merges them, so every worker must see
``--videos`` and ``--out`` at the same paths and run the same versions of flowprep and its
libraries: ``check_workers`` refuses a cluster where that is not so, before any work starts.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import joblib
from joblib.externals.loky.process_executor import TerminatedWorkerError
from joblib.parallel import ParallelBackendBase

from flowprep.exits import RetriableError

if TYPE_CHECKING:
    from distributed import Client

BACKENDS = ("loky", "dask")


class BackendError(RuntimeError):
    """The Dask cluster cannot run the job (unreachable, no workers, a worker unlike the parent)."""


class BackendUsageError(ValueError):
    """The backend arguments do not fit together (a usage error)."""


def software_versions() -> dict[str, str]:
    """Versions whose differences change the output bytes, so workers must match the parent (torch too: with
    ``--engine torch`` each worker solves its own flow; read from the package metadata, torch is not imported)."""
    from importlib import metadata

    import cv2
    import decord
    import h5py
    import numpy

    import flowprep

    return {"flowprep": flowprep.__version__, "opencv": cv2.__version__, "decord": decord.__version__,
            "h5py": h5py.__version__, "numpy": numpy.__version__, "torch": _installed("torch", metadata)}


def _installed(name: str, metadata) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _worker_probe(paths: Sequence[str]) -> dict:
    """Runs on each Dask worker (by ``Client.run``): what it has installed, which paths it lacks."""
    return {"versions": software_versions(), "missing": [p for p in paths if not os.path.isdir(p)],
            "pid": os.getpid()}


def check_workers(client: "Client", *, shared_paths: Sequence[str | Path] = (), timeout: float = 30.0) -> dict:
    """Wait for a worker, then check that every worker sees ``shared_paths`` and runs our versions.

    Returns ``{worker address: probe}``; raises ``BackendError`` naming the first worker that differs.
    """
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise BackendError(f"no Dask worker joined the scheduler {client.scheduler.address} within {timeout:g} s") \
            from None
    paths = [os.path.abspath(p) for p in shared_paths]
    try:
        probes = client.run(_worker_probe, paths)
    except ImportError as e:  # the probe is pickled by reference: a worker without flowprep cannot load it
        raise BackendError(f"a Dask worker cannot import flowprep ({e}): install it in the workers' environment") \
            from None
    ours = software_versions()
    for address, probe in sorted(probes.items()):
        if probe["missing"]:
            raise BackendError(
                f"Dask worker {address} cannot see {probe['missing'][0]}: --videos and --out must be on a "
                "file system that every worker mounts at the same path"
            )
        if probe["versions"] != ours:
            diff = {k: (ours.get(k), v) for k, v in probe["versions"].items() if ours.get(k) != v}
            raise BackendError(f"Dask worker {address} runs other versions than this process (ours, theirs): {diff}")
    return probes


def check_arguments(backend: str, scheduler: str | None) -> None:
    """Raise ``BackendUsageError`` unless ``backend`` and ``scheduler`` fit together."""
    if backend not in BACKENDS:
        raise BackendUsageError(f"expected a backend in {BACKENDS}, got {backend!r}")
    if backend == "loky" and scheduler is not None:
        raise BackendUsageError("--scheduler is only used with --backend dask")
    if backend == "dask" and not scheduler:
        raise BackendUsageError("--backend dask needs --scheduler tcp://HOST:PORT (the address `dask scheduler` prints)")


@contextmanager
def joblib_backend(
    backend: str,
    scheduler: str | None,
    *,
    shared_paths: Sequence[str | Path] = (),
    connect_timeout: float = 10.0,
) -> Iterator[str | ParallelBackendBase]:
    """Run joblib on ``backend`` inside the block; for "dask", connect to ``scheduler`` first.

    Yields what to hand to ``Parallel(backend=...)``: "loky", or for "dask" a backend object bound to
    the connected ``distributed.Client`` (its ``client`` attribute); it is also joblib's configured
    backend in the block. Not the string "dask": joblib 1.6's ``Parallel(backend="dask")`` passes
    ``nesting_level`` on to every task, which then fails in the workers with a TypeError.
    """
    check_arguments(backend, scheduler)
    if backend == "loky":
        with joblib.parallel_config(backend="loky"):
            yield "loky"
        return
    try:
        import distributed
    except ImportError:
        raise BackendError("--backend dask needs dask.distributed: pip install 'flowprep[dask]'") from None
    try:
        _check_address(scheduler)
        client = distributed.Client(scheduler, timeout=connect_timeout, set_as_default=True)
    except ValueError as e:  # distributed's own address parsing
        raise BackendUsageError(f"expected --scheduler like tcp://HOST:PORT, got {scheduler!r} ({e})") from None
    except OSError as e:
        raise BackendError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
    client_log = logging.getLogger("distributed.client")
    level = client_log.level
    try:
        with client:
            check_workers(client, shared_paths=shared_paths, timeout=max(connect_timeout, 30.0))
            dask_backend = _dask_backend(client)
            # A lost scheduler is reported in one line (below); distributed's client would also log its
            # reconnection attempts, with tracebacks, until it is closed.
            client_log.setLevel(logging.CRITICAL)
            with joblib.parallel_config(backend=dask_backend):
                yield dask_backend
    except (distributed.client.FutureCancelledError, distributed.comm.CommClosedError) as exc:
        raise RetriableError(f"lost the Dask cluster at {scheduler}: {' '.join(str(exc).split())}") from exc
    finally:
        client_log.setLevel(level)


def _check_address(scheduler: str) -> None:
    """What distributed only finds out by trying: a port no scheduler can listen on (a 10 s connection timeout,
    then exit 3, which schedulers retry), or tls:// without the Dask config's TLS credentials (a TypeError).
    ValueError: the CLI makes it a usage error."""
    import dask
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port
    from distributed.security import Security

    scheme, location = parse_address(scheduler)
    if scheme in ("tcp", "tls", "ws", "wss"):
        _, port = parse_host_port(location)
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is not in 1..65535")
    if (scheme in ("tls", "wss") and not dask.config.get("distributed.client.security-loader", None)
            and Security().get_connection_args("client").get("ssl_context") is None):
        raise ValueError(f"{scheme}:// needs TLS credentials in the Dask config (distributed.comm.tls.ca-file and "
                         "distributed.comm.tls.client.cert/key, e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE)")


def _dask_backend(client: "Client") -> ParallelBackendBase:
    """joblib's dask backend, except that a job whose worker died fails instead of hanging.

    joblib 1.6's ``DaskDistributedBackend._collect`` completes a failed job's future but never calls
    joblib's completion callback, so ``Parallel`` waits forever once a worker dies under a job (a
    decoder segfault, the OOM killer). Here the callback gets the error, as a loky
    ``TerminatedWorkerError`` (the scheduler's ``KilledWorker`` in its message), so callers handle a
    dead worker the same way on both backends.

    And when joblib aborts after an error, the jobs still running on other workers are cancelled
    and awaited: Dask cannot stop a running task, so without the wait they would go on writing their
    per-video files while the caller already retries or cleans up (loky kills its whole pool).

    And the jobs always go to the cluster: joblib runs everything in the calling process when the
    backend reports one usable core, which a one-thread cluster, or one whose other worker just
    died, does.
    """
    import asyncio

    from distributed import KilledWorker
    from joblib._dask import DaskDistributedBackend

    class Backend(DaskDistributedBackend):
        async def _collect(self) -> None:
            while self._continue:
                async for future, result in self.waiting_futures:
                    cf_future = self._results.pop(future)
                    callback = self._callbacks.pop(future)
                    if future.status == "error":
                        _, exc, _ = result
                        if isinstance(exc, KilledWorker):
                            exc = TerminatedWorkerError(f"a Dask worker died running the job: {exc}")
                        cf_future.set_exception(exc)
                        callback(exc)  # what joblib lacks: the callback registers the error
                    else:
                        cf_future.set_result(result)
                        callback(result)
                await asyncio.sleep(0.01)

        def effective_n_jobs(self, n_jobs: int) -> int:
            return max(2, super().effective_n_jobs(n_jobs))

        def abort_everything(self, ensure_ready: bool = True) -> None:
            with self.waiting_futures.lock:
                in_flight = list(self.waiting_futures.futures)
            super().abort_everything(ensure_ready=ensure_ready)
            if in_flight:
                self.client.cancel(in_flight)
                _wait_until_not_executing(self.client, {str(f.key) for f in in_flight})

    return Backend(client=client)


def _executing_keys(dask_worker: Any) -> list[str]:
    """Runs on each worker: tasks whose thread still runs, cancelled ones included."""
    return [str(ts.key) for ts in dask_worker.state.executing]


def _wait_until_not_executing(client: "Client", keys: set[str], *, poll_s: float = 0.5) -> None:
    while any(set(running) & keys for running in client.run(_executing_keys).values()):
        time.sleep(poll_s)
