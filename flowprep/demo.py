"""``make demo``: the two-stream story on the built-in sample, end to end, with the real command lines.

``python -m flowprep.demo --out DIR`` runs, as subprocesses and printing each command first:
``flowprep sample`` -> ``flowprep extract`` -> ``flowprep verify`` -> ``trainer fit`` (spatial, then
temporal) -> ``trainer evaluate`` (both streams, weighted fusion fitted on the validation list) ->
``flowprep preview`` (one test video per class), then draws the training curves and prints the table
(also DIR/summary.md and DIR/summary.json).

A rerun with the same settings continues where the last one stopped: the sample is kept, extract
resumes by itself, a fit with a checkpoint continues with ``--resume`` (a finished one ends at once)
and evaluate is skipped when its results are newer than both checkpoints. ``--force`` starts afresh.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from flowprep.curves import CurvesError, plot_curves, read_metrics

PLAN_FILE = "demo.json"  # the settings a demo folder was made with; a rerun must ask for the same


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run (see ``FULL`` for why these numbers)."""

    videos_per_class: int
    clips_per_group: int
    size: int  # frames are size x size
    frames: int
    method: str  # flow method of flowprep extract
    arch: str
    crop: int
    epochs: int
    batch_size: int
    lr: float
    dropout: float  # before the classifier, both streams
    eval_samples: int  # frames / stacks per test video
    seed: int = 0


# 8 classes x 16 videos (80 train, 16 val, 32 test), 64x64, 16 frames: 1920 flow fields. TV-L1, the
# two-stream standard, with 3 pyramid scales and 3 warps instead of 5 and 5: OpenCV's defaults are meant
# for 320x240 frames; at 64x64 the flow differs by 0.025 px on average (below the 0.16 px quantization
# step) at half the cost, ~50 ms a field on one core, so ~1 min on 2 cores. Farneback would take ~5 s but
# its flow is blurrier at this size and the temporal stream learned less from it (one comparison with
# equal training settings: validation accuracy peaked at 0.81 with Farneback, 1.0 with TV-L1).
FULL = DemoPlan(videos_per_class=16, clips_per_group=2, size=64, frames=16, method="tvl1", arch="resnet18",
                crop=56, epochs=15, batch_size=8, lr=0.01, dropout=0.3, eval_samples=6)
# The end-to-end test: 96 videos (48 train, 16 val, 32 test; one clip per group for more appearances),
# a smaller crop and Farneback: about half the work of FULL; still 8 classes (chance 12.5%).
QUICK = dataclasses.replace(FULL, videos_per_class=12, clips_per_group=1, crop=48, method="farneback")
TVL1_OPTIONS = ("--tvl1-nscales", "3", "--tvl1-warps", "3")  # see FULL


class DemoError(click.ClickException):
    """A step failed: one line, and the step's own exit status (at least 1)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code if exit_code > 0 else 1


def tool(name: str) -> str:
    """The console script ``name`` of this environment (next to its python), else the one on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        raise DemoError(f"expected the {name!r} command next to {sys.executable} or on PATH; "
                        "install the package first (make setup)")
    return found


