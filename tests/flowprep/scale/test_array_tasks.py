"""Array-job split and scheduler detection (flowprep/scale/array_tasks.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_ucf_tree

from flowprep.cli import main as flowprep_cli
from flowprep.scale.array_tasks import (
    TaskError,
    TaskSpec,
    assign_tasks,
    detect_task,
    split_videos,
    video_weights,
)


def ucf_like_items(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """UCF-101-like relative paths with a long-tailed size distribution (a few long videos)."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        cls = f"Class{i % 7:02d}"
        items.append((f"{cls}/v_{cls}_g{i // 7:02d}_c{i % 3 + 1:02d}.avi", int(rng.lognormvariate(13, 0.8))))
    return items


# --- split_videos ------------------------------------------------------------------------------


@pytest.mark.parametrize("task_count", [1, 2, 3, 7, 60])
def test_every_video_lands_exactly_once(task_count: int) -> None:
    items = ucf_like_items(50)
    parts = [split_videos(items, task_index=t, task_count=task_count) for t in range(task_count)]
    landed = [p for part in parts for p in part]
    assert sorted(landed) == sorted(p for p, _ in items)
    assert len(landed) == len(set(landed))
    if task_count > len(items):
        assert sum(1 for part in parts if not part) == task_count - len(items)


@pytest.mark.parametrize("task_count", [2, 3, 7, 16])
def test_balanced_by_work_within_the_lpt_bound(task_count: int) -> None:
    items = ucf_like_items(200, seed=task_count)
    weight = dict(items)
    loads = [sum(weight[p] for p in part) for part in assign_tasks(items, task_count=task_count)]
    total, biggest = sum(weight.values()), max(weight.values())
    assert max(loads) <= total / task_count + biggest
    assert sum(loads) == total


def test_balance_is_by_size_not_by_count() -> None:
    # Two huge videos and many tiny ones: equal counts would put both huge videos on one task.
    items = [("A/big1.avi", 1000), ("A/big2.avi", 1000)] + [(f"B/s{i:02d}.avi", 1) for i in range(20)]
    parts = assign_tasks(items, task_count=2)
    assert {"A/big1.avi", "A/big2.avi"} & set(parts[0]) and {"A/big1.avi", "A/big2.avi"} & set(parts[1])
    weight = dict(items)
    assert [sum(weight[p] for p in part) for part in parts] == [1010, 1010]
    assert [len(part) for part in parts] == [11, 11]


def test_same_split_for_any_input_order() -> None:
    items = ucf_like_items(80) + [("Z/tie_a.avi", 500), ("Z/tie_b.avi", 500), ("Z/tie_c.avi", 500)]
    reference = assign_tasks(items, task_count=5)
    for seed in range(5):
        shuffled = items[:]
        random.Random(seed).shuffle(shuffled)
        assert assign_tasks(shuffled, task_count=5) == reference
        assert all(part == sorted(part) for part in reference)


def test_equal_weights_are_dealt_round_robin_in_path_order() -> None:
    paths = [f"C/v{i:03d}.mp4" for i in range(23)]
    items = [(p, 7) for p in reversed(paths)]
    for t in range(4):
        assert split_videos(items, task_index=t, task_count=4) == paths[t::4]


def test_same_split_in_processes_with_different_hash_seeds() -> None:
    items = ucf_like_items(60) + [(f"H/same{i}.avi", 100) for i in range(10)]
    code = (
        "import json, sys\n"
        "from flowprep.scale.array_tasks import assign_tasks\n"
        "items = [tuple(x) for x in json.load(sys.stdin)]\n"
        "print(json.dumps(assign_tasks(items, task_count=6)))\n"
    )
    outputs = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", code], input=json.dumps(items), capture_output=True, text=True, env=env, check=True
        )
        outputs.append(json.loads(run.stdout))
    assert outputs[0] == outputs[1] == assign_tasks(items, task_count=6)


@pytest.mark.parametrize(
    ("items", "kwargs", "message"),
    [
        ([("a.avi", 1), ("a.avi", 2)], {"task_index": 0, "task_count": 2}, "twice"),
        ([("a.avi", -1)], {"task_index": 0, "task_count": 2}, "weights must be >= 0"),
        ([("a.avi", 1)], {"task_index": 2, "task_count": 2}, r"task index must be in 0\.\.1, got 2"),
        ([("a.avi", 1)], {"task_index": 0, "task_count": 0}, "must be >= 1"),
    ],
)
def test_split_rejects_bad_input(items, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        split_videos(items, **kwargs)


def test_video_weights_are_file_sizes_of_relative_paths(tmp_path) -> None:
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "x.avi").write_bytes(b"\0" * 1234)
    (tmp_path / "A" / "y.mp4").write_bytes(b"")
    assert video_weights(tmp_path, ["A/x.avi", "A/y.mp4"]) == [("A/x.avi", 1234), ("A/y.mp4", 0)]


