"""The joint stream end to end: datasets (centre frame, shared crop and flip), loss, fit + resume, stream
initialisation from separate runs, every fusion, ``trainer evaluate --joint`` and the CLI's usage errors.

Real tiny shards (conftest.py), resnet18 at 16 px crops on the CPU, except the overfitting check, which uses
tiny convolutional streams so that it needs many steps but few seconds.
"""

from __future__ import annotations

import dataclasses

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner, Result
from torch import nn
from torch.utils.data import DataLoader

from trainer import checkpoint as ck
from trainer.cli import main
from trainer.config import DataConfig, ModelConfig, OptimConfig, RunConfig, from_dict, to_dict
from trainer.data.datasets import FlowStackDataset
from trainer.data.lists import read_video_list
from trainer.data.read import read_frame
from trainer.data.shards import index_shards
from trainer.engine import evaluate, train_one_epoch
from trainer.models.losses import JointLoss
from trainer.evaluate import load_scores, run_evaluate, score_metrics
from trainer.fit import METRICS, fit, lr_lambda
from trainer.data.joint_datasets import JointDataset, JointEvalDataset
from trainer.models.fusion import TwoStream
from trainer.models.streams import SpatialStream, TemporalStream
from trainer.models.build import build_fusion, build_model, init_streams
from trainer.data.transforms import BatchPreparer, FLOW_NORM_PX, hflip_flow_uint8, prepare_batch, prepare_train_batch

CPU = torch.device("cpu")
L = 2  # flow fields per stack in every test here
TIMING = {"samples_per_s", "data_wait_frac"}  # wall-clock fields differ between runs


def _model(fusion: str = "learned", **kw) -> ModelConfig:
    alpha = 0.3 if fusion == "weighted" else None
    return ModelConfig(stream="joint", num_classes=3, arch="resnet18", flow_length=L, dropout=0.5, fusion=fusion,
                       spatial_weight=alpha, temporal_dropout=0.7, **kw)


def _configs(shards, out: Path, *, epochs: int = 2, resume: bool = False, workers: int = 0, lr: float = 0.01,
             model: ModelConfig | None = None) -> dict:
    data = DataConfig(shards=str(shards.root), train_list=str(shards.train_list), val_list=str(shards.val_list),
                      crop_size=16, batch_size=3, workers=workers, val_samples=2)
    optim = OptimConfig(epochs=epochs, lr=lr, warmup_epochs=0.5)
    run = RunConfig(out=str(out), device="cpu", seed=0, resume=resume)
    return {"model": model or _model(), "data": data, "optim": optim, "run": run, "show_progress": False}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]


def _save_run(path: Path, cfg: ModelConfig, classes: list[str], *, seed: int) -> Path:
    """A checkpoint as fit writes it, with untrained weights drawn from ``seed``."""
    torch.manual_seed(seed)
    state = {"model": build_model(cfg, pretrained=None).state_dict(), "epoch": 1, "classes": classes,
             "config": {"model": to_dict(cfg), "data": to_dict(DataConfig(shards="-", train_list="-", crop_size=16))}}
    return ck.save_checkpoint(state, path / ck.BEST)


# ---------------------------------------------------------------- datasets


def _frame_index(rgb: np.ndarray, label: int) -> int:
    """The frame index the fixture wrote into channel (c+2)%3 (10 + 15 t), read back through JPEG."""
    t = (rgb[(label + 2) % 3].astype(np.float64).mean() - 10) / 15
    assert abs(t - round(t)) < 0.3, t
    return round(t)


