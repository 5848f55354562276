import os

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import trainer.data.read as read
from trainer.data.datasets import FlowStackDataset, FrameDataset, VideoEvalDataset
from trainer.data.errors import DataError
from trainer.data.lists import read_video_list
from trainer.data.shards import index_shards
from trainer.data.crops import crop_resize, five_crop_boxes
from trainer.data.transforms import FLOW_NORM_PX, hflip_flow_uint8, prepare_batch, prepare_train_batch


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------- datasets


def candidate_stacks(q: np.ndarray, L: int, side: int) -> list[np.ndarray]:
    """Every (2L, side, side) stack a multiscale crop with scales=(1,) may produce, flipped or not."""
    n, _, h, w = q.shape
    dx = (w - side) // 4
    out = []
    for s in range(n - L + 1):
        stack = q[s:s + L].reshape(2 * L, h, w)
        for x0 in (0, 2 * dx, 4 * dx):
            crop = stack[:, :side, x0:x0 + side]  # h == side: only x varies
            out += [crop, hflip_flow_uint8(crop)]
    return out


def test_flow_stacks_are_exact_consecutive_fields_with_random_start_and_flip(tiny_shards) -> None:
    idx = index_shards(tiny_shards.root)
    recs = read_video_list(tiny_shards.all_list, idx)
    L, side = 4, 32  # crop side == short side: no resize, so the codes must come back exactly
    ds = FlowStackDataset(recs, flow_length=L, crop_size=side, scales=(1.0,))
    torch.manual_seed(0)
    seen_flip, seen_start = set(), set()
    for i in (0, 5, 10):
        q = tiny_shards.flow_q[recs[i].video_id]
        cands = candidate_stacks(q, L, side)
        for _ in range(12):
            x, scale, label = ds[i]
            assert x.dtype == torch.uint8 and x.shape == (2 * L, side, side) and label == recs[i].label
            assert scale.tolist() == [1.0, 1.0]
            hits = [k for k, c in enumerate(cands) if np.array_equal(c, x.numpy())]
            assert hits, "a stack that is not L consecutive fields of this video"
            seen_flip.add(hits[0] % 2)
            seen_start.add(hits[0] // 6)
    assert seen_flip == {0, 1} and len(seen_start) >= 4


def test_flow_magnitudes_follow_the_resize_and_flip(tiny_shards) -> None:
    # Drift videos translate: u = 3 + 0.25k + 0.2t everywhere, v = 0. After resizing a crop of width cw
    # to S, u must read u * S/cw pixels, and -u * S/cw when flipped.
    idx = index_shards(tiny_shards.root)
    recs = [idx.videos["Drift/v_Drift_g02_c01"]]
    ds = FlowStackDataset(recs, flow_length=1, crop_size=64)
    torch.manual_seed(1)
    signs = set()
    for _ in range(30):
        x, scale, _ = ds[0]
        f = prepare_batch(x[None], scale[None], stream="temporal", scale_factor=idx.scale_factor,
                          add_offset=idx.add_offset)[0] * FLOW_NORM_PX  # resized pixels
        u_px = f[0].mean().item() / scale[0].item()  # back to stored-frame pixels
        t = [t for t in range(11) if abs(abs(u_px) - (3.25 + 0.2 * t)) < 0.06]
        assert len(t) == 1, u_px
        assert f[0].std() < 1e-3 and f[1].abs().max() < 0.05 * scale[1]
        signs.add(np.sign(u_px))
    assert signs == {-1.0, 1.0}


def test_short_videos_are_padded_with_their_last_field(make_tiny_shards) -> None:
    ts = make_tiny_shards(num_classes=1, videos_per_class=2, num_frames=[4, 12])
    idx = index_shards(ts.root)
    rec = idx.videos[ts.video_ids[0]]
    x, _, _ = FlowStackDataset([rec], flow_length=5, crop_size=32, train=False)[0]
    q = ts.flow_q[rec.video_id]  # 3 fields
    expected = np.concatenate([q, q[-1:], q[-1:]]).reshape(10, 32, 40)
    np.testing.assert_array_equal(x.numpy(), crop_resize(expected, (0, 4, 32, 32), 32)[0])


def test_frames_are_rgb_and_random_when_training(tiny_shards) -> None:
    idx = index_shards(tiny_shards.root)
    recs = read_video_list(tiny_shards.all_list, idx)
    ds = FrameDataset(recs, crop_size=48)
    torch.manual_seed(2)
    frames, flips = set(), set()
    for i in (0, 4, 8):
        c = recs[i].label
        for _ in range(10):
            x, scale, label = ds[i]
            assert x.shape == (3, 48, 48) and x.dtype == torch.uint8 and label == c
            m = x.float().mean((1, 2))
            assert abs(m[c] - 200) < 6  # the class colour sits in the RGB channel it was written to
            frames.add(round((m[(c + 2) % 3].item() - 10) / 15))
            grad = x[(c + 1) % 3].float().mean(0)
            flips.add(bool(grad[-1] < grad[0]))
    assert len(frames) >= 5 and flips == {False, True}
    x, _, _ = FrameDataset(recs, crop_size=48, train=False)[3]
    assert abs(x[(recs[3].label + 2) % 3].float().mean() - (10 + 15 * 6)) < 6  # middle frame when not training


def test_video_eval_positions_crops_and_flips(tiny_shards) -> None:
    idx = index_shards(tiny_shards.root)
    recs = read_video_list(tiny_shards.test_list, idx)
    L, S = 3, 28
    ev = VideoEvalDataset(recs, stream="temporal", samples=5, crops=10, flow_length=L, crop_size=S)
    np.testing.assert_array_equal(ev.positions(recs[1]), [0, 2, 4, 6, 8])  # starts over [0, 11 - 3]
    x, scale, label, index = ev[1]
    assert x.shape == (50, 2 * L, S, S) and scale.shape == (50, 2) and (label, index) == (recs[1].label, 1)
    q = tiny_shards.flow_q[recs[1].video_id]
    boxes = five_crop_boxes(32, 40)
    for s, start in enumerate([0, 2, 4, 6, 8]):
        stack = q[start:start + L].reshape(2 * L, 32, 40)
        for b, box in enumerate(boxes):
            want, sx, sy = crop_resize(stack, box, S)
            np.testing.assert_array_equal(x[s * 10 + b].numpy(), want)
            np.testing.assert_array_equal(x[s * 10 + 5 + b].numpy(), hflip_flow_uint8(np.ascontiguousarray(want)))
            assert scale[s * 10 + b].tolist() == scale[s * 10 + 5 + b].tolist() == pytest.approx([sx, sy])
    sp10 = VideoEvalDataset(recs, stream="spatial", samples=2, crops=10, crop_size=S)
    x10, _, _, _ = sp10[2]
    np.testing.assert_array_equal(x10[5:10].numpy(), x10[0:5].numpy()[..., ::-1])  # RGB flips only mirror
    sp = VideoEvalDataset(recs, stream="spatial", samples=4, crops=1, crop_size=S)
    np.testing.assert_array_equal(sp.positions(recs[0]), [0, 4, 7, 11])
    x, scale, _, _ = sp[0]
    c = recs[0].label
    assert x.shape == (4, 3, S, S)
    np.testing.assert_allclose(x[:, (c + 2) % 3].float().mean((1, 2)), [10, 70, 115, 175], atol=6)


def test_samples_beyond_the_most_distinct_frames_or_stacks_a_video_has_are_capped_there(make_tiny_shards) -> None:
    ts = make_tiny_shards(num_classes=1, videos_per_class=2, num_frames=[4, 12])
    idx = index_shards(ts.root)
    recs = [idx.videos[v] for v in ts.video_ids]
    L, S = 3, 16
    temporal = VideoEvalDataset(recs, stream="temporal", samples=1000, flow_length=L, crop_size=S)
    assert (temporal.requested, temporal.samples) == (1000, 9)  # stack starts 0..8 of the 12-frame video
    np.testing.assert_array_equal(temporal.positions(recs[1]), np.arange(9))
    np.testing.assert_array_equal(temporal.positions(recs[0]), np.zeros(9))  # one (padded) stack, as before
    assert temporal[1][0].shape == (9, 2 * L, S, S) and temporal[0][0].shape == (9, 2 * L, S, S)  # they batch
    assert temporal.capped("--samples", "test") == ("--samples 1000: the test videos have at most 9 distinct flow "
                                                    "stacks of 3 fields; scoring 9 per video")
    spatial = VideoEvalDataset(recs, stream="spatial", samples=1000, crop_size=S)
    assert spatial.samples == 12 and spatial[0][0].shape == (12, 3, S, S)
    assert spatial.capped("--val-samples", "validation") == ("--val-samples 1000: the validation videos have at most "
                                                             "12 distinct frames; scoring 12 per video")
    for samples in (5, 9):  # at or below the cap: the positions of before, no note
        ev = VideoEvalDataset(recs, stream="temporal", samples=samples, flow_length=L, crop_size=S)
        assert ev.samples == samples and ev.capped("--samples", "test") is None
        np.testing.assert_array_equal(ev.positions(recs[1]), np.rint(np.linspace(0, 8, samples)))


def test_datasets_reject_bad_arguments(tiny_shards) -> None:
    recs = read_video_list(tiny_shards.test_list, index_shards(tiny_shards.root))
    with pytest.raises(DataError, match="empty list"):
        FlowStackDataset([])
    with pytest.raises(ValueError, match="crop must be one of"):
        FrameDataset(recs, crop="random")
    with pytest.raises(ValueError, match="crops must be 1 or 10, got 5"):
        VideoEvalDataset(recs, stream="temporal", crops=5)


def test_resized_crop_option_produces_valid_samples(tiny_shards) -> None:
    recs = read_video_list(tiny_shards.train_list, index_shards(tiny_shards.root))
    ds = FlowStackDataset(recs, flow_length=2, crop_size=24, crop="resized")
    scales = torch.stack([ds[i % len(ds)][1] for i in range(40)])
    assert scales.shape == (40, 2) and (scales >= 24 / 40 - 1e-6).all() and scales.max() > 1.5  # W=40 at most


class Probe(FlowStackDataset):
    """Reports which process read the sample and what that process's HDF5 cache holds."""

    parent_handles: dict = {}

    def __getitem__(self, i: int):
        x, scale, label = super().__getitem__(i)
        own = {r.shard for r in self.records}
        foreign = sum(p not in own for p in read._files)  # files this dataset never asked for
        reused = sum(read._files.get(p) is h for p, h in self.parent_handles.items())
        return x, os.getpid(), read._files_pid, foreign, reused


def test_workers_open_files_lazily_in_their_own_process(tiny_shards, make_tiny_shards) -> None:
    other = make_tiny_shards(num_classes=1, videos_per_class=1)
    recs = read_video_list(tiny_shards.all_list, index_shards(tiny_shards.root))
    ds = Probe(recs, flow_length=2, crop_size=16)
    # Read in the parent first (this dataset and another folder), so the workers inherit open handles
    # that they must neither reuse nor keep.
    FlowStackDataset(list(index_shards(other.root).videos.values()), flow_length=2, crop_size=16)[0]
    _, pid, files_pid, foreign, _ = ds[0]
    assert pid == files_pid == os.getpid() and foreign >= 1
    ds.parent_handles = dict(read._files)
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    pids = set()
    for x, pids_b, files_pid_b, foreign_b, reused_b in loader:
        assert x.shape == (4, 4, 16, 16)
        assert (pids_b == files_pid_b).all() and (pids_b != os.getpid()).all()
        assert (foreign_b == 0).all() and (reused_b == 0).all()
        pids |= set(pids_b.tolist())
    assert len(pids) == 2
    assert read._files == ds.parent_handles  # the parent's cache is untouched


def test_index_leaves_no_hdf5_file_open(make_tiny_shards) -> None:
    ts = make_tiny_shards()
    before = len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE))
    idx = index_shards(ts.root)
    FrameDataset(read_video_list(ts.all_list, idx))
    FlowStackDataset(read_video_list(ts.all_list, idx))
    assert len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)) == before  # nothing opened before a fork


