"""The flow process of --engine torch (flowprep/torchflow/service.py, flowprep/torchflow/batching.py): batches across
videos, out-of-memory shrinking, and the pipeline around it with real processes and real videos."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Listener
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import REPO, make_ucf_tree
from flowprep.extract import reader
from flowprep.extract import runner
from flowprep.cli import main
from flowprep.config import FlowConfig, TVL1Params
from flowprep.torchflow.batching import Batcher, Request
from flowprep.torchflow.client import FlowClient
from flowprep.torchflow.processes import FlowProcesses
from flowprep.torchflow.service import KILL_ENV, TIMEOUT_ENV, Address, FlowProcessLost, devices
from flowprep.extract.quantize import quantize
from flowprep.torchflow.tvl1 import tvl1_flow
from flowprep.extract.verify import verify_output
from media import random_frames
from processes import alive, cmdline, descendants

TINY = TVL1Params(nscales=1, warps=1, outer_iterations=2, inner_iterations=3)
BOUND = 2.0  # small: the codes of tiny-parameter flow spread over many values


def solve(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    return tvl1_flow(prev, nxt, TINY).numpy()


def gray_video(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in random_frames(frames, height, width, seed=seed)])


def request(frames: np.ndarray, client: object = None) -> Request:
    return Request(frames, np.zeros((len(frames) - 1, 2, *frames.shape[1:]), np.uint8), client=client)


def run_all(batcher: Batcher, requests: list[Request]) -> list[Request]:
    for r in requests:
        batcher.add(r)
    done = []
    while batcher.oldest() is not None:
        done += batcher.run_batch()
    return done


def test_out_of_memory_halves_the_batch_logs_it_once_and_changes_no_code() -> None:
    videos = [gray_video(n, 24, 32, seed) for seed, n in enumerate((5, 5, 7))]  # 4 + 4 + 6 pairs
    calls: list[int] = []

    def small_device(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:  # room for 2 pairs at a time
        calls.append(len(prev))
        if len(prev) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return solve(prev, nxt)

    logs: list[str] = []
    shrunk = [request(v) for v in videos]
    done = run_all(Batcher(small_device, bound=BOUND, max_batch=8, log=logs.append), shrunk)
    assert sorted(map(id, done)) == sorted(map(id, shrunk)) and all(r.error is None for r in shrunk)
    assert calls[:3] == [8, 4, 2] and set(calls[3:]) == {2}  # halved twice, then it stays there
    assert logs == ["out of device memory with 8 pairs of 32x24 per batch: batches of at most 2 from now on"]
    whole = [request(v) for v in videos]
    run_all(Batcher(solve, bound=BOUND, max_batch=8), whole)
    for a, b, v in zip(shrunk, whole, videos):
        assert np.array_equal(a.codes, b.codes)
        assert np.array_equal(a.codes, quantize(solve(v[:-1], v[1:]), BOUND))  # = each video alone
    assert len(np.unique(whole[2].codes)) > 10


def test_a_pair_that_does_not_fit_alone_fails_its_video_not_the_run() -> None:
    def no_room(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")

    r = request(gray_video(3, 24, 32, 0))
    assert run_all(Batcher(no_room, bound=BOUND, max_batch=4, log=lambda _: None), [r]) == [r]
    assert r.error == "RuntimeError: out of device memory on a single 32x24 frame pair"


def test_frames_the_solver_rejects_fail_their_batch_only() -> None:
    tiny, fine = request(gray_video(3, 24, 32, 0)[:, :2, :2].copy()), request(gray_video(3, 24, 32, 1))
    assert run_all(Batcher(solve, bound=BOUND, max_batch=4), [tiny, fine]) == [tiny, fine]
    assert tiny.error == "ValueError: frames must be at least 3x3, got 2x2" and fine.error is None
    assert np.array_equal(fine.codes, quantize(solve(fine.frames[:-1], fine.frames[1:]), BOUND))


def test_a_solver_that_returns_nan_fails_that_video_only() -> None:
    nan_video, fine = request(gray_video(3, 24, 32, 0)), request(gray_video(4, 24, 32, 1))

    def nan_for_the_first(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        flow = solve(prev, nxt)
        flow[0, 1, 5, 7] = np.nan  # the first pair of the batch belongs to nan_video
        return flow

    assert run_all(Batcher(nan_for_the_first, bound=BOUND, max_batch=8), [nan_video, fine]) == [nan_video, fine]
    assert nan_video.error == "NonFiniteFlow: the flow solver returned NaN at 1 of 3072 values"
    assert fine.error is None and np.array_equal(fine.codes, quantize(solve(fine.frames[:-1], fine.frames[1:]), BOUND))


def test_batches_take_pairs_of_several_clients_one_frame_size_at_a_time() -> None:
    shapes: list[tuple[int, ...]] = []

    def recording(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        shapes.append(prev.shape)
        return solve(prev, nxt)

    a, b, c = object(), object(), object()
    small, wide, small2 = gray_video(4, 24, 32, 1), gray_video(3, 16, 40, 2), gray_video(6, 24, 32, 3)
    reqs = [request(small, a), request(wide, b), request(small2, c)]
    batcher = Batcher(recording, bound=BOUND, max_batch=6)
    done = run_all(batcher, reqs)
    # 3 + 5 pairs of 32x24, 6 per batch: the first batch takes 3 of the third request; the 40x16 pairs come
    # next (their request waited longer than the rest of the third)
    assert shapes == [(6, 24, 32), (2, 16, 40), (2, 24, 32)]
    assert [r.frames.shape for r in done] == [(4, 24, 32), (3, 16, 40), (6, 24, 32)]
    for r in reqs:
        assert np.array_equal(r.codes, quantize(solve(r.frames[:-1], r.frames[1:]), BOUND))
    assert (batcher.stats.pairs, batcher.stats.batches, batcher.stats.mixed_batches, batcher.stats.clients) == (
        10, 3, 1, 3)
    assert batcher.stats.limits == {"24x32": 6, "16x40": 6}


def _leftover_blocks(address: Address) -> list[str]:
    return [b.name for b in Path("/dev/shm").glob(address.block_prefix + "*")]


def test_a_flow_process_that_takes_no_connection_is_lost_after_the_timeout(tmp_path: Path) -> None:
    """Its socket accepts in the kernel's backlog, but nobody answers the handshake (a SIGSTOPped process)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "0.sock"))
    server.listen(8)
    address = Address(str(tmp_path / "0.sock"), b"k" * 16, "cuda:1", answer_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(FlowProcessLost, match=r"^the flow process \(cuda:1\) took no connection in 1 s: it hangs"):
        FlowClient((address,)).codes(gray_video(3, 24, 32, 0))
    assert 1.0 <= time.monotonic() - start < 5 and _leftover_blocks(address) == []
    server.close()


def test_progress_keeps_a_worker_waiting_and_silence_past_the_timeout_loses_the_flow_process(tmp_path: Path) -> None:
    """A fake flow process: the first request is answered after 3 progress messages 0.6 s apart (1.8 s in all,
    over the 1 s timeout: other workers' batches were finished meanwhile); the second gets silence."""
    address = Address(str(tmp_path / "0.sock"), b"k" * 16, "cuda:0", answer_timeout_s=1.0)
    listener = Listener(address.path, "AF_UNIX", authkey=address.authkey)
    seen: list[tuple] = []

    def serve() -> None:
        with listener.accept() as conn:
            seen.append(conn.recv())
            for _ in range(3):
                time.sleep(0.6)
                conn.send(("progress",))
            conn.send(("ok",))
            seen.append(conn.recv())
            time.sleep(3)  # hung: no answer, no progress

    server = threading.Thread(target=serve)
    server.start()
    client = FlowClient((address,))
    video = gray_video(3, 24, 32, 0)
    try:
        assert client.codes(video).shape == (2, 2, 24, 32)  # waited 1.8 s, over the timeout, without giving up
        start = time.monotonic()
        with pytest.raises(FlowProcessLost, match=r"^the flow process \(cuda:0\) finished no batch in 1 s: it hangs"):
            client.codes(video)
        assert 1.0 <= time.monotonic() - start < 2.5
    finally:
        server.join()
        listener.close()
    assert [m[0] for m in seen] == ["flow", "flow"] and _leftover_blocks(address) == []
    assert all(m[1].startswith(address.block_prefix) for m in seen)


# ---------------------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_a_worker_sends_its_chunks_to_the_flow_processes_in_turn() -> None:
    """As with --device cuda:0,1: two flow processes (here both on the CPU), one client."""
    flow = FlowConfig(tvl1=TINY, bound=BOUND, engine="torch")
    one, two = FlowProcesses(flow, max_batch=8), FlowProcesses(flow, max_batch=8)
    video = gray_video(4, 24, 32, 5)
    with one as first, two as second:
        client = FlowClient(first + second)
        codes = [client.codes(video) for _ in range(4)]
        client.close()
    assert [s["requests"] for s in one.stats + two.stats] == [2, 2]
    assert all(np.array_equal(c, quantize(solve(video[:-1], video[1:]), BOUND)) for c in codes)

# Few iterations: on tiny frames the port's time is per-operation overhead (a loaded 2-core machine took
# 45 s for 30 pairs at OpenCV's inner/outer defaults in the per-worker path); two scales still check the
# pyramid of each frame size.
PARAMS = TVL1Params(nscales=2, warps=1, outer_iterations=2, inner_iterations=5)
PARAM_ARGS = ["--tvl1-nscales", "2", "--tvl1-warps", "1", "--tvl1-outer-iterations", "2",
              "--tvl1-inner-iterations", "5"]


def make_two_size_tree(root: Path) -> Path:
    """4 videos of 5 frames (H.264 and MPEG-4): 2 of 64x48, 2 of 56x40."""
    make_ucf_tree(root, classes=("Jump",), per_class=2, frames=5)
    return make_ucf_tree(root, classes=("Swim",), per_class=2, frames=5, height=40, width=56)


def extract(videos: Path, out: Path, engine: str = "opencv", **kwargs) -> runner.RunSummary:
    """Chunks of 4 frames: a video of 5 frames is two requests to the flow process (3 pairs and 1)."""
    classes, metas = reader.plan_videos(videos, class_index=None, layout=None, labels=(), unlabelled=False,
                                        warn=lambda _: None)
    return runner.run_extract(videos_root=videos, out=out, videos=metas, classes=classes, workers=2, progress=False,
                              flow=FlowConfig(tvl1=PARAMS, bound=BOUND, engine=engine), chunk_frames=4, **kwargs)


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, runner.RunSummary, Path]:
    """(videos, summary, out) of one --engine torch --device cpu run through the flow process."""
    tmp = tmp_path_factory.mktemp("flow_service")
    videos = make_two_size_tree(tmp / "videos")
    out = tmp / "service"
    return videos, extract(videos, out, engine="torch", flow_wait_s=0.2), out


