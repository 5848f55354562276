import h5py
import numpy as np
import pytest
import torch

from flowprep.extract.quantize import quantize, scale_and_offset
from trainer.data.shards import index_shards
from trainer.data.crops import crop_resize
from trainer.data.transforms import (
    FLOW_NORM_PX, IMAGENET_MEAN, IMAGENET_STD, RESAMPLERS, BatchPreparer, hflip_flow_uint8, hflip_rgb, prepare_batch,
    prepare_train_batch,
)

B = 12.0  # deliberately not 20


def spiral_stack(L: int, h: int, w: int) -> np.ndarray:
    """(L, 2, H, W) float: a rotating + expanding field about an off-centre point, different at every step."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    X, Y = x - 0.3 * w, y - 0.6 * h
    out = []
    for t in range(L):
        e, r = 0.05 + 0.01 * t, 0.2 - 0.015 * t
        out.append([e * X - r * Y + 0.5 * t, e * Y + r * X - 0.3])
    return np.asarray(out)


def dequant(q: np.ndarray, bound: float = B) -> np.ndarray:
    sf, ao = scale_and_offset(bound)
    return q.astype(np.float64) * sf + ao


def flip_is_correct(q: np.ndarray, flipped: np.ndarray) -> bool:
    """(L, 2, H, W) codes: after a horizontal flip u(x) == -u(W-1-x) and v(x) == v(W-1-x) at every step."""
    f, g = dequant(q), dequant(flipped)
    return bool(np.allclose(g[:, 0], -f[:, 0, :, ::-1], atol=1e-9) and np.allclose(g[:, 1], f[:, 1, :, ::-1], atol=1e-9))


def negate_alternate_steps(q: np.ndarray) -> np.ndarray:
    """A known bug: mirror, then negate u of every other time step only."""
    out = q[..., ::-1].copy()
    out[0::2, 0] = 255 - out[0::2, 0]
    return out


def negate_alternate_channels_of_stacked_layout(q: np.ndarray) -> np.ndarray:
    """A known bug: channels stored [u0..uL-1, v0..vL-1] but "every other channel" negated as if interleaved."""
    L, _, h, w = q.shape
    stacked = q.transpose(1, 0, 2, 3).reshape(2 * L, h, w)[..., ::-1].copy()
    stacked[0::2] = 255 - stacked[0::2]
    return stacked.reshape(2, L, h, w).transpose(1, 0, 2, 3)


def test_255_minus_q_is_exact_negation_for_every_code() -> None:
    q = np.arange(256, dtype=np.uint8)
    for bound in (B, 20.0, 1.5):
        np.testing.assert_allclose(dequant(255 - q, bound), -dequant(q, bound), atol=1e-12)


@pytest.mark.parametrize("L", [1, 3, 10])
def test_hflip_negates_u_and_mirrors_at_every_time_step(L: int) -> None:
    q = quantize(spiral_stack(L, 12, 17), B)  # odd width: the middle column maps to itself
    assert len(np.unique(q[:, 0])) > 20  # a real field, not a constant
    flipped = hflip_flow_uint8(q.reshape(2 * L, 12, 17)).reshape(L, 2, 12, 17)
    assert flip_is_correct(q, flipped)
    # Same answer for the (L, 2, H, W) layout, a batch axis, and torch tensors.
    np.testing.assert_array_equal(hflip_flow_uint8(q), flipped)
    np.testing.assert_array_equal(hflip_flow_uint8(q.reshape(1, 2 * L, 12, 17))[0], flipped.reshape(2 * L, 12, 17))
    t = hflip_flow_uint8(torch.from_numpy(q.reshape(2 * L, 12, 17)))
    np.testing.assert_array_equal(t.numpy().reshape(L, 2, 12, 17), flipped)
    # Flipping twice is the identity and the input was not modified in place.
    np.testing.assert_array_equal(hflip_flow_uint8(flipped), q)


def test_flip_check_catches_the_alternate_channel_bug_and_plain_mirroring() -> None:
    L = 10
    q = quantize(spiral_stack(L, 8, 9), B)
    assert not flip_is_correct(q, negate_alternate_steps(q))
    assert not flip_is_correct(q, negate_alternate_channels_of_stacked_layout(q))
    assert not flip_is_correct(q, q[..., ::-1])  # mirroring alone
    assert flip_is_correct(q, hflip_flow_uint8(q))
    # Ours negates u at every step: the u channel of step 1 (the one the bug leaves alone) flips sign.
    f, g = dequant(q), dequant(hflip_flow_uint8(q))
    assert np.sign(g[1, 0]).sum() == -np.sign(f[1, 0]).sum() != 0


def test_hflip_rejects_odd_channel_counts() -> None:
    with pytest.raises(ValueError, match=r"2L, H, W"):
        hflip_flow_uint8(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        hflip_flow_uint8(np.zeros((2, 4, 4), np.float32))


def test_dequantization_exact_with_factors_from_a_real_shard(tiny_shards) -> None:
    vid = tiny_shards.video_ids[5]
    shard = index_shards(tiny_shards.root).videos[vid].shard
    with h5py.File(shard, "r") as f:
        ds = f[f"videos/{vid}/flow"]
        q = ds[2:6]  # (4, 2, H, W)
        sf, ao = float(ds.attrs["scale_factor"]), float(ds.attrs["add_offset"])
    assert (sf, ao) == pytest.approx((2 * B / 255, -B))
    L, H, W = q.shape[0], q.shape[2], q.shape[3]
    x = torch.from_numpy(q.reshape(1, 2 * L, H, W))
    scale = torch.tensor([[1.5, 0.25]])
    out = prepare_batch(x, scale, stream="temporal", scale_factor=sf, add_offset=ao)
    expected = (q.astype(np.float64) * sf + ao) * np.array([1.5, 0.25])[None, :, None, None] / FLOW_NORM_PX
    assert out.dtype == torch.float32 and out.shape == (1, 2 * L, H, W)
    np.testing.assert_allclose(out[0].numpy(), expected.reshape(2 * L, H, W), rtol=0, atol=2e-6)
    # And the stored codes are the known field quantized with this shard's bound.
    np.testing.assert_array_equal(q, tiny_shards.flow_q[vid][2:6])


def test_prepare_batch_takes_per_sample_scales_with_extra_leading_axes() -> None:
    sf, ao = scale_and_offset(B)
    x = torch.full((2, 3, 4, 8, 8), 200, dtype=torch.uint8)  # (B, N, 2L, S, S)
    scale = torch.rand(2, 3, 2) + 0.5
    out = prepare_batch(x, scale, stream="temporal", scale_factor=sf, add_offset=ao)
    f = 200 * sf + ao
    np.testing.assert_allclose(out[:, :, 0::2].amax((-1, -2, -3)), f * scale[..., 0] / FLOW_NORM_PX, rtol=1e-6)
    np.testing.assert_allclose(out[:, :, 1::2].amin((-1, -2, -3)), f * scale[..., 1] / FLOW_NORM_PX, rtol=1e-6)


def test_prepare_batch_rgb_uses_imagenet_statistics() -> None:
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 5, 5).contiguous()
    out = prepare_batch(x, torch.ones(2, 2), stream="spatial", scale_factor=1.0, add_offset=0.0)
    expected = (np.array([0, 128, 255]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[1, :, 2, 3].numpy(), expected, rtol=1e-5)


def test_prepare_batch_errors_name_what_was_expected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        prepare_batch(torch.zeros(1, 4, 2, 2), torch.ones(1, 2), stream="temporal", scale_factor=1, add_offset=0)
    with pytest.raises(ValueError, match=r"scale \(\.\.\., 2\)"):
        prepare_batch(torch.zeros(1, 4, 2, 2, dtype=torch.uint8), torch.ones(2), stream="temporal", scale_factor=1, add_offset=0)
    with pytest.raises(ValueError, match="3 channels"):
        prepare_batch(torch.zeros(1, 4, 2, 2, dtype=torch.uint8), torch.ones(1, 2), stream="spatial", scale_factor=1, add_offset=0)
    with pytest.raises(ValueError, match="'spatial' or 'temporal'"):
        prepare_batch(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.ones(1, 2), stream="rgb", scale_factor=1, add_offset=0)


# ---------------------------------------------------------------- device-side training crops


def train_params(*rows: tuple) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("method", RESAMPLERS)
def test_device_flip_negates_u_at_every_time_step(method: str) -> None:
    L, h, w = 10, 12, 17
    sq = np.ascontiguousarray(quantize(spiral_stack(L, h, w), B)[..., :h, :h])  # square: crops are square
    sf, ao = scale_and_offset(B)
    # Box = the whole window at its own size: no resampling, so only the flip changes anything.
    x = torch.from_numpy(sq.reshape(1, 2 * L, h, h)).repeat(2, 1, 1, 1)
    out = prepare_train_batch(x, train_params((0, 0, h, h, 0, h), (0, 0, h, h, 1, h)), stream="temporal",
                              scale_factor=sf, add_offset=ao, method=method).double().numpy() * FLOW_NORM_PX
    f = dequant(sq)
    np.testing.assert_allclose(out[0].reshape(L, 2, h, h), f, atol=1e-4)
    g = out[1].reshape(L, 2, h, h)
    np.testing.assert_allclose(g[:, 0], -f[:, 0, :, ::-1], atol=1e-4)  # every step, not alternate ones
    np.testing.assert_allclose(g[:, 1], f[:, 1, :, ::-1], atol=1e-4)
    # The same as the exact uint8 flip of the CPU path.
    np.testing.assert_allclose(g, dequant(hflip_flow_uint8(sq)), atol=1e-4)


@pytest.mark.parametrize("method", RESAMPLERS)
def test_device_crop_matches_the_cpu_crop_and_scales_magnitudes(method: str) -> None:
    L, H, W, S = 3, 30, 44, 16
    q = quantize(spiral_stack(L, H, W), B).reshape(2 * L, H, W)
    sf, ao = scale_and_offset(B)
    boxes = [(2, 5, 20, 24), (0, 0, 30, 30), (7, 13, 12, 10)]  # down-, down- and up-sampling, aspect jitter
    x = torch.from_numpy(q).expand(len(boxes), -1, -1, -1).contiguous()
    params = train_params(*[(*b, flip, S) for b, flip in zip(boxes, (0, 1, 0))])
    out = prepare_train_batch(x, params, stream="temporal", scale_factor=sf, add_offset=ao, method=method)
    assert out.shape == (3, 2 * L, S, S) and out.dtype == torch.float32
    for k, box in enumerate(boxes):
        cpu, sx, sy = crop_resize(q, box, S)
        if k == 1:
            cpu = hflip_flow_uint8(cpu)
        want = prepare_batch(torch.from_numpy(cpu)[None], torch.tensor([[sx, sy]]), stream="temporal",
                             scale_factor=sf, add_offset=ao)[0]
        # cv2 rounds to uint8 codes (0.5 code) and clamps at the crop's edge where roi_align/grid_sample see
        # the real neighbour: compare inside a 1-pixel border, within one code scaled by the resize.
        tol = sf * max(sx, sy) / FLOW_NORM_PX
        np.testing.assert_allclose(out[k, :, 1:-1, 1:-1].numpy(), want[:, 1:-1, 1:-1].numpy(), atol=tol)
    # Magnitudes follow the resize: a constant field u = 2 px, v = -3 px reads (2 S/w, -3 S/h).
    const = np.stack([np.full((H, W), 2.0), np.full((H, W), -3.0)])[None]
    c = torch.from_numpy(quantize(const, B).reshape(2, H, W)).expand(3, -1, -1, -1).contiguous()
    out = prepare_train_batch(c, params, stream="temporal", scale_factor=sf, add_offset=ao, method=method)
    for k, (_, _, h, w) in enumerate(boxes):
        u0, v0 = dequant(quantize(const, B))[0, :, 0, 0]
        sign = -1 if k == 1 else 1
        np.testing.assert_allclose(out[k, 0].numpy() * FLOW_NORM_PX, sign * u0 * S / w, rtol=1e-5)
        np.testing.assert_allclose(out[k, 1].numpy() * FLOW_NORM_PX, v0 * S / h, rtol=1e-5)


def test_device_dequantization_uses_the_given_factors_not_an_assumed_bound() -> None:
    x = torch.full((1, 2, 8, 8), 200, dtype=torch.uint8)
    p = train_params((0, 0, 8, 8, 0, 8))
    for bound in (B, 20.0):
        sf, ao = scale_and_offset(bound)
        out = prepare_train_batch(x, p, stream="temporal", scale_factor=sf, add_offset=ao)
        np.testing.assert_allclose(out.numpy(), (200 * sf + ao) / FLOW_NORM_PX, rtol=1e-6)


def test_device_rgb_crop_mirrors_without_negating() -> None:
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (3, 20, 20), dtype=np.uint8)
    x = torch.from_numpy(img).expand(2, -1, -1, -1).contiguous()
    out = prepare_train_batch(x, train_params((0, 0, 20, 20, 0, 20), (0, 0, 20, 20, 1, 20)), stream="spatial",
                              scale_factor=1.0, add_offset=0.0)
    ref = prepare_batch(torch.from_numpy(np.stack([img, hflip_rgb(img)])), torch.ones(2, 2), stream="spatial",
                        scale_factor=1.0, add_offset=0.0)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-4)


def test_prepare_train_batch_errors_name_what_was_expected() -> None:
    x = torch.zeros(2, 4, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"params \(B, 6\).*got \(2, 2\)"):
        prepare_train_batch(x, torch.ones(2, 2), stream="temporal", scale_factor=1, add_offset=0)
    with pytest.raises(ValueError, match=r"one crop size per batch, got \[8.0, 9.0\]"):
        prepare_train_batch(x, train_params((0, 0, 8, 8, 0, 8), (0, 0, 8, 8, 0, 9)), stream="temporal",
                            scale_factor=1, add_offset=0)
    with pytest.raises(ValueError, match="method must be one of"):
        prepare_train_batch(x, train_params((0, 0, 8, 8, 0, 8), (0, 0, 8, 8, 0, 8)), stream="temporal",
                            scale_factor=1, add_offset=0, method="nearest")


def test_batch_preparer_is_the_device_side_of_every_stream(tiny_shards) -> None:
    """One object per run: prepare_batch (CPU crops) or prepare_train_batch (training windows) with the shards'
    own factors, the joint stream's halves each as their stream, the memory format asked for."""
    idx = index_shards(tiny_shards.root)
    cpu = torch.device("cpu")
    sf = dict(scale_factor=idx.scale_factor, add_offset=idx.add_offset)
    torch.manual_seed(0)
    flow = torch.randint(0, 256, (2, 4, 8, 8), dtype=torch.uint8)
    rgb = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    scale = torch.tensor([[1.0, 1.5], [0.5, 2.0]])
    params = torch.tensor([[0, 1, 6, 5, 1, 4], [2, 0, 4, 8, 0, 4]], dtype=torch.float32)

    temporal = BatchPreparer.for_shards(idx, device=cpu, stream="temporal")
    assert (temporal.scale_factor, temporal.add_offset) == (idx.scale_factor, idx.add_offset)
    assert torch.equal(temporal(flow, scale), prepare_batch(flow, scale, stream="temporal", **sf))
    assert torch.equal(temporal(flow, params), prepare_train_batch(flow, params, stream="temporal", **sf))
    assert torch.equal(temporal.target(torch.tensor([2, 0])), torch.tensor([2, 0]))

    joint = BatchPreparer.for_shards(idx, device=cpu, stream="joint", channels_last=True)
    got_rgb, got_flow = joint((rgb, flow), params)
    assert torch.equal(got_rgb, prepare_train_batch(rgb, params, stream="spatial", **sf))
    assert torch.equal(got_flow, prepare_train_batch(flow, params, stream="temporal", **sf))
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in (got_rgb, got_flow))

    with temporal.autocast():
        assert not torch.is_autocast_enabled("cpu")  # no amp_dtype: float32
    bf16 = BatchPreparer(device=cpu, stream="spatial", scale_factor=1.0, add_offset=0.0, amp_dtype=torch.bfloat16)
    with bf16.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
