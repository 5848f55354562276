"""``flowprep`` command line: ``extract`` and ``verify`` here (their options generated from flowprep/config.py);
the tools' commands (sample, preview, import-frames, export-frames) are defined next to their code."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

from flowprep import __version__, exits
from flowprep.config import DecodeConfig, FarnebackParams, FlowConfig, StorageConfig, TVL1Params
from flowprep import stopping
from flowprep.errors import (
    Bound, BusyOutput, ClusterError, FiniteFloat, OutPath, RunError, environment_failure, unreadable_input,
    unwritable_output,
)
from flowprep.extract import decode, manifest, reader, runner
from flowprep.extract import flow as flow_mod
from flowprep.extract import verify as verify_mod
from flowprep.scale import array_tasks, dask_cluster
from flowprep.torchflow.service import ANSWER_TIMEOUT_S, FLOW_BATCH, TIMEOUT_ENV


class _Commands(click.Group):
    """Ctrl-C in any command: one line and exit 130 (click's own answer is "Aborted!" and exit 1, which verify
    uses for damage). extract handles it itself, after stopping its workers."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(exits.INTERRUPTED.code)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flowprep")
def main() -> None:
    """Videos -> dense optical flow (TV-L1 or Farneback) -> quantized uint8 HDF5 shards.

    \b
    Typical use:
      flowprep extract --videos ucf101/ --out shards/ --class-index classInd.txt
      flowprep verify shards/
    """


def _parse_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    w, sep, h = value.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and 2 <= int(w) <= decode.MAX_SIDE and 2 <= int(h) <= decode.MAX_SIDE):
        raise click.BadParameter(f"expected WxH such as 340x256, each side from 2 to {decode.MAX_SIDE}, got {value!r}",
                                 param_hint="'--size'")
    reason = decode.bad_width_reason(int(w), resized=True)
    if reason:
        raise click.BadParameter(reason.replace(" or --short-side", ""), param_hint="'--size'")
    return int(w), int(h)


# Method parameters become --tvl1-* / --farneback-* options, defaults from the dataclasses.
_PARAM_HELP = {
    "tau": "time step of the numerical scheme",
    "lambda_": "data-term weight (smaller = smoother flow)",
    "theta": "coupling between the two energy terms",
    "nscales": "pyramid scales",
    "warps": "warpings per scale",
    "epsilon": "stopping threshold",
    "inner_iterations": "inner iterations per warp",
    "outer_iterations": "outer iterations per warp",
    "scale_step": "pyramid scale step",
    "gamma": "illumination-variation weight",
    "median_filtering": "median filter size applied to the flow (1 = none, 3 or 5)",
    "pyr_scale": "pyramid scale (0.5 = each level half the size)",
    "levels": "pyramid levels",
    "winsize": "averaging window (larger = robust, blurrier)",
    "iterations": "iterations per level",
    "poly_n": "pixel neighbourhood of the polynomial expansion",
    "poly_sigma": "Gaussian sigma of the polynomial expansion",
}


# The values OpenCV computes sound flow with; outside them it asserts (every video then fails, so the run
# ends with exit 1 as if the files were bad), returns zero or NaN flow without a word (iterations 0, theta 0,
# winsize 0), or corrupts its memory and kills the worker (a negative winsize). Refused up front instead.
_PARAM_RANGE = {
    "tau": FiniteFloat(min=0, min_open=True),
    "lambda_": FiniteFloat(min=0, min_open=True),
    "theta": FiniteFloat(min=0, min_open=True),
    "nscales": click.IntRange(min=1),
    "warps": click.IntRange(min=1),
    "epsilon": FiniteFloat(min=0),
    "inner_iterations": click.IntRange(min=1),
    "outer_iterations": click.IntRange(min=1),
    "scale_step": FiniteFloat(min=0, max=1, min_open=True),
    "gamma": FiniteFloat(min=0),
    "median_filtering": click.IntRange(min=1, max=5),  # odd (checked below); 1: none; OpenCV's median of float flow takes 3 or 5
    "pyr_scale": FiniteFloat(min=0, max=1, min_open=True, max_open=True),
    "levels": click.IntRange(min=0),
    "winsize": click.IntRange(min=1),
    "iterations": click.IntRange(min=1),
    "poly_n": click.IntRange(min=1),
    "poly_sigma": FiniteFloat(min=0, min_open=True),
}


