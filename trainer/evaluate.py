"""``trainer evaluate``: video-level scores per stream, their fusion, results.json and a confusion matrix.

Per video, the softmax scores of ``samples`` uniformly spaced frames / flow stacks (x ``crops``) are
averaged. Fusion weights (the spatial weight alpha, or the learned-fusion MLP) are fitted on the
validation list's scores only, never on the test list's. Everything derived from the networks is
saved next to results.json as ``<stem>.scores.npz`` so that ``trainer fuse`` can redo the fusion
without running a network again.

A joint model (``trainer fit --stream joint``, ``--joint RUN_DIR``) is scored with its own heads and
fusion: "spatial" and "temporal" are its streams' heads, "fused" the per-sample output of its fusion
module averaged over the samples (softmax first where the fusion outputs logits); nothing is fitted on
validation videos.
"""

from __future__ import annotations

import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from flowprep.extract.lock import OutputLock
from flowprep.extract.manifest import replacing, write_json_atomic
from trainer import checkpoint as ckpt_io
from trainer.config import ModelConfig, from_dict
from trainer.data.datasets import VideoEvalDataset, short_for_stacks
from trainer.data.errors import DataError
from trainer.data.joint_datasets import JointEvalDataset
from trainer.data.lists import read_video_list
from trainer.data.shards import index_shards
from trainer.data.transforms import BatchPreparer
from trainer.distributed import amp_dtype_for
from trainer.engine import evaluate
from trainer.models.build import build_model
from trainer.models.fusion import LearnedFusion

FUSIONS = ("average", "weighted", "learned")


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (k capped at the class count)."""
    k = min(k, scores.shape[1])
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((topk == labels[:, None]).any(axis=1).mean())


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


def score_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1, top5 and mean per-class accuracy (over the classes present in ``labels``)."""
    cm = confusion_matrix(scores.argmax(axis=1), labels, scores.shape[1])
    present = cm.sum(axis=1) > 0
    per_class = np.diag(cm)[present] / cm.sum(axis=1)[present]
    return {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "mean_class": float(per_class.mean()),
    }


ALPHA_CRITERION = "validation log-likelihood"  # mean log p(true class) of the fused validation scores


def fused_log_likelihood(alpha: float, spatial: np.ndarray, temporal: np.ndarray, labels: np.ndarray) -> float:
    """Mean log-probability of the true class under ``alpha * spatial + (1 - alpha) * temporal`` (natural log)."""
    rows = np.arange(len(labels))
    s, t = spatial[rows, labels].astype(np.float64), temporal[rows, labels].astype(np.float64)
    return float(np.log(np.clip(alpha * s + (1 - alpha) * t, 1e-12, None)).mean())


def search_alpha(spatial: np.ndarray, temporal: np.ndarray, labels: np.ndarray, *, tol: float = 1e-9) -> float:
    """The spatial weight in [0, 1] that maximizes :func:`fused_log_likelihood` on these (validation) scores.

    Top-1 is a step function of alpha: on a few validation videos nearly every weight ties, and a tie-break
    (towards 0.5, say) then gives a chance-level stream half the vote. The log-likelihood is smooth and
    concave in alpha (the log of a function linear in alpha), so its maximum on [0, 1] is found exactly by
    bisection on the derivative ``mean((s - t) / (alpha s + (1 - alpha) t))`` (s, t: each stream's score
    of the true class), which decreases with alpha. A stream that never gives the true class more probability
    than the other gets weight 0; a chance-level one gets a small weight only where the other stream is
    confidently wrong on some validation videos (the mixture then hedges, which the likelihood rewards). Both
    endpoints are candidates, so the fused criterion is never below either stream's own. Where the two streams
    give every video the same true-class score, the derivative is 0 everywhere and the weight is 0.5.
    """
    if len(labels) == 0:
        raise ValueError("search_alpha needs at least one validation video")
    rows = np.arange(len(labels))
    s = np.clip(spatial[rows, labels].astype(np.float64), 1e-12, None)
    t = np.clip(temporal[rows, labels].astype(np.float64), 1e-12, None)

    def slope(a: float) -> float:
        return float(((s - t) / (a * s + (1 - a) * t)).mean())

    if np.allclose(s, t, rtol=0, atol=1e-12):
        return 0.5
    if slope(0.0) <= 0:
        return 0.0
    if slope(1.0) >= 0:
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def _log_probs(p: np.ndarray) -> torch.Tensor:
    # LearnedFusion takes logits and applies softmax; log p is a logit whose softmax is p itself.
    return torch.from_numpy(np.log(np.clip(p, 1e-12, None))).float()


