import json
import shutil

import h5py
import numpy as np
import pytest

from flowprep.extract.quantize import scale_and_offset
from trainer.data.datasets import FlowStackDataset
from trainer.data.errors import DataError
from trainer.data.lists import read_video_list
from trainer.data.shards import index_shards


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------- index_shards


def test_index_reads_classes_records_and_quantization_from_the_files(tiny_shards) -> None:
    idx = index_shards(tiny_shards.root)
    assert idx.classes == tiny_shards.classes
    assert sorted(idx.videos) == sorted(tiny_shards.video_ids)
    assert (idx.height, idx.width, idx.has_rgb) == (32, 40, True)
    assert (idx.scale_factor, idx.add_offset) == pytest.approx(scale_and_offset(tiny_shards.bound))
    assert idx.add_offset == pytest.approx(-12.0)  # the bound comes from the data, not an assumed 20
    for vid, rec in idx.videos.items():
        assert (rec.label, rec.num_frames) == (tiny_shards.labels[vid], tiny_shards.num_frames[vid])
        assert rec.class_name == tiny_shards.classes[rec.label]
        with h5py.File(rec.shard, "r") as f:
            assert f"videos/{vid}/flow" in f
    assert len({r.shard for r in idx.videos.values()}) == 3


def test_index_reads_every_part_of_an_array_run(make_tiny_shards) -> None:
    ts = make_tiny_shards(tasks=3, videos_per_shard=2)
    assert len(list(ts.root.glob("manifest-*-of-00003.json"))) == 3
    idx = index_shards(ts.root)
    assert sorted(idx.videos) == sorted(ts.video_ids)
    assert {r.shard.name[:9] for r in idx.videos.values()} == {"task00000", "task00001", "task00002"}


def test_incomplete_run_is_an_error_unless_allowed(make_tiny_shards) -> None:
    ts = make_tiny_shards(tasks=2)
    part = ts.root / "manifest-00001-of-00002.json"
    part.unlink()
    with pytest.raises(DataError, match=r"incomplete run \(missing manifest parts for tasks \[1\]\)") as e:
        index_shards(ts.root)
    one_line(e)
    with pytest.warns(UserWarning, match="incomplete run"):
        idx = index_shards(ts.root, allow_incomplete=True)
    assert sorted(idx.videos) == sorted(ts.video_ids[0::2])


def test_manifest_saying_incomplete_is_an_error(make_tiny_shards) -> None:
    ts = make_tiny_shards()
    m = json.loads((ts.root / "manifest.json").read_text())
    m["complete"] = False
    (ts.root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="complete=false in manifest.json"):
        index_shards(ts.root)


def test_missing_manifest_missing_shard_and_truncated_shard(make_tiny_shards, tmp_path) -> None:
    with pytest.raises(DataError, match="no manifest.json") as e:
        index_shards(tmp_path)
    one_line(e)
    with pytest.raises(DataError, match="no such directory"):
        index_shards(tmp_path / "nope")
    ts = make_tiny_shards()
    (ts.root / "shard-00001.h5").unlink()
    with pytest.raises(DataError, match=r"shard-00001\.h5: listed in manifest\.json but missing on disk") as e:
        index_shards(ts.root)
    one_line(e)
    ts = make_tiny_shards()
    with open(ts.root / "shard-00002.h5", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match=r"shard-00002\.h5: 1000 bytes on disk, manifest\.json says \d+"):
        index_shards(ts.root)


def test_mismatched_bounds_across_shards_is_an_error(make_tiny_shards) -> None:
    a, b = make_tiny_shards(tasks=2, bound=12.0), make_tiny_shards(tasks=2, bound=20.0)
    # Same video ids per task: swap task 1 of a for task 1 of b (extracted with another bound).
    for p in a.root.glob("task00001-*"):
        p.unlink()
    for p in b.root.glob("task00001-*.h5"):
        shutil.copy(p, a.root / p.name)
    shutil.copy(b.root / "manifest-00001-of-00002.json", a.root)
    with pytest.raises(DataError, match=r"bound 12 px.*bound 20 px") as e:
        index_shards(a.root)
    one_line(e)


def test_videos_of_different_sizes_index_with_size_zero(make_tiny_shards) -> None:
    a, b = make_tiny_shards(tasks=2), make_tiny_shards(tasks=2, width=48)
    for p in a.root.glob("task00001-*"):
        p.unlink()
    for p in b.root.glob("task00001-*.h5"):
        shutil.copy(p, a.root / p.name)
    shutil.copy(b.root / "manifest-00001-of-00002.json", a.root)
    idx = index_shards(a.root)
    assert (idx.height, idx.width) == (0, 0) and len(idx.videos) == 12
    recs = read_video_list(a.all_list, idx)
    items = [FlowStackDataset([r], flow_length=2, crop_size=16, train=False)[0] for r in recs]
    assert {tuple(x.shape) for x, _, _ in items} == {(4, 16, 16)}
    # Centre crops follow each video's short side (32 for both widths, 40 and 48).
    assert {round(s[0].item(), 5) for _, s, _ in items} == {round(16 / round(32 * 224 / 256), 5)}