@pytest.mark.slow
def test_two_workers_feed_one_flow_process_with_two_frame_sizes(two_sizes, tmp_path: Path, read_shards) -> None:
    videos, summary, out = two_sizes
    assert summary.processed == 4 and not summary.failures and verify_output(out).ok
    [stats] = summary.flow_processes
    # 2 requests per video (3 pairs and 1), from both workers. Whether a batch mixes them depends on
    # timing here (test_batches_take_pairs_of_several_clients... shows that it does).
    assert (stats["device"], stats["requests"], stats["pairs"], stats["clients"]) == ("cpu", 8, 16, 2), stats
    assert set(stats["limits"]) == {"48x64", "40x56"}
    service = read_shards(out)
    assert len(service) == 4
    # The per-worker solver, as the Dask backend runs it: worker threads here (their processes would
    # import torch again, seconds on a loaded machine); --engine torch with flow_process=False runs it too.
    threads = torch.get_num_threads()
    try:
        per_worker = extract(videos, tmp_path / "per_worker", engine="torch", backend="threading")
    finally:
        torch.set_num_threads(threads)  # TorchTVL1 sets 1 in its process: this one, here
    assert per_worker.flow_processes == [] and read_shards(tmp_path / "per_worker") == service
    extract(videos, tmp_path / "opencv")
    assert read_shards(tmp_path / "opencv") == service  # the port is OpenCV's flow to the bit on the CPU


