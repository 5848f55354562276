"""trainer/engine.py on real tiny shards, real datasets and DataLoaders, with tiny networks (CPU)."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainer.config import OptimConfig
from trainer.data.datasets import FlowStackDataset, VideoEvalDataset
from trainer.data.lists import read_video_list
from trainer.data.shards import index_shards
from trainer.engine import evaluate, train_one_epoch
from trainer.fit import lr_lambda
from trainer.data.transforms import BatchPreparer, prepare_batch

CPU = torch.device("cpu")
L = 2  # flow fields per sample: 4 input channels
CE = nn.CrossEntropyLoss()


def tiny_flow_net(num_classes: int = 3, width: int = 16) -> nn.Module:
    """A 7x7 conv (large enough to see the fields' spatial derivatives) + BN + pooled linear head."""
    return nn.Sequential(
        nn.Conv2d(2 * L, width, 7, padding=3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def _sgd(model: nn.Module, optim: OptimConfig, iters_per_epoch: int):
    opt = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optim, iters_per_epoch))
    return opt, sched, torch.amp.GradScaler("cpu", enabled=False)


@pytest.fixture
def index(tiny_shards):
    return index_shards(tiny_shards.root)


@pytest.fixture
def temporal(index) -> BatchPreparer:
    """The temporal stream's batches on the CPU, dequantized with the tiny shards' factors (bound 12)."""
    return BatchPreparer.for_shards(index, device=CPU, stream="temporal")


def test_temporal_stream_overfits_motion_classes(tiny_shards, index, temporal) -> None:
    """Drift / expand / rotate differ only in motion: loss must fall and train accuracy reach ~100%."""
    torch.manual_seed(0)
    records = read_video_list(tiny_shards.all_list, index)
    # 8 random stacks (random start, multi-scale crop, flip) per video and epoch.
    ds = FlowStackDataset(records * 8, flow_length=L, crop_size=24, train=True)
    loader = DataLoader(ds, batch_size=8, shuffle=True, drop_last=True)
    model = tiny_flow_net(width=32)
    optim = OptimConfig(epochs=15, lr=0.1)  # every seed 0-7 tried: final/first loss <= 0.14, accuracy >= 0.97
    opt, sched, scaler = _sgd(model, optim, len(loader))
    history = [
        train_one_epoch(model, CE, opt, sched, scaler, loader, temporal, e, show_progress=False)
        for e in range(optim.epochs)
    ]
    assert history[-1]["loss"] < 0.3 * history[0]["loss"], [h["loss"] for h in history]
    assert history[-1]["acc"] >= 0.95, [h["acc"] for h in history]
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine schedule stepped per iteration to the end
    assert all(h["samples"] == h["samples_total"] == len(ds) for h in history)

    video = VideoEvalDataset(records, stream="temporal", samples=5, flow_length=L, crop_size=24)
    res = evaluate(model, DataLoader(video, batch_size=4), temporal, num_classes=3)
    assert res["video_acc"] >= 0.9
    assert res["labels"].tolist() == [r.label for r in records]


def test_video_scores_are_softmax_averaged_per_video(tiny_shards, index, temporal) -> None:
    torch.manual_seed(1)
    model = tiny_flow_net().eval()
    records = read_video_list(tiny_shards.val_list, index)
    ds = VideoEvalDataset(records, stream="temporal", samples=3, crops=10, flow_length=L, crop_size=24)
    res = evaluate(model, DataLoader(ds, batch_size=2), temporal, num_classes=3)
    assert res["scores"].shape == (len(records), 3)
    with torch.no_grad():
        for i in range(len(ds)):
            x, scale, label, j = ds[i]  # (30, 2L, S, S): 3 samples x 10 crops
            p = model(prepare_batch(x, scale, stream="temporal", scale_factor=index.scale_factor,
                                    add_offset=index.add_offset)).softmax(dim=1)
            assert res["scores"][j] == pytest.approx(p.mean(dim=0).double().numpy(), abs=1e-6)
            assert res["labels"][j] == label
    assert res["scores"].sum(axis=1) == pytest.approx(1.0)
    assert 0.0 <= res["clip_acc"] <= 1.0 and math.isfinite(res["loss"])


def test_clip_evaluation_without_video_dataset(tiny_shards, index, temporal) -> None:
    torch.manual_seed(2)
    model = tiny_flow_net()
    ds = FlowStackDataset(read_video_list(tiny_shards.all_list, index), flow_length=L, crop_size=24, train=False)
    res = evaluate(model, DataLoader(ds, batch_size=5), temporal)
    assert set(res) == {"loss", "clip_acc"}
    model.eval()
    with torch.no_grad():
        x, s, y = next(iter(DataLoader(ds, batch_size=len(ds))))
        logits = model(prepare_batch(x, s, stream="temporal", scale_factor=index.scale_factor, add_offset=index.add_offset))
    assert res["clip_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert res["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


class _Slow(Dataset):
    def __init__(self, inner: Dataset, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return self.inner[i]


class _SlowNet(nn.Module):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.net, self.delay = tiny_flow_net(), delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return self.net(x)


@pytest.mark.parametrize("data_delay, model_delay, slow_side", [(0.03, 0.0, "data"), (0.0, 0.2, "model")])
def test_data_wait_fraction_measures_the_loader(tiny_shards, index, temporal, data_delay, model_delay, slow_side) -> None:
    ds = FlowStackDataset(read_video_list(tiny_shards.all_list, index), flow_length=L, crop_size=24)
    loader = DataLoader(_Slow(ds, data_delay), batch_size=4, shuffle=True)
    model = _SlowNet(model_delay)
    opt, sched, scaler = _sgd(model, OptimConfig(epochs=1, lr=0.01), len(loader))
    stats = train_one_epoch(model, CE, opt, sched, scaler, loader, temporal, 1, show_progress=False)
    if slow_side == "data":
        assert stats["data_wait_frac"] > 0.6
    else:
        assert stats["data_wait_frac"] < 0.4
    assert 0 < stats["samples_per_s"] < 12 / (0.2 * 3 if slow_side == "model" else 0.03 * 12)  # sleeps alone take this long


def test_non_finite_loss_stops_training(tiny_shards, index, temporal) -> None:
    class Nan(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 3), float("nan")) * self.w

    ds = FlowStackDataset(read_video_list(tiny_shards.all_list, index), flow_length=L, crop_size=24)
    model = Nan()
    loader = DataLoader(ds, batch_size=4)
    opt, sched, scaler = _sgd(model, OptimConfig(epochs=1, lr=0.01), len(loader))
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 7, iteration 0"):
        train_one_epoch(model, CE, opt, sched, scaler, loader, temporal, 7, show_progress=False)


def test_a_second_ctrl_c_that_a_finalizer_dropped_leaves_before_the_next_step_instead_of_saving() -> None:
    """The training loop's check (and fit's save on a stop) raise the second Ctrl-C again (flowprep.stopping)."""
    import signal

    from flowprep.stopping import StopFlag
    from trainer import engine

    stop = StopFlag()
    stop.set(signal.SIGINT)
    assert engine._stop_agreed(stop, torch.device("cpu"))  # one Ctrl-C: stop at this step and save
    stop.leave_now = True  # a second one, whose KeyboardInterrupt CPython dropped in a finalizer
    with pytest.raises(KeyboardInterrupt):
        engine._stop_agreed(stop, torch.device("cpu"))