def test_flip_can_be_turned_off_for_direction_classes(tiny_shards) -> None:
    recs = read_video_list(tiny_shards.all_list, index_shards(tiny_shards.root))
    ds = FlowStackDataset(recs[:1], flow_length=3, crop_size=32, scales=(1.0,), flip=False)
    cands = candidate_stacks(tiny_shards.flow_q[recs[0].video_id], 3, 32)
    for _ in range(16):
        x = ds[0][0].numpy()
        assert any(np.array_equal(c, x) for c in cands[0::2])  # unflipped candidates only
        assert not any(np.array_equal(c, x) for c in cands[1::2])
    assert FrameDataset(recs, flip=True, train=False).flip is False  # evaluation never flips


@pytest.mark.slow
def test_reads_a_real_flowprep_extraction_with_the_right_signs(tmp_path) -> None:
    """flowprep sample -> flowprep extract (Farneback) -> these datasets: rightward motion reads u > 0,
    downward v > 0, and a flipped view of the same stack reads exactly -u."""
    import subprocess
    import sys

    run = lambda *a: subprocess.run([sys.executable, "-m", "flowprep", *a], check=True, capture_output=True)  # noqa: E731
    run("sample", "--out", str(tmp_path / "s"), "--videos-per-class", "2", "--clips-per-group", "1", "--size", "64", "--frames", "14",
        "--classes", "MoveLeft,MoveRight,MoveUp,MoveDown", "--no-val")
    (tmp_path / "s" / "videos" / "MoveUp" / "v_MoveUp_g09_c01.avi").write_bytes(b"not a video " * 100)
    extract = subprocess.run([sys.executable, "-m", "flowprep", "extract", "--videos", str(tmp_path / "s" / "videos"),
                              "--out", str(tmp_path / "o"), "--method", "farneback", "--workers", "1", "--class-index",
                              str(tmp_path / "s" / "classInd.txt")], capture_output=True, text=True)
    assert extract.returncode == 1 and "1 video(s) failed" in extract.stdout + extract.stderr, extract
    idx = index_shards(tmp_path / "o")
    assert idx.add_offset == pytest.approx(-20.0) and idx.has_rgb and (idx.height, idx.width) == (64, 64)
    recs = read_video_list(tmp_path / "s" / "trainlist01.txt", idx, labelled=True)
    recs += read_video_list(tmp_path / "s" / "testlist01.txt", idx, labelled=False)
    ev = VideoEvalDataset(recs, stream="temporal", samples=4, crops=10, flow_length=4, crop_size=48)
    mean = {}
    for i in range(len(ev)):
        x, scale, label, _ = ev[i]
        f = prepare_batch(x, scale, stream="temporal", scale_factor=idx.scale_factor, add_offset=idx.add_offset)
        f = f.view(4, 10, 4, 2, 48, 48) * FLOW_NORM_PX  # (samples, crops, L, uv, S, S) in resized pixels
        np.testing.assert_allclose(f[:, 5:, :, 0].mean().item(), -f[:, :5, :, 0].mean().item(), atol=1e-4)
        mean.setdefault(idx.classes[label], []).append(f[:, :5].mean((0, 1, 2, 4, 5)))
    m = {c: torch.stack(v).mean(0) for c, v in mean.items()}  # (u, v) per class
    assert m["MoveRight"][0] > 0.1 and m["MoveLeft"][0] < -0.1, m
    assert m["MoveDown"][1] > 0.1 and m["MoveUp"][1] < -0.1, m
    frame, _, label = FrameDataset(recs[:1], crop_size=48, train=False)[0]
    assert frame.shape == (3, 48, 48) and label == recs[0].label
    # a list naming the video that failed to decode says so, with the way out, in one line
    listed = tmp_path / "with_failed.txt"
    listed.write_text("MoveUp/v_MoveUp_g09_c01.avi\n" + (tmp_path / "s" / "testlist01.txt").read_text())
    with pytest.raises(DataError) as e:
        read_video_list(listed, idx)
    assert str(e.value).startswith(f"{listed}:1: video 'MoveUp/v_MoveUp_g09_c01' is not in the shards under "
                                   f"{tmp_path / 'o'}: its extraction failed (") and "\n" not in str(e.value)
    assert str(e.value).endswith("; drop it from the list (" + str(tmp_path / "o") + "/manifest*.json list the failed "
                                 "videos; pipelines/ucf101.md shows how) or replace the file and rerun flowprep extract")