@pytest.mark.slow
def test_a_killed_flow_process_ends_the_run_with_75_and_the_rerun_resumes(
    two_sizes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_shards
) -> None:
    videos = shutil.copytree(two_sizes[0], tmp_path / "videos")
    (videos / "Swim" / "broken.mp4").write_bytes(b"not a video")  # a video's own failure stays one
    args = ["extract", "--videos", str(videos), "--out", str(tmp_path / "out"), "--engine", "torch", "--device",
            "cpu", "--workers", "2", "--bound", str(BOUND), "--no-progress", *PARAM_ARGS]
    monkeypatch.setenv(KILL_ENV, "3")  # kill -9 on the third request
    killed = CliRunner().invoke(main, args)
    assert killed.exit_code == 75, killed.output
    [error] = [line for line in killed.output.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: the flow process (cpu) died (killed by signal 9 (SIGKILL)) (traceback in ")
    assert error.endswith("; rerun the same command to resume") and "Traceback" not in killed.output
    monkeypatch.delenv(KILL_ENV)
    rerun = CliRunner().invoke(main, args)
    assert rerun.exit_code == 1, rerun.output  # 1: the broken video (exit 0 with --failed-videos-ok)
    assert "1 video(s) failed" in rerun.output and " 0 from an earlier run" not in rerun.output
    assert read_shards(tmp_path / "out") == read_shards(two_sizes[2])
    report = verify_output(tmp_path / "out")
    assert report.ok and [f["path"] for f in report.failures] == ["Swim/broken.mp4"]


@pytest.mark.slow
def test_a_hung_flow_process_ends_the_run_with_75_naming_it_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGSTOP on the flow process of a real `flowprep extract --engine torch --device cpu` once a video is
    finished: the workers get no answer for FLOWPREP_FLOW_TIMEOUT_S, the run ends with one line and exit 75,
    the flow process is killed and no chunk's shared memory block is left; the rerun resumes and verifies."""
    device = os.environ.get("FLOWPREP_TEST_DEVICE", "cpu")  # benchmarks/gpu_check.sh runs it on cuda
    if device != "cpu" and not torch.cuda.is_available():
        pytest.skip(f"FLOWPREP_TEST_DEVICE={device} without a GPU")
    # 4 videos: one finishes, the others wait on the stopped flow process; the rerun does what is left
    videos = make_ucf_tree(tmp_path / "videos", classes=("Jump", "Run"), per_class=2, frames=24)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "flowprep", "extract", "--videos", str(videos), "--out", str(out), "--engine",
            "torch", "--device", device, "--workers", "2", "--bound", str(BOUND), "--no-progress", *PARAM_ARGS]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    timeout = 15.0
    run = subprocess.Popen(args, env={**env, TIMEOUT_ENV: str(timeout)}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    flow_pid, flow, family, flow_left = None, (0, ""), [], True
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob(".work/*/*.h5")):  # the first finished video
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.02)
        family = descendants(run.pid)
        [flow] = [p for p in family if "flowprep.torchflow.service" in cmdline(p[0])]
        flow_pid = flow[0]
        os.kill(flow_pid, signal.SIGSTOP)
        stopped = time.monotonic()
        stdout, stderr = run.communicate(timeout=timeout + 60)
        ended = time.monotonic() - stopped
        flow_left = alive(flow)
    finally:
        if flow_pid and alive(flow):
            os.kill(flow_pid, signal.SIGCONT)
            os.kill(flow_pid, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 75, (stdout, stderr)
    print(f"exit 75 {ended:.1f} s after SIGSTOP")
    assert timeout <= ended < timeout + 45, ended  # the bound, then killing and cleaning up (no 20 s stop waits)
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, "\n".join(lines)
    assert lines[0].startswith(f"Error: the flow process ({devices(device)[0]}) finished no batch in {timeout:g} s: it "
                               "hangs ")
    assert lines[0].endswith("; rerun the same command to resume")
    assert not flow_left  # killed by the run (not by the finally above)
    print("alive when the run ended:", [cmdline(p)[:80] for p, _ in family if alive((p, _))])
    deadline = time.monotonic() + 10  # the workers and the resource trackers see their parent gone, and end
    while [p for p in family if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [cmdline(p) for p, _ in family if alive((p, _))]
    # the chunks' blocks are named flowprep-flow-<run>-<worker pid>-<random>
    pids = {p for p, _ in family}
    leaked = [b.name for b in Path("/dev/shm").glob("flowprep-flow-*") if int(b.name.split("-")[-2]) in pids]
    assert leaked == []
    kept = len(list(out.glob(".work/*/*.h5")))
    assert kept >= 1
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"({len(list(videos.rglob('*.*'))) - kept} processed now, {kept} from an earlier run" in rerun.stdout
    verified = subprocess.run([sys.executable, "-m", "flowprep", "verify", str(out)], env=env, capture_output=True,
                              text=True, timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr
