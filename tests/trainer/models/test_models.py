import os
import socket
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from trainer.models.fusion import AverageFusion, FeatureFusion, LearnedFusion, TwoStream, WeightedFusion
from trainer.models.pretrained import PretrainedError, cross_modality_weight
from trainer.models.streams import ARCHS, SpatialStream, TemporalStream, spatial_stream, temporal_stream

# The deep ones take a few seconds each to build on a busy 2-core machine.
ARCH_PARAMS = [pytest.param(a, marks=pytest.mark.slow) if a in ("resnet101", "resnet152") else a for a in ARCHS]
FEATURE_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails, as on an offline cluster node."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch: pytest.MonkeyPatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert torch.hub.get_dir() == str(hub)
    return hub


def _tiny_backbone(in_channels: int, dim: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, dim, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def _rgb_resnet18_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    for m in net.modules():  # BN statistics differ from the defaults, so a copy is distinguishable
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net.state_dict()


# --- construction and shapes, every arch -------------------------------------------------------


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_spatial_stream_every_arch(arch: str) -> None:
    model = spatial_stream(arch=arch, num_classes=7).eval()
    assert model.feature_dim == FEATURE_DIM[arch]
    assert isinstance(model.backbone.fc, nn.Identity)
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        assert model(x).shape == (2, 7)
        assert model.features(x).shape == (2, FEATURE_DIM[arch])


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_temporal_stream_every_arch(arch: str) -> None:
    model = temporal_stream(arch=arch, num_classes=5, flow_length=10).eval()
    assert model.flow_length == 10
    assert model.backbone.conv1.weight.shape == (64, 20, 7, 7)
    with torch.no_grad():
        assert model(torch.randn(2, 20, 64, 64)).shape == (2, 5)


def test_time_axis_averages_logits_over_t() -> None:
    model = spatial_stream(arch="resnet18", num_classes=4).eval()
    x = torch.randn(2, 3, 3, 48, 48)
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (2, 3, 512)
        per_frame = torch.stack([model(x[:, i]) for i in range(3)], dim=1)  # (B, T, K)
        assert torch.allclose(model(x), per_frame.mean(dim=1), atol=1e-5)
        assert torch.allclose(feats[:, 1], model.features(x[:, 1]), atol=1e-5)


def test_temporal_time_axis_and_custom_flow_length() -> None:
    model = temporal_stream(arch="resnet18", num_classes=3, flow_length=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 4, 10, 48, 48)).shape == (2, 3)
        assert model.features(torch.randn(2, 4, 10, 48, 48)).shape == (2, 4, 512)


def test_dropout_only_in_training() -> None:
    model = SpatialStream(_tiny_backbone(3), feature_dim=8, num_classes=4, dropout=0.5)
    x = torch.randn(16, 3, 16, 16)
    model.eval()
    assert torch.equal(model(x), model.fc(model.features(x)))
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(model(x), model.fc(model.features(x)))


def test_channels_last_gives_same_logits() -> None:
    model = temporal_stream(arch="resnet18", num_classes=3, flow_length=2).eval()
    x = torch.randn(2, 4, 40, 40)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-4)


def test_bad_inputs_say_what_was_expected() -> None:
    model = temporal_stream(arch="resnet18", num_classes=3, flow_length=10)
    with pytest.raises(ValueError, match=r"expects \(B, 20, H, W\).*got \(2, 3, 32, 32\)"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="arch must be one of resnet18.*got 'resnet200'"):
        spatial_stream(arch="resnet200", num_classes=3)
    with pytest.raises(ValueError, match="first conv has 3"):
        TemporalStream(_tiny_backbone(3), feature_dim=8, num_classes=3, dropout=0.5, flow_length=10)
    with pytest.raises(ValueError, match="dropout must be in"):
        spatial_stream(arch="resnet18", num_classes=3, dropout=1.0)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        SpatialStream(_tiny_backbone(3), feature_dim=8, num_classes=0, dropout=0.5)


# --- cross-modality initialisation ----------------------------------------------------------------


def test_cross_modality_weight_is_rgb_mean_replicated() -> None:
    w = torch.randn(4, 3, 5, 5)
    out = cross_modality_weight(w, 6)
    assert out.shape == (4, 6, 5, 5)
    mean = (w[:, 0] + w[:, 1] + w[:, 2]) / 3
    for c in range(6):
        assert torch.allclose(out[:, c], mean, atol=1e-6)
    # A grey image through the RGB filters = the same grey over 3 channels through the adapted filters.
    grey = torch.rand(1, 1, 9, 9)
    rgb_resp = nn.functional.conv2d(grey.repeat(1, 3, 1, 1), w)
    adapted_resp = nn.functional.conv2d(grey.repeat(1, 3, 1, 1), cross_modality_weight(w, 3))
    assert torch.allclose(rgb_resp, adapted_resp, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected an RGB conv weight .*got \(4, 2, 5, 5\)"):
        cross_modality_weight(torch.randn(4, 2, 5, 5), 6)


def test_cross_modality_init_is_applied_from_a_local_file(tmp_path) -> None:
    state = _rgb_resnet18_state()
    path = tmp_path / "rgb_resnet18.pth"
    torch.save(state, path)
    model = temporal_stream(arch="resnet18", num_classes=5, flow_length=10, pretrained=str(path))
    got = model.backbone.state_dict()

    expected_conv1 = state["conv1.weight"].mean(dim=1, keepdim=True).repeat(1, 20, 1, 1)
    assert torch.allclose(got["conv1.weight"], expected_conv1, atol=1e-7)
    for key in ("bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.conv2.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(got[key], state[key]), key
    # The 1000-way ImageNet classifier is not carried over: the head is new and sized for 5 classes.
    assert model.fc.weight.shape == (5, 512)
    assert model.fc.weight.abs().max() < 0.01 and torch.count_nonzero(model.fc.bias) == 0


def test_spatial_stream_loads_wrapped_and_ddp_state_dicts(tmp_path) -> None:
    state = _rgb_resnet18_state(seed=1)
    for i, obj in enumerate(
        [state, {"model": state, "epoch": 3}, {"state_dict": {f"module.{k}": v for k, v in state.items()}}]
    ):
        path = tmp_path / f"w{i}.pth"
        torch.save(obj, path)
        model = spatial_stream(arch="resnet18", num_classes=3, pretrained=str(path))
        assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
        assert torch.equal(model.backbone.layer3[0].downsample[1].running_mean, state["layer3.0.downsample.1.running_mean"])


def test_temporal_stream_from_a_trained_spatial_stream(tmp_path) -> None:
    spatial = spatial_stream(arch="resnet18", num_classes=3)
    path = tmp_path / "spatial.pth"
    torch.save({"model": spatial.state_dict()}, path)
    model = temporal_stream(arch="resnet18", num_classes=3, flow_length=2, pretrained=path)  # a Path works too
    assert torch.allclose(model.backbone.conv1.weight, cross_modality_weight(spatial.backbone.conv1.weight, 4))


def test_mismatched_weights_raise_naming_the_keys(tmp_path) -> None:
    state = _rgb_resnet18_state()
    bad = dict(state)
    del bad["layer1.0.bn1.running_mean"]
    bad["extra.weight"] = torch.zeros(1)
    bad["conv1.weight"] = torch.zeros(64, 4, 7, 7)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(PretrainedError) as info:
        spatial_stream(arch="resnet18", num_classes=3, pretrained=str(path))
    msg = str(info.value)
    assert "missing: layer1.0.bn1.running_mean" in msg
    assert "unexpected: extra.weight" in msg
    assert "mis-shaped: conv1.weight (64, 4, 7, 7) (expected (64, 3, 7, 7))" in msg
    assert "\n" not in msg

    # resnet34 weights into a resnet18: an error, never a silent partial load.
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(PretrainedError, match="unexpected: layer1.2"):
        temporal_stream(arch="resnet18", num_classes=3, pretrained=str(path))


def test_pretrained_path_errors(tmp_path) -> None:
    with pytest.raises(PretrainedError, match="none, imagenet or a state dict file; 'imagnet' is not a file"):
        spatial_stream(arch="resnet18", num_classes=3, pretrained="imagnet")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(PretrainedError, match="could not read a state dict from"):
        spatial_stream(arch="resnet18", num_classes=3, pretrained=str(junk))
    torch.save([1, 2, 3], junk)
    with pytest.raises(PretrainedError, match="holds no state dict"):
        spatial_stream(arch="resnet18", num_classes=3, pretrained=str(junk))


def test_pretrained_none_spelled_out() -> None:
    torch.manual_seed(0)
    a = temporal_stream(arch="resnet18", num_classes=3, flow_length=1, pretrained="none")
    assert a.backbone.conv1.weight.shape == (64, 2, 7, 7)
    assert a.backbone.conv1.weight.std() > 0  # initialised, not zeros


# --- ImageNet weights through torchvision's weights API, offline -------------------------------


def test_imagenet_offline_without_cache_is_a_clear_error(hub_dir, no_network) -> None:
    with pytest.raises(PretrainedError) as info:
        temporal_stream(arch="resnet18", num_classes=3, pretrained="imagenet")
    msg = str(info.value)
    expected_file = os.path.basename(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)
    assert str(hub_dir / "checkpoints" / expected_file) in msg
    assert "URLError" in msg and "--pretrained PATH" in msg
    assert "\n" not in msg
    assert not (hub_dir / "checkpoints" / expected_file).exists()


def test_imagenet_loads_from_the_hub_cache(hub_dir, no_network) -> None:
    state = _rgb_resnet18_state(seed=2)
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(state, hub_dir / "checkpoints" / os.path.basename(url))

    spatial = spatial_stream(arch="resnet18", num_classes=3, pretrained="imagenet")
    assert torch.equal(spatial.backbone.conv1.weight, state["conv1.weight"])
    assert torch.equal(spatial.backbone.layer2[1].bn1.running_var, state["layer2.1.bn1.running_var"])
    temporal = temporal_stream(arch="resnet18", num_classes=3, flow_length=10, pretrained="imagenet")
    assert torch.allclose(temporal.backbone.conv1.weight, cross_modality_weight(state["conv1.weight"], 20))


# --- fusion --------------------------------------------------------------------------------------


def test_average_fusion_is_mean_of_softmaxes() -> None:
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    out = AverageFusion()(s, t)
    assert out.shape == (4, 6)
    assert torch.allclose(out, (s.softmax(-1) + t.softmax(-1)) / 2)
    assert torch.allclose(out.sum(-1), torch.ones(4))


def test_weighted_fusion() -> None:
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    assert torch.allclose(WeightedFusion(alpha=1.0)(s, t), s.softmax(-1))
    assert torch.allclose(WeightedFusion(alpha=0.0)(s, t), t.softmax(-1))
    assert torch.allclose(WeightedFusion(alpha=0.3)(s, t), 0.3 * s.softmax(-1) + 0.7 * t.softmax(-1))
    assert torch.allclose(WeightedFusion(alpha=0.5)(s, t), AverageFusion()(s, t))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\], got 1.5"):
        WeightedFusion(alpha=1.5)


@pytest.mark.parametrize("kind", ["learned", "feature"])
def test_trainable_fusions_produce_gradients(kind: str) -> None:
    if kind == "learned":
        fusion = LearnedFusion(num_classes=6, hidden=16)
        s, t = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    else:
        fusion = FeatureFusion(spatial_dim=10, temporal_dim=12, num_classes=6, hidden=16)
        s, t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 12, requires_grad=True)
    out = fusion(s, t)
    assert out.shape == (4, 6)
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0