def _odd(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if param.name.endswith("median_filtering") and value % 2 == 0:
        raise click.BadParameter(f"{value} is even: a median filter size is 1 (none), 3 or 5", ctx, param)
    return value


def _method_options(prefix: str, cls: type) -> Callable:
    def decorate(f: Callable) -> Callable:
        for fld in reversed(dataclasses.fields(cls)):
            name = fld.name.rstrip("_")
            kind = _PARAM_RANGE[fld.name]
            f = click.option(
                f"--{prefix}-{name.replace('_', '-')}",
                f"{prefix}_{fld.name}",
                type=kind,
                callback=_odd,
                default=fld.default,
                show_default=True,
                help=_PARAM_HELP[fld.name],
            )(f)
        return f

    return decorate


def _check_device(engine: str, device: str) -> None:
    """A usage error unless --device names a device this machine has (checked before any work starts)."""
    kind, _, which = device.partition(":")
    if kind == "cpu" and not which:
        return
    ids = which.split(",") if which else []
    if kind != "cuda" or device.endswith(":") or not all(i.isdigit() for i in ids):
        raise click.UsageError(f"--device must be cpu, cuda or cuda:0,1,..., got {device!r}")
    if len(set(map(int, ids))) < len(ids):  # two flow processes on one GPU would only contend
        raise click.UsageError(f"--device {device} names a GPU twice")
    if engine != "torch":
        return  # FlowConfig refuses it with the reason
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = [int(i) for i in which.split(",")] if which else [0]
    if count == 0 or max(wanted) >= count:
        raise click.UsageError(f"--device {device}: this machine has {count} CUDA device(s) visible to PyTorch")


def _flow_timeout() -> float:
    """--engine torch: seconds a worker waits for its flow process to finish a batch (FLOWPREP_FLOW_TIMEOUT_S)."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return ANSWER_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise click.UsageError(f"{TIMEOUT_ENV} must be a number of seconds above 0, got {text!r}")
    return seconds


def _method_params(cls: type, prefix: str, kwargs: dict) -> Any:
    return cls(**{fld.name: kwargs.pop(f"{prefix}_{fld.name}") for fld in dataclasses.fields(cls)})


@main.command(context_settings={"show_default": True}, epilog=exits.help_text())
@click.option("--videos", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of videos (.avi .mp4 .mkv .webm .mov, AV1 included, searched recursively). The class of a video is "
                   "its top-level folder, as in UCF-101 (VIDEOS/<Class>/<video>), unless --layout or --labels says "
                   "otherwise.")
@click.option("--out", required=True, type=OutPath(file_okay=False, path_type=Path),
              help="Output folder: shards, manifest, failures.jsonl. Rerun the same command to resume.")
@click.option("--method", type=click.Choice(["tvl1", "farneback"]), default="tvl1",
              help="TV-L1 is the two-stream standard (accurate, ~1.5 s per 320x240 pair on one core); "
                   "Farneback is ~70x faster and coarser.")
@click.option("--engine", type=click.Choice(["opencv", "torch"]), default=None, show_default=False,
              help="TV-L1 implementation: OpenCV's, or the PyTorch port (the same flow to the bit on the CPU; "
                   "batches of pairs on a GPU).  [default: opencv on --device cpu, torch on cuda]")
@click.option("--device", default="cpu", metavar="cpu|cuda|cuda:0,1",
              help="Where --engine torch computes: the CPU, every visible GPU, or the listed ones. One flow "
                   "process per device (one for cpu, on one core) solves the frame pairs of every worker "
                   "process, in batches across videos; no manual split. With --backend dask each worker "
                   "computes its own videos' flow instead.")
@click.option("--flow-batch", type=click.IntRange(min=1), default=FLOW_BATCH,
              help="--engine torch: at most this many frame pairs (of one frame size, from any videos) per "
                   "solver call. Out of device memory halves it and goes on (logged once).")
@click.option("--workers", type=click.IntRange(min=1), default=None, show_default=False,
              help="Worker processes, one video each (OpenCV single-threaded in each; with --engine torch they "
                   "decode, encode and write while the flow process computes).  "
                   f"[default: all cores available to this process, here {runner.default_workers()}]")
@click.option("--bound", type=Bound(), default=FlowConfig.bound,
              help="Clip flow to +-BOUND pixels, then quantize to uint8 (step 2*BOUND/255 px). 20 is the "
                   "bound of the common two-stream toolkits; larger motions are rare at 25-30 fps.")
@click.option("--videos-per-shard", type=click.IntRange(min=1), default=StorageConfig.videos_per_shard,
              help="Videos per HDF5 shard (a video is never split).")
@click.option("--class-index", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="UCF-101 classInd.txt ('1 ApplyEyeMakeup' lines) or Something-Something's labels JSON: labels "
                   "follow its order.  [default: sorted class names, by number when all are numbers]")
@click.option("--layout", type=click.Choice(reader.LAYOUTS), default=None, show_default=False,
              help="Where classes come from without --labels: ucf101 / hmdb51 / folders: the top-level folder "
                   "(<Class>/<video>); kinetics: the folder holding the video (<split>/<label>/<video>; test/<video>: "
                   "unlabelled); ssv2 "
                   "needs --labels.  [default: folders; top-level videos are extracted unlabelled, with a note]")
@click.option("--labels", "labels", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Label file(s), repeatable, of one kind (detected from the content): a CSV 'path,label[,split]' "
                   "(path relative to --videos), Kinetics' official CSV (label,youtube_id,time_start,time_end,split; "
                   "files named {youtube_id}_{start:06d}_{end:06d}.mp4) or Something-Something v2's JSON (<id>.webm). Their "
                   "test files' videos have no label: they are extracted unlabelled (label -1).")
@click.option("--unlabelled", is_flag=True,
              help="Extract without labels: label -1 and no class name in the shards (e.g. a test set).")
@click.option("--size", "size_text", metavar="WxH",
              help=f"Resize every frame to WxH before flow (each side 2 to {decode.MAX_SIDE}); W across the upright "
                   "picture (a phone video's rotation applied).  "
                   "[default: native size: flow at the source resolution]")
@click.option("--short-side", type=click.IntRange(min=2, max=decode.MAX_SIDE),
              help="Resize so the short side is N, keeping the aspect of the upright picture; 256 is recommended "
                   "for Kinetics-sized inputs.  [default: native size]")
@click.option("--frame-step", type=click.IntRange(min=1), default=DecodeConfig.frame_step,
              help="Use every N-th frame (flow then spans N source frames).")
@click.option("--no-rgb", is_flag=True, help="Do not store the JPEG frames the spatial stream needs.")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=StorageConfig.jpeg_quality, help="JPEG quality of the stored frames.")
@_method_options("tvl1", TVL1Params)
@_method_options("farneback", FarnebackParams)
@click.option("--task-index", type=click.IntRange(min=0), default=None, show_default=False,
              help="This task's index (0-based) when an array job of --task-count tasks shares --out.  [default: "
                   "from SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX (Kubernetes) or AWS_BATCH_JOB_ARRAY_INDEX; else 0]")
@click.option("--task-count", type=click.IntRange(min=1), default=None, show_default=False,
              help="Split the videos across this many array tasks, by file size; every task computes the same "
                   "split and writes only its own shards and manifest part. With SLURM, the array IDs are then the "
                   "task indexes (so --array=3,7 reruns tasks 3 and 7).  [default: from SLURM_ARRAY_TASK_COUNT "
                   "(or MIN/MAX/STEP) or AWS_BATCH_JOB_ARRAY_SIZE; Kubernetes needs it; else 1]")
@click.option("--backend", type=click.Choice(dask_cluster.BACKENDS), default="loky",
              help="Where the per-video jobs run: local worker processes (loky), or the workers of a Dask cluster "
                   "(dask, with --scheduler; --videos and --out must be mounted at the same paths there, and the "
                   "cluster's worker threads set the parallelism instead of --workers).")
@click.option("--scheduler", metavar="tcp://HOST:PORT", default=None,
              help="Address of the Dask scheduler (--backend dask).")
@click.option("--retry-failed", is_flag=True,
              help="Try the videos listed as failed again. Without it, a failed video is tried again only when "
                   "its file changed (size or modification time).")
@click.option("--check", is_flag=True,
              help="On a rerun, also compare every finished shard's sha256 with the manifest (reads every byte) "
                   "and extract the videos of a damaged one again. Without it a rerun checks that each shard "
                   "exists with the recorded size.")
@click.option("--failed-videos-ok", is_flag=True,
              help="Exit 0 instead of 1 when the run finished but some videos could not be decoded (they stay "
                   "listed in failures.jsonl and by verify): for job files whose scheduler would otherwise "
                   "count the task as failed.")
@click.option("--debug", is_flag=True, help="Show the full traceback of a crash instead of one line.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar (on stderr).")
def extract(videos: Path, out: Path, method: str, engine: str | None, device: str, flow_batch: int, workers: int | None,
            bound: float, videos_per_shard: int,
            class_index: Path | None, layout: str | None, labels: tuple[Path, ...], unlabelled: bool,
            size_text: str | None, short_side: int | None, frame_step: int,
            no_rgb: bool, jpeg_quality: int, task_index: int | None, task_count: int | None, backend: str,
            scheduler: str | None, retry_failed: bool, check: bool, failed_videos_ok: bool, debug: bool,
            progress: bool, **method_kwargs: Any) -> None:
    """Compute dense optical flow for every video under --videos into quantized HDF5 shards in --out.

    Rerun the same command after any trouble (a crash, kill -9, a full disk, a deleted or damaged
    shard): it resumes without redoing finished videos and repairs what it finds missing.
    """
    size = _parse_size(size_text)
    if size is not None and short_side is not None:
        raise click.UsageError("give at most one of --size and --short-side")
    if engine is None and method == "farneback" and device != "cpu":
        raise click.UsageError(f"Farneback runs on OpenCV, on the CPU: drop --device {device} (on a GPU, "
                               "--method tvl1 runs the torch engine)")
    engine = engine or ("opencv" if device == "cpu" else "torch")
    _check_device(engine, device)
    flow_timeout_s = _flow_timeout()
    try:
        flow = FlowConfig(method=method, bound=bound, tvl1=_method_params(TVL1Params, "tvl1", method_kwargs),
                          farneback=_method_params(FarnebackParams, "farneback", method_kwargs), engine=engine,
                          device=device)
        if method == "tvl1":
            flow_mod.check_tvl1_params(flow.tvl1)  # extreme values: NaN flow for every video, refused here
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    decode = DecodeConfig(size=size, short_side=short_side, frame_step=frame_step)
    storage = StorageConfig(rgb=not no_rgb, jpeg_quality=jpeg_quality, videos_per_shard=videos_per_shard)
    try:
        task = array_tasks.detect_task(os.environ, task_index=task_index, task_count=task_count)
        dask_cluster.check_arguments(backend, scheduler)
    except (array_tasks.TaskError, dask_cluster.BackendUsageError) as exc:
        raise click.UsageError(str(exc)) from exc
    with stopping.stop_on_signals():  # Ctrl-C and a scheduler's SIGTERM unwind the run
        try:
            classes, metas = reader.plan_videos(videos, class_index=class_index, layout=layout, labels=labels,
                                                unlabelled=unlabelled, warn=lambda m: click.echo(m, err=True))
            total = len(metas)
            weights = array_tasks.video_weights(videos, [m.source for m in metas])
            if task.count > 1:  # an array task: say which one, and where that came from
                mine = set(array_tasks.split_videos(weights, task_index=task.index, task_count=task.count))
                metas = [m for m in metas if m.source in mine]
                click.echo(f"{task}: {len(metas)} of {total} videos")
            out.mkdir(parents=True, exist_ok=True)  # the Dask workers are asked whether they see it
            with dask_cluster.joblib_backend(backend, scheduler, shared_paths=[videos, out]) as jobs_backend:
                summary = runner.run_extract(videos_root=videos, out=out, videos=metas, classes=classes, flow=flow,
                                             decode=decode, storage=storage, workers=workers, task_index=task.index,
                                             task_count=task.count, backend=jobs_backend, progress=progress,
                                             inputs_sha256=manifest.inputs_digest(weights), inputs_num_videos=total,
                                             retry_failed=retry_failed,
                                             check=check, flow_batch=flow_batch, flow_timeout_s=flow_timeout_s)
        except (reader.DatasetError, runner.RunConflict, manifest.ManifestError, dask_cluster.BackendUsageError) as exc:
            raise RunError(str(exc)) from exc
        except dask_cluster.BackendError as exc:
            raise ClusterError(str(exc)) from exc
        except exits.BusyError as exc:
            raise BusyOutput(str(exc)) from exc
        except PermissionError as exc:  # the inputs were read already: this is --out (a video's own is a failure)
            raise RunError(f"cannot write into {out}: permission denied ({exc.filename})") from exc
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (a scheduler's): the workers are stopped by now
            _stop_line(isinstance(exc, stopping.Terminated))
        except Exception as exc:  # disk full, I/O error, lost lock or lost cluster, a bug: retriable, one line
            if stopping.stopped():  # what the signal did to the run (a worker it ended), not the environment
                _stop_line(stopping.stopped() == signal.SIGTERM)
            unwritable = unwritable_output(exc, out)  # --out on a read-only mount: 2, as permission denied
            if unwritable is not None:
                raise unwritable from exc
            if debug:
                raise
            raise environment_failure(exc, out) from exc
    if summary.repaired or summary.retried:
        click.echo(f"repaired {len(summary.repaired)} damaged or missing item(s), retried {len(summary.retried)} "
                   "failed video(s) (listed above)")
    click.echo(f"{summary.num_videos - len(summary.failures)} of {summary.num_videos} videos extracted into "
               f"{len(summary.shards)} shard(s) in {out} ({summary.processed} processed now, {summary.reused} "
               f"from an earlier run, {summary.frames} frames in {summary.seconds:.1f} s)")
    if summary.failures:
        click.echo(f"{len(summary.failures)} video(s) failed: see {out / runner.FAILURES}")
        sys.exit(exits.OK.code if failed_videos_ok else exits.SOME_INPUTS_FAILED.code)


def _stop_line(terminated: bool) -> NoReturn:
    if terminated:
        click.echo("\nterminated (SIGTERM): finished videos are kept; rerun the same command to resume", err=True)
        sys.exit(exits.TERMINATED_CODE)
    click.echo("\ninterrupted: rerun the same command to resume", err=True)
    sys.exit(exits.INTERRUPTED.code)


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON report.")
@click.option("--progress/--no-progress", default=False, help="Show a progress bar over shards (on stderr).")
@click.option("--debug", is_flag=True, help="Show the full traceback of a crash instead of one line.")
def verify(out: Path, as_json: bool, progress: bool, debug: bool) -> None:
    """Check that OUT is complete and intact: every manifest part, shard size, sha256, video and dataset.

    Exit status 0 only when complete and intact, 1 otherwise ("incomplete: N of M videos" after an
    interrupted run; "incomplete: 2 of 4 tasks have not finished (tasks 1, 3); N of M videos done" for an
    array run; a damaged shard is named with the video and the field or attribute that is wrong: rerun the
    same `flowprep extract` command, with --check, to repair it), 2 when OUT is not a readable folder or
    this user may not read a file in it (one line naming it), 75 when reading a file in it failed (I/O
    error; one line). Videos that could not be
    decoded are listed but do not make it fail.
    """
    try:
        report = verify_mod.verify_output(out, progress=progress)
    except PermissionError as exc:  # a file in OUT this user may not read: 2, as an unreadable folder (not a retry)
        if debug:
            raise
        raise unreadable_input(exc, out) from exc
    except Exception as exc:  # an I/O error reading OUT, a bug: one line, retriable
        if debug:
            raise
        raise environment_failure(exc, out, action="run verify again", log=False) from exc
    click.echo(json.dumps(report.to_dict(), indent=1) if as_json else verify_mod.format_report(report))
    sys.exit(0 if report.ok else 1)


# The tools' commands are defined next to their code.
from flowprep.tools.export_frames import export_frames_command  # noqa: E402
from flowprep.tools.import_frames import import_frames_command  # noqa: E402
from flowprep.tools.preview import preview_command  # noqa: E402
from flowprep.tools.sample import sample_command  # noqa: E402

main.add_command(sample_command)
main.add_command(import_frames_command)
main.add_command(export_frames_command)
main.add_command(preview_command)