class Runner:
    """Runs the steps as subprocesses, prints each command as a user would type it, times them."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet, self.timings, self.reused, self.start = quiet, [], [], time.perf_counter()

    def step(self, title: str) -> None:
        click.secho(f"\n== {title}", bold=True)

    def reuse(self, path: Path, why: str) -> None:
        self.reused.append(str(path))
        click.echo(f"   reusing {path} ({why})")

    def run(self, name: str, *args: str | Path | float) -> None:
        argv = [str(a) for a in args]
        click.secho("$ " + shlex.join([name, *argv]), fg="cyan")
        cpu0, t0 = _children_cpu(), time.perf_counter()
        proc = subprocess.run([tool(name), *argv], capture_output=self.quiet, text=True)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
        self.timings.append({"command": shlex.join([name, *argv]), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
        if proc.returncode != 0:
            status = f"exit {proc.returncode}" if proc.returncode > 0 else f"killed by signal {-proc.returncode}"
            # Quiet: the command's own one-line error says why (otherwise it is already on screen).
            errors = [ln for ln in (proc.stderr or "").splitlines() if ln.startswith("Error:")]
            raise DemoError(f"step failed ({status}): {shlex.join([name, *argv])}"
                            + (f" ({errors[-1]})" if errors else "") + "; fix the cause and rerun to continue "
                            "(finished steps are reused), or add --force to start afresh", proc.returncode)
        click.echo(f"   ({wall:.1f} s, {cpu:.1f} s CPU)")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def prepare_out(out: Path, plan: DemoPlan, *, force: bool) -> None:
    """Create ``out`` (or empty it with ``force``); refuse a folder made with other settings."""
    plan_file = out / PLAN_FILE
    if out.exists() and any(out.iterdir()):
        if not plan_file.is_file():
            raise click.UsageError(f"{out} exists and is not a demo folder (no {PLAN_FILE}); choose another --out")
        if force:
            shutil.rmtree(out)
        elif json.loads(plan_file.read_text()) != dataclasses.asdict(plan):
            raise click.UsageError(f"{out} holds a demo made with other settings ({plan_file}); "
                                   "pass --force to start afresh or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(dataclasses.asdict(plan), indent=2) + "\n")


def run_demo(out: str | Path, plan: DemoPlan, *, force: bool = False, quiet: bool = False) -> dict[str, Any]:
    """All the steps into ``out``; returns what DIR/summary.json records."""
    out = Path(out)
    prepare_out(out, plan, force=force)
    sample, shards, runs, evaluation = out / "sample", out / "shards", out / "runs", out / "eval"
    r = Runner(quiet=quiet)

    r.step("1. a sample dataset: classes that differ only by their motion, random appearance")
    if (sample / "sample.json").is_file():
        r.reuse(sample, "delete it or pass --force to make it again")
    else:  # an interrupted sample is replaced
        force_sample = ["--force"] if (sample / "videos").is_dir() else []
        r.run("flowprep", "sample", "--out", sample, "--seed", plan.seed, "--videos-per-class", plan.videos_per_class,
              "--clips-per-group", plan.clips_per_group, "--size", plan.size, "--frames", plan.frames, *force_sample)
    classes = json.loads((sample / "sample.json").read_text())["classes"]

    r.step(f"2. optical flow into HDF5 shards ({plan.method}; resumes by itself when rerun)")
    if plan.method == "tvl1":
        click.echo("   TV-L1 with 3 scales and 3 warps: OpenCV's 5 and 5 are meant for 320x240; at 64x64 the flow differs "
                   "by 0.025 px on average, in half the time")
    else:
        click.echo("   Farneback, not TV-L1: ~15x faster here, blurrier flow (use --method tvl1 for the paper's flow)")
    method_options = TVL1_OPTIONS if plan.method == "tvl1" else ()
    r.run("flowprep", "extract", "--videos", sample / "videos", "--out", shards, "--class-index",
          sample / "classInd.txt", "--method", plan.method, *method_options)
    r.step("3. check the shards")
    r.run("flowprep", "verify", shards)

    for stream in ("spatial", "temporal"):
        what = "single RGB frames" if stream == "spatial" else "stacks of 10 flow fields"
        r.step(f"4. train the {stream} stream on {what} (best epoch chosen on the validation list)")
        resume = ["--resume"] if (runs / stream / "checkpoint.pt").is_file() else []
        # --no-flip: a mirrored MoveLeft clip is a MoveRight clip, so the flip augmentation would teach wrong labels.
        r.run("trainer", "fit", "--stream", stream, "--shards", shards, "--train-list", sample / "trainlist01.txt",
              "--val-list", sample / "vallist01.txt", "--out", runs / stream, "--arch", plan.arch,
              "--crop-size", plan.crop, "--epochs", plan.epochs, "--batch-size", plan.batch_size, "--lr", plan.lr,
              "--dropout", plan.dropout,
              "--no-flip", "--workers", 0, "--device", "cpu", "--seed", plan.seed, *resume)

    results_json = evaluation / "results.json"
    r.step("5. test both streams and their fusion (spatial weight chosen on the validation list)")
    if _newer_than(results_json, [runs / "spatial" / "best.pt", runs / "temporal" / "best.pt"]):
        r.reuse(results_json, "newer than both checkpoints")
    else:
        r.run("trainer", "evaluate", "--shards", shards, "--test-list", sample / "testlist01.txt",
              "--spatial", runs / "spatial", "--temporal", runs / "temporal", "--spatial-weight", "auto",
              "--val-list", sample / "vallist01.txt", "--samples", plan.eval_samples, "--workers", 0,
              "--device", "cpu", "--out", results_json)
    results = json.loads(results_json.read_text())

    r.step("6. pictures: one test video per class (frames beside their flow)")
    previews = out / "previews"
    previews.mkdir(exist_ok=True)
    # A video id is its path under videos/ without the extension (docs/shard-format.md).
    test_ids = [str(Path(line.split()[0]).with_suffix("")) for line in
                (sample / "testlist01.txt").read_text().splitlines() if line.strip()]
    pictures = []
    for name in classes:
        video = next(v for v in test_ids if v.startswith(name + "/"))
        pictures.append(previews / f"{name}.png")
        r.run("flowprep", "preview", shards, video, "--out", pictures[-1], "--frames", 4)
    chance = 1.0 / len(classes)
    try:
        curves = plot_curves({s: read_metrics(runs / s) for s in ("spatial", "temporal")}, out / "curves.png",
                             chance=chance)
    except CurvesError as e:
        raise DemoError(str(e)) from None
    pictures += [curves] + [Path(p) for p in results["confusion"].values()]

    summary = make_summary(results, plan=plan, classes=classes, timings=r.timings, reused=r.reused,
                           wall_s=time.perf_counter() - r.start, pictures=pictures)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(format_table(summary) + "\n")
    click.secho("\n== 7. the story: a single frame cannot tell the class, motion can", bold=True)
    click.echo(format_table(summary))
    click.echo("\nPictures:\n" + "\n".join(f"  {p}" for p in pictures))
    click.echo(f"\nDone in {summary['wall_s']:.0f} s ({summary['cpu_s']:.0f} s CPU in the commands); "
               f"everything is in {out}/")
    return summary


def _newer_than(path: Path, inputs: list[Path]) -> bool:
    return path.is_file() and all(p.is_file() and p.stat().st_mtime < path.stat().st_mtime for p in inputs)


def make_summary(results: dict[str, Any], *, plan: DemoPlan, classes: list[str], timings: list[dict[str, Any]],
                 reused: list[str], wall_s: float, pictures: list[Path]) -> dict[str, Any]:
    """Top-1 per stream and fused, chance (the test list is balanced: 1 / classes), settings, and the timings
    of this invocation (a rerun lists what it reused instead of making it again)."""
    top1 = {name: results[name]["top1"] for name in ("spatial", "temporal", "fused")}
    return {
        "top1": top1, "chance": 1.0 / len(classes), "num_classes": len(classes), "test_videos": results["num_videos"],
        "fusion": results["fusion"], "alpha": results["alpha"], "plan": dataclasses.asdict(plan),
        "wall_s": round(wall_s, 1), "cpu_s": round(sum(t["cpu_s"] for t in timings), 1), "commands": timings,
        "reused": reused,
        "pictures": [str(p) for p in pictures],
    }


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (readable as plain text too)."""
    chance, top1 = summary["chance"], summary["top1"]
    fused = f"fused ({summary['fusion']}, spatial weight {summary['alpha']:.2f})"
    rows = [("spatial (one RGB frame)", top1["spatial"]), ("temporal (10 flow fields)", top1["temporal"]),
            (fused, top1["fused"]), (f"chance (1 of {summary['num_classes']} classes)", chance)]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'stream':<{width}} | top-1  | vs chance |", f"|{'-' * (width + 2)}|-------:|----------:|"]
    lines += [f"| {name:<{width}} | {100 * acc:5.1f}% | {acc / chance:8.1f}x |" for name, acc in rows]
    return "\n".join(lines) + f"\n\n{summary['test_videos']} test videos, groups never seen in training."


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), show_default=True,
              help="Folder for everything the demo makes; a rerun continues in it.")