def test_feature_fusion_averages_time_axis() -> None:
    fusion = FeatureFusion(spatial_dim=4, temporal_dim=5, num_classes=3, hidden=8)
    s, t = torch.randn(2, 7, 4), torch.randn(2, 3, 5)
    assert torch.allclose(fusion(s, t), fusion(s.mean(1), t.mean(1)), atol=1e-6)


@pytest.mark.parametrize("kind", ["average", "weighted", "learned", "feature"])
def test_two_stream_forward(kind: str) -> None:
    spatial = SpatialStream(_tiny_backbone(3, 8), feature_dim=8, num_classes=5, dropout=0.5)
    temporal = TemporalStream(_tiny_backbone(4, 6), feature_dim=6, num_classes=5, dropout=0.7, flow_length=2)
    fusion = {
        "average": AverageFusion(),
        "weighted": WeightedFusion(alpha=0.25),
        "learned": LearnedFusion(num_classes=5, hidden=8),
        "feature": FeatureFusion(spatial_dim=8, temporal_dim=6, num_classes=5, hidden=8),
    }[kind]
    model = TwoStream(spatial, temporal, fusion).eval()
    rgb, flow = torch.randn(3, 3, 32, 32), torch.randn(3, 4, 32, 32)
    with torch.no_grad():
        out = model(rgb, flow)
        assert set(out) == {"spatial", "temporal", "fused"}
        assert all(v.shape == (3, 5) for v in out.values())
        assert torch.allclose(out["spatial"], spatial(rgb)) and torch.allclose(out["temporal"], temporal(flow))
        if kind == "feature":
            expected = fusion(spatial.features(rgb), temporal.features(flow))
        else:
            expected = fusion(spatial(rgb), temporal(flow))
        assert torch.allclose(out["fused"], expected)
        # With a time axis (video-level testing) each stream averages over its own T.
        out5 = model(torch.randn(3, 4, 3, 32, 32), torch.randn(3, 2, 4, 32, 32))
        assert all(v.shape == (3, 5) for v in out5.values())


def test_two_stream_trains_end_to_end() -> None:
    spatial = SpatialStream(_tiny_backbone(3, 8), feature_dim=8, num_classes=4, dropout=0.0)
    temporal = TemporalStream(_tiny_backbone(2, 8), feature_dim=8, num_classes=4, dropout=0.0, flow_length=1)
    model = TwoStream(spatial, temporal, LearnedFusion(num_classes=4, hidden=8))
    out = model(torch.randn(4, 3, 16, 16), torch.randn(4, 2, 16, 16))
    loss = sum(nn.functional.cross_entropy(v, torch.tensor([0, 1, 2, 3])) for v in out.values())
    loss.backward()
    assert spatial.backbone[0].weight.grad.abs().sum() > 0
    assert temporal.backbone[0].weight.grad.abs().sum() > 0


def test_downloading_imagenet_weights_says_so_on_stderr_not_on_stdout_which_is_for_results(
        hub_dir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """torch.hub writes 'Downloading: "URL" to FILE' to stdout; trainer fit's stdout is for results. No network: the
    download writes the file torchvision wants, as if fetched."""
    from trainer.models.pretrained import _imagenet_state_dict

    state = _rgb_resnet18_state()

    def download(url: str, dst: str, *args: object, **kwargs: object) -> None:
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    loaded = _imagenet_state_dict("resnet18")
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    out, err = capsys.readouterr()
    assert out == "" and f'Downloading: "{url}" to {hub_dir / "checkpoints" / os.path.basename(url)}' in err
