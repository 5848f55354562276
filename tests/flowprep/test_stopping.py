"""Ctrl-C and SIGTERM (flowprep/stopping.py): the handlers in the test process, then real signals, as a terminal
and schedulers send them (scancel, docker stop, a deleted pod), to a real `flowprep extract`: the run stops its
workers and flow process, leaves no shared memory behind, exits 130 or 143 with one line, and the rerun resumes.
Python's default for SIGTERM would end the main process alone, at once."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import REPO, make_ucf_tree
from flowprep import stopping
from flowprep.cli import main
from flowprep.extract import verify as verify_mod
from flowprep.extract.verify import verify_output
from processes import alive, cmdline, descendants, stat

LINE = "terminated (SIGTERM): finished videos are kept; rerun the same command to resume"
# Few TV-L1 iterations: the torch engine on the CPU is slow per operation on tiny frames.
TVL1_ARGS = ["--tvl1-nscales", "2", "--tvl1-warps", "1", "--tvl1-outer-iterations", "2", "--tvl1-inner-iterations", "5"]


def test_sigterm_raises_terminated_once_ctrl_c_each_time_and_the_handlers_are_restored_after() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stopping.stop_on_signals():
        with pytest.raises(stopping.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs before this returns
        os.kill(os.getpid(), signal.SIGTERM)  # the second one lets the clean-up finish
        for _ in range(2):
            with pytest.raises(KeyboardInterrupt) as caught:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            assert not isinstance(caught.value, stopping.Terminated)
        assert stopping.stopped() == signal.SIGTERM
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert stopping.stopped() is None


def test_in_a_stop_flag_block_a_signal_sets_the_flag_a_second_ctrl_c_raises_and_a_second_sigterm_is_ignored() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stopping.stop_flag() as flag:
        assert flag.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # nothing raised: the loop asks the flag
        os.kill(os.getpid(), signal.SIGTERM)  # SLURM's, then torchrun's: still the first one
        assert (flag.signum, flag.name, flag.exit_code) == (signal.SIGTERM, "SIGTERM", 143)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with stopping.stop_flag() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert (flag.name, flag.exit_code) == ("SIGINT", 130)


def test_loader_workers_ignore_ctrl_c_and_a_sigterm_from_others_but_end_on_their_parents() -> None:
    """As SLURM signals every process of a step: the DataLoader workers keep serving while the trainer finishes its
    step; the parent's own SIGTERM (torch's and multiprocessing's last resort) still ends them, or the parent's
    join at exit would wait for ever."""
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(range(40), batch_size=2, num_workers=2, persistent_workers=True,
                                         worker_init_fn=stopping.ignore_stop_signals)
    it = iter(loader)
    assert [next(it).tolist() for _ in range(2)] == [[0, 1], [2, 3]]  # one from each worker: both initialized
    workers = it._workers
    subprocess.run(["kill", "-TERM", *(str(w.pid) for w in workers)], check=True)  # sent by another process
    for w in workers:
        os.kill(w.pid, signal.SIGINT)
    time.sleep(0.3)
    assert [w.is_alive() for w in workers] == [True, True]
    assert [next(it).tolist() for _ in range(3)] == [[4, 5], [6, 7], [8, 9]]
    for w in workers:
        w.terminate()  # the parent's SIGTERM
        w.join(timeout=10)
    assert [w.exitcode for w in workers] == [0, 0]
    it._shutdown_workers()


def test_a_stop_signal_whose_exception_a_finalizer_swallowed_is_raised_again_when_asked() -> None:
    class SignalledWhileCollected:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler's Terminated is "ignored" by CPython here

    with stopping.stop_on_signals():
        stopping.raise_if_stopped()  # nothing received: nothing raised
        SignalledWhileCollected()  # collected at once; its exception printed and dropped
        assert stopping.stopped() == signal.SIGTERM
        with pytest.raises(stopping.Terminated):
            stopping.raise_if_stopped()


FINALIZERS = (  # a finalizer that gets a Ctrl-C while it runs, and one with a bug of its own
    "import os, signal, sys\n"
    "from flowprep import stopping\n"
    "class Signalled:\n"
    "    def __del__(self):\n"
    "        os.kill(os.getpid(), signal.SIGINT)\n"
    "        sum(range(1000))  # the handler runs here, in the finalizer\n"
    "class Broken:\n"
    "    def __del__(self):\n"
    "        raise ValueError('a bug of its own')\n")


def run_with_finalizers(tmp_path: Path, body: str) -> str:
    """``body`` after FINALIZERS in a real process (CPython's report of a dropped exception goes to its stderr);
    its stderr, the exit status checked."""
    script = tmp_path / "finalizers.py"
    script.write_text(FINALIZERS + body)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stderr


def test_a_stop_signals_exception_a_finalizer_swallowed_prints_nothing_and_other_dropped_exceptions_still_do(
        tmp_path: Path) -> None:
    """CPython prints "Exception ignored in ..." and a traceback for an exception raised in a finalizer or weakref
    callback: a Ctrl-C that arrived there put that above the one line (seen in CI, in joblib's WeakValueDictionary).
    A real process, so that CPython's own report reaches stderr."""
    stderr = run_with_finalizers(
        tmp_path,
        "with stopping.stop_on_signals():\n"
        "    Signalled()\n"
        "    Broken()\n"
        "    try:\n"
        "        stopping.raise_if_stopped()\n"
        "    except KeyboardInterrupt:\n"
        "        print('stopped', file=sys.stderr)\n"
        "Broken()  # outside the block: reported too\n")
    assert "KeyboardInterrupt" not in stderr, stderr
    assert stderr.count("ValueError: a bug of its own") == 2, stderr
    assert "stopped" in stderr.splitlines()


def test_a_second_ctrl_c_a_finalizer_swallowed_in_stop_flag_prints_nothing_and_is_still_honoured(
        tmp_path: Path) -> None:
    """trainer fit's stop_flag(): a second Ctrl-C raises KeyboardInterrupt (leave now); raised in a finalizer,
    CPython printed "Exception ignored in ..." and a traceback and dropped it, and the run went on to save as after
    one Ctrl-C. Now the report is left out and the flag remembers it: its check raises KeyboardInterrupt again.
    Other exceptions a finalizer drops are still reported. A real process, so that CPython's report reaches stderr."""
    stderr = run_with_finalizers(
        tmp_path,
        "try:\n"
        "    with stopping.stop_flag() as flag:\n"
        "        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C sets the flag\n"
        "        sum(range(1000))\n"
        "        print('flag', flag.name, file=sys.stderr)\n"
        "        Signalled()  # the second, in a finalizer\n"
        "        Broken()\n"
        "        flag.raise_if_leaving()  # as the training loop asks before each step\n"
        "        print('went on', file=sys.stderr)\n"
        "except KeyboardInterrupt:\n"
        "    print('left', file=sys.stderr)\n"
        "Broken()  # outside the block: reported too\n")
    assert "KeyboardInterrupt" not in stderr, stderr
    assert stderr.count("ValueError: a bug of its own") == 2, stderr
    lines = stderr.splitlines()
    assert "flag SIGINT" in lines and "left" in lines and "went on" not in lines, stderr


def test_an_ignored_sigterm_stays_ignored() -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as under a parent that ignores it
    try:
        with stopping.stop_on_signals():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            assert stopping.stopped() is None
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_in_verify_is_one_line_and_130_not_clicks_aborted_and_1_which_means_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(verify_mod, "verify_output", interrupted)
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 130 and result.output.split() == ["interrupted"], result.output


def extract_args(videos: Path, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "flowprep", "extract", "--videos", str(videos), "--out", str(out), "--bound", "2",
            "--no-progress", *options]


def environment(tmp: Path) -> dict[str, str]:
    tmp.mkdir()  # the flow processes' socket folder goes here: it must be gone afterwards
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "TMPDIR": str(tmp)}


def wait_for_a_finished_video(run: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 240
    while not list(out.glob(".work/*/*.h5")):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)


def ended(run: subprocess.Popen) -> tuple[str, str]:
    try:
        return run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()


def rerun_resumes(args: list[str], env: dict[str, str], out: Path) -> None:
    kept = len(list(out.glob(".work/*/*.h5")))
    assert kept >= 1
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert int(re.search(r"(\d+) from an earlier run", rerun.stdout).group(1)) == kept, rerun.stdout
    assert verify_output(out).ok


@pytest.mark.slow
def test_sigterm_stops_the_workers_and_the_flow_process_exits_143_in_one_line_and_leaves_no_shared_memory(
    tmp_path: Path,
) -> None:
    device = os.environ.get("FLOWPREP_TEST_DEVICE", "cpu")  # benchmarks/gpu_check.sh runs it on cuda
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"FLOWPREP_TEST_DEVICE={device} without a GPU")
    videos = make_ucf_tree(tmp_path / "videos", classes=("Jump", "Run"), per_class=2, frames=24)
    out, env = tmp_path / "out", environment(tmp_path / "tmp")
    args = extract_args(videos, out, "--engine", "torch", "--device", device, "--workers", "2", *TVL1_ARGS)
    run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_a_finished_video(run, out)
        family = descendants(run.pid)
        assert [p for p, _ in family if "flowprep.torchflow.service" in cmdline(p)]
        assert len([p for p, _ in family if "LokyProcess" in cmdline(p)]) == 2
        run.send_signal(signal.SIGTERM)  # to the main process only, as `docker stop` does
    finally:
        stdout, stderr = ended(run)
    assert run.returncode == 143, (stdout, stderr)
    assert [line for line in (stdout + stderr).splitlines() if line.strip()] == [LINE]
    deadline = time.monotonic() + 10  # loky's resource trackers see their parent gone, and end
    while [p for p in family if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [cmdline(p) for p, _ in family if alive((p, _))]
    pids = {p for p, _ in family}  # the chunks' blocks are named flowprep-flow-<run>-<worker pid>-<random>
    assert [b.name for b in Path("/dev/shm").glob("flowprep-flow-*") if int(b.name.split("-")[-2]) in pids] == []
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list(out.glob(".work/*/*.h5"))  # the finished videos stay (the rerun's resume: the test below)


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_job_as_scancel_sends_it_still_exits_143_in_one_line(tmp_path: Path) -> None:
    """The workers die of it too: the main process must not take that for a crash (75) or retry their videos."""
    videos = make_ucf_tree(tmp_path / "videos", classes=("Jump",), per_class=2, frames=40)
    out, env = tmp_path / "out", environment(tmp_path / "tmp")
    run = subprocess.Popen(extract_args(videos, out, "--workers", "2", *TVL1_ARGS), env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_for_a_finished_video(run, out)
        family = descendants(run.pid)
        for pid in [p for p, _ in family if "LokyProcess" in cmdline(p)] + [run.pid]:  # the workers first
            os.kill(pid, signal.SIGTERM)
    finally:
        stdout, stderr = ended(run)
    assert run.returncode == 143, (stdout, stderr)
    assert [line for line in (stdout + stderr).splitlines() if line.strip()] == [LINE]


def _new_pid_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _new_pid_namespaces(), reason="needs `unshare --pid` (root or user namespaces)")
def test_as_pid_1_of_a_container_extract_still_stops_on_sigterm_and_the_rerun_resumes(tmp_path: Path) -> None:
    """PID 1 of a PID namespace (a container's ENTRYPOINT) gets no signal it has no handler for: without
    one, `docker stop` and a pod's deletion would wait out their grace period and SIGKILL the run."""
    videos = make_ucf_tree(tmp_path / "videos", classes=("Jump",), per_class=2, frames=40)
    out, env = tmp_path / "out", environment(tmp_path / "tmp")
    args = extract_args(videos, out, "--workers", "1", *TVL1_ARGS)
    run = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_for_a_finished_video(run, out)
        [init] = [p for p, _ in descendants(run.pid) if int(stat(p)[1]) == run.pid]  # unshare's child
        assert "flowprep" in cmdline(init)
        assert Path(f"/proc/{init}/status").read_text().split("NSpid:")[1].split("\n")[0].split()[-1] == "1"  # PID 1 inside
        os.kill(init, signal.SIGTERM)
    finally:
        stdout, stderr = ended(run)
    assert run.returncode == 143, (stdout, stderr)
    assert [line for line in (stdout + stderr).splitlines() if line.strip()] == [LINE]
    rerun_resumes(args, env, out)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])  # one worker is a loky executor of our own, more are joblib's
def test_ctrl_c_at_a_terminal_reaches_the_whole_process_group_and_exits_130_in_one_line(tmp_path: Path,
                                                                                       workers: int) -> None:
    """The workers ignore Ctrl-C (the main process ends them): no worker's traceback, no worker's death
    taken for a crash (exit 75)."""
    videos = make_ucf_tree(tmp_path / "videos", classes=("Jump",), per_class=2, frames=40)
    out, env = tmp_path / "out", environment(tmp_path / "tmp")
    args = extract_args(videos, out, "--workers", str(workers), *TVL1_ARGS)
    run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # its own process group, as a terminal's foreground job
    try:
        wait_for_a_finished_video(run, out)
        family = descendants(run.pid)
        os.killpg(run.pid, signal.SIGINT)
    finally:
        stdout, stderr = ended(run)
    assert run.returncode == 130, (stdout, stderr)
    assert [line for line in (stdout + stderr).splitlines() if line.strip()] == [
        "interrupted: rerun the same command to resume"]
    deadline = time.monotonic() + 10
    while [p for p in family if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [cmdline(p) for p, _ in family if alive((p, _))]
