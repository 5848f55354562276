"""trainer/data/batches.py: training batches through the ring of shared buffers, with real worker processes.

The reference is the plain collating DataLoader (``shared_batches=False``) over the same items: the ring must
give exactly its batches, epoch after epoch, whatever the consumer's pace.
"""

from __future__ import annotations

import itertools
import re
import time

import pytest
import torch
from torch.utils.data import DataLoader

from trainer.data.batches import HELD, BatchRing, EpochBatches, RingBatches, SharedBatchLoader, ring_slots
from trainer.config import DataConfig, ModelConfig
from trainer.data.errors import DataError
from trainer.data.lists import read_video_list
from trainer.data.shards import index_shards
from trainer.distributed import DeviceError, DistInfo
from trainer.data.loaders import make_train_loader

CPU = torch.device("cpu")


def _loaders(ts, *, stream: str, device_crop: bool, workers: int = 2, batch_size: int = 3,
             device: torch.device = CPU):
    index = index_shards(ts.root)
    records = read_video_list(ts.all_list, index)  # 12 videos: 4 batches of 3 per epoch
    model = ModelConfig(stream=stream, num_classes=3, flow_length=2,
                        **({"fusion": "average", "temporal_dropout": 0.7} if stream == "joint" else {}))
    made = {}
    for shared in (True, False):
        data = DataConfig(shards=str(ts.root), train_list=str(ts.all_list), crop_size=16, batch_size=batch_size,
                          workers=workers, shared_batches=shared)
        made[shared] = make_train_loader(model, data, records, frame_size=(ts.height, ts.width) if device_crop else None,
                                         dist=DistInfo(), seed=7, device=device)
    return made[True], made[False]


def _epoch(loader, sampler, epoch: int, *, pause: float = 0.0) -> list[tuple]:
    """The epoch's batches as detached copies, each taken after ``pause`` s (the workers run ahead meanwhile)."""
    sampler.set_epoch(epoch)
    out = []
    for x, params, labels in loader:
        time.sleep(pause)
        xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)  # joint: collate gives a list, the ring a tuple
        out.append((tuple(t.clone() for t in xs), params.clone(), labels.clone()))
    return out


def _assert_same(got: list[tuple], want: list[tuple]) -> None:
    assert len(got) == len(want) > 0
    for (gx, gp, gl), (wx, wp, wl) in zip(got, want):
        assert len(gx) == len(wx)
        for a, b in zip(gx, wx):
            assert a.dtype == b.dtype == torch.uint8 and torch.equal(a, b)
        assert torch.equal(gp, wp) and torch.equal(gl, wl)


@pytest.mark.parametrize("stream", ["spatial", "temporal", "joint"])
@pytest.mark.parametrize("device_crop", [True, False], ids=["device_crop", "cpu_crop"])
def test_ring_gives_the_collated_batches(tiny_shards, stream: str, device_crop: bool) -> None:
    (ring, ring_sampler), (plain, plain_sampler) = _loaders(tiny_shards, stream=stream, device_crop=device_crop)
    assert isinstance(ring, SharedBatchLoader) and isinstance(plain, DataLoader)
    assert len(ring) == len(plain) == 4
    for epoch in (0, 1):  # persistent workers, second epoch on the same ring
        got, want = _epoch(ring, ring_sampler, epoch), _epoch(plain, plain_sampler, epoch)
        _assert_same(got, want)
    assert not torch.equal(got[0][0][0], _epoch(plain, plain_sampler, 0)[0][0][0])  # epochs differ: a real check


def test_a_slow_consumer_still_sees_each_batch_intact(tiny_shards) -> None:
    """The consumer dwells on each batch while 2 workers x prefetch 2 fill the ring ahead: no slot in use is
    overwritten (the ring is as small as allowed)."""
    (ring, sampler), (plain, plain_sampler) = _loaders(tiny_shards, stream="temporal", device_crop=True, batch_size=1)
    assert ring.ring.slots == 2 * 2 + HELD and len(ring) == 12  # more batches than slots: the ring wraps
    _assert_same(_epoch(ring, sampler, 0, pause=0.05), _epoch(plain, plain_sampler, 0))