def test_cpu_items_are_the_stack_and_its_centre_frame_with_one_box_and_flip(tiny_shards) -> None:
    """Crop side = short side (no resize): every item must be an exact crop of the stored codes and frame."""
    recs = read_video_list(tiny_shards.all_list, index_shards(tiny_shards.root))
    ds = JointDataset(recs, flow_length=L, crop_size=32, scales=(1.0,))
    torch.manual_seed(0)
    seen = set()
    for i in (1, 4, 9, 11):
        rec, q = recs[i], tiny_shards.flow_q[recs[i].video_id]
        for _ in range(8):
            (rgb, flow), scale, label = ds[i]
            assert rgb.shape == (3, 32, 32) and flow.shape == (2 * L, 32, 32) and label == rec.label
            assert scale.tolist() == [1.0, 1.0]
            t = _frame_index(rgb.numpy(), rec.label)
            # The flow alone may not pin the box down (Drift is uniform, Expand mirror-symmetric), the RGB
            # gradient does: exactly one (start, box, flip) must explain both halves, with t the stack's centre.
            hits = [(s, x0, flip) for s in range(len(q) - L + 1) for x0 in (0, 4, 8) for flip in (False, True)
                    if np.array_equal(flow.numpy(), _view(q[s:s + L].reshape(2 * L, 32, 40), x0, flip, flow=True))
                    and np.array_equal(rgb.numpy(), _view(read_frame(rec, s + L // 2), x0, flip, flow=False))]
            assert len(hits) == 1, hits
            start, x0, flip = hits[0]
            assert t == start + L // 2
            grad = rgb[(rec.label + 1) % 3].float().mean(0)  # the fixture's left-right gradient, 4 x
            assert (grad[-1] < grad[0]) == flip
            seen.add((rec.label, x0, flip))
    assert {(x0, flip) for _, x0, flip in seen} == {(x0, f) for x0 in (0, 4, 8) for f in (False, True)}


def _view(chw: np.ndarray, x0: int, flip: bool, *, flow: bool) -> np.ndarray:
    crop = np.ascontiguousarray(chw[:, :, x0:x0 + 32])
    return (hflip_flow_uint8(crop) if flow else crop[:, :, ::-1]) if flip else crop


def test_device_items_are_the_same_window_of_stack_and_centre_frame(tiny_shards) -> None:
    """Same seed, same draws: the flow half is FlowStackDataset's item, the RGB half the same window of the
    centre frame, and one set of params crops both as the CPU path does."""
    idx = index_shards(tiny_shards.root)
    recs = read_video_list(tiny_shards.all_list, idx)
    S, kw = 24, dict(flow_length=L, crop_size=24)
    cpu, dev = JointDataset(recs, **kw), JointDataset(recs, frame_size=(32, 40), **kw)
    flows = FlowStackDataset(recs, frame_size=(32, 40), **kw)
    flips = set()
    for i in range(12):
        rec, q = recs[i], tiny_shards.flow_q[recs[i].video_id]
        torch.manual_seed(100 + i)
        (rgb, flow), scale, label = cpu[i]
        torch.manual_seed(100 + i)
        (rgb_w, flow_w), params, label_d = dev[i]
        torch.manual_seed(100 + i)
        flow_only, params_f, _ = flows[i]
        assert label == label_d and rgb_w.shape == (3, 32, 32) and flow_w.shape == (2 * L, 32, 32)
        assert torch.equal(flow_w, flow_only) and torch.equal(params, params_f)
        windows = [(s, c) for s in range(len(q) - L + 1) for c in range(9)
                   if np.array_equal(flow_w.numpy(), q[s:s + L].reshape(2 * L, 32, 40)[:, :, c:c + 32])]
        assert any(np.array_equal(rgb_w.numpy(), read_frame(rec, s + L // 2)[:, :, c:c + 32]) for s, c in windows)
        y0, x0, h, w, flip, size = params.tolist()
        flips.add(flip)
        # One code of cv2's uint8 rounding: 1/255 over the smallest ImageNet std, or one flow step, resized.
        one_code = {"spatial": 1 / (255 * 0.224), "temporal": idx.scale_factor * max(S / w, S / h) / FLOW_NORM_PX}
        for stream, x_cpu, x_win in (("spatial", rgb, rgb_w), ("temporal", flow, flow_w)):
            sf = dict(stream=stream, scale_factor=idx.scale_factor, add_offset=idx.add_offset)
            got = prepare_train_batch(x_win[None], params[None], **sf)[0]
            want = prepare_batch(x_cpu[None], scale[None], **sf)[0]
            np.testing.assert_allclose(got[:, 1:-1, 1:-1].numpy(), want[:, 1:-1, 1:-1].numpy(), atol=one_code[stream])
    assert flips == {0.0, 1.0}


def test_eval_items_pair_each_stack_with_its_centre_frame(tiny_shards) -> None:
    from trainer.data.datasets import VideoEvalDataset

    recs = read_video_list(tiny_shards.test_list, index_shards(tiny_shards.root))
    ds = JointEvalDataset(recs, samples=4, crops=10, flow_length=3, crop_size=24)
    temporal = VideoEvalDataset(recs, stream="temporal", samples=4, crops=10, flow_length=3, crop_size=24)
    np.testing.assert_array_equal(ds.positions(recs[2]), [0, 3, 5, 8])  # stack starts over [0, 11 - 3]
    (rgb, flow), scale, label, index = ds[2]
    flow_t, scale_t, _, _ = temporal[2]
    assert rgb.shape == (40, 3, 24, 24) and (label, index) == (recs[2].label, 2)
    assert torch.equal(flow, flow_t) and torch.equal(scale, scale_t)
    centre = [_frame_index(rgb[k].numpy(), label) for k in range(0, 40, 10)]
    assert centre == [1, 4, 6, 9]  # start + L // 2
    np.testing.assert_array_equal(rgb[5:10].numpy(), rgb[0:5].numpy()[..., ::-1])  # the flipped crops


# ---------------------------------------------------------------- loss and training


def test_joint_loss_adds_the_weighted_stream_terms_and_stays_finite() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    fused = torch.randn(4, 3)
    out = {"spatial": s, "temporal": t, "fused": fused}
    ce = F.cross_entropy
    assert JointLoss(fused_output="logits", stream_weight=0.0)(out, y) == pytest.approx(ce(fused, y).item())
    want = ce(fused, y) + 0.5 * (ce(s, y) + ce(t, y))
    assert JointLoss(fused_output="logits", stream_weight=0.5)(out, y) == pytest.approx(want.item())
    p = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.8, 0.0], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]])
    nll = JointLoss(fused_output="probabilities", stream_weight=0.0)({**out, "fused": p}, y)
    assert nll.item() == pytest.approx((-np.log(1e-8) - np.log(0.8) - np.log(0.8)) / 4, rel=1e-5)


def _tiny_backbone(in_channels: int, width: int = 24) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, width, 7, padding=3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_a_tiny_two_stream_overfits_the_tiny_shards(tiny_shards) -> None:
    idx = index_shards(tiny_shards.root)
    records = read_video_list(tiny_shards.all_list, idx)
    torch.manual_seed(0)
    spatial = SpatialStream(_tiny_backbone(3), feature_dim=24, num_classes=3, dropout=0.0)
    temporal = TemporalStream(_tiny_backbone(2 * L), feature_dim=24, num_classes=3, dropout=0.0, flow_length=L)
    model = TwoStream(spatial, temporal, build_fusion("learned", num_classes=3, spatial_dim=24, temporal_dim=24))
    loader = DataLoader(JointDataset(records * 4, flow_length=L, crop_size=24, frame_size=(32, 40)), batch_size=8,
                        shuffle=True, drop_last=True)
    optim = OptimConfig(epochs=10, lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optim, len(loader)))
    criterion = JointLoss(fused_output="logits", stream_weight=0.5)
    joint = BatchPreparer.for_shards(idx, device=CPU, stream="joint")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    history = [train_one_epoch(model, criterion, opt, sched, scaler, loader, joint, e, show_progress=False)
               for e in range(optim.epochs)]
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.5 * losses[0] and history[-1]["acc"] >= 0.9, (losses, history[-1]["acc"])
    video = JointEvalDataset(records, samples=3, flow_length=L, crop_size=24)
    res = evaluate(model, DataLoader(video, batch_size=4), joint, num_classes=3)
    assert res["video_acc"] >= 2 / 3 and {"video_acc_spatial", "video_acc_temporal", "scores_spatial"} <= res.keys()


@pytest.mark.parametrize("fusion", ["average", "weighted", "learned", "feature"])
def test_every_fusion_trains_a_step(tiny_shards, fusion) -> None:
    idx = index_shards(tiny_shards.root)
    torch.manual_seed(0)
    net = build_model(_model(fusion), pretrained=None)
    before = {k: v.clone() for k, v in net.named_parameters()}
    ds = JointDataset(read_video_list(tiny_shards.train_list, idx), flow_length=L, crop_size=16, frame_size=(32, 40))
    loader = DataLoader(ds, batch_size=3, drop_last=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    stats = train_one_epoch(net, JointLoss(fused_output=net.fusion.output, stream_weight=0.5), opt, sched,
                            torch.amp.GradScaler("cpu", enabled=False), loader,
                            BatchPreparer.for_shards(idx, device=CPU, stream="joint"), 1, show_progress=False)
    assert np.isfinite(stats["loss"]) and stats["samples"] == 6
    changed = {k.split(".")[0] for k, v in net.named_parameters() if not torch.equal(v, before[k])}
    assert changed == ({"spatial", "temporal"} | ({"fusion"} if fusion in ("learned", "feature") else set()))


# ---------------------------------------------------------------- fit, resume, initialisation


@pytest.fixture(scope="module")
def straight_and_resumed(tiny_shards, tmp_path_factory) -> tuple[Path, Path]:
    """The same 2-epoch joint run twice: uninterrupted, and stopped after epoch 1 then resumed, with
    DataLoader worker processes (2, then 1) in the second."""
    a, b = tmp_path_factory.mktemp("joint-straight"), tmp_path_factory.mktemp("joint-resumed")
    fit(**_configs(tiny_shards, a))
    assert fit(**_configs(tiny_shards, b, workers=2), stop_after=1)["epoch"] == 1
    fit(**_configs(tiny_shards, b, resume=True, workers=1))
    return a, b


def test_resuming_with_another_fusion_weight_is_refused(tiny_shards, tmp_path) -> None:
    """alpha is a constant of the weighted fusion, not a weight: a resume must not change it silently."""
    weighted = _model(fusion="weighted")  # alpha 0.3
    fit(**_configs(tiny_shards, tmp_path, epochs=2, model=weighted), stop_after=1)
    with pytest.raises(ck.CheckpointError, match=r"holds a joint resnet18 network with weighted fusion \(spatial weight "
                                                 r"0.3\) .* ask for .* weighted fusion \(spatial weight 0.6\)"):
        fit(**_configs(tiny_shards, tmp_path, epochs=2, resume=True, model=dataclasses.replace(weighted, spatial_weight=0.6)))
    assert fit(**_configs(tiny_shards, tmp_path, epochs=2, resume=True, model=weighted))["epoch"] == 2


def test_joint_resume_gives_the_state_of_an_uninterrupted_run(straight_and_resumed, tiny_shards) -> None:
    a, b = straight_and_resumed
    ca, cb = ck.load_checkpoint(a / ck.LAST), ck.load_checkpoint(b / ck.LAST)
    assert ca["epoch"] == cb["epoch"] == 2
    assert ca["model"].keys() == cb["model"].keys() and any(k.startswith("fusion.mlp") for k in ca["model"])
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    ma, mb = _metrics(a), _metrics(b)
    for x, y in zip(ma, mb):
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}
    for m in ma:
        assert {"loss", "acc", "val_acc", "val_acc_spatial", "val_acc_temporal", "val_clip_acc"} <= m.keys()
        assert np.isfinite(m["loss"])
    model = from_dict(ModelConfig, ca["config"]["model"])
    assert model == _model() and ca["config"]["optim"]["stream_loss_weight"] == 0.5
    best = ck.load_checkpoint(a / ck.BEST)
    accs = [m["val_acc"] for m in ma]  # the fused output's validation accuracy picks best.pt
    # the best validation accuracy; among epochs that tie on it, the lowest validation loss (then the first)
    keys = [(m["val_acc"], -m["val_loss"]) for m in ma]
    assert best["epoch"] == 1 + keys.index(max(keys)) and best["best_acc"] == max(accs)
    assert best["best_loss"] == ma[best["epoch"] - 1]["val_loss"]
    net = build_model(model, pretrained=None)  # the checkpoint alone rebuilds the TwoStream
    net.load_state_dict(ca["model"])


def test_old_single_stream_configs_still_load() -> None:
    old = {"stream": "temporal", "num_classes": 3, "arch": "resnet18", "flow_length": 2, "dropout": 0.5,
           "pretrained": None}
    assert from_dict(ModelConfig, old).fusion is None
    with pytest.raises(ValueError, match="fusion apply to the joint stream only"):
        ModelConfig(stream="temporal", num_classes=3, fusion="average")
    with pytest.raises(ValueError, match="spatial_weight is required by the weighted fusion"):
        ModelConfig(stream="joint", num_classes=3, fusion="weighted")


@pytest.fixture(scope="module")
def stream_runs(tiny_shards, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream-runs")
    single = dict(num_classes=3, arch="resnet18", flow_length=L, dropout=0.5)
    return {s: _save_run(root / s, ModelConfig(stream=s, **single), tiny_shards.classes, seed=10 + i).parent
            for i, s in enumerate(("spatial", "temporal"))}


def test_stream_inits_copy_the_separately_trained_weights(tiny_shards, stream_runs, tmp_path) -> None:
    cfg = _model(spatial_init=str(stream_runs["spatial"]), temporal_init=str(stream_runs["temporal"]))
    torch.manual_seed(0)
    net = build_model(cfg, pretrained=None)
    loaded = init_streams(net, cfg, classes=tiny_shards.classes)
    assert loaded == {s: str(stream_runs[s] / ck.BEST) for s in ("spatial", "temporal")}
    for s in ("spatial", "temporal"):
        saved = ck.load_checkpoint(stream_runs[s] / ck.BEST)["model"]
        own = getattr(net, s).state_dict()
        assert own.keys() == saved.keys() and all(torch.equal(own[k], saved[k]) for k in own)

    # Through fit: at a negligible learning rate the first epoch's weights are still the inits' (not a fresh draw).
    fit(**_configs(tiny_shards, tmp_path / "run", epochs=1, lr=1e-9, model=cfg))
    trained = ck.load_checkpoint(tmp_path / "run" / ck.LAST)["model"]
    for s in ("spatial", "temporal"):
        saved = ck.load_checkpoint(stream_runs[s] / ck.BEST)["model"]
        for k in ("backbone.conv1.weight", "fc.weight"):
            torch.testing.assert_close(trained[f"{s}.{k}"], saved[k], atol=1e-6, rtol=0)


def test_mismatched_stream_inits_fail_in_one_line(tiny_shards, stream_runs, tmp_path) -> None:
    def run(name: str, classes: list[str] = tiny_shards.classes, **kw) -> Path:
        cfg = ModelConfig(**{"stream": "temporal", "num_classes": 3, "arch": "resnet18", "flow_length": L, **kw})
        return _save_run(tmp_path / name, cfg, classes, seed=0)

    other_classes = run("classes", ["Drift", "Expand", "Spin"], stream="spatial")
    other_length, other_arch = run("length", flow_length=3), run("arch", arch="resnet34")
    cases = [
        ({"spatial_init": str(stream_runs["temporal"])}, "is a temporal stream checkpoint, expected spatial"),
        ({"temporal_init": str(stream_runs["spatial"])}, "is a spatial stream checkpoint, expected temporal"),
        ({"spatial_init": str(other_classes)}, "index 2: 'Spin' vs 'Rotate'"),
        ({"temporal_init": str(other_length)}, "trained with --flow-length 3, expected 2"),
        ({"temporal_init": str(other_arch)}, "trained with --arch resnet34, expected resnet18"),
    ]
    for k, (init, message) in enumerate(cases):
        with pytest.raises(ck.CheckpointError, match=message) as e:
            fit(**_configs(tiny_shards, tmp_path / f"run{k}", epochs=1, model=_model(**init)))
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- evaluate and the command line


def _invoke(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    for fragment in fragments:
        assert fragment in line, line


def _fused_video_scores(net: TwoStream, ds: JointEvalDataset, idx) -> dict[str, np.ndarray]:
    """Recomputed by hand: each sample through the model, probabilities averaged over the video's samples."""
    out: dict[str, list] = {"spatial": [], "temporal": [], "fused": []}
    sf = dict(scale_factor=idx.scale_factor, add_offset=idx.add_offset)
    with torch.no_grad():
        for i in range(len(ds)):
            (rgb, flow), scale, _, _ = ds[i]
            res = net.eval()(prepare_batch(rgb, scale, stream="spatial", **sf),
                             prepare_batch(flow, scale, stream="temporal", **sf))
            for name in out:
                p = res[name] if name == "fused" and net.fusion.output == "probabilities" else res[name].softmax(1)
                out[name].append(p.mean(0).double().numpy())
    return {k: np.stack(v) for k, v in out.items()}


def test_evaluate_joint_reports_its_heads_and_its_own_fusion(tiny_shards, straight_and_resumed, tmp_path) -> None:
    run = straight_and_resumed[0]
    out = tmp_path / "eval" / "results.json"
    result = _invoke("evaluate", "--shards", tiny_shards.root, "--test-list", tiny_shards.test_list, "--joint", run,
                     "--samples", "2", "--crops", "10", "--workers", "0", "--device", "cpu", "--no-progress",
                     "--out", out)
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["fusion"] == "learned" and res["alpha"] is None and res["checkpoints"] == {"joint": str(run / ck.BEST)}
    bundle = load_scores(out.with_name("results.scores.npz"))
    idx = index_shards(tiny_shards.root)
    ckpt = ck.load_checkpoint(run / ck.BEST)
    net = build_model(from_dict(ModelConfig, ckpt["config"]["model"]), pretrained=None)
    net.load_state_dict(ckpt["model"])
    ds = JointEvalDataset(read_video_list(tiny_shards.test_list, idx), samples=2, crops=10, flow_length=L, crop_size=16)
    want = _fused_video_scores(net, ds, idx)
    for name in ("spatial", "temporal", "fused"):
        np.testing.assert_allclose(bundle[name], want[name], atol=1e-5)
        assert res[name] == score_metrics(bundle[name], bundle["labels"])
        assert set(res[name]) == {"top1", "top5", "mean_class"} and Path(res["confusion"][name]).is_file()
        assert f"{name:>8}: top1" in result.stdout


def test_evaluate_joint_weighted_fusion_is_the_weighted_mean(tiny_shards, tmp_path) -> None:
    run = _save_run(tmp_path / "weighted", _model("weighted"), tiny_shards.classes, seed=3).parent
    res = run_evaluate(shards=str(tiny_shards.root), test_list=str(tiny_shards.test_list), spatial=None, temporal=None,
                       joint=str(run), samples=2, crops=1, device=CPU, out=tmp_path / "r.json", workers=0,
                       show_progress=False)
    assert res["fusion"] == "weighted" and res["alpha"] == 0.3
    b = load_scores(tmp_path / "r.scores.npz")
    np.testing.assert_allclose(b["fused"], 0.3 * b["spatial"] + 0.7 * b["temporal"], atol=1e-6)


@pytest.mark.slow
def test_cli_joint_fit_defaults_inits_and_errors(tiny_shards, stream_runs, tmp_path) -> None:
    fit_args = ["fit", "--stream", "joint", "--shards", tiny_shards.root, "--train-list", tiny_shards.train_list,
                "--val-list", tiny_shards.val_list, "--epochs", "1", "--arch", "resnet18", "--crop-size", "16",
                "--flow-length", L, "--batch-size", "3", "--workers", "0", "--val-samples", "2", "--device", "cpu",
                "--no-progress"]
    result = _invoke(*fit_args, "--out", tmp_path / "j", "--temporal-init", stream_runs["temporal"])
    assert result.exit_code == 0, result.output
    assert "(spatial " in result.stdout and "temporal " in result.stdout
    cfg = ck.load_checkpoint(tmp_path / "j" / ck.LAST)["config"]
    assert cfg["model"]["fusion"] == "average" and cfg["model"]["spatial_weight"] is None
    assert (cfg["model"]["dropout"], cfg["model"]["temporal_dropout"]) == (0.5, 0.7)
    assert cfg["model"]["temporal_init"] == str(stream_runs["temporal"]) and cfg["optim"]["stream_loss_weight"] == 0.5
    _one_line_error(_invoke(*fit_args, "--out", tmp_path / "k", "--spatial-init", stream_runs["temporal"]), 1,
                    "is a temporal stream checkpoint, expected spatial")


def test_cli_usage_errors_exit_2(tiny_shards, stream_runs, tmp_path) -> None:
    base = ["--shards", tiny_shards.root, "--train-list", tiny_shards.train_list, "--out", tmp_path / "run",
            "--device", "cpu"]
    fit_t, fit_j = ["fit", "--stream", "temporal", *base], ["fit", "--stream", "joint", *base]
    _one_line_error(_invoke(*fit_t, "--fusion", "learned"), 2, "--fusion applies to --stream joint only")
    _one_line_error(_invoke(*fit_t, "--spatial-init", stream_runs["spatial"], "--stream-loss-weight", "0"), 2,
                    "--stream-loss-weight, --spatial-init apply to --stream joint only")
    _one_line_error(_invoke(*fit_t, "--spatial-weight", "0.5"), 2, "--spatial-weight applies to --stream joint only")
    _one_line_error(_invoke(*fit_j, "--fusion", "learned", "--spatial-weight", "0.5"), 2,
                    "--spatial-weight applies to --fusion weighted, not --fusion learned")
    _one_line_error(_invoke(*fit_j, "--fusion", "weighted"), 2, "--fusion weighted needs --spatial-weight")
    _one_line_error(_invoke(*fit_j, "--spatial-init", stream_runs["spatial"], "--temporal-init",
                            stream_runs["temporal"], "--pretrained", "imagenet"), 2, "--pretrained has no effect")
    ev = ["evaluate", "--shards", tiny_shards.root, "--test-list", tiny_shards.test_list, "--out", tmp_path / "r.json"]
    _one_line_error(_invoke(*ev), 2, "give --spatial and/or --temporal, or --joint")
    combined = "--joint cannot be combined with"
    _one_line_error(_invoke(*ev, "--joint", tmp_path, "--spatial", tmp_path), 2, f"{combined} --spatial")
    _one_line_error(_invoke(*ev, "--joint", tmp_path, "--fusion", "learned"), 2, f"{combined} --fusion")
    _one_line_error(_invoke(*ev, "--joint", tmp_path, "--val-list", tiny_shards.val_list), 2, "with --val-list")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_feature_fusion_without_stream_losses(tiny_shards, tmp_path) -> None:
    """With --stream-loss-weight 0 the stream heads still take part in every step, so DDP (which fails on a
    parameter that gets no gradient) runs the feature fusion, whose MLP bypasses those heads."""
    out = tmp_path / "run"
    val = tmp_path / "val1.txt"  # one validation video, held out of training: 11 left, 6 per rank (one padded)
    val.write_text(tiny_shards.val_list.read_text().splitlines()[0] + "\n")
    train = tmp_path / "train11.txt"
    train.write_text("".join(line + "\n" for line in tiny_shards.all_list.read_text().splitlines()
                             if line.split()[0] != val.read_text().split()[0]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trainer", "fit", "--stream", "joint", "--fusion", "feature", "--stream-loss-weight", "0",
           "--shards", tiny_shards.root, "--train-list", train, "--val-list", val,
           "--out", out, "--arch", "resnet18", "--crop-size", "16", "--flow-length", L, "--epochs", "1",
           "--batch-size", "3", "--workers", "0", "--val-samples", "2", "--device", "cpu", "--no-progress"]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=Path(__file__).parents[3])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (m,) = _metrics(out)
    assert m["samples_per_rank"] == [6, 6] and np.isfinite(m["loss"]) and "val_acc_spatial" in m  # 2 steps per rank
    ckpt = ck.load_checkpoint(out / ck.LAST)
    assert ckpt["config"]["model"]["fusion"] == "feature" and ckpt["config"]["optim"]["stream_loss_weight"] == 0.0