@click.option("--quick", is_flag=True, help="Fewer videos, Farneback flow, a smaller crop (about half the time); for tests.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample and of training.")
@click.option("--method", type=click.Choice(["farneback", "tvl1"]), default=None,
              help="Flow method.  [default: tvl1 (3 scales, 3 warps); farneback with --quick]")
@click.option("--force", is_flag=True, help="Delete an earlier demo in --out and start afresh.")
@click.option("--quiet", is_flag=True, help="Print only the commands and the results, not their output.")
def main(out: Path, quick: bool, seed: int, method: str | None, force: bool, quiet: bool) -> None:
    """Run the whole two-stream pipeline on a built-in sample and show that motion matters.

    \b
    Makes a sample of 8 motion classes with random appearance, extracts optical flow, trains a
    spatial (RGB frame) and a temporal (optical flow) ResNet-18 on the CPU, tests both and their
    fusion, and prints top-1 accuracy against chance. About 4 minutes on 2 cores.
    A rerun continues where the last one stopped (finished steps are reused).
    Exit status: 0 done, 2 usage (e.g. --out holds another demo), else the failed command's status
    (1 if it was killed).
    """
    base = QUICK if quick else FULL
    plan = dataclasses.replace(base, seed=seed, method=method or base.method)
    try:
        run_demo(out, plan, force=force, quiet=quiet)
    except KeyboardInterrupt:  # the running command got the Ctrl-C too and stopped where it can resume
        click.echo("\ninterrupted: rerun the same command to continue", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
