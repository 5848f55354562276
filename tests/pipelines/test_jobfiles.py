"""Keep the Dockerfile and the job files of pipelines/ honest without a cluster.

Every `flowprep ...` / `trainer ...` invocation in them is parsed and checked against the real click
commands: the sub-command exists, every flag exists (and shows in --help), choice values are valid
and required options are given. The scripts pass `bash -n` and run end to end against stub
schedulers; the YAML/JSON parse and agree with each other and with the Dockerfile.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from flowprep.cli import main as flowprep_cli
from trainer.cli import main as trainer_cli

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"
GROUPS = {"flowprep": flowprep_cli, "trainer": trainer_cli}
SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "<", ")"}


# --- finding invocations -----------------------------------------------------------------------


@dataclass
class Invocation:
    where: str
    group: str
    command: str
    args: list[str]


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return re.sub(r"\\\n", " ", text).splitlines()


def markdown_code(text: str) -> str:
    return "\n".join(re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, flags=re.S))


def _program(token: str, entrypoint: str | None) -> str | None:
    name = token.rsplit("/", 1)[-1]
    if name.startswith("flowprep:"):  # the image (`docker run ... flowprep:latest extract`): ENTRYPOINT flowprep
        return entrypoint or "flowprep"
    return name if name in GROUPS else None


def invocations_in_tokens(tokens: list[str], where: str) -> list[Invocation]:
    found, entrypoint = [], None
    for i, token in enumerate(tokens[:-1]):
        if token == "--entrypoint":
            entrypoint = tokens[i + 1]
        group = _program(token, entrypoint)
        if group is None or tokens[i + 1] not in GROUPS[group].commands:
            continue
        args = []
        for arg in tokens[i + 2 :]:
            if arg in SEPARATORS:
                break
            args.append(arg)
        found.append(Invocation(where, group, tokens[i + 1], args))
    return found


def shell_invocations(text: str, where: str) -> list[Invocation]:
    found = []
    for line in logical_lines(text):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # a line of a multi-line quoted string: not a command of ours
            continue
        found += invocations_in_tokens(tokens, where)
    return found


def container_invocation(args: list[str], where: str) -> Invocation:
    """A container without a command override: the image's ENTRYPOINT (flowprep) gets ``args``."""
    found = invocations_in_tokens(["flowprep", *args], where)
    assert len(found) == 1, f"{where}: expected args to start with a flowprep sub-command, got {args[:2]}"
    return found[0]


# --- checking them against the real commands ---------------------------------------------------

_help: dict[tuple[str, str], str] = {}