# --- detect_task: environment variable sets as the schedulers set them -------------------------

# sbatch --array=0-7 (task 3), as printed by `env` inside a SLURM 23.x array task.
SLURM_0_7 = {
    "SLURM_JOB_ID": "4711", "SLURM_ARRAY_JOB_ID": "4708", "SLURM_ARRAY_TASK_ID": "3",
    "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "7",
    "SLURM_ARRAY_TASK_STEP": "1", "SLURM_CPUS_PER_TASK": "16", "SLURM_JOB_NAME": "flowprep-extract",
}


def slurm(task_id: int, *, lo: int, hi: int, step: int, count: int) -> dict[str, str]:
    return {**SLURM_0_7, "SLURM_ARRAY_TASK_ID": str(task_id), "SLURM_ARRAY_TASK_MIN": str(lo),
            "SLURM_ARRAY_TASK_MAX": str(hi), "SLURM_ARRAY_TASK_STEP": str(step),
            "SLURM_ARRAY_TASK_COUNT": str(count)}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (SLURM_0_7, (3, 8)),
        (slurm(8, lo=1, hi=8, step=1, count=8), (7, 8)),  # --array=1-8
        (slurm(12, lo=0, hi=12, step=4, count=4), (3, 4)),  # --array=0-15:4 -> 0,4,8,12
        (slurm(5, lo=1, hi=7, step=2, count=4), (2, 4)),  # --array=1,3,5,7
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),  # no MIN/MAX
    ],
)
def test_slurm_array_without_flags(env: dict[str, str], expected: tuple[int, int]) -> None:
    spec = detect_task(env, task_index=None, task_count=None)
    assert (spec.index, spec.count) == expected
    assert spec.source.startswith("SLURM array (") and f"SLURM_ARRAY_TASK_ID={env['SLURM_ARRAY_TASK_ID']}" in spec.source


def test_slurm_irregular_array_needs_task_count() -> None:
    env = slurm(5, lo=1, hi=5, step=1, count=3)  # --array=1,2,5
    with pytest.raises(TaskError, match="not a plain range.*--task-count"):
        detect_task(env, task_index=None, task_count=None)


def test_slurm_resubmitted_subset_keeps_its_indexes_with_task_count() -> None:
    # Tasks 3 and 7 of 8 failed; `sbatch --array=3,7 pipelines/slurm_extract.sh` (which passes --task-count 8).
    env = slurm(7, lo=3, hi=7, step=4, count=2)
    spec = detect_task(env, task_index=None, task_count=8)
    assert (spec.index, spec.count) == (7, 8)
    assert "IDs are task indexes" in spec.source
    with pytest.raises(TaskError, match=r"submit --array=0-7"):
        detect_task(slurm(8, lo=1, hi=8, step=1, count=8), task_index=None, task_count=8)


def test_slurm_job_that_is_not_an_array_is_a_single_task() -> None:
    env = {"SLURM_JOB_ID": "99", "SLURM_CPUS_PER_TASK": "8", "SLURM_NTASKS": "1"}
    assert detect_task(env, task_index=None, task_count=None) == TaskSpec(
        0, 1, "single task: no --task-index and no scheduler array variables"
    )


# A pod of an Indexed Job (completions: 8): the index is in the env (and the hostname); the count is not.
K8S = {"JOB_COMPLETION_INDEX": "5", "HOSTNAME": "flowprep-extract-5-x2kfj", "KUBERNETES_SERVICE_HOST": "10.0.0.1",
       "KUBERNETES_SERVICE_PORT": "443"}


def test_kubernetes_indexed_job() -> None:
    spec = detect_task(K8S, task_index=None, task_count=8)
    assert (spec.index, spec.count) == (5, 8)
    assert spec.source == "Kubernetes Indexed Job (JOB_COMPLETION_INDEX=5; count from --task-count)"
    with pytest.raises(TaskError, match=r"JOB_COMPLETION_INDEX=5.*pass --task-count"):
        detect_task(K8S, task_index=None, task_count=None)
    with pytest.raises(TaskError, match=r"0\.\.3, got 5"):
        detect_task(K8S, task_index=None, task_count=4)