# ---------------------------------------------------------------- device-side training crops


def test_direct_chunk_reads_equal_hdf5_hyperslabs_with_windows_and_padding(make_tiny_shards) -> None:
    ts = make_tiny_shards(num_classes=1, videos_per_class=2, num_frames=[5, 12])
    idx = index_shards(ts.root)
    for vid in ts.video_ids:
        rec, q = idx.videos[vid], ts.flow_q[vid]
        assert read._flow_dataset(rec)[1] == "gzip"  # the format's storage takes the direct path
        np.testing.assert_array_equal(read.read_flow(rec, 1, 4), q[1:4])
        got = read.read_flow(rec, 2, 9, rows=(3, 20), cols=(7, 30))
        want = np.concatenate([q[2:9], np.repeat(q[-1:], 9 - min(9, len(q)), axis=0)])[:, :, 3:23, 7:37]
        np.testing.assert_array_equal(got, want)
        item = np.zeros((1 + 14, 20, 30), np.uint8)  # flow written into part of a larger item, in place
        assert read.read_flow(rec, 2, 9, rows=(3, 20), cols=(7, 30), out=item[1:].reshape(7, 2, 20, 30)).base is not None
        np.testing.assert_array_equal(item[1:].reshape(7, 2, 20, 30), want)
        assert not item[0].any()
        with pytest.raises(ValueError, match=r"out must be uint8 \(7, 2, 20, 30\)"):
            read.read_flow(rec, 2, 9, rows=(3, 20), cols=(7, 30), out=np.zeros((7, 2, 20, 31), np.uint8))
    # Other layouts fall back to h5py and read the same codes.
    read._files.pop(rec.shard).close()
    read._files_pid = -1  # drop the cached datasets too
    with h5py.File(rec.shard, "a") as f:
        g = f[f"videos/{rec.video_id}"]
        del g["flow"]
        g.create_dataset("flow", data=q, chunks=(2, 2, 8, 8), shuffle=True, compression="gzip")
    assert read._flow_dataset(rec)[1] == "hyperslab"
    np.testing.assert_array_equal(read.read_flow(rec, 2, 9, rows=(3, 20), cols=(7, 30)), want)