def fit_learned_fusion(
    spatial: np.ndarray, temporal: np.ndarray, labels: np.ndarray, *, hidden: int = 256, steps: int = 300,
    lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0,
) -> LearnedFusion:
    """Train a LearnedFusion MLP on (validation) per-video scores, full batch with Adam."""
    torch.manual_seed(seed)
    fusion = LearnedFusion(num_classes=spatial.shape[1], hidden=hidden)
    s, t, y = _log_probs(spatial), _log_probs(temporal), torch.from_numpy(labels).long()
    opt = torch.optim.Adam(fusion.parameters(), lr=lr, weight_decay=weight_decay)
    fusion.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few thousand numbers per step: a thread pool only adds overhead
    try:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(fusion(s, t), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return fusion.eval()


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, *, title: str) -> Path:
    """Row-normalised confusion matrix as a PNG (matplotlib's Agg canvas, no display needed), written whole or not at
    all: a failure leaves an earlier picture of that name as it was."""
    k = len(classes)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.18 * k, 24)
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    ax.set(title=title, xlabel="predicted", ylabel="true")
    fontsize = max(4, min(9, 600 // max(k, 1)))
    ax.set_xticks(range(k), classes, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(k), classes, fontsize=fontsize)
    with replacing(path) as tmp:  # whole or absent: a killed or failed evaluate leaves no picture cut short
        fig.savefig(tmp, dpi=120, format="png")
    return path


def load_stream(path: str | Path, *, classes: list[str], prepare: BatchPreparer,
                test: list | None = None) -> tuple[torch.nn.Module, dict, Path]:
    """The network of a RUN_DIR (its best.pt, else checkpoint.pt) or checkpoint file, checked against
    ``prepare.stream`` (spatial, temporal or joint) and ``classes``, on ``prepare``'s device and memory format,
    and against ``test`` (records): none of them may be a video it was trained or chosen on."""
    file = ckpt_io.resolve_checkpoint(path)
    ckpt = ckpt_io.load_checkpoint(file)
    ckpt_io.check_compatible(ckpt, path=file, stream=prepare.stream, classes=classes)
    _check_held_out(ckpt, file, test or [])
    net = build_model(from_dict(ModelConfig, ckpt["config"]["model"]), pretrained=None)
    ckpt_io.load_weights(net, ckpt, file)
    net.to(prepare.device, memory_format=torch.channels_last if prepare.channels_last else torch.preserve_format)
    return net.eval(), ckpt["config"], file


def _check_held_out(ckpt: dict, file: Path, test: list) -> None:
    """A test video that the checkpoint was trained on, or whose validation chose it, says nothing about held-out
    videos: refused. Checkpoints that predate the record (no ``videos``) are not checked."""
    seen = ckpt.get("videos") or {}
    ids = {r.video_id for r in test}
    for role, what in (("train", "trained on"), ("val", "chosen on (its validation list)")):
        shared = ids.intersection(seen.get(role, ()))
        if shared:
            raise DataError(f"--test-list shares {len(shared)} videos with those {file} was {what} (e.g. {min(shared)}); "
                            "test on videos the model has not seen")


def video_scores(
    net: torch.nn.Module, config: dict, records: list, prepare: BatchPreparer, *, num_classes: int, samples: int,
    crops: int, batch_size: int, workers: int, show_progress: bool, role: str = "test",
    scored: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """(num_videos, K) scores averaged over each video's samples x crops: ``{stream: softmax scores}`` for one
    stream, ``{"spatial", "temporal", "fused"}`` (its heads and its fusion) for a joint model. One line on stderr
    each (``role``: whose videos they are) for flow stacks longer than some videos (padded) and for ``samples``
    above the most distinct frames / stacks of ``records`` (capped there; ``scored[stream]`` gets the number scored)."""
    stream = config["model"]["stream"]
    kw = dict(samples=samples, crops=crops, flow_length=config["model"]["flow_length"],
              crop_size=config["data"]["crop_size"])
    ds = JointEvalDataset(records, **kw) if stream == "joint" else VideoEvalDataset(records, stream=stream, **kw)
    short = short_for_stacks(records, ds.flow_length, role) if stream != "spatial" else None
    if short:
        print(short, file=sys.stderr, flush=True)
    capped = ds.capped("--samples", f"{role} ({stream} stream)")
    if capped:
        print(capped, file=sys.stderr, flush=True)
    if scored is not None:
        scored[stream] = ds.samples
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=prepare.device.type == "cuda")
    res = evaluate(net, loader, prepare, num_classes=num_classes, show_progress=show_progress)
    if stream != "joint":
        return {stream: res["scores"]}
    return {"spatial": res["scores_spatial"], "temporal": res["scores_temporal"], "fused": res["scores"]}


def run_evaluate(
    *, shards: str, test_list: str, spatial: str | None, temporal: str | None, fusion: str | None = "average",
    spatial_weight: float | str | None = None, val_list: str | None = None, samples: int = 25, crops: int = 1,
    device: torch.device, out: str | Path, batch_size: int = 1, workers: int = 2, show_progress: bool = True,
    joint: str | None = None, list_format: str | None = None, amp: str = "auto",
) -> dict[str, Any]:
    """Score the test list (and the validation list when fusion needs it), then :func:`report`.

    ``joint``: a joint RUN_DIR or checkpoint instead of ``spatial``/``temporal``; its own fusion is reported
    (``fusion``, ``spatial_weight`` and ``val_list`` are not used). ``list_format``: the kind of both lists
    (``flowprep.extract.labels.LIST_KINDS``); None detects it from each file. ``amp``: the forward pass's mixed
    precision, as ``trainer fit --amp`` (``trainer.distributed.amp_dtype_for``: on the CPU auto is float32).
    """
    if joint is not None and (spatial is not None or temporal is not None):
        raise ValueError("joint is a whole two-stream model: give it without spatial or temporal")
    out = Path(out)
    check_writable(out)  # before hours of scoring, not after
    index = index_shards(shards)
    if (spatial is not None or joint is not None) and not index.has_rgb:
        raise DataError(f"the spatial stream needs RGB frames, but the shards in {shards} were made with --no-rgb")
    test = read_video_list(test_list, index, role="test", kind=list_format)
    need_val = spatial is not None and temporal is not None and (fusion == "learned" or spatial_weight == "auto")
    val = read_video_list(val_list, index, role="val", kind=list_format) if need_val and val_list else []
    shared = {r.video_id for r in test} & {r.video_id for r in val}
    if shared:
        raise DataError(
            f"--val-list {val_list} shares {len(shared)} videos with --test-list {test_list} (e.g. {min(shared)}); "
            "fusion weights must be chosen on held-out validation videos"
        )
    bundle: dict[str, Any] = {
        "classes": np.array(index.classes), "video_ids": np.array([r.video_id for r in test]),
        "labels": np.array([r.label for r in test], dtype=np.int64),
        "val_video_ids": np.array([r.video_id for r in val]), "val_labels": np.array([r.label for r in val], dtype=np.int64),
    }
    checkpoints, own_fusion, scored = {}, {}, {}
    amp_dtype = amp_dtype_for(amp, device)
    for stream, path in (("spatial", spatial), ("temporal", temporal), ("joint", joint)):
        if path is None:
            continue
        prepare = BatchPreparer.for_shards(index, device=device, stream=stream, amp_dtype=amp_dtype,
                                           channels_last=device.type == "cuda")
        net, config, file = load_stream(path, classes=list(index.classes), prepare=prepare, test=test)
        checkpoints[stream] = str(file)
        kw = dict(num_classes=len(index.classes), samples=samples, crops=crops, batch_size=batch_size,
                  workers=workers, show_progress=show_progress)
        bundle.update(video_scores(net, config, test, prepare, scored=scored, **kw))  # joint: its heads and "fused"
        if val:
            bundle.update({f"val_{k}": v for k, v in video_scores(net, config, val, prepare, role="validation",
                                                                  **kw).items()})
        if stream == "joint":
            own_fusion = {"fusion": config["model"]["fusion"], "alpha": config["model"]["spatial_weight"]}
    with replacing(scores_path(out)) as tmp, open(tmp, "wb") as f:  # whole or absent, as the results
        np.savez_compressed(f, **bundle)
    results = report(bundle, fusion=None if joint else fusion, spatial_weight=spatial_weight, out=out)
    # samples_scored: per stream, the samples of the test videos after the cap (VideoEvalDataset), <= samples;
    # precision: the forward pass's (--amp as resolved on this device), which moves scores in their last digits
    results.update(samples=samples, samples_scored=scored, crops=crops, checkpoints=checkpoints, **own_fusion,
                   precision=str(amp_dtype or torch.float32).removeprefix("torch."))
    _write_json(out, results)
    return results


def scores_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.scores.npz")


RESULTS_LOCK = ".lock"  # <out>.lock, e.g. results.json.lock


def results_lock(out: Path) -> OutputLock:
    """One ``evaluate`` or ``fuse`` per results file: ``<out>.lock`` beside it (flowprep's output lock, as fit's
    RUN_DIR/run.lock), held while the scores, the confusion PNGs and the results are written, so that two runs
    into one --out never leave the results of one beside the scores and PNGs of the other: the second is refused
    at once (BusyError, naming the holder); the lock of a run that died is taken over."""
    return OutputLock(out.with_name(out.name + RESULTS_LOCK))


def check_writable(out: Path) -> None:
    """Make the results' folder and write into it as the run's first write will (``<stem>.scores.npz.tmp``, removed
    at once), so that a folder this user may not write (PermissionError) or one on a read-only file system, which
    ``trainer evaluate`` reports as ``cannot write into DIR``, exit 2, as ``fit`` does for RUN_DIR, stops the run
    before any network is loaded."""
    out.parent.mkdir(parents=True, exist_ok=True)
    probe = scores_path(out).with_name(scores_path(out).name + ".tmp")  # replacing()'s temporary of the scores
    probe.touch()
    probe.unlink()


def report(
    bundle: dict[str, Any], *, fusion: str | None, spatial_weight: float | str | None, out: Path,
    scores_file: Path | None = None,
) -> dict[str, Any]:
    """Metrics per stream and fused from saved scores; writes results JSON and one confusion PNG per entry.

    ``fusion=None``: "fused" is the bundle's own (a joint model's fusion), not recomputed. ``scores_file``: the
    .scores.npz the bundle was read from, which results.json names (default: the one evaluate writes beside it).
    """
    if fusion is None and "fused" not in bundle:
        raise ValueError("fusion=None reports the fused scores of a joint model, but the bundle holds none")
    if fusion is not None and fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    labels, classes = bundle["labels"], [str(c) for c in bundle["classes"]]
    scores = {name: bundle[name] for name in ("spatial", "temporal") if name in bundle}
    results: dict[str, Any] = {"num_videos": int(len(labels)), "fusion": None, "alpha": None}
    if fusion is None:
        scores["fused"] = bundle["fused"]
    elif len(scores) == 2:
        s, t = scores["spatial"], scores["temporal"]
        results["fusion"] = fusion
        if fusion == "learned":
            mlp = fit_learned_fusion(bundle["val_spatial"], bundle["val_temporal"], bundle["val_labels"])
            with torch.no_grad():
                scores["fused"] = mlp(_log_probs(s), _log_probs(t)).softmax(dim=1).numpy()
            results["fusion_fitted_on"] = int(len(bundle["val_labels"]))
        else:
            alpha = 0.5 if fusion == "average" else spatial_weight
            if alpha == "auto":
                val = bundle["val_spatial"], bundle["val_temporal"], bundle["val_labels"]
                alpha = search_alpha(*val)
                results["fusion_fitted_on"] = int(len(bundle["val_labels"]))
                # The criterion alpha maximizes, and its value there and at each stream alone (alpha 0 = temporal).
                results["alpha_criterion"] = {
                    "name": ALPHA_CRITERION, "value": fused_log_likelihood(alpha, *val),
                    "temporal_only": fused_log_likelihood(0.0, *val), "spatial_only": fused_log_likelihood(1.0, *val),
                }
            results["alpha"] = float(alpha)
            scores["fused"] = results["alpha"] * s + (1 - results["alpha"]) * t
    confusion = {}
    for name, sc in scores.items():
        results[name] = score_metrics(sc, labels)
        cm = confusion_matrix(sc.argmax(axis=1), labels, len(classes))
        title = f"{name}: top-1 {100 * results[name]['top1']:.1f}% on {len(labels)} videos"
        confusion[name] = str(plot_confusion(cm, classes, out.with_name(f"{out.stem}.confusion-{name}.png"), title=title))
    for name in ("spatial", "temporal", "fused"):  # an earlier evaluation's picture of a stream not scored now
        if name not in confusion:
            out.with_name(f"{out.stem}.confusion-{name}.png").unlink(missing_ok=True)
    results.update(confusion=confusion, scores=str(scores_path(out) if scores_file is None else scores_file))
    _write_json(out, results)
    return results


def load_scores(path: str | Path) -> dict[str, Any]:
    """The arrays of a .scores.npz that ``trainer evaluate`` wrote. A file that is not one (cut short, damaged,
    another file, arrays that do not fit together) is a ``DataError`` naming it: bad input, not a crash to retry."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would say 'pickled data' of a JSON file, 'No data left' of an empty one
            raise DataError(f"{path} is not a scores file of trainer evaluate: not a .npz (zip) file")
    try:
        with np.load(path, allow_pickle=False) as z:
            bundle = {k: z[k] for k in z.files}
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # OSError (I/O, permission) is not the file's
        raise DataError(f"{path} is not a scores file of trainer evaluate (cut short or damaged?): "
                        f"{' '.join(str(exc).split())[:200]}") from None
    problem = _scores_problem(bundle)
    if problem:
        raise DataError(f"{path} is not a scores file of trainer evaluate: {problem}")
    return bundle


def _scores_problem(bundle: dict[str, Any]) -> str | None:
    """What in a loaded bundle is not what ``run_evaluate`` saves (None: nothing)."""
    missing = [k for k in ("classes", "labels") if k not in bundle]
    if missing or not any(k in bundle for k in ("spatial", "temporal", "fused")):
        return f"no {' or '.join(missing or ['spatial, temporal or fused scores'])}"
    if "val_labels" not in bundle and any(f"val_{name}" in bundle for name in ("spatial", "temporal", "fused")):
        return "validation scores without val_labels"
    k = len(bundle["classes"])
    for prefix in ("", "val_"):
        labels = bundle.get(f"{prefix}labels")
        if labels is None:
            continue
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or (labels.size and not 0 <= labels.min() <= labels.max() < k):
            return f"{prefix}labels are not {k} classes' numbers"
        for name in ("spatial", "temporal", "fused"):
            sc = bundle.get(prefix + name)
            if sc is not None and sc.shape != (len(labels), k):
                return f"{prefix}{name} is {sc.shape}, expected {(len(labels), k)} ({prefix}labels x classes)"
    return None


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Whole or absent: a killed or failed evaluate leaves no results cut short, which a rerun would take as done."""
    write_json_atomic(path, obj, indent=2)