# A child of `aws batch submit-job --array-properties size=16`.
AWS = {"AWS_BATCH_JOB_ARRAY_INDEX": "4", "AWS_BATCH_JOB_ARRAY_SIZE": "16", "AWS_BATCH_JOB_ID": "0f1e2d3c-aaaa:4",
       "AWS_BATCH_JOB_ATTEMPT": "1", "AWS_BATCH_JQ_NAME": "flowprep", "AWS_BATCH_CE_NAME": "flowprep-ce"}


def test_aws_batch_array() -> None:
    spec = detect_task(AWS, task_index=None, task_count=None)
    assert (spec.index, spec.count) == (4, 16)
    assert "AWS_BATCH_JOB_ARRAY_INDEX=4" in spec.source and "AWS_BATCH_JOB_ARRAY_SIZE=16" in spec.source
    no_size = {k: v for k, v in AWS.items() if k != "AWS_BATCH_JOB_ARRAY_SIZE"}
    with pytest.raises(TaskError, match="pass --task-count"):
        detect_task(no_size, task_index=None, task_count=None)
    spec = detect_task(no_size, task_index=None, task_count=16)
    assert (spec.index, spec.count) == (4, 16) and spec.source.endswith("count from --task-count)")


def test_explicit_flags_win_over_the_scheduler() -> None:
    spec = detect_task(SLURM_0_7, task_index=1, task_count=2)
    assert (spec.index, spec.count, spec.source) == (1, 2, "--task-index/--task-count")
    assert str(spec) == "task 1 of 2 (--task-index/--task-count)"


@pytest.mark.parametrize(
    ("env", "task_index", "task_count", "message"),
    [
        ({}, 3, None, "--task-index 3 needs --task-count"),
        ({}, None, 4, "--task-count 4 given but no task index"),
        ({}, 4, 4, r"task index must be in 0\.\.3, got 4"),
        ({}, 0, 0, "--task-count must be >= 1"),
        ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, None, None, r"integer in \$SLURM_ARRAY_TASK_ID"),
        ({**SLURM_0_7, **K8S}, None, 8, "several schedulers"),
        ({"SLURM_ARRAY_TASK_ID": "3"}, None, None, "does not tell the task count"),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "0"}, None, None,
         r"the task count must be at least 1, got 0 from SLURM array"),
        (slurm(2, lo=0, hi=12, step=4, count=4), None, None, "not on the array's range"),
        # what int() reads but no scheduler writes: "1_0" would be task 10, "\u0661" (Arabic-Indic one) task 1
        ({"SLURM_ARRAY_TASK_ID": "1_0", "SLURM_ARRAY_TASK_COUNT": "40"}, None, None, r"integer in \$SLURM_ARRAY_TASK_ID"),
        ({"JOB_COMPLETION_INDEX": "\u0661"}, None, 4, r"integer in \$JOB_COMPLETION_INDEX"),
        # a step of 0 is no range (it was read as a step of 1)
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "7",
          "SLURM_ARRAY_TASK_STEP": "0"}, None, None, "not on the array's range"),
    ],
)
def test_detect_task_errors(env, task_index, task_count, message) -> None:
    with pytest.raises(TaskError, match=message):
        detect_task(env, task_index=task_index, task_count=task_count)


def test_empty_variables_count_as_unset() -> None:
    spec = detect_task({"HOME": "/root", "JOB_COMPLETION_INDEX": ""}, task_index=None, task_count=1)
    assert (spec.index, spec.count) == (0, 1)