def test_a_corrupt_flow_chunk_is_one_clear_error(make_tiny_shards) -> None:
    ts = make_tiny_shards(num_classes=1, videos_per_class=1)
    rec = index_shards(ts.root).videos[ts.video_ids[0]]
    with h5py.File(rec.shard, "a") as f:
        ds = f[f"videos/{rec.video_id}/flow"]
        chunk = bytearray(ds.id.read_direct_chunk((3, 0, 0, 0))[1])
        chunk[len(chunk) // 2:] = bytes(len(chunk) - len(chunk) // 2)  # the second half zeroed, as a bad disk would
        ds.id.write_direct_chunk((3, 0, 0, 0), bytes(chunk))
    read._files_pid = -1  # forget handles opened before the edit
    np.testing.assert_array_equal(read.read_flow(rec, 0, 3), ts.flow_q[rec.video_id][:3])  # other fields still read
    with pytest.raises(DataError) as e:
        read.read_flow(rec, 2, 5)
    assert one_line(e) == (f"{rec.shard}: field 3 of {rec.video_id} does not inflate (corrupt chunk); "
                           "`flowprep verify` on the folder says what to re-extract")


def test_a_corrupt_chunk_read_through_hdf5s_own_filters_is_one_line_naming_shard_video_and_fields(
        make_tiny_shards) -> None:
    """Layouts other than one plain gzip field per chunk are read as an h5py hyperslab: HDF5's OSError too becomes
    a DataError naming the shard, the video and the fields."""
    ts = make_tiny_shards(num_classes=1, videos_per_class=1)
    rec = index_shards(ts.root).videos[ts.video_ids[0]]
    with h5py.File(rec.shard, "r+") as f:
        g = f[f"videos/{rec.video_id}"]
        q = g["flow"][()]
        del g["flow"]
        ds = g.create_dataset("flow", data=q, chunks=(1, *q.shape[1:]), compression="gzip", shuffle=True)
        chunks = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    with open(rec.shard, "r+b") as f:
        for c in chunks:
            f.seek(c.byte_offset + c.size // 2)
            f.write(b"\xff" * 8)
    read._files_pid = -1  # forget handles opened before the edit
    assert read._flow_dataset(rec)[1] == "hyperslab"
    with pytest.raises(DataError) as e:
        read.read_flow(rec, 2, 5)
    assert one_line(e).startswith(f"{rec.shard}: fields 2-4 of {rec.video_id} cannot be read (OSError: ")
    assert one_line(e).endswith("; `flowprep verify` on the folder says what to re-extract")


def test_device_items_are_windows_with_the_cpu_paths_box_and_flip(tiny_shards) -> None:
    """Same seed -> the device item's box and flip are the CPU item's; cropped on the device, the two agree."""
    idx = index_shards(tiny_shards.root)
    recs = read_video_list(tiny_shards.all_list, idx)
    L, S = 3, 24
    kw = dict(flow_length=L, crop_size=S)
    cpu, dev = FlowStackDataset(recs, **kw), FlowStackDataset(recs, frame_size=(32, 40), **kw)
    assert dev.window == (32, 32) and FlowStackDataset(recs, frame_size=(32, 40), crop="resized", **kw).window == (32, 40)
    flips = set()
    for i in range(0, 12, 2):
        torch.manual_seed(100 + i)
        x_cpu, scale, label = cpu[i]
        torch.manual_seed(100 + i)
        x, params, label_dev = dev[i]
        assert x.dtype == torch.uint8 and x.shape == (2 * L, 32, 32) and label_dev == label
        y0, x0, h, w, flip, size = params.tolist()
        assert size == S and scale.tolist() == pytest.approx([S / w, S / h])
        assert 0 <= y0 and y0 + h <= 32 and 0 <= x0 and x0 + w <= 32
        flips.add(flip)
        # The window is L consecutive fields of this video, uncropped and unflipped.
        q = tiny_shards.flow_q[recs[i].video_id]
        assert any(np.array_equal(x.numpy(), q[s:s + L].reshape(2 * L, 32, 40)[:, :, c:c + 32])
                   for s in range(len(q) - L + 1) for c in range(9))
        got = prepare_train_batch(x[None], params[None], stream="temporal", scale_factor=idx.scale_factor,
                                  add_offset=idx.add_offset)[0]
        want = prepare_batch(x_cpu[None], scale[None], stream="temporal", scale_factor=idx.scale_factor,
                             add_offset=idx.add_offset)[0]
        tol = idx.scale_factor * max(S / w, S / h) / FLOW_NORM_PX  # cv2's uint8 rounding, one code
        np.testing.assert_allclose(got[:, 1:-1, 1:-1].numpy(), want[:, 1:-1, 1:-1].numpy(), atol=tol)
    assert flips == {0.0, 1.0}


def test_device_path_flips_and_scales_real_shard_flow(tiny_shards) -> None:
    # Drift: u = 3 + 0.25k + 0.2t px everywhere, v = 0; after the device step u reads +-u * S/w.
    idx = index_shards(tiny_shards.root)
    ds = FlowStackDataset([idx.videos["Drift/v_Drift_g02_c01"]], flow_length=1, crop_size=64, frame_size=(32, 40))
    torch.manual_seed(1)
    batch = [ds[0] for _ in range(30)]
    x, params = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
    f = prepare_train_batch(x, params, stream="temporal", scale_factor=idx.scale_factor,
                            add_offset=idx.add_offset) * FLOW_NORM_PX
    signs = set()
    for k in range(30):
        u_px = f[k, 0].mean().item() * params[k, 3].item() / 64
        assert sum(abs(abs(u_px) - (3.25 + 0.2 * t)) < 0.06 for t in range(11)) == 1, u_px
        assert f[k, 0].std() < 1e-3 and f[k, 1].abs().max() < 0.05 * 64 / params[k, 2]
        assert np.sign(u_px) == (-1 if params[k, 4] else 1)
        signs.add(np.sign(u_px))
    assert signs == {-1.0, 1.0}


def test_device_frames_are_rgb_windows(tiny_shards) -> None:
    idx = index_shards(tiny_shards.root)
    recs = read_video_list(tiny_shards.all_list, idx)
    ds = FrameDataset(recs, crop_size=48, frame_size=(32, 40), crop="resized")
    torch.manual_seed(3)
    x, params, label = ds[4]
    assert x.shape == (3, 32, 40) and params.shape == (6,) and label == recs[4].label
    assert abs(x[label].float().mean() - 200) < 6  # RGB order, class colour in its channel
    assert FrameDataset(recs, frame_size=(32, 40), train=False).frame_size is None  # evaluation crops on the CPU


def test_device_items_reject_a_video_of_another_size(make_tiny_shards) -> None:
    ts = make_tiny_shards(num_classes=1, videos_per_class=1, width=48)
    recs = list(index_shards(ts.root).videos.values())
    with pytest.raises(DataError, match=r"stored at \(32, 48\), expected frame_size \(32, 40\)") as e:
        FlowStackDataset(recs, flow_length=2, crop_size=16, frame_size=(32, 40))[0]
    one_line(e)


def test_device_items_batch_through_worker_processes(tiny_shards) -> None:
    recs = read_video_list(tiny_shards.all_list, index_shards(tiny_shards.root))
    ds = FlowStackDataset(recs, flow_length=2, crop_size=16, frame_size=(32, 40))
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    shapes = {(tuple(x.shape), tuple(p.shape)) for x, p, _ in loader}
    assert shapes == {((4, 4, 32, 32), (4, 6))}