def test_manifest_naming_a_video_the_shard_lacks_and_mixed_runs(make_tiny_shards) -> None:
    ts = make_tiny_shards()
    m = json.loads((ts.root / "manifest.json").read_text())
    m["shards"][0]["videos"].append("Drift/v_Drift_g99_c01")
    (ts.root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"shard-00000\.h5: video 'Drift/v_Drift_g99_c01' listed in manifest\.json but not in the shard"):
        index_shards(ts.root)
    (ts.root / "manifest-00000-of-00002.json").write_text("{}")
    with pytest.raises(DataError, match="both manifest.json and array-run manifest parts"):
        index_shards(ts.root)


def test_class_list_disagreeing_between_parts_is_an_error(make_tiny_shards) -> None:
    ts = make_tiny_shards(tasks=2)
    part = ts.root / "manifest-00001-of-00002.json"
    m = json.loads(part.read_text())
    m["classes"] = m["classes"][::-1]
    part.write_text(json.dumps(m))
    with pytest.raises(DataError, match="classes differ"):
        index_shards(ts.root)


# ---------------------------------------------------------------- damaged shards


@pytest.mark.parametrize("damage", ["first 4 KB zeroed", "not HDF5"])
def test_a_shard_hdf5_cannot_open_is_one_line_naming_it_and_its_videos(make_tiny_shards, damage) -> None:
    ts = make_tiny_shards()
    shard = ts.root / "shard-00001.h5"  # Expand g02-g04, Rotate g01-g02
    size = shard.stat().st_size  # kept: the manifest's size check passes, as after a bad disk block
    if damage == "first 4 KB zeroed":
        with open(shard, "r+b") as f:
            f.write(bytes(4096))
    else:
        shard.write_bytes(b"x" * size)
    assert shard.stat().st_size == size
    with pytest.raises(DataError) as e:
        index_shards(ts.root)
    msg = one_line(e)
    assert msg.startswith(f"{shard}: cannot be opened as HDF5 (OSError: "), msg
    assert "(5 videos, e.g. 'Expand/v_Expand_g02_c01') is damaged" in msg and "flowprep verify" in msg


@pytest.mark.parametrize("attr, value, shown", [("scale_factor", 0.2, "scale_factor 0.2 / add_offset -12,"),
                                                ("add_offset", -20.0, "scale_factor 0.09411765 / add_offset -20,")])
def test_a_video_with_edited_flow_quantization_is_refused_naming_shard_video_and_values(
        make_tiny_shards, tmp_path, attr, value, shown) -> None:
    """Attributes only, before any training; the shards' own bounds (root params) agree, so no "bound 12 px ...
    bound 12 px" between shards: the message is about the video."""
    ts = make_tiny_shards()
    shard, vid = ts.root / "shard-00001.h5", "Expand/v_Expand_g02_c01"  # the first video of its shard
    with h5py.File(shard, "r+") as f:
        f[f"videos/{vid}/flow"].attrs[attr] = np.float32(value)
    idx = index_shards(ts.root)
    assert (idx.bound, idx.scale_factor, idx.add_offset) == (12.0, *(pytest.approx(v) for v in scale_and_offset(12.0)))
    with pytest.raises(DataError) as e:
        read_video_list(ts.all_list, idx)
    assert one_line(e) == (f"{shard}: video {vid} has flow {shown} but the shard's params say bound 12 px, i.e. "
                           "0.09411765 / -12; its flow would be dequantized wrongly (an edited or foreign video): "
                           "`flowprep verify` on the folder says what to re-extract")
    others = tmp_path / "others.txt"  # a list without that video trains: only the videos used are checked
    others.write_text("".join(ln + "\n" for ln in ts.all_list.read_text().splitlines() if vid not in ln))
    assert len(read_video_list(others, idx)) == 11


def test_a_shard_whose_params_bound_float32_cannot_hold_is_refused_in_one_line(make_tiny_shards) -> None:
    """An older flowprep extract took --bound 1e308 and stored infinite scale_factors; indexing raised ValueError."""
    ts = make_tiny_shards()
    for shard in sorted(ts.root.glob("shard-*.h5")):
        with h5py.File(shard, "r+") as f:
            params = json.loads(f.attrs["params"])
            params["flow"]["bound"] = 1e308
            f.attrs["params"] = json.dumps(params)
    with pytest.raises(DataError) as e:
        index_shards(ts.root)
    assert one_line(e).endswith("shard-00000.h5: the root attribute params says flow bound 1e+308; 1e+308 cannot be "
                                "stored: the shards hold scale_factor (2*bound/255) and add_offset (-bound) as 32-bit "
                                "floats, so the bound must be from 1.5e-36 to 3.4e+38")


