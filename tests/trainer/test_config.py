"""trainer/config.py: validation and the dict round trip used by checkpoints."""

from __future__ import annotations

import pytest

from trainer.config import DataConfig, ModelConfig, OptimConfig, RunConfig, from_dict, to_dict


def test_round_trip_through_dicts() -> None:
    cfgs = [ModelConfig(stream="temporal", num_classes=101, arch="resnet18", pretrained="/w.pth"),
            DataConfig(shards="s", train_list="t", val_list="v"), OptimConfig(schedule="step"), RunConfig(out="o")]
    for cfg in cfgs:
        assert from_dict(type(cfg), to_dict(cfg)) == cfg


def test_unknown_keys_are_named() -> None:
    d = to_dict(OptimConfig())
    d["nesterov"] = True
    with pytest.raises(ValueError, match=r"unknown OptimConfig keys \['nesterov'\]"):
        from_dict(OptimConfig, d)


@pytest.mark.parametrize("cls, kwargs, message", [
    (ModelConfig, {"stream": "audio", "num_classes": 3}, "stream must be one of"),
    (ModelConfig, {"stream": "spatial", "num_classes": 0}, "num_classes must be >= 1, got 0"),
    (ModelConfig, {"stream": "spatial", "num_classes": 3, "dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    (DataConfig, {"shards": "s", "train_list": "t", "batch_size": 0}, "batch_size must be >= 1, got 0"),
    (DataConfig, {"shards": "s", "train_list": "t", "workers": -1}, "workers must be >= 0, got -1"),
    (OptimConfig, {"lr": 0.0}, "lr must be > 0, got 0.0"),
    (OptimConfig, {"schedule": "linear"}, "schedule must be one of"),
    (RunConfig, {"out": "o", "amp": "fp8"}, "amp must be one of"),
])
def test_bad_values_say_what_was_expected(cls, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_same_network_ignores_initialisation_only_fields() -> None:
    a = ModelConfig(stream="temporal", num_classes=3, arch="resnet18", dropout=0.7, pretrained="imagenet")
    assert a.same_network(ModelConfig(stream="temporal", num_classes=3, arch="resnet18", dropout=0.5))
    assert not a.same_network(ModelConfig(stream="temporal", num_classes=3, arch="resnet18", flow_length=5))
    assert not a.same_network(ModelConfig(stream="spatial", num_classes=3, arch="resnet18"))
