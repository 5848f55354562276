"""joblib over a real dask.distributed cluster (scheduler in this process, workers in subprocesses)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
from joblib import Parallel, delayed

distributed = pytest.importorskip("distributed", reason="the dask extra (dask[distributed]) is not installed")

from joblib.externals.loky.process_executor import TerminatedWorkerError  # noqa: E402

from flowprep.extract.verify import verify_output  # noqa: E402
from flowprep.scale.dask_cluster import (  # noqa: E402
    BackendError,
    BackendUsageError,
    check_workers,
    joblib_backend,
    software_versions,
)

pytestmark = pytest.mark.slow  # a LocalCluster takes a few seconds to start on 2 shared cores


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        processes=True, n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0"
    ) as c:
        yield c


def test_jobs_run_in_the_worker_processes(cluster) -> None:
    parent = os.getpid()
    with joblib_backend("dask", cluster.scheduler_address) as backend:
        worker_pids = set(backend.client.run(os.getpid).values())
        # Both ways the runner may call joblib: the configured backend, and backend= explicitly.
        pids = Parallel(n_jobs=-1, batch_size=1)(delayed(os.getpid)() for _ in range(16))
        values = Parallel(n_jobs=2, backend=backend)(delayed(math.factorial)(n) for n in range(30))
    assert len(worker_pids) == 2 and parent not in worker_pids
    assert parent not in pids
    assert set(pids) <= worker_pids
    assert values == [math.factorial(n) for n in range(30)]


def test_unordered_generator_with_the_yielded_backend(cluster) -> None:
    # The extract runner passes its backend to Parallel and consumes results as they complete.
    with joblib_backend("dask", cluster.scheduler_address) as backend:
        gen = Parallel(n_jobs=2, backend=backend, return_as="generator_unordered")(
            delayed(pow)(n, 2) for n in range(20)
        )
        assert sorted(gen) == [n * n for n in range(20)]


def test_check_workers_reports_what_each_worker_runs(cluster, tmp_path) -> None:
    with distributed.Client(cluster.scheduler_address) as client:
        probes = check_workers(client, shared_paths=[tmp_path])
    assert len(probes) == 2
    assert all(p["versions"] == software_versions() and p["missing"] == [] for p in probes.values())


def test_a_worker_with_another_torch_is_refused_naming_it(cluster, tmp_path, monkeypatch) -> None:
    # With --engine torch the workers solve the flow, so their torch must be ours. The workers are other
    # processes: changing the version this process reports makes every worker's differ.
    from flowprep.scale import dask_cluster

    theirs = software_versions()["torch"]
    assert theirs  # torch is installed, and its version is compared
    real = dask_cluster.software_versions
    monkeypatch.setattr(dask_cluster, "software_versions", lambda: {**real(), "torch": "0.0.1"})
    with distributed.Client(cluster.scheduler_address) as client:
        with pytest.raises(BackendError, match=rf"other versions .*'torch': \('0.0.1', '{re.escape(theirs)}'\)"):
            check_workers(client, shared_paths=[tmp_path])


def test_a_path_the_workers_cannot_see_is_refused(cluster, tmp_path) -> None:
    missing = tmp_path / "not-mounted"
    with pytest.raises(BackendError, match="cannot see .*not-mounted"):
        with joblib_backend("dask", cluster.scheduler_address, shared_paths=[tmp_path, missing]):
            pytest.fail("the block must not run")


def test_a_scheduler_without_workers_is_a_clear_error() -> None:
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=":0") as c:
        with distributed.Client(c.scheduler_address) as client:
            with pytest.raises(BackendError, match="no Dask worker joined the scheduler"):
                check_workers(client, timeout=1.0)


def test_unreachable_scheduler_is_a_clear_error() -> None:
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        with joblib_backend("dask", "tcp://127.0.0.1:9", connect_timeout=1.0):
            pytest.fail("the block must not run")
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize(
    ("backend", "scheduler", "message"),
    [
        ("dask", None, "needs --scheduler"),
        ("loky", "tcp://127.0.0.1:8786", "only used with --backend dask"),
        ("spark", None, "expected a backend in"),
        ("dask", "no-port-here", "expected --scheduler like tcp://HOST:PORT"),
        # at once, not after a 10 s connection timeout and exit 3 (retried by schedulers)
        ("dask", "tcp://127.0.0.1:99999", "port 99999 is not in 1..65535"),
        ("dask", "tcp://127.0.0.1:0", "port 0 is not in 1..65535"),
        # not a TypeError out of distributed (exit 75, "rerun to resume")
        ("dask", "tls://127.0.0.1:8786", "tls:// needs TLS credentials in the Dask config"),
    ],
)
def test_bad_arguments(backend: str, scheduler: str | None, message: str) -> None:
    with pytest.raises(BackendUsageError, match=message):
        with joblib_backend(backend, scheduler):
            pytest.fail("the block must not run")


def test_loky_runs_in_local_worker_processes() -> None:
    with joblib_backend("loky", None) as backend:
        assert backend == "loky"
        pids = Parallel(n_jobs=2, backend=backend)(delayed(os.getpid)() for _ in range(4))
    assert os.getpid() not in pids


@pytest.mark.timeout(120)  # joblib's own dask backend hangs here forever: fail instead
def test_a_dead_worker_fails_the_job_like_a_dead_loky_worker(tmp_path) -> None:
    # A job that kills its process (as a decoder segfault would) must surface as loky's
    # TerminatedWorkerError, which the runner already handles, not hang; and only once the job still
    # running on the other worker has finished, since Dask cannot stop it and it writes files.
    # allowed-failures=0: the scheduler gives up at the first death instead of retrying elsewhere.
    import dask

    marker = tmp_path / "written-by-the-other-job"
    slow_job = ["sh", "-c", f"sleep 3 && touch {marker}"]
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(
            processes=True, n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0"
        ) as c:
            with joblib_backend("dask", c.scheduler_address) as backend:
                jobs = [delayed(subprocess.run)(slow_job, check=True), delayed(os._exit)(3)]
                with pytest.raises(TerminatedWorkerError, match="KilledWorker|died"):
                    list(Parallel(n_jobs=2, backend=backend, batch_size=1, return_as="generator_unordered")(jobs))
                assert marker.exists(), "the abort returned while a job was still running on the cluster"
                # The same backend keeps working once the nanny has restarted the worker.
                assert Parallel(n_jobs=2, backend=backend)(delayed(abs)(-n) for n in range(4)) == [0, 1, 2, 3]


def test_a_single_thread_cluster_still_runs_the_jobs_on_its_worker() -> None:
    # joblib would run every job in this process if the backend reported one core.
    with distributed.LocalCluster(
        processes=True, n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0"
    ) as c:
        with joblib_backend("dask", c.scheduler_address) as backend:
            (worker_pid,) = backend.client.run(os.getpid).values()
            pids = Parallel(n_jobs=1, backend=backend)(delayed(os.getpid)() for _ in range(3))
    assert pids == [worker_pid] * 3 and worker_pid != os.getpid()


# --- `flowprep extract --backend dask` (the CLI, real videos, the workers of a real cluster) -----


def _extract(videos, out, *args):
    from click.testing import CliRunner

    from flowprep.cli import main

    method = [] if "--method" in args else ["--method", "farneback"]
    cmd = ["extract", "--videos", str(videos), "--out", str(out), *method, "--videos-per-shard", "2",
           "--no-progress", *args]
    return CliRunner().invoke(main, cmd)


def test_extract_on_a_dask_cluster_equals_a_loky_run(cluster, ucf_tree, tmp_path, read_shards) -> None:
    from click.testing import CliRunner

    from flowprep.cli import main

    with distributed.Client(cluster.scheduler_address) as client:
        with distributed.get_task_stream(client) as stream:  # what the scheduler ran, and where
            on_dask = _extract(ucf_tree, tmp_path / "dask", "--backend", "dask", "--scheduler", cluster.scheduler_address)
        workers = set(client.scheduler_info()["workers"])
    assert on_dask.exit_code == 0, on_dask.output
    # joblib sends the videos in batches ("batch_of_extract_video_<n>_calls-..."): all 4 ran on workers.
    batches = [(re.match(r"batch_of_extract_video_(\d+)_calls", str(t["key"])), t["worker"]) for t in stream.data]
    assert sum(int(m.group(1)) for m, _ in batches if m) == 4
    assert {w for m, w in batches if m} <= workers
    assert CliRunner().invoke(main, ["verify", str(tmp_path / "dask")]).exit_code == 0
    on_loky = _extract(ucf_tree, tmp_path / "loky", "--workers", "2")
    assert on_loky.exit_code == 0, on_loky.output
    assert read_shards(tmp_path / "dask") == read_shards(tmp_path / "loky")
    assert len(read_shards(tmp_path / "dask")) == 4


def test_extract_with_an_unusable_cluster_is_one_line_and_exit_3(ucf_tree, tmp_path, monkeypatch) -> None:
    import functools

    from flowprep.scale import dask_cluster

    # The CLI's connection attempt, 1 s instead of the default 10 s (a refused connection is retried until then).
    quick = functools.partial(dask_cluster.joblib_backend, connect_timeout=1.0)
    monkeypatch.setattr(dask_cluster, "joblib_backend", quick)
    result = _extract(ucf_tree, tmp_path / "out", "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9")
    assert result.exit_code == 3
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output
    usage = _extract(ucf_tree, tmp_path / "out", "--backend", "dask")
    assert usage.exit_code == 2 and "needs --scheduler" in usage.output


@pytest.mark.timeout(300)
def test_a_video_that_kills_dask_workers_is_recorded_as_failed(ucf_tree, tmp_path, monkeypatch) -> None:
    # The runner's fault injection: the worker given this video dies by SIGSEGV, as a decoder crash would.
    import dask

    from flowprep.extract.worker import CRASH_ENV

    monkeypatch.setenv(CRASH_ENV, "Jump/v_Jump_g01.avi")  # inherited by the workers spawned below
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(
            processes=True, n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0"
        ) as c:
            result = _extract(ucf_tree, tmp_path / "out", "--backend", "dask", "--scheduler", c.scheduler_address)
    assert result.exit_code == 1, result.output
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [f["path"] for f in failures] == ["Jump/v_Jump_g01.avi"]
    assert "crashed" in failures[0]["error"]
    assert "Traceback" not in result.output


def test_tvl1_on_a_cluster_whose_worker_runs_two_threads_equals_a_loky_run(ucf_tree, tmp_path, read_shards) -> None:
    # A default `dask worker` runs several threads, and OpenCV releases the GIL inside calc(): with one
    # solver per process the two threads overwrote each other's buffers (flow off by pixels, no error).
    tvl1 = ["--method", "tvl1", "--tvl1-nscales", "3", "--tvl1-warps", "3"]
    with distributed.LocalCluster(
        processes=True, n_workers=1, threads_per_worker=2, host="127.0.0.1", dashboard_address=":0"
    ) as c:
        on_dask = _extract(ucf_tree, tmp_path / "dask", *tvl1, "--backend", "dask", "--scheduler", c.scheduler_address)
    assert on_dask.exit_code == 0, on_dask.output
    on_loky = _extract(ucf_tree, tmp_path / "loky", *tvl1, "--workers", "2")
    assert on_loky.exit_code == 0, on_loky.output
    assert read_shards(tmp_path / "dask") == read_shards(tmp_path / "loky")
    assert len(read_shards(tmp_path / "dask")) == 4


@pytest.mark.timeout(300)
def test_a_scheduler_lost_mid_run_is_one_line_and_the_retriable_status(tmp_path) -> None:
    import socket
    import sys
    from pathlib import Path

    from conftest import make_ucf_tree

    from flowprep import exits

    videos = make_ucf_tree(tmp_path / "v", classes=("A", "B"), per_class=4, frames=24, height=120, width=160)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    scheduler = subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "2", "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        run = subprocess.Popen([str(bin_dir / "flowprep"), "extract", "--videos", str(videos), "--out",
                                str(tmp_path / "out"), "--method", "tvl1", "--backend", "dask", "--scheduler", address,
                                "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list((tmp_path / "out" / ".work").glob("*/*.running")) and time.monotonic() < deadline:
            time.sleep(0.05)  # until a worker is on a video
        scheduler.kill()
        stdout, stderr = run.communicate(timeout=180)
    finally:
        for proc in (scheduler, worker):
            proc.kill()
            proc.wait()
    assert run.returncode == exits.RETRY.code, stdout + stderr
    assert "Traceback" not in stdout + stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: lost the Dask cluster at {address}: ") and last.endswith("rerun the same command to resume")


def test_the_torch_engine_on_a_cluster_solves_in_each_worker_and_writes_opencvs_flow(cluster, ucf_tree, tmp_path,
                                                                                       read_shards) -> None:
    """--engine torch --device cpu --backend dask: no flow process; each Dask worker runs the port on its videos."""
    tiny = ["--method", "tvl1", "--tvl1-nscales", "2", "--tvl1-warps", "1", "--tvl1-outer-iterations", "2",
            "--tvl1-inner-iterations", "5"]
    on_dask = _extract(ucf_tree, tmp_path / "dask", *tiny, "--engine", "torch", "--device", "cpu", "--backend", "dask",
                       "--scheduler", cluster.scheduler_address)
    assert on_dask.exit_code == 0, on_dask.output
    with distributed.Client(cluster.scheduler_address) as client:
        solvers = client.run(lambda: "flowprep.torchflow.tvl1" in sys.modules)  # imported by the solver only
    assert any(solvers.values()), solvers
    on_loky = _extract(ucf_tree, tmp_path / "opencv", *tiny, "--workers", "2")
    assert on_loky.exit_code == 0, on_loky.output
    assert read_shards(tmp_path / "dask") == read_shards(tmp_path / "opencv") and len(read_shards(tmp_path / "dask")) == 4
    assert verify_output(tmp_path / "dask").ok