# ---------------------------------------------------------------- read_video_list


def test_lists_resolve_in_order_with_and_without_labels(tiny_shards) -> None:
    idx = index_shards(tiny_shards.root)
    train = read_video_list(tiny_shards.train_list, idx, labelled=True)
    assert [r.video_id for r in train] == [v for v in tiny_shards.video_ids if v[-6:-4] in ("01", "02")]
    test = read_video_list(tiny_shards.test_list, idx)
    assert [r.video_id for r in test] == [v for v in tiny_shards.video_ids if v.endswith("g04_c01")]
    assert [r.label for r in test] == [0, 1, 2]
    with pytest.raises(DataError, match=r"testlist\.txt:1: expected a 1-based label on every line"):
        read_video_list(tiny_shards.test_list, idx, labelled=True)
    with pytest.raises(DataError, match=r"trainlist\.txt:1: expected no labels"):
        read_video_list(tiny_shards.train_list, idx, labelled=False)


def test_list_errors_name_the_file_line_and_video(tiny_shards, tmp_path) -> None:
    idx = index_shards(tiny_shards.root)
    good = tiny_shards.train_list.read_text().splitlines()
    bad = tmp_path / "list.txt"
    bad.write_text("\r\n".join([good[0], "", "Drift/v_Drift_g09_c01.avi 1", good[1]]) + "\r\n")
    with pytest.raises(DataError, match=r"list\.txt:3: video 'Drift/v_Drift_g09_c01' is not in the shards") as e:
        read_video_list(bad, idx)
    one_line(e)
    bad.write_text("\n\n  \n")
    with pytest.raises(DataError, match=r"list\.txt: the video list is empty"):
        read_video_list(bad, idx)
    bad.write_text("Expand/v_Expand_g01_c01.avi 1\n")  # Expand is class 2 (1-based)
    with pytest.raises(DataError, match=r"list\.txt:1: Expand/v_Expand_g01_c01 has label 1 \(1-based\) but the shards say 2"
                                        r" \(Expand\); .*: leave the labels out of the list \(the shards' are used\)$"):
        read_video_list(bad, idx)  # a list numbered by classInd.txt, shards extracted without --class-index
    bad.write_text("Expand/v_Expand_g01_c01.avi\n")  # the way out the line gives
    assert [r.label for r in read_video_list(bad, idx)] == [1]
    bad.write_text("Expand/v_Expand_g01_c01.avi 2\nDrift/v_Drift_g01_c01.avi\n")
    with pytest.raises(DataError, match=r"list\.txt:2: some lines have labels and some do not"):
        read_video_list(bad, idx)
    bad.write_text("Expand/v_Expand_g01_c01.avi two\n")
    with pytest.raises(DataError, match=r"list\.txt:1: video 'Expand/v_Expand_g01_c01\.avi two' is not in the shards "
                                        r".*expected 'Class/video\.avi \[label\]', the label a 1-based integer"):
        read_video_list(bad, idx)
    with pytest.raises(DataError, match="cannot read the video list"):
        read_video_list(tmp_path / "missing.txt", idx)


def test_list_paths_may_hold_spaces_with_and_without_labels(make_tiny_shards, tmp_path) -> None:
    """Kinetics-style ids ("air drumming/...") extract; the lists must name them: the label is the last token
    only when it is an integer, the rest of the line is the path."""
    ts = make_tiny_shards(class_names=["air drumming", "Expand", "Rotate"], videos_per_class=2)
    idx = index_shards(ts.root)
    a1, a2 = "air drumming/v_air drumming_g01_c01", "air drumming/v_air drumming_g02_c01"
    assert a1 in idx.videos
    train = tmp_path / "trainlist.txt"
    train.write_text(f"{a1}.avi 1\n  {a2}.avi\t1  \nExpand/v_Expand_g01_c01.avi 2\n")
    assert [(r.video_id, r.label) for r in read_video_list(train, idx, labelled=True)] == [
        (a1, 0), (a2, 0), ("Expand/v_Expand_g01_c01", 1)]
    test = tmp_path / "testlist.txt"
    test.write_text(f"{a2}.avi\n{a1}.avi\n")
    assert [r.video_id for r in read_video_list(test, idx, labelled=False)] == [a2, a1]
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(f"{a1}.avi 2\n")  # the label is still checked
    with pytest.raises(DataError, match=r"wrong\.txt:1: air drumming/v_air drumming_g01_c01 has label 2 \(1-based\)"):
        read_video_list(wrong, idx)
    wrong.write_text(f"{a1}.avi one\n")  # not a label: part of the path, which names no video
    with pytest.raises(DataError, match=r"wrong\.txt:1: video 'air drumming/v_air drumming_g01_c01\.avi one' is not"):
        read_video_list(wrong, idx)