def help_text(group: str, command: str) -> str:
    if (group, command) not in _help:
        result = CliRunner().invoke(GROUPS[group], [command, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        _help[group, command] = result.output
    return _help[group, command]


def check(inv: Invocation) -> None:
    cmd = GROUPS[inv.group].commands[inv.command]
    options = {name: p for p in cmd.params if isinstance(p, click.Option) for name in p.opts + p.secondary_opts}
    text = help_text(inv.group, inv.command)
    where = f"{inv.where}: {inv.group} {inv.command}"
    given = set()
    i = 0
    while i < len(inv.args):
        arg = inv.args[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            continue
        name, _, inline = arg.partition("=")
        if name == "--help":
            return
        assert name in options, f"{where}: no option {name} (see `{inv.group} {inv.command} --help`)"
        assert name in text, f"{where}: {name} is not documented in --help"
        param = options[name]
        given.add(param.name)
        if param.is_flag or param.count:
            continue
        value = inline or (inv.args[i] if i < len(inv.args) else "")
        i += 0 if inline else 1
        if isinstance(param.type, click.Choice) and "$" not in value:
            assert value in param.type.choices, f"{where}: {name} {value!r} is not one of {param.type.choices}"
    if "..." not in inv.args:  # "..." marks an abbreviated example
        missing = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and p.required and p.name not in given]
        assert not missing, f"{where}: required option(s) {missing} missing"


def option_value(inv: Invocation, name: str) -> str | None:
    for i, arg in enumerate(inv.args):
        if arg == name:
            return inv.args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def commands(invs: list[Invocation]) -> set[str]:
    return {f"{inv.group} {inv.command}" for inv in invs}


# --- the Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


_PIP_NOISE = {"--no-cache-dir", "-q", "--quiet", "--no-compile", "--root-user-action=ignore", "--progress-bar=off"}


def pip_installs(shell_text: str) -> list[tuple[str, ...]]:
    """`pip install` commands, normalised: python -m pip / .venv/bin/pip -> pip; cache/verbosity flags dropped."""
    found = []
    for line in logical_lines(shell_text):
        for part in re.split(r"&&|;|\|\|", line):
            try:
                tokens = shlex.split(part, comments=True)
            except ValueError:
                continue
            for i in range(len(tokens) - 1):
                if tokens[i].rsplit("/", 1)[-1] in ("pip", "pip3") and tokens[i + 1] == "install":
                    found.append(("pip", "install", *(t for t in tokens[i + 2 :] if t not in _PIP_NOISE)))
                elif tokens[i : i + 3] == ["-m", "pip", "install"]:
                    found.append(("pip", "install", *(t for t in tokens[i + 3 :] if t not in _PIP_NOISE)))
    return found


def test_dockerfile_installs_with_the_readme_command() -> None:
    runs = [rest for kw, rest in dockerfile_instructions() if kw == "RUN"]
    docker = [cmd for run in runs for cmd in pip_installs(run)]
    readme = pip_installs(markdown_code((ROOT / "README.md").read_text()))
    assert docker == [("pip", "install", ".")], f"the image must install the repository with pip install ., got {docker}"
    assert readme, "README.md documents no `pip install` command (expected `pip install .`)"
    assert docker[0] in readme, f"the Dockerfile installs with {docker[0]}, the README with {readme}"
    recipe = pip_installs(markdown_code((PIPELINES / "ucf101.md").read_text()))
    assert recipe and set(recipe) <= set(readme), f"pipelines/ucf101.md installs with {recipe}, README with {readme}"


def test_dockerfile_base_user_entrypoint() -> None:
    ins = dockerfile_instructions()
    assert [rest for kw, rest in ins if kw == "FROM"] == ["python:3.11-slim"]
    entrypoints = [json.loads(rest) for kw, rest in ins if kw == "ENTRYPOINT"]
    assert entrypoints[-1][-1] == "flowprep", "ENTRYPOINT must be the exec form ending in \"flowprep\""
    users = [rest for kw, rest in ins if kw == "USER"]
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER must be a numeric non-root uid (runAsNonRoot checks it), got {user}"
    last_user_at = max(i for i, (kw, _) in enumerate(ins) if kw == "USER")
    assert all(kw != "RUN" for kw, _ in ins[last_user_at:]), "nothing may run as root after USER"


def test_dockerfile_runs_flowprep_under_debians_tini_and_the_docs_pass_init_with_an_entrypoint_override() -> None:
    """flowprep as PID 1 reaped no orphaned process (zombies) and got only the signals it handles; tini, from
    Debian's packages (the base image's), runs as PID 1 and passes SIGTERM on to flowprep."""
    ins = dockerfile_instructions()
    (entrypoint,) = [json.loads(rest) for kw, rest in ins if kw == "ENTRYPOINT"]  # exec form: JSON
    assert entrypoint == ["/usr/bin/tini", "--", "flowprep"]
    installs = [i for i, (kw, rest) in enumerate(ins) if kw == "RUN" and "apt-get install" in rest]
    assert len(installs) == 1 and "tini" in shlex.split(ins[installs[0]][1].replace("&&", " "))
    assert "apt-get update" in ins[installs[0]][1] and "rm -rf /var/lib/apt/lists/*" in ins[installs[0]][1]
    assert installs[0] < min(i for i, (kw, _) in enumerate(ins) if kw == "USER"), "apt-get runs as root"
    code = markdown_code((PIPELINES / "README.md").read_text()) + markdown_code((ROOT / "README.md").read_text())
    overrides = [line for line in logical_lines(code) if line.lstrip().startswith("docker run") and "--entrypoint" in line]
    assert overrides and all(" --init " in line for line in overrides), overrides


def test_dockerfile_copies_what_pip_install_needs_and_dockerignore_keeps_it() -> None:
    copied = set()
    for kw, rest in dockerfile_instructions():
        if kw == "COPY":
            copied.update(shlex.split(rest)[:-1])
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    needed = {"pyproject.toml", "setup.cfg"}
    needed |= {v.split("file:", 1)[1].strip() for v in cfg["metadata"].values() if v.strip().startswith("file:")}
    needed |= {pkg.rstrip("*") for pkg in cfg["options.packages.find"]["include"].replace(",", " ").split()}
    assert needed <= copied, f"the Dockerfile does not COPY {sorted(needed - copied)}"
    assert all((ROOT / c).exists() for c in copied), "a COPY source does not exist"
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must in (".git", ".venv"):
        assert must in ignored, f".dockerignore must exclude {must}"
    for c in copied:
        assert not any(Path(c).match(pattern) or c == pattern for pattern in ignored), f".dockerignore excludes {c}"


# --- SLURM -------------------------------------------------------------------------------------


def write_stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def recorder(path: Path, log: Path) -> None:
    """A stub program that appends its argv (one JSON list per call) to ``log``."""
    write_stub(path, f'python3 -c \'import json, sys; print(json.dumps(sys.argv[1:]))\' "$@" >> {shlex.quote(str(log))}\n')


@pytest.mark.parametrize("script", ["slurm_extract.sh", "torchrun_train.sh"])
def test_shell_scripts_parse(script: str) -> None:
    run = subprocess.run(["bash", "-n", str(PIPELINES / script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert os.access(PIPELINES / script, os.X_OK), f"{script} is not executable"


def test_slurm_script_is_an_array_whose_size_is_its_task_count() -> None:
    text = (PIPELINES / "slurm_extract.sh").read_text()
    array = re.search(r"^#SBATCH --array=(\d+)-(\d+)\s*$", text, flags=re.M)
    assert array, "expected an '#SBATCH --array=0-N' line"
    lo, hi = map(int, array.groups())
    count = int(re.search(r"^TASK_COUNT=(\d+)$", text, flags=re.M).group(1))
    assert lo == 0 and hi - lo + 1 == count, "with --task-count the array IDs are the task indexes 0..N-1"
    invs = shell_invocations(text, "slurm_extract.sh")
    assert commands(invs) == {"flowprep extract"}
    for inv in invs:
        check(inv)
        assert option_value(inv, "--task-count") == "$TASK_COUNT"


def test_slurm_script_runs_the_extract_command_of_its_task(tmp_path) -> None:
    log = tmp_path / "argv.jsonl"
    recorder(tmp_path / "venv" / "bin" / "flowprep", log)
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "FLOWPREP_VENV": str(tmp_path / "venv"),
        "VIDEOS": str(tmp_path / "videos"), "OUT": str(tmp_path / "out"), "CLASS_INDEX": str(tmp_path / "classInd.txt"),
        "SLURM_JOB_ID": "4711", "SLURM_ARRAY_JOB_ID": "4708", "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "15", "SLURM_ARRAY_TASK_STEP": "1",
        "SLURM_ARRAY_TASK_COUNT": "16", "SLURM_CPUS_PER_TASK": "16",
    }
    run = subprocess.run(["bash", str(PIPELINES / "slurm_extract.sh")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (argv,) = [json.loads(line) for line in log.read_text().splitlines()]
    inv = container_invocation(argv, "slurm_extract.sh (run)")
    check(inv)
    assert option_value(inv, "--workers") == "16" and option_value(inv, "--task-count") == "16"
    assert option_value(inv, "--videos") == env["VIDEOS"] and option_value(inv, "--out") == env["OUT"]
    assert (tmp_path / "out").is_dir()


@pytest.mark.slow
def test_slurm_script_extracts_its_share_with_the_real_flowprep(tmp_path) -> None:
    from conftest import make_ucf_tree

    videos = make_ucf_tree(tmp_path / "UCF-101", per_class=2)  # 4 videos: tasks 0-3 of 16 get one each
    (tmp_path / "classInd.txt").write_text("1 Jump\n2 Run\n")
    out = tmp_path / "shards"
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "FLOWPREP_VENV": str(Path(sys.executable).parent.parent),
        "VIDEOS": str(videos), "OUT": str(out), "CLASS_INDEX": str(tmp_path / "classInd.txt"),
        "SLURM_JOB_ID": "4711", "SLURM_ARRAY_JOB_ID": "4708", "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "3", "SLURM_ARRAY_TASK_STEP": "1",
        "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_CPUS_PER_TASK": "2",  # resubmitted alone: sbatch --array=3
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    run = subprocess.run(["bash", str(PIPELINES / "slurm_extract.sh")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "task 3 of 16 (SLURM array (SLURM_ARRAY_TASK_ID=3" in run.stdout
    part = json.loads((out / "manifest-00003-of-00016.json").read_text())
    assert (part["task"], part["num_videos"], part["complete"]) == ({"index": 3, "count": 16}, 1, True)
    assert part["params"]["flow"]["method"] == "tvl1"
    verify = subprocess.run([str(Path(sys.executable).parent / "flowprep"), "verify", str(out)],
                            capture_output=True, text=True)
    assert verify.returncode == 1
    assert "task(s) 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 of 16" in verify.stdout


def test_torchrun_script_launches_one_torchrun_per_node(tmp_path) -> None:
    log = tmp_path / "argv.jsonl"
    bin_dir = tmp_path / "bin"
    write_stub(bin_dir / "srun", 'exec "${@:3}"\n')  # drop srun's own two options, run the rest
    write_stub(bin_dir / "scontrol", "printf 'gpu-node07\\ngpu-node08\\n'\n")
    recorder(tmp_path / "venv" / "bin" / "torchrun", log)
    run_dir = tmp_path / "runs" / "temporal"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "FLOWPREP_VENV": str(tmp_path / "venv"),
        "DATA": str(tmp_path), "SLURM_JOB_ID": "777", "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu-node[07-08]",
    }
    script = str(PIPELINES / "torchrun_train.sh")
    for _ in range(2):  # the second time a checkpoint exists: the run is resumed
        run = subprocess.run(["bash", script, "temporal"], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoint.pt").write_bytes(b"")
    first, second = [json.loads(line) for line in log.read_text().splitlines()]
    at = first.index("-m")
    launcher = dict(zip(first[:at:2], first[1:at:2]))
    assert launcher == {
        "--nnodes": "2", "--nproc-per-node": "4", "--rdzv-backend": "c10d",
        "--rdzv-endpoint": "gpu-node07:29500", "--rdzv-id": "777",
    }
    for argv in (first, second):
        (inv,) = invocations_in_tokens(argv, "torchrun_train.sh (run)")
        assert (inv.group, inv.command) == ("trainer", "fit")
        check(inv)
        assert option_value(inv, "--stream") == "temporal" and option_value(inv, "--out") == str(run_dir)
    assert "--resume" not in first and second[-1] == "--resume"
    bad = subprocess.run(["bash", script, "sideways"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "expected spatial or temporal" in bad.stderr


@pytest.mark.parametrize(("ranks", "expected"), [
    ({"rank-0": "143", "rank-1": "143"}, 143),  # preempted: both ranks saved and stopped; requeue / rerun resumes
    ({"rank-0": "143", "rank-1": "1"}, 1),  # rank 1's data error, then torchrun's SIGTERM to rank 0: do not rerun
    ({"rank-0": "75"}, 75),  # a full disk on rank 0 (rank 1 killed by torchrun, no status): rerun
    ({}, 1),  # no process left a status (killed outright): torchrun's own
])
def test_torchrun_script_exits_with_its_processes_most_final_status_not_torchruns_1(tmp_path, ranks, expected) -> None:
    from trainer.cli import EXIT_STATUS_DIR, FINAL_FIRST

    text = (PIPELINES / "torchrun_train.sh").read_text()
    assert f"for code in {' '.join(map(str, FINAL_FIRST))}; do" in text and f"/{EXIT_STATUS_DIR}/rank-*" in text
    run_dir = tmp_path / "runs" / "temporal"
    stale = run_dir / EXIT_STATUS_DIR / "rank-3"  # an earlier job's: removed before the launch
    stale.parent.mkdir(parents=True)
    stale.write_text("2\n")
    writes = "".join(f"printf '{code}\\n' > {shlex.quote(str(run_dir / EXIT_STATUS_DIR / name))}\n"
                     for name, code in ranks.items())
    write_stub(tmp_path / "venv" / "bin" / "torchrun", f"mkdir -p {shlex.quote(str(run_dir / EXIT_STATUS_DIR))}\n"
               f"{writes}exit 1\n")  # as torchrun does when any worker failed
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "FLOWPREP_VENV": str(tmp_path / "venv"),
           "DATA": str(tmp_path), "NNODES": "1", "RDZV_HOST": "localhost", "RDZV_ID": "t"}
    run = subprocess.run(["bash", str(PIPELINES / "torchrun_train.sh"), "temporal"], env=env, capture_output=True,
                         text=True)
    assert run.returncode == expected, run.stderr
    assert not stale.exists()


# --- Kubernetes --------------------------------------------------------------------------------


def docker_uid() -> int:
    return int([rest for kw, rest in dockerfile_instructions() if kw == "USER"][-1].split(":")[0])


def test_kubernetes_indexed_job() -> None:
    job = yaml.safe_load((PIPELINES / "k8s_extract_job.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert isinstance(spec["completions"], int) and 1 <= spec["parallelism"] <= spec["completions"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    if any(rule["action"] == "FailIndex" for rule in spec.get("podFailurePolicy", {}).get("rules", [])):
        assert "backoffLimitPerIndex" in spec
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == docker_uid()
    (container,) = pod["containers"]
    assert "command" not in container, "keep the image's ENTRYPOINT (flowprep)"
    inv = container_invocation([str(a) for a in container["args"]], "k8s_extract_job.yaml")
    check(inv)
    assert inv.command == "extract"
    assert option_value(inv, "--task-count") == str(spec["completions"]), "--task-count must equal completions"
    assert option_value(inv, "--task-index") is None, "the index comes from JOB_COMPLETION_INDEX"
    assert option_value(inv, "--workers") == str(container["resources"]["requests"]["cpu"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for flag in ("--videos", "--out", "--class-index"):
        path = option_value(inv, flag)
        mount = [m for m in mounts if path.startswith(m.rstrip("/") + "/")]
        assert mount, f"{flag} {path} is not on a mounted volume"
        assert "persistentVolumeClaim" in volumes[mounts[mount[0]]], "the output volume must be shared (a PVC)"


def test_kubernetes_verify_pod_reads_the_same_volume() -> None:
    job = yaml.safe_load((PIPELINES / "k8s_extract_job.yaml").read_text())["spec"]["template"]["spec"]
    pod = yaml.safe_load((PIPELINES / "k8s_verify_pod.yaml").read_text())
    assert pod["kind"] == "Pod" and pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    inv = container_invocation([str(a) for a in container["args"]], "k8s_verify_pod.yaml")
    check(inv)
    assert inv.command == "verify"
    extract = container_invocation([str(a) for a in job["containers"][0]["args"]], "k8s_extract_job.yaml")
    assert inv.args[0] == option_value(extract, "--out")
    claims = lambda spec: {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}  # noqa: E731
    assert claims(pod["spec"]) == claims(job)


# --- AWS Batch ---------------------------------------------------------------------------------


def test_aws_batch_job_definition() -> None:
    jd = json.loads((PIPELINES / "aws_batch_extract.json").read_text())
    assert jd["type"] == "container"
    props = jd["containerProperties"]
    inv = container_invocation(props["command"], "aws_batch_extract.json")
    check(inv)
    assert inv.command == "extract"
    assert option_value(inv, "--task-index") is None and option_value(inv, "--task-count") is None, (
        "AWS Batch sets AWS_BATCH_JOB_ARRAY_INDEX and AWS_BATCH_JOB_ARRAY_SIZE"
    )
    vcpus = {r["type"]: r["value"] for r in props["resourceRequirements"]}["VCPU"]
    assert option_value(inv, "--workers") == vcpus
    assert int(props["user"]) == docker_uid()
    volumes = {v["name"] for v in props["volumes"]}
    mounts = {m["containerPath"]: m["sourceVolume"] for m in props["mountPoints"]}
    assert set(mounts.values()) <= volumes
    for flag in ("--videos", "--out"):
        assert any(option_value(inv, flag).startswith(m + "/") for m in mounts), f"{flag} is not on a mounted volume"
    decisions = {e.get("onExitCode"): e["action"].upper() for e in jd["retryStrategy"]["evaluateOnExit"]}
    assert decisions["1"] == decisions["2"] == "EXIT", "exit 1 and 2 are final; only a killed task should retry"


def test_aws_batch_submit_example_is_an_array_job() -> None:
    jd = json.loads((PIPELINES / "aws_batch_extract.json").read_text())
    code = markdown_code((PIPELINES / "README.md").read_text())
    submits = [
        shlex.split(line) for line in logical_lines(code) if line.strip().startswith("aws batch submit-job")
    ]
    assert submits, "pipelines/README.md has no `aws batch submit-job` example"
    for argv in submits:
        assert argv[argv.index("--job-definition") + 1] == jd["jobDefinitionName"]
        assert re.fullmatch(r"size=\d+", argv[argv.index("--array-properties") + 1])
    assert any("register-job-definition" in line and "aws_batch_extract.json" in line for line in logical_lines(code))


# --- documentation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("README.md", {"flowprep extract", "flowprep verify", "trainer fit"}),
        ("ucf101.md", {"flowprep extract", "flowprep verify", "trainer fit", "trainer evaluate"}),
    ],
)
def test_documented_commands_use_flags_that_exist(doc: str, expected: set[str]) -> None:
    invs = shell_invocations(markdown_code((PIPELINES / doc).read_text()), doc)
    assert expected <= commands(invs), f"{doc} lacks {expected - commands(invs)}"
    for inv in invs:
        check(inv)


def test_every_test_the_docs_name_exists_and_fails_only_where_they_say_so() -> None:
    """A doc that calls a behaviour a known bug names its test, marked to fail; once fixed, both must change."""
    sources = {p: p.read_text() for p in (ROOT / "tests").rglob("test_*.py")}
    docs = [ROOT / "README.md", *sorted(PIPELINES.glob("*.md")), *sorted((ROOT / "docs").glob("*.md"))]
    for doc in docs:
        text = " ".join(doc.read_text().split())
        for m in re.finditer(r"`(test_\w+)`", text):
            defined = [src for src in sources.values() if re.search(rf"^def {m.group(1)}\(", src, re.M)]
            assert len(defined) == 1, f"{doc.name} names {m.group(1)}, defined in {len(defined)} test files"
            marked = re.search(rf"xfail[^\n]*\n(@[^\n]*\n)*def {m.group(1)}\(", defined[0]) is not None
            said = "marked to fail" in text[m.start():m.end() + 200] or "known bug" in text[m.start() - 200:m.start()]
            assert said == marked, (f"{doc.name} says {m.group(1)} is {'' if said else 'not '}a known bug marked to "
                                    f"fail; the test is {'' if marked else 'not '}marked xfail")


def test_no_documented_fit_validates_on_videos_of_its_training_list() -> None:
    """UCF-101 has no validation split: it is held out of trainlist01.txt (ucf101.md step 2), and fit refuses a
    --val-list that shares videos with --train-list, so an example that trains on trainlist01.txt itself fails."""
    fits = [inv for inv in shell_invocations(markdown_code((ROOT / "README.md").read_text()), "README.md")
            if inv.command == "fit" and option_value(inv, "--val-list")]
    assert len(fits) >= 3
    help_lines = [line.split() for line in trainer_cli.help.splitlines() if "trainer fit" in line and "--val-list" in line]
    assert help_lines
    train_lists = [option_value(inv, "--train-list") for inv in fits] + [
        words[words.index("--train-list") + 1] for words in help_lines]
    assert not [t for t in train_lists if re.fullmatch(r"(.*/)?trainlist0\d\.txt", t)], train_lists


def test_links_between_the_docs_reach_their_files_and_headings() -> None:
    """Relative links and their #anchors, with GitHub's heading ids (lower case, punctuation dropped, spaces to -)."""
    def anchors(doc: Path) -> set[str]:
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", doc.read_text(), re.M)}

    docs = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "BENCHMARKS.md", *sorted(PIPELINES.glob("*.md")),
            *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path = (doc.parent / target) if target else doc
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                broken.append(f"{doc.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken, broken


def test_ucf101_recipe_trains_both_streams_and_selects_on_validation_only() -> None:
    invs = shell_invocations(markdown_code((PIPELINES / "ucf101.md").read_text()), "ucf101.md")
    fits = [inv for inv in invs if inv.command == "fit" and "..." not in inv.args]
    assert {option_value(inv, "--stream") for inv in fits} == {"spatial", "temporal"}
    for inv in fits:
        assert "test" not in option_value(inv, "--val-list") and "test" not in option_value(inv, "--train-list")
    (evaluate,) = [inv for inv in invs if inv.command == "evaluate"]
    assert option_value(evaluate, "--test-list").endswith("test01.txt")
    assert "test" not in option_value(evaluate, "--val-list")
    assert option_value(evaluate, "--spatial") and option_value(evaluate, "--temporal")
    text = (PIPELINES / "ucf101.md").read_text()
    for split_file in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        assert split_file in text


def test_ucf101_recipe_drops_the_videos_failed_now_and_keeps_one_repaired_since(tmp_path) -> None:
    """Step 4 of ucf101.md: a video that failed, was replaced and was extracted on the rerun stays in the lists."""
    from media import random_frames, write_video

    videos = tmp_path / "UCF-101"
    for name in ("Jump/v_Jump_g01_c01.avi", "Run/v_Run_g01_c01.avi", "Run/v_Run_g02_c01.avi"):
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        (videos / name).write_bytes(b"not a video")
    extract = ["extract", "--videos", str(videos), "--out", str(tmp_path / "shards"), "--method", "farneback",
               "--workers", "1", "--no-progress"]
    write_video(videos / "Jump/v_Jump_g01_c01.avi", random_frames(4, 32, 32), codec="mpeg4")
    assert CliRunner().invoke(flowprep_cli, extract).exit_code == 1  # the two Run videos fail
    write_video(videos / "Run/v_Run_g01_c01.avi", random_frames(4, 32, 32, seed=1), codec="mpeg4")  # replaced
    assert CliRunner().invoke(flowprep_cli, extract).exit_code == 1  # retried as its file changed: extracted
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train01.txt").write_text("Jump/v_Jump_g01_c01.avi 1\nRun/v_Run_g01_c01.avi 2\n")
    (splits / "val01.txt").write_text("Run/v_Run_g02_c01.avi 2\n")
    (splits / "test01.txt").write_text("Jump/v_Jump_g01_c01.avi\n")
    (step,) = [block for block in re.findall(r"```bash\n(.*?)```", (PIPELINES / "ucf101.md").read_text(), re.S)
               if "failed.txt" in block]
    run = subprocess.run(["bash", "-e", "-c", step], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (splits / "train01.txt").read_text() == "Jump/v_Jump_g01_c01.avi 1\nRun/v_Run_g01_c01.avi 2\n"
    assert (splits / "val01.txt").read_text() == ""
    assert (splits / "test01.txt").read_text() == "Jump/v_Jump_g01_c01.avi\n"


def test_hmdb51_recipe_unpacks_the_action_archives_into_action_folders_only(tmp_path) -> None:
    """Step 1 of hmdb51.md with a stub unrar: hmdb51_org.rar holds one .rar per action, each <action>/<video>.avi."""
    contents = {"hmdb51_org.rar": ["brush_hair.rar", "cartwheel.rar"], "test_train_splits.rar":
                ["testTrainMulti_7030_splits/brush_hair_test_split1.txt"], "brush_hair.rar": ["brush_hair/a_0.avi"],
                "cartwheel.rar": ["cartwheel/b_0.avi"]}
    bin_dir, data = tmp_path / "bin", tmp_path / "hmdb51"
    bin_dir.mkdir()
    (bin_dir / "unrar").write_text(f"""#!{sys.executable}
import json, pathlib, sys
_, command, archive, *dest = sys.argv
assert command == "x" and pathlib.Path(archive).is_file(), sys.argv
for name in json.loads({json.dumps(json.dumps(contents))})[pathlib.Path(archive).name]:
    target = pathlib.Path(dest[0] if dest else ".") / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(name)
""")
    (bin_dir / "unrar").chmod(0o755)
    data.mkdir()
    for archive in ("hmdb51_org.rar", "test_train_splits.rar"):  # the two downloads
        (data / archive).write_text(archive)
    (step,) = [block for block in re.findall(r"```bash\n(.*?)```", (PIPELINES / "hmdb51.md").read_text(), re.S)
               if "unrar" in block]
    run = subprocess.run(["bash", "-e", "-c", step.replace("/shared/hmdb51", str(data))], capture_output=True,
                         text=True, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert run.returncode == 0, run.stderr
    assert sorted(p.relative_to(data / "videos").as_posix() for p in (data / "videos").rglob("*") if p.is_file()) == [
        "brush_hair/a_0.avi", "cartwheel/b_0.avi"]
    assert (data / "testTrainMulti_7030_splits" / "brush_hair_test_split1.txt").is_file()


def test_hmdb51_recipe_drops_the_failed_videos_from_all_three_lists_as_the_ucf101_recipe_does(tmp_path) -> None:
    """Step 3 of hmdb51.md as written: the lists from the split files, then the failed videos dropped (the recipe
    had no such step: its --test-list named the official files, failed videos and all, which the trainer refuses)."""
    from media import random_frames, write_video

    from trainer.data.lists import read_video_list
    from trainer.data.shards import index_shards

    videos = tmp_path / "videos"
    for k, name in enumerate(("brush_hair/a_0.avi", "brush_hair/a_1.avi", "cartwheel/b_1.avi")):
        write_video(videos / name, random_frames(4, 32, 32, seed=k), codec="mpeg4")
    (videos / "cartwheel/b_0.avi").write_bytes(b"not a video")  # a test video that fails
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a_0.avi 1 \r\na_1.avi 2 \r\n")  # as shipped: CRLF
    (splits / "cartwheel_test_split1.txt").write_text("b_0.avi 2 \r\nb_1.avi 1 \r\n")
    extract = ["extract", "--videos", str(videos), "--out", str(tmp_path / "shards"), "--layout", "hmdb51",
               "--method", "farneback", "--workers", "1", "--no-progress"]
    assert CliRunner().invoke(flowprep_cli, extract).exit_code == 1  # done, one video failed
    blocks = re.findall(r"```bash\n(.*?)```", (PIPELINES / "hmdb51.md").read_text(), re.S)
    steps = [b for b in blocks if "splits/trainval1.txt" in b or "failed.txt" in b]
    assert len(steps) == 2
    for step in steps:
        run = subprocess.run(["bash", "-e", "-c", step], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    out = tmp_path / "splits"
    assert (out / "failed.txt").read_text() == "cartwheel/b_0.avi\n"
    assert (out / "test1.txt").read_text() == "brush_hair/a_1.avi\n"
    assert (out / "train1.txt").read_text() + (out / "val1.txt").read_text() in (
        "brush_hair/a_0.avi\ncartwheel/b_1.avi\n", "cartwheel/b_1.avi\nbrush_hair/a_0.avi\n")
    index = index_shards(tmp_path / "shards")
    assert [v.video_id for v in read_video_list(out / "test1.txt", index)] == ["brush_hair/a_1"]  # refused with b_0
    evaluate = [inv for inv in shell_invocations(markdown_code((PIPELINES / "hmdb51.md").read_text()), "hmdb51.md")
                if inv.command == "evaluate"]
    assert [option_value(inv, "--test-list") for inv in evaluate] == ["splits/test1.txt"]


# --- exit statuses: the job files retry exactly the retriable ones of flowprep.exits -------------------


def test_kubernetes_job_retries_exactly_the_retriable_statuses() -> None:
    from flowprep import exits

    spec = yaml.safe_load((PIPELINES / "k8s_extract_job.yaml").read_text())["spec"]
    rules = [r for r in spec["podFailurePolicy"]["rules"] if "onExitCodes" in r]

    def action(code: int) -> str:  # the first matching rule decides; no rule: Count (retried up to the limit)
        for rule in rules:
            if rule["onExitCodes"]["operator"] == "In" and code in rule["onExitCodes"]["values"]:
                return rule["action"]
        return "Count"

    for status in exits.STATUSES[1:]:
        assert (action(status.code) in ("Count", "Ignore")) == status.retriable, status
    assert action(137) == "Count"  # killed by SIGKILL (OOM): retried
    assert spec["podReplacementPolicy"] == "Failed"
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert "--failed-videos-ok" in args, "one bad video must not fail the Job (kubectl wait --for=complete)"


def test_aws_batch_retries_exactly_the_retriable_statuses() -> None:
    import fnmatch

    from flowprep import exits

    jd = json.loads((PIPELINES / "aws_batch_extract.json").read_text())
    rules = jd["retryStrategy"]["evaluateOnExit"]

    def action(code: int) -> str:  # AWS Batch: the first entry whose patterns all match
        for rule in rules:
            if fnmatch.fnmatch(str(code), rule.get("onExitCode", "*")) and rule.get("onReason", "*") == "*":
                return rule["action"].upper()
        return "EXIT"

    for status in exits.STATUSES[1:]:
        assert (action(status.code) == "RETRY") == status.retriable, status
    assert action(137) == "RETRY"
    assert "--failed-videos-ok" in jd["containerProperties"]["command"]


def test_slurm_script_requeues_exactly_the_retriable_statuses(tmp_path) -> None:
    from flowprep import exits

    text = (PIPELINES / "slurm_extract.sh").read_text()
    listed = re.search(r'^RETRIABLE="([\d ]+)"$', text, flags=re.M).group(1).split()
    assert sorted(map(int, listed)) == sorted(exits.RETRIABLE)
    assert re.search(r"^#SBATCH --requeue$", text, flags=re.M)
    for status in (0, 2, 75):
        bin_dir = tmp_path / f"bin{status}"
        (bin_dir / "venv" / "bin").mkdir(parents=True)
        fake = bin_dir / "venv" / "bin" / "flowprep"
        fake.write_text(f"#!/bin/sh\nexit {status}\n")
        fake.chmod(0o755)
        scontrol = bin_dir / "scontrol"
        scontrol.write_text(f'#!/bin/sh\necho "$@" > {bin_dir}/requeued\n')
        scontrol.chmod(0o755)
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "FLOWPREP_VENV": str(bin_dir / "venv"),
               "VIDEOS": str(tmp_path / "v"), "OUT": str(tmp_path / "out"), "CLASS_INDEX": str(tmp_path / "c.txt"),
               "SLURM_JOB_ID": "4711", "SLURM_ARRAY_JOB_ID": "4708", "SLURM_ARRAY_TASK_ID": "3"}
        run = subprocess.run(["bash", str(PIPELINES / "slurm_extract.sh")], env=env, capture_output=True, text=True)
        assert run.returncode == status
        requeued = (bin_dir / "requeued").read_text().strip() if (bin_dir / "requeued").exists() else None
        assert requeued == ("requeue 4708_3" if status in exits.RETRIABLE else None), status


@pytest.mark.parametrize("doc", [ROOT / "README.md", PIPELINES / "README.md"])
def test_the_docs_print_the_exit_status_table_of_the_code(doc: Path) -> None:
    from flowprep import exits

    assert exits.markdown_table() in doc.read_text(), f"regenerate the table in {doc} from flowprep.exits"
