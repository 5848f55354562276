"""``trainer`` command line: fit one stream (or both jointly), evaluate streams and their fusion, redo a
fusion from scores.

Exit codes (also in ``trainer --help`` and README): 0 done, 1 a data/checkpoint/device problem (one line on stderr,
also for a damaged shard read in a loader worker), 2 a usage error or an output that cannot be written (permission
denied, a read-only file system: one line naming the folder, as for ``flowprep extract``), 4 another live fit holds
RUN_DIR (or evaluate or fuse the same --out), 75 the environment failed (disk full, I/O error, ImageNet weights that
cannot be downloaded, any unexpected error: one line, the traceback in trainer-error.log beside the output; a rerun
continues), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM: a scheduler's preemption, scancel, docker stop).
``fit`` stops at the next training step on either, saves RUN_DIR/checkpoint.pt there and then exits 130 or 143 with
one line; ``--resume`` continues the same epoch at its next batch. A second Ctrl-C leaves at once (130).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from flowprep.errors import (
    BusyOutput, EnvironmentFailure, FiniteFloat, OutPath, RunError, environment_failure, unwritable_cause,
)
from flowprep import exits, stopping
from flowprep.exits import BusyError
from flowprep.extract.labels import LIST_KINDS
from trainer import options
from trainer.config import (
    AMP_MODES, DEFAULT_DROPOUT, JOINT_FUSIONS, SCHEDULES, DataConfig, ModelConfig, OptimConfig, RunConfig,
)

DEVICES = ("auto", "cpu", "cuda")
CORES = len(os.sched_getaffinity(0))  # the cores this process may run on (a cgroup or taskset limits them)
# trainer.models.streams.ARCHS, repeated so that --help and usage errors answer without importing torch (tested equal).
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class _FileOrGlob(click.Path):
    """An existing file, or a pattern with ``*`` that matches at least one (HMDB-51's 51 split files)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and "*" in value:
            import glob

            if not glob.glob(value):
                self.fail(f"no file matches {value!r}", param, ctx)
            return value
        return super().convert(value, param, ctx)


_FILE = _FileOrGlob(exists=True, dir_okay=False)
_DIR = click.Path(exists=True, file_okay=False)
_LISTS = ("Split files: UCF-101 lists ('Class/v_x.avi [1-based label]'), HMDB-51 split files (a glob such as "
          "'splits/*_test_split1.txt'; 1 = train, 2 = test), Kinetics CSVs, the SSv2 JSON, or a CSV "
          "'path,label[,split]'; the format is detected from the content unless --list-format.")
_list_format = click.option(
    "--list-format", type=click.Choice(["auto", *LIST_KINDS]), default="auto", show_default=True,
    callback=lambda ctx, param, value: None if value == "auto" else value,
    help="The format of the list files, when detection from the name and content is not what you want.")

# fit and evaluate: one definition, checked by options.amp, resolved by trainer.distributed.amp_dtype_for.
_amp = click.option(
    "--amp", type=click.Choice(AMP_MODES), default="auto", show_default=True,
    help="Mixed precision (autocast) of the forward pass. CUDA: auto = bf16 where supported, else fp16 (fit: with "
         "loss scaling). CPU: auto = none (float32, bit-exact runs); bf16 runs in bfloat16 (fast only on CPUs with "
         "AVX-512 BF16 or AMX); fp16 is refused (usage error).")


ERROR_LOG = "trainer-error.log"


def _runtime_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Expected failures (bad data, checkpoints, devices) become one line and exit 1; permission denied on the
    output (or a read-only file system) one line and exit 2 (``_unwritable_output``); a failed environment
    (disk full, I/O error) or anything unexpected one line and exit 75, the traceback in ERROR_LOG beside
    the output (RUN_DIR for fit); Ctrl-C one line and exit 130; fit stopped by a signal, after saving, its one
    line and exit 130 or 143. Under torchrun, fit also leaves its status in RUN_DIR/.exit-status/rank-N."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        status = _exit_status_file(fn.__name__, kwargs)
        _record_exit_status(status, 0)  # an earlier run's goes
        try:
            return one_line(*args, **kwargs)
        except click.ClickException as e:
            _record_exit_status(status, e.exit_code)
            raise
        except SystemExit as e:
            _record_exit_status(status, e.code)
            raise

    def one_line(*args: Any, **kwargs: Any) -> Any:
        from trainer.checkpoint import CheckpointError
        from trainer.data.errors import DataError
        from trainer.distributed import DeviceError
        from trainer.models.pretrained import PretrainedError, WeightsDownloadError

        try:
            return fn(*args, **kwargs)
        except WeightsDownloadError as e:  # no network for torchvision's weights: the environment's (75), one line
            raise EnvironmentFailure(" ".join(str(e).split())) from None
        except (DataError, CheckpointError, DeviceError, PretrainedError) as e:
            message = " ".join(str(e).split())
            # Drop the stack now: it holds the DataLoader iterators, and torch only stops their worker processes
            # promptly when the iterator is freed as a plain object; left to the garbage collector (the traceback
            # is a reference cycle), each worker waits out a 5 s join timeout before the command can exit.
            e.__traceback__ = None
        except FloatingPointError as e:
            message = f"training diverged: {e}; try a lower --lr"
            e.__traceback__ = None
        except click.ClickException:  # usage errors found while running: exit 2, as they are
            raise
        except BusyError as e:  # another live fit holds RUN_DIR: exit 4, retry later
            raise BusyOutput(str(e)) from None
        except stopping.Stopped as e:  # SIGTERM or Ctrl-C, at a step boundary, after fit saved it
            e.__traceback__ = None  # as above: let the loader workers go now
            if int(os.environ.get("RANK", "0")) == 0:  # one line for the whole torchrun
                click.echo(f"\n{e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted: {_rerun(fn.__name__, kwargs)}", err=True)
            sys.exit(exits.INTERRUPTED.code)
        except Exception as e:  # disk full, I/O error, a lost peer, a bug: one line, retriable
            unwritable = _unwritable_output(e, fn.__name__, kwargs)
            failure = (RunError(unwritable) if unwritable else  # a rerun fails the same way: exit 2, as extract
                       environment_failure(e, _log_folder(fn.__name__, kwargs), action=_rerun(fn.__name__, kwargs),
                                           log_name=ERROR_LOG, unsaved="traceback not saved"))
            e.__traceback__ = None  # as above: let the loader workers go now
            raise failure from None
        raise click.ClickException(message)

    return wrapper


EXIT_STATUS_DIR = ".exit-status"  # RUN_DIR/.exit-status/rank-N: each torchrun process's exit status


def _exit_status_file(command: str, options: dict[str, Any]) -> Path | None:
    """Where a process of a torchrun ``fit`` leaves its exit status: torchrun itself exits 1 whatever its
    workers' statuses (143 after a preemption's save, 75 for a full disk, 4 busy), and
    pipelines/torchrun_train.sh exits with the most final of them instead (``FINAL_FIRST``)."""
    if command != "fit" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    return Path(options["out"]) / EXIT_STATUS_DIR / f"rank-{os.environ.get('RANK', '0')}"


# The order in which torchrun_train.sh picks a status among its processes': a final one (bad data, a usage error)
# over busy, over a failed environment, over a stop signal; tested against the script.
FINAL_FIRST = (exits.USAGE.code, exits.SOME_INPUTS_FAILED.code, exits.BUSY.code, exits.RETRY.code,
               exits.TERMINATED_CODE, exits.INTERRUPTED.code)


def _record_exit_status(path: Path | None, code: object) -> None:
    """Leave a failing ``code`` where ``_exit_status_file`` says, if anywhere; success (0, None) leaves none."""
    if path is None:
        return
    try:
        if isinstance(code, int) and code != 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{code}\n")
        else:
            path.unlink(missing_ok=True)
    except OSError:  # a full disk or a lost mount: the job then shows torchrun's own status, nothing else is lost
        return


def _unwritable_output(exc: Exception, command: str, options: dict[str, Any]) -> str | None:
    """The line for a permission error (or a read-only file system) on the command's output, as ``flowprep extract``
    words it (exit 2: not a failed environment, a rerun fails the same way); None when the file denied is not the
    output's or the error is another. The output is RUN_DIR and everything in it for fit, the results file and the
    files named after it beside it for evaluate and fuse, and for all three the folders above it that had to be
    created."""
    cause = unwritable_cause(exc)
    if cause is None or not isinstance(exc, OSError):
        return None
    denied = Path(os.path.abspath(os.fsdecode(exc.filename)))
    out = Path(os.path.abspath(options["out"]))
    if command == "fit":
        ours = denied == out or out in denied.parents
    else:
        ours = denied.parent == out.parent and denied.name.startswith(out.stem)
    if not (ours or denied in out.parents):
        return None
    return f"cannot write into {_log_folder(command, options)}: {cause} ({os.fsdecode(exc.filename)})"


def _log_folder(command: str, options: dict[str, Any]) -> Path:
    out = Path(options["out"])
    return out if command == "fit" else out.parent


def _rerun(command: str, options: dict[str, Any]) -> str:
    """What to do after a failure that a rerun gets past."""
    if command != "fit":
        return "rerun the same command"
    from trainer import checkpoint

    saved = _log_folder(command, options) / checkpoint.LAST
    if saved.is_file():
        return f"rerun the same command with --resume to continue from {saved}"
    return "rerun the same command (no epoch was saved yet)"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Train and evaluate two-stream networks on flowprep shards.

    \b
    trainer fit --stream temporal --shards OUT --train-list train01.txt --val-list val01.txt --out runs/t
    trainer evaluate --shards OUT --test-list testlist01.txt --spatial runs/s --temporal runs/t --out res.json
    trainer fit --stream joint --fusion learned --spatial-init runs/s --temporal-init runs/t ... --out runs/j
    Multi-GPU: torchrun --nproc_per_node 8 -m trainer fit ...

    Exit status: 0 done; 1 unusable data, checkpoint or device, in one line on stderr naming the file (and the
    video): a damaged shard (also when a loader worker reads it) or one this user may not read, a video whose flow
    scale_factor/add_offset are not its shard's, a list naming unknown videos; 2 usage error, or --out (RUN_DIR, the
    results' folder) cannot be written: permission denied, a read-only file system; 4 another live fit holds RUN_DIR
    (its lock names the host and pid), or another evaluate or fuse writes the same --out (<out>.lock); 75 the
    environment failed (disk full, I/O error, --pretrained imagenet weights that cannot be downloaded: the line
    names the file and where to put it, anything unexpected: one line, the traceback in trainer-error.log beside the
    output; rerun, fit with --resume once RUN_DIR/checkpoint.pt exists); 130 interrupted (Ctrl-C), 143 terminated
    (SIGTERM): fit first finishes its training step and saves it, rerun with --resume to continue. Lists hold 'path
    [label]' per line; the path may contain spaces, the label is the last token when it is an integer.
    """


@main.command()
@click.option("--stream", type=click.Choice(["spatial", "temporal", "joint"]), required=True,
              help="spatial: single RGB frames; temporal: L stacked flow fields; joint: both streams and --fusion, "
                   "trained together on a flow stack and its centre frame (same crop and flip).")
@click.option("--shards", type=_DIR, required=True, help="flowprep output folder (manifest + shards).")
@click.option("--train-list", type=_FILE, required=True, help="Training videos. " + _LISTS)
@click.option("--val-list", type=_FILE, default=None,
              help="Validation list: video accuracy per epoch, picks RUN_DIR/best.pt. Never the test list.")
@_list_format
@click.option("--out", "out", type=OutPath(file_okay=False), required=True,
              help="RUN_DIR for checkpoint.pt, best.pt and metrics.jsonl.")
@click.option("--arch", type=click.Choice(ARCHS), default="resnet50", show_default=True)
@click.option("--pretrained", default="none", show_default=True, callback=options.pretrained,
              help="none, imagenet (torchvision weights, from the torch hub cache $TORCH_HOME/hub/checkpoints or "
                   "downloaded into it; offline, put the file there: exit 75 names it) or a local ResNet state dict "
                   "file. "
                   "The temporal stream's conv1 is initialised from the RGB conv1's channel mean.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Per process.")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=0.01, show_default=True,
              help="Base learning rate (SGD, momentum 0.9).")
@click.option("--momentum", type=FiniteFloat(0, 1), default=0.9, show_default=True)
@click.option("--weight-decay", type=FiniteFloat(min=0), default=5e-4, show_default=True)
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True,
              help="Per-iteration cosine decay to 0, or step decay by --gamma every --step-size epochs.")
@click.option("--warmup-epochs", type=FiniteFloat(min=0), default=0.0, show_default=True)
@click.option("--step-size", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--gamma", type=FiniteFloat(0, 1), default=0.1, show_default=True)
@click.option("--dropout", type=FiniteFloat(0, 1, max_open=True), default=None,
              help="Before the classifier [default: 0.5 spatial, 0.7 temporal].")
@click.option("--fusion", type=click.Choice(JOINT_FUSIONS), default=None,
              help="Joint: average / alpha-weighted softmax scores, an MLP over them (learned) or over the pooled "
                   "features (feature), trained end to end [default: average].")
@click.option("--spatial-weight", type=FiniteFloat(0, 1), default=None,
              help="Joint: alpha of --fusion weighted (implies it).")
@click.option("--stream-loss-weight", type=FiniteFloat(min=0), default=0.5, show_default=True,
              help="Joint: loss = CE(fused) + W * (CE(spatial) + CE(temporal)); 0 trains through the fusion only.")
@click.option("--spatial-init", type=click.Path(exists=True), default=None,
              help="Joint: start the spatial stream from this spatial RUN_DIR (its best.pt) or checkpoint.")
@click.option("--temporal-init", type=click.Path(exists=True), default=None,
              help="Joint: start the temporal stream from this temporal RUN_DIR (its best.pt) or checkpoint.")
@click.option("--flow-length", type=click.IntRange(min=1), default=10, show_default=True,
              help="L, flow fields per temporal sample (2L input channels). A video shorter than L+1 frames repeats "
                   "its last field to fill the stack (as other toolkits pad); fit and evaluate say how many videos "
                   "of each list are that short, in one line on stderr.")
@click.option("--crop-size", type=click.IntRange(min=8), default=224, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=min(4, CORES), show_default=False,
              help="DataLoader processes per training process.  "
                   f"[default: 4, at most the cores available to this process, here {min(4, CORES)}]")
@click.option("--shared-batches/--no-shared-batches", default=True, show_default=True,
              help="Workers write training batches into a ring of reused shared buffers, pinned on CUDA (no fresh "
                   "memory per batch); off: torch's default collate, for comparison. Needs --workers >= 1.")
@click.option("--val-samples", type=click.IntRange(min=1), default=5, show_default=True,
              help="Uniformly spaced frames / stacks per validation video (centre crop); capped, with a note, at the "
                   "most distinct frames / stacks a validation video has (more would only repeat them).")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Randomly mirror half the training samples (flow: u negated). Turn it off when a mirror changes "
                   "the class, e.g. moving left vs right or clockwise vs counter-clockwise.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="auto = cuda when available.")
@_amp
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True,
              help="Continue the run in RUN_DIR from its checkpoint.pt (mid-epoch after a SIGTERM or Ctrl-C).")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Leave after this many epochs (for time-limited job slots); continue with --resume.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm bar on rank 0.")
@click.pass_context
@_runtime_errors
def fit(ctx: click.Context, **o: Any) -> None:
    """Train one stream, or both jointly with a fusion; checkpoint each epoch into RUN_DIR, keep the best on
    --val-list.

    Runs as one process, or one per GPU under torchrun (gloo on CPU, nccl on CUDA; only rank 0 writes).

    SIGTERM (SLURM preemption, scancel, docker stop) or Ctrl-C: the run finishes its training step (all
    processes at the same one), saves RUN_DIR/checkpoint.pt there, and exits 143 (SIGTERM) or 130 (Ctrl-C)
    with one line; --resume continues that epoch at its next batch, as if never stopped. A signal during
    validation stops the run once the epoch is saved. A second Ctrl-C leaves at once.
    """
    from trainer.checkpoint import LAST
    from trainer.fit import fit as run_fit

    last = os.path.join(o["out"], LAST)
    if o["resume"] and not os.path.lexists(last):  # one that is there but unreadable: load_checkpoint says how
        raise click.UsageError(f"--resume: no checkpoint at {last}")
    if not o["resume"] and os.path.lexists(last):  # a folder or a link by that name too: saving would fail at the end
        raise click.UsageError(f"{o['out']} already holds a run ({last}); pass --resume or choose another --out")
    options.amp(o["amp"], o["device"])
    joint = options.joint_options(ctx, o)
    first = "spatial" if o["stream"] == "joint" else o["stream"]  # joint: dropout is the spatial stream's
    dropout = DEFAULT_DROPOUT[first] if o["dropout"] is None else o["dropout"]
    model = ModelConfig(stream=o["stream"], num_classes=1, arch=o["arch"], flow_length=o["flow_length"],
                        dropout=dropout, pretrained=o["pretrained"], **joint)
    data = DataConfig(shards=o["shards"], train_list=o["train_list"], val_list=o["val_list"],
                      list_format=o["list_format"], crop_size=o["crop_size"],
                      batch_size=o["batch_size"], workers=o["workers"], val_samples=o["val_samples"],
                      flip=o["flip"], shared_batches=o["shared_batches"])
    optim = OptimConfig(epochs=o["epochs"], lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                        schedule=o["schedule"], warmup_epochs=o["warmup_epochs"], step_size=o["step_size"],
                        gamma=o["gamma"], stream_loss_weight=o["stream_loss_weight"])
    run = RunConfig(out=o["out"], device=o["device"], seed=o["seed"], amp=o["amp"], resume=o["resume"])
    with stopping.stop_flag() as stop:  # SIGTERM and Ctrl-C: stop at the next step, save, exit 143 / 130
        stats = run_fit(model=model, data=data, optim=optim, run=run, stop_after=o["stop_after"],
                        show_progress=o["progress"], stop=stop)
    if not stats and int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"{o['out']}: all {o['epochs']} epochs were already done", err=True)


@main.command()
@click.option("--shards", type=_DIR, required=True, help="flowprep output folder (manifest + shards).")
@click.option("--test-list", type=_FILE, required=True,
              help="Videos to score (labels optional; the shards' labels are checked against them). " + _LISTS)
@click.option("--spatial", type=click.Path(exists=True), default=None, help="Spatial RUN_DIR (its best.pt) or a checkpoint.")
@click.option("--temporal", type=click.Path(exists=True), default=None, help="Temporal RUN_DIR (its best.pt) or a checkpoint.")
@click.option("--joint", type=click.Path(exists=True), default=None,
              help="A joint RUN_DIR (its best.pt) or checkpoint, scored with its own heads and fusion; "
                   "instead of --spatial/--temporal.")
@click.option("--fusion", type=click.Choice(["average", "weighted", "learned"]), default="average", show_default=True,
              help="With both streams: mean of softmax scores, alpha-weighted mean, or an MLP fitted on --val-list.")
@click.option("--spatial-weight", callback=options.spatial_weight, default=None,
              help="alpha in [0, 1] for weighted fusion, or 'auto': the alpha that maximizes the mean log-probability of "
                   "the true class of the fused --val-list scores (a chance-level stream gets a weight near 0). "
                   "Implies --fusion weighted (a note on stderr says so).")
@click.option("--val-list", type=_FILE, default=None, help="Validation videos for auto / learned fusion.")
@_list_format
@click.option("--samples", type=click.IntRange(min=1), default=25, show_default=True,
              help="Uniformly spaced frames / flow stacks per video; capped, with a note on stderr, at the most "
                   "distinct frames / stacks a listed video has (more would only repeat them, in every video). A "
                   "shorter video repeats some of its own.")
@click.option("--crops", type=click.Choice(["1", "10"]), default="1", show_default=True,
              help="Centre crop, or 4 corners + centre and their flips (flow flips negate u).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Videos per batch.")
@click.option("--workers", type=click.IntRange(min=0), default=min(2, CORES), show_default=False,
              help="DataLoader processes.  "
                   f"[default: 2, at most the cores available to this process, here {min(2, CORES)}]")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@_amp
@click.option("--out", type=OutPath(dir_okay=False), required=True,
              help="results.json; the confusion-matrix PNGs and the per-video scores (.scores.npz) go next to it.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
@_runtime_errors
def evaluate(ctx: click.Context, **o: Any) -> None:
    """Video-level accuracy of each stream and of their fusion on --test-list (or of a --joint model's).

    While it runs, --out's lock (<out>.lock, e.g. results.json.lock) is held: a second evaluate or fuse into the same
    --out exits 4 (busy, retry later) with one line naming the holder; the lock of a run that was killed is taken
    over.
    """
    from trainer.distributed import resolve_device
    from trainer.evaluate import results_lock, run_evaluate

    if o["joint"] is not None:
        extra = options.given(ctx, "spatial", "temporal", "fusion", "spatial_weight", "val_list")
        if extra:
            raise click.UsageError(f"--joint cannot be combined with {', '.join(extra)}: a joint model is scored "
                                   "with its own two streams and fusion")
        fusion = None
    elif o["spatial"] is None and o["temporal"] is None:
        raise click.UsageError("give --spatial and/or --temporal, or --joint (a RUN_DIR or a checkpoint file)")
    else:
        both = o["spatial"] is not None and o["temporal"] is not None
        fusion = options.check_fusion(ctx, both=both, fusion=o["fusion"], weight=o["spatial_weight"],
                                      has_val=o["val_list"] is not None)
    options.amp(o["amp"], o["device"])
    Path(o["out"]).parent.mkdir(parents=True, exist_ok=True)
    with results_lock(Path(o["out"])):  # a second evaluate or fuse into this --out: busy (exit 4) at once
        results = run_evaluate(
            shards=o["shards"], test_list=o["test_list"], spatial=o["spatial"], temporal=o["temporal"],
            joint=o["joint"], fusion=fusion, spatial_weight=o["spatial_weight"], val_list=o["val_list"],
            samples=o["samples"], crops=int(o["crops"]), device=resolve_device(o["device"]), out=o["out"],
            batch_size=o["batch_size"], workers=o["workers"], show_progress=o["progress"],
            list_format=o["list_format"], amp=o["amp"],
        )
    _echo_results(results, o["out"])


@main.command()
@click.option("--scores", type=_FILE, required=True, help="A .scores.npz written by trainer evaluate.")
@click.option("--fusion", type=click.Choice(["average", "weighted", "learned"]), default="average", show_default=True)
@click.option("--spatial-weight", callback=options.spatial_weight, default=None,
              help="alpha in [0, 1], or 'auto' (maximizes the fused validation scores' log-likelihood). Implies "
                   "--fusion weighted (a note on stderr says so).")
@click.option("--out", type=OutPath(dir_okay=False), required=True, help="results.json to write.")
@click.pass_context
@_runtime_errors
def fuse(ctx: click.Context, scores: str, fusion: str, spatial_weight: float | str | None, out: str) -> None:
    """Redo the fusion from saved per-video scores, without running a network.

    results.json names --scores as its scores. A --scores file that is not one trainer evaluate wrote (cut short,
    damaged, another file): exit status 1, one line. It holds --out's lock as evaluate does: another evaluate or fuse
    into the same --out is exit 4 (busy).
    """
    from pathlib import Path

    from trainer.evaluate import load_scores, report, results_lock

    if os.path.exists(out) and os.path.samefile(out, scores):  # results.json written over the scores it is from
        raise click.UsageError(f"--out {out} is the --scores file, which it would replace: name the results another file")
    bundle = load_scores(scores)
    both = "spatial" in bundle and "temporal" in bundle
    has_val = both and "val_spatial" in bundle and "val_temporal" in bundle and len(bundle["val_labels"]) > 0
    fusion = options.check_fusion(ctx, both=both, fusion=fusion, weight=spatial_weight, has_val=has_val,
                           no_val=f"{scores} holds no validation scores (run trainer evaluate with --val-list)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)  # as evaluate does
    with results_lock(Path(out)):  # as evaluate's: a second fuse or evaluate into --out is busy (exit 4)
        results = report(bundle, fusion=fusion, spatial_weight=spatial_weight, out=Path(out), scores_file=Path(scores))
    _echo_results(results, out)


def _echo_results(results: dict[str, Any], out: str) -> None:
    for name in ("spatial", "temporal", "fused"):
        if name in results:
            r = results[name]
            click.echo(f"{name:>8}: top1 {100 * r['top1']:.2f}%  top5 {100 * r['top5']:.2f}%  "
                       f"mean class {100 * r['mean_class']:.2f}%")
    if results.get("alpha") is not None:
        click.echo(f"   alpha: {results['alpha']:.2f} (spatial weight)")
    crit = results.get("alpha_criterion")
    if crit is not None:
        click.echo(f"   chosen by {crit['name']} on {results['fusion_fitted_on']} videos: {crit['value']:.3f} "
                   f"(temporal alone {crit['temporal_only']:.3f}, spatial alone {crit['spatial_only']:.3f})")
    click.echo(f"{results['num_videos']} videos -> {out}")