def test_an_abandoned_epoch_leaves_the_next_one_intact(tiny_shards) -> None:
    (ring, sampler), (plain, plain_sampler) = _loaders(tiny_shards, stream="temporal", device_crop=True, batch_size=1)
    sampler.set_epoch(0)
    it = iter(ring)
    for _ in range(3):
        next(it)
    it.close()  # e.g. an exception in the step: the workers still hold dispatched batches of epoch 0
    _assert_same(_epoch(ring, sampler, 1), _epoch(plain, plain_sampler, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("stream", ["temporal", "joint"])
def test_on_cuda_batches_arrive_on_the_device_from_the_pinned_ring(tiny_shards, stream: str) -> None:
    cuda = torch.device("cuda", torch.cuda.current_device())
    (ring, sampler), (plain, plain_sampler) = _loaders(tiny_shards, stream=stream, device_crop=True, batch_size=1,
                                                       device=cuda)
    assert ring.pinned and all(t.is_pinned() for t in ring.ring.parts)
    got = _epoch(ring, sampler, 0, pause=0.02)
    assert all(t.device == cuda for x, _, _ in got for t in x)
    _assert_same([(tuple(t.cpu() for t in x), p, lab) for x, p, lab in got], _epoch(plain, plain_sampler, 0))
    ring.close()
    assert not ring.ring.parts[0].is_pinned()


def test_a_ring_smaller_than_the_dataloaders_lookahead_is_refused(tiny_shards) -> None:
    (ring, sampler), _ = _loaders(tiny_shards, stream="temporal", device_crop=True)
    small = BatchRing(slots=ring_slots(workers=2, prefetch_factor=2) - 1, batch_size=3, parts=[(4, 32, 32)], params=6)
    with pytest.raises(ValueError, match="2 workers x prefetch_factor 2 needs at least 7 slots, got 6"):
        SharedBatchLoader(ring.loader, small, device=CPU)


def test_an_item_of_another_layout_is_a_bug() -> None:
    ring = BatchRing(slots=2, batch_size=2, parts=[(3, 8, 8), (4, 8, 8)], params=6)
    ring.put(1, 1, (torch.ones(3, 8, 8, dtype=torch.uint8), torch.full((4, 8, 8), 2, dtype=torch.uint8)),
             torch.arange(6.0), 5)
    xs, params, labels = ring.view(1, 2)
    assert xs[0][1].eq(1).all() and xs[1][1].eq(2).all() and xs[0][0].eq(0).all()
    assert params[1].tolist() == [0, 1, 2, 3, 4, 5] and labels.tolist() == [0, 5]
    with pytest.raises(ValueError, match=r"expected an item of parts \[\(3, 8, 8\), \(4, 8, 8\)\], got \[\(3, 8, 9\)\]"):
        ring.put(0, 0, torch.zeros(3, 8, 9, dtype=torch.uint8), torch.zeros(6), 0)


def test_too_little_shared_memory_is_one_clear_error(monkeypatch) -> None:
    def no_space(self):
        raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2_3>: No space left on device (28)")

    monkeypatch.setattr(torch.Tensor, "share_memory_", no_space)  # as on a container's 64 MB /dev/shm
    with pytest.raises(DeviceError) as e:
        BatchRing(slots=31, batch_size=64, parts=[(20, 240, 240)], params=6)
    assert str(e.value) == (
        "cannot allocate the 2180 MiB batch ring in shared memory (unable to allocate shared memory(shm) for file "
        "</torch_1_2_3>: No space left on device (28)); give the container more (--ipc=host or --shm-size), lower "
        "--workers or --batch-size, or train with --no-shared-batches")


class _Failing(torch.utils.data.Dataset):
    """Item (epoch, i) -> a small item, except index 5: a DataError, as a corrupt chunk gives."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, key: tuple[int, int]):
        if key[1] == 5:
            raise DataError("shard-00001.h5: field 3 of v_x does not inflate (corrupt chunk)")
        return torch.full((2, 4, 4), key[1], dtype=torch.uint8), torch.zeros(2), key[1] % 3


def test_a_data_error_in_a_worker_reaches_the_main_process() -> None:
    ring = BatchRing(slots=ring_slots(workers=2, prefetch_factor=2), batch_size=2, parts=[(2, 4, 4)], params=2)
    sampler = torch.utils.data.DistributedSampler(range(8), num_replicas=1, rank=0, shuffle=False)
    loader = DataLoader(RingBatches(_Failing(), ring), batch_size=None, num_workers=2, prefetch_factor=2,
                        sampler=EpochBatches(sampler, batch_size=2, drop_last=False))
    it = iter(SharedBatchLoader(loader, ring, device=CPU))
    x, _, labels = next(it)
    assert x[:, 0, 0, 0].tolist() == [0, 1] and labels.tolist() == [0, 1]
    next(it)
    with pytest.raises(DataError, match=r"field 3 of v_x does not inflate \(corrupt chunk\)") as raised:
        next(it)
    # Dropped as trainer/cli.py drops it: the traceback is a reference cycle holding the DataLoader iterator; left
    # to the garbage collector (in a later test), its 2 workers each waited out torch's 5 s join timeout.
    raised.value.__traceback__ = None
    del raised


def test_epoch_batches_run_on_into_the_next_epochs_in_their_own_order() -> None:
    sampler = torch.utils.data.DistributedSampler(range(7), num_replicas=1, rank=0, shuffle=True, seed=3)
    sampler.set_epoch(4)
    batches = EpochBatches(sampler, batch_size=3, drop_last=False)
    assert len(batches) == 3
    stream = list(itertools.islice(batches, 7))
    assert [(e, g) for e, g, _ in stream] == [(4, 0), (4, 1), (4, 2), (5, 3), (5, 4), (5, 5), (6, 6)]
    assert [k for _, _, k in stream[:3]] == batches.batches(4) and [len(k) for _, _, k in stream[:3]] == [3, 3, 1]
    sampler.set_epoch(5)
    assert [k for _, _, k in stream[3:6]] == batches.batches(5) == [list(sampler)[i:i + 3] for i in (0, 3, 6)]
    assert batches.batches(4) != batches.batches(5)
    assert len(EpochBatches(sampler, batch_size=3, drop_last=True)) == 2


def test_the_stream_goes_on_across_epochs_and_restarts_where_it_must(tiny_shards) -> None:
    """Epochs read to the end continue one DataLoader iteration; an epoch out of turn starts a new one."""
    (ring, sampler), (plain, plain_sampler) = _loaders(tiny_shards, stream="temporal", device_crop=True)
    where = []
    for epoch in (0, 1, 2, 1):  # the last one: as after a resume from epoch 1
        _assert_same(_epoch(ring, sampler, epoch), _epoch(plain, plain_sampler, epoch))
        where.append((ring._start[0], ring._consumed))  # the iteration's first epoch, batches read from it
    assert where == [(0, 4), (0, 8), (0, 12), (1, 4)]


def test_an_epoch_resumed_after_some_batches_gives_the_rest_of_its_batches_and_the_stream_goes_on(tiny_shards) -> None:
    """EpochSampler.set_epoch(epoch, first_batch=S), as fit resumes a stopped epoch: both loaders give the epoch's
    batches from S on (the first S not even asked for), and the ring then runs on into the next epoch in the same
    DataLoader iteration."""
    (ring, sampler), (plain, plain_sampler) = _loaders(tiny_shards, stream="temporal", device_crop=True)
    whole = _epoch(plain, plain_sampler, 1)
    assert len(whole) == len(plain) == 4
    for loader, s in ((ring, sampler), (plain, plain_sampler)):
        s.set_epoch(1, first_batch=3)
        assert len(loader) == 1
        got = [(tuple(x) if isinstance(x, tuple) else (x,), p.clone(), y.clone()) for x, p, y in loader]
        _assert_same([(tuple(t.clone() for t in x), p, y) for x, p, y in got], whole[3:])
    assert [i for _, i in plain.batch_sampler.sampler] == list(plain_sampler)[9:]  # the keys asked for: the last 3
    assert next(iter(ring.loader.sampler))[2] == list(sampler)[9:]
    _assert_same(_epoch(ring, sampler, 2), _epoch(plain, plain_sampler, 2))
    assert (ring._start, ring._consumed) == ((1, 3), 5)  # one iteration, from epoch 1's batch 3 on
    for loader, s in ((ring, sampler), (plain, plain_sampler)):
        s.set_epoch(3, first_batch=4)  # stopped after the epoch's last step: nothing left to read
        assert len(loader) == 0 and list(loader) == []


def _fit_cli(ts, out, *extra: str):
    from click.testing import CliRunner

    from trainer.cli import main
    args = ["fit", "--stream", "temporal", "--shards", ts.root, "--train-list", ts.train_list, "--out", out,
            "--epochs", "2", "--arch", "resnet18", "--crop-size", "16", "--flow-length", "2", "--batch-size", "3",
            "--workers", "2", "--device", "cpu", "--no-progress", *extra]
    return CliRunner().invoke(main, [str(a) for a in args])


def test_trainer_fit_trains_the_same_network_with_either_loader(tiny_shards, tmp_path) -> None:
    from trainer.checkpoint import LAST, load_checkpoint

    runs = {flag: tmp_path / flag for flag in ("--shared-batches", "--no-shared-batches")}
    for flag, out in runs.items():
        result = _fit_cli(tiny_shards, out, flag)
        assert result.exit_code == 0, result.output
    ring, plain = (load_checkpoint(out / LAST) for out in runs.values())
    assert ring["config"]["data"]["shared_batches"] is True and plain["config"]["data"]["shared_batches"] is False
    assert ring["epoch"] == plain["epoch"] == 2
    for k, v in ring["model"].items():
        assert torch.equal(v, plain["model"][k]), k


def test_trainer_fit_says_in_one_line_when_shared_memory_is_short(tiny_shards, tmp_path, monkeypatch) -> None:
    def no_space(self):
        raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1>: No space left on device (28)")

    monkeypatch.setattr(torch.Tensor, "share_memory_", no_space)
    result = _fit_cli(tiny_shards, tmp_path / "run")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert re.fullmatch(r"Error: cannot allocate the \d+ KiB batch ring in shared memory \(.*No space left on device "
                        r"\(28\)\); give the container more \(--ipc=host or --shm-size\), .* --no-shared-batches",
                        result.output.strip().splitlines()[-1])