def test_detect_task_in_a_real_process_environment() -> None:
    code = (
        "import os; from flowprep.scale.array_tasks import detect_task; "
        "print(detect_task(os.environ, task_index=None, task_count=None))"
    )
    env = {**os.environ, **slurm(9, lo=1, hi=16, step=1, count=16)}
    env.pop("JOB_COMPLETION_INDEX", None)
    env.pop("AWS_BATCH_JOB_ARRAY_INDEX", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("task 8 of 16 (SLURM array (SLURM_ARRAY_TASK_ID=9, SLURM_ARRAY_TASK_MIN=1")


# --- array runs of `flowprep extract` into one --out (real videos, real HDF5, real workers) -----

SCHEDULER_VARS = [
    *(f"SLURM_ARRAY_TASK_{k}" for k in ("ID", "MIN", "MAX", "STEP", "COUNT")),
    "JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE",
]
FLOWPREP = Path(sys.executable).parent / "flowprep"


def clean_env(**extra: str) -> dict[str, str | None]:
    """CliRunner env: no scheduler variables of the machine running the tests, plus ``extra``."""
    return {**{k: None for k in SCHEDULER_VARS}, **extra}


def run_task(videos: Path, out: Path, *args: str, env: dict | None = None):
    cmd = ["extract", "--videos", str(videos), "--out", str(out), "--method", "farneback", "--workers", "1",
           "--videos-per-shard", "2", "--no-progress", *args]
    return CliRunner().invoke(flowprep_cli, cmd, env=env or clean_env())


def verify(out: Path):
    return CliRunner().invoke(flowprep_cli, ["verify", str(out)])


@pytest.fixture
def nine_videos(tmp_path: Path) -> Path:
    return make_ucf_tree(tmp_path / "videos", classes=("A", "B", "C"), per_class=3)


@pytest.mark.slow
def test_array_tasks_fill_one_out_and_verify_names_the_missing_task(nine_videos, tmp_path, read_shards) -> None:
    out = tmp_path / "out"
    for index in (0, 2):
        result = run_task(nine_videos, out, "--task-index", str(index), "--task-count", "3")
        assert result.exit_code == 0, result.output
        assert f"task {index} of 3 (--task-index/--task-count)" in result.output
    partial = verify(out)
    assert partial.exit_code == 1
    assert "missing manifest parts: task(s) 1 of 3" in partial.output
    result = run_task(nine_videos, out, "--task-index", "1", "--task-count", "3")
    assert result.exit_code == 0, result.output
    full = verify(out)
    assert full.exit_code == 0, full.output

    videos = read_shards(out)  # also asserts that no video is in two shards
    sizes = video_weights(nine_videos, sorted(str(p.relative_to(nine_videos)) for p in nine_videos.rglob("*.*")))
    for index in range(3):
        mine = {p.rsplit(".", 1)[0] for p in split_videos(sizes, task_index=index, task_count=3)}
        assert {v for v, d in videos.items() if d["shard"].startswith(f"task{index:05d}-")} == mine
    assert sorted(p.name for p in out.glob("manifest*")) == [f"manifest-0000{i}-of-00003.json" for i in range(3)]
    # The split changes where a video is stored, never what is stored.
    single = run_task(nine_videos, tmp_path / "single")
    assert single.exit_code == 0 and "task 0 of 1" not in single.output  # said only for array tasks
    reference = read_shards(tmp_path / "single")
    assert len(reference) == 9
    assert {v: {k: d[k] for k in ("attrs", "flow", "rgb")} for v, d in videos.items()} == {
        v: {k: d[k] for k in ("attrs", "flow", "rgb")} for v, d in reference.items()
    }


def test_the_task_comes_from_the_scheduler_environment(nine_videos, tmp_path) -> None:
    out = tmp_path / "out"
    slurm_env = clean_env(SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="3",
                          SLURM_ARRAY_TASK_STEP="1", SLURM_ARRAY_TASK_COUNT="3")  # sbatch --array=1-3
    result = run_task(nine_videos, out, env=slurm_env)
    assert result.exit_code == 0, result.output
    assert "task 1 of 3 (SLURM array (SLURM_ARRAY_TASK_ID=2, SLURM_ARRAY_TASK_MIN=1" in result.output
    part = json.loads((out / "manifest-00001-of-00003.json").read_text())
    assert part["task"] == {"index": 1, "count": 3} and part["complete"] is True
    assert part["num_videos"] == 3

    k8s = run_task(nine_videos, out, env=clean_env(JOB_COMPLETION_INDEX="1"))
    assert k8s.exit_code == 2
    assert "JOB_COMPLETION_INDEX=1" in k8s.output and "--task-count" in k8s.output
    assert "Traceback" not in k8s.output
    # The same --out cannot take a task of another split.
    other = run_task(nine_videos, out, "--task-index", "0", "--task-count", "2")
    assert other.exit_code == 2 and "split into 3 task(s)" in other.output and "Traceback" not in other.output


def test_a_task_without_videos_finishes_its_part(nine_videos, tmp_path) -> None:
    out = tmp_path / "out"
    result = run_task(nine_videos, out, "--task-index", "11", "--task-count", "12")
    assert result.exit_code == 0, result.output
    assert "task 11 of 12 (--task-index/--task-count): 0 of 9 videos" in result.output
    part = json.loads((out / "manifest-00011-of-00012.json").read_text())
    assert (part["num_videos"], part["complete"], part["shards"]) == (0, True, [])
    assert "task(s) 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 of 12" in verify(out).output


def _resolved(out: Path, part_name: str, shard_prefix: str) -> int:
    """Videos one task had finished: in its listed shards, or per-video files of its unlisted shards."""
    part = out / part_name
    listed = json.loads(part.read_text())["shards"] if part.exists() else []
    names = {s["name"] for s in listed}
    done = sum(len(s["videos"]) for s in listed)
    work = out / ".work"
    if work.exists():
        done += sum(
            1 for d in work.iterdir() if d.name.startswith(shard_prefix) and d.name + ".h5" not in names
            for _ in d.glob("*.h5")
        )
    return done


@pytest.mark.slow
def test_a_killed_task_rerun_by_the_scheduler_resumes_its_own_work(tmp_path, read_shards) -> None:
    videos = make_ucf_tree(tmp_path / "v", classes=("A", "B", "C"), per_class=4, frames=16, height=120, width=160)
    out = tmp_path / "out"
    sizes = video_weights(videos, sorted(str(p.relative_to(videos)) for p in videos.rglob("*.*")))
    planned = len(split_videos(sizes, task_index=1, task_count=2))
    assert run_task(videos, out, "--task-index", "0", "--task-count", "2").exit_code == 0
    # Task 1 as the scheduler runs it: a process of its own, told its index by the environment.
    env = {k: v for k, v in os.environ.items() if k not in SCHEDULER_VARS}
    env.update(AWS_BATCH_JOB_ARRAY_INDEX="1", AWS_BATCH_JOB_ARRAY_SIZE="2", AWS_BATCH_JOB_ATTEMPT="1")
    cmd = [str(FLOWPREP), "extract", "--videos", str(videos), "--out", str(out), "--method", "farneback",
           "--workers", "2", "--videos-per-shard", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _resolved(out, "manifest-00001-of-00002.json", "task00001-") == 0 and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "task 1 finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the task and its worker processes, as a lost node would
        proc.wait()
    done = _resolved(out, "manifest-00001-of-00002.json", "task00001-")
    assert 0 < done < planned
    assert verify(out).exit_code == 1
    env["AWS_BATCH_JOB_ATTEMPT"] = "2"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "task 1 of 2 (AWS Batch array (AWS_BATCH_JOB_ARRAY_INDEX=1, AWS_BATCH_JOB_ARRAY_SIZE=2))" in rerun.stdout
    assert f"({planned - done} processed now, {done} from an earlier run" in rerun.stdout
    assert verify(out).exit_code == 0
    reference = run_task(videos, tmp_path / "ref")
    assert reference.exit_code == 0
    ours = {v: (d["flow"], d["rgb"]) for v, d in read_shards(out).items()}
    assert ours == {v: (d["flow"], d["rgb"]) for v, d in read_shards(tmp_path / "ref").items()}
    assert len(ours) == 12


@pytest.mark.slow
def test_array_tasks_with_the_torch_engine_fill_one_out_with_opencvs_flow(ucf_tree, tmp_path, read_shards) -> None:
    """Two tasks of --engine torch --device cpu (one flow process each) share --out; the same flow as OpenCV's."""
    tiny = ["--method", "tvl1", "--tvl1-nscales", "2", "--tvl1-warps", "1", "--tvl1-outer-iterations", "2",
            "--tvl1-inner-iterations", "5", "--workers", "1", "--videos-per-shard", "2", "--no-progress"]

    def run(out: Path, *args: str):
        cmd = ["extract", "--videos", str(ucf_tree), "--out", str(out), *tiny, *args]
        return CliRunner().invoke(flowprep_cli, cmd, env=clean_env())

    for index in (1, 0):
        task = run(tmp_path / "torch", "--engine", "torch", "--device", "cpu", "--task-index", str(index),
                   "--task-count", "2")
        assert task.exit_code == 0 and f"task {index} of 2" in task.output, task.output
    assert verify(tmp_path / "torch").exit_code == 0
    manifests = sorted((tmp_path / "torch").glob("manifest-*.json"))
    assert len(manifests) == 2 and all(json.loads(m.read_text())["params"]["flow"]["engine"] == "torch"
                                       for m in manifests)
    assert run(tmp_path / "opencv").exit_code == 0
    flow = {vid: v["flow"] for vid, v in read_shards(tmp_path / "torch").items()}
    assert flow == {vid: v["flow"] for vid, v in read_shards(tmp_path / "opencv").items()} and len(flow) == 4
