import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_ucf_tree
from media import random_frames, translating_texture, write_video

from flowprep.extract import assemble
from flowprep.extract import manifest as mf
from flowprep.config import DecodeConfig, FlowConfig, StorageConfig
from flowprep.extract.reader import plan_videos
from flowprep.extract.runner import RunConflict, RunSummary, plan_shards, run_extract
from flowprep.extract.verify import format_report, verify_output
from flowprep.extract.worker import VideoJob, extract_video

FLOWPREP = Path(sys.executable).parent / "flowprep"


def extract(videos: Path, out: Path, **kwargs) -> RunSummary:
    classes, metas = plan_videos(videos)
    kwargs.setdefault("flow", FlowConfig(method="farneback"))
    kwargs.setdefault("workers", 2)
    return run_extract(videos_root=videos, out=out, videos=metas, classes=classes, progress=False, **kwargs)


@pytest.mark.parametrize("method", ["farneback", pytest.param("tvl1", marks=pytest.mark.slow)])
def test_known_motion_read_back_with_plain_h5py(tmp_path: Path, method: str) -> None:
    motions = {"Move/right_up": (1.5, -1.0), "Move/left_down": (-0.75, 2.0)}
    if method == "tvl1":
        motions.pop("Move/left_down")  # TV-L1 costs ~0.2 s per 80x64 pair on one core
    for i, (video_id, (dx, dy)) in enumerate(motions.items()):
        write_video(tmp_path / "v" / f"{video_id}.mp4", translating_texture(8, 64, 80, dx, dy, seed=i))
    summary = extract(tmp_path / "v", tmp_path / "out", flow=FlowConfig(method=method, bound=8.0))
    assert summary.failures == [] and summary.processed == len(motions)
    # Read as a third-party reader would: h5py and the CF attributes, no flowprep code.
    with h5py.File(tmp_path / "out" / "shard-00000.h5", "r") as f:
        for video_id, (dx, dy) in motions.items():
            ds = f[f"videos/{video_id}/flow"]
            assert ds.shape == (7, 2, 64, 80) and ds.dtype == np.uint8
            flow = ds[:] * ds.attrs["scale_factor"] + ds.attrs["add_offset"]
            u, v = flow[:, 0, 12:-12, 12:-12].mean(), flow[:, 1, 12:-12, 12:-12].mean()
            assert abs(u - dx) < 0.25 and abs(v - dy) < 0.25, (video_id, u, v)


def test_layout_manifest_and_attributes(ucf_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    storage = StorageConfig(videos_per_shard=3, jpeg_quality=80)
    summary = extract(ucf_tree, out, storage=storage, decode=DecodeConfig(short_side=32))
    assert summary.processed == 4 and summary.shards == ["shard-00000.h5", "shard-00001.h5"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.h5", "shard-00001.h5"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "flowprep-manifest" and m["format_version"] == 1 and m["complete"] is True
    assert m["task"] == {"index": 0, "count": 1} and m["classes"] == ["Jump", "Run"] and m["num_videos"] == 4
    assert m["params"]["flow"] == {"method": "farneback", "bound": 20.0, "params": {
        "pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2}}
    assert m["params"]["decode"] == {"size": None, "short_side": 32, "frame_step": 1}
    assert m["params"]["storage"]["jpeg_quality"] == 80
    assert set(m["params"]["versions"]) == {"flowprep", "opencv", "decord", "h5py", "numpy"}
    assert [s["videos"] for s in m["shards"]] == [["Jump/v_Jump_g00", "Jump/v_Jump_g01", "Run/v_Run_g00"],
                                                  ["Run/v_Run_g01"]]
    for entry in m["shards"]:
        assert entry["size"] == (out / entry["name"]).stat().st_size
        assert entry["sha256"] == mf.file_digest(out / entry["name"])
    with h5py.File(out / "shard-00000.h5", "r") as f:
        assert f.attrs["format"] == "flowprep-shard" and f.attrs["format_version"] == 1
        assert json.loads(f.attrs["params"]) == m["params"]
        g = f["videos/Run/v_Run_g00"]
        assert dict(g.attrs) == {"label": 1, "class_name": "Run", "source": "Run/v_Run_g00.mp4",
                                 "num_frames": 8, "fps": pytest.approx(25.0), "rotation": 0}
        flow = g["flow"]  # short side 32: 64x48 -> 43x32
        assert flow.shape == (7, 2, 32, 43) and flow.chunks == (1, 2, 32, 43)
        assert (flow.compression, flow.compression_opts) == ("gzip", 1)  # the merge kept the chunks as written
        assert g["rgb"].shape == (8,) and g["rgb"].attrs["quality"] == 80


def test_failures_are_recorded_once_and_the_run_goes_on(ucf_tree: Path, tmp_path: Path) -> None:
    good = (ucf_tree / "Jump" / "v_Jump_g00.mp4").read_bytes()
    (ucf_tree / "Jump" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (ucf_tree / "Jump" / "empty.mp4").write_bytes(b"")
    (ucf_tree / "Run" / "half.mp4").write_bytes(good[: len(good) // 2])
    write_video(ucf_tree / "Run" / "single.mp4", random_frames(1, 48, 64))
    out = tmp_path / "out"
    summary = extract(ucf_tree, out, storage=StorageConfig(videos_per_shard=2))
    reasons = {f["path"]: f["error"] for f in summary.failures}
    assert set(reasons) == {"Jump/corrupt.mp4", "Jump/empty.mp4", "Run/half.mp4", "Run/single.mp4"}
    assert "empty file" in reasons["Jump/empty.mp4"] and "too short" in reasons["Run/single.mp4"]
    assert "not a readable video" in reasons["Jump/corrupt.mp4"] and "truncated" in reasons["Run/half.mp4"]
    lines = (out / "failures.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["path"] for line in lines) == sorted(reasons)
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] is True and len(m["failures"]) == 4
    assert sum(len(s["videos"]) for s in m["shards"]) == 4
    again = extract(ucf_tree, out, storage=StorageConfig(videos_per_shard=2))
    assert (again.processed, again.reused, len(again.failures)) == (0, 8, 4)
    assert (out / "failures.jsonl").read_text().splitlines() == lines  # no duplicates across resumes


def test_failures_jsonl_names_non_ascii_files_as_utf8_text_that_grep_finds_and_a_rerun_reads(
    ucf_tree: Path, tmp_path: Path
) -> None:
    # written as "Caf\\u00e9/bad_\\u00e9_\\u52d5\\u753b.mp4" once: grep for the file's name found nothing
    name = "Café/bad_é_動画.mp4"
    (ucf_tree / "Café").mkdir()
    (ucf_tree / "Café" / "bad_é_動画.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    assert [f["path"] for f in extract(ucf_tree, out, storage=StorageConfig(videos_per_shard=1)).failures] == [name]
    data = (out / "failures.jsonl").read_bytes()
    assert name.encode("utf-8") in data and b"\\u" not in data
    assert [json.loads(line)["path"] for line in data.decode("utf-8").splitlines()] == [name]
    def killed_after_the_log_line() -> None:  # the manifest does not list the failure yet: the rerun redoes it
        m = json.loads((out / "manifest.json").read_text())
        m.update(failures=[], complete=False)
        (out / "manifest.json").write_text(json.dumps(m))

    killed_after_the_log_line()
    again = extract(ucf_tree, out, storage=StorageConfig(videos_per_shard=1))
    assert (again.processed, [f["path"] for f in again.failures]) == (1, [name])
    assert (out / "failures.jsonl").read_bytes() == data  # read back as the same name: not logged twice
    # a log an older version wrote (escapes) names the same file too
    old = json.dumps({"path": name, "error": "not a readable video"}) + "\n"
    (out / "failures.jsonl").write_text(old, encoding="ascii")
    killed_after_the_log_line()
    extract(ucf_tree, out, storage=StorageConfig(videos_per_shard=1))
    assert (out / "failures.jsonl").read_text(encoding="ascii") == old


def test_resume_keeps_finished_work_and_discards_debris(ucf_tree: Path, tmp_path: Path, read_shards,
                                                          monkeypatch) -> None:
    storage = StorageConfig(videos_per_shard=2)
    reference = extract(ucf_tree, tmp_path / "ref", storage=storage)
    assert reference.processed == 4
    # The state a crash leaves: shard 0 finished, in shard 1 video 0 finished and video 1 half-written,
    # shard 1 merged and renamed but not yet in the manifest.
    out = tmp_path / "out"
    extract(ucf_tree, out, storage=storage)
    m = json.loads((out / "manifest.json").read_text())
    m["shards"], m["complete"] = m["shards"][:1], False
    (out / "manifest.json").write_text(json.dumps(m))
    work = out / ".work" / "shard-00001"
    work.mkdir(parents=True)
    classes, metas = plan_videos(ucf_tree)
    finished = VideoJob(str(ucf_tree / metas[2].source), metas[2], str(work / "00000.h5"),
                        FlowConfig(method="farneback"), DecodeConfig(), storage)
    assert extract_video(finished).ok
    (work / "00001.h5.tmp").write_bytes(b"half an HDF5 file")
    (work / "00001.running").write_text("12345")
    (out / "shard-00001.h5.tmp").write_bytes(b"half a shard")
    stamp = (work / "00000.h5").stat().st_mtime_ns
    merged_stamps = []
    add = assemble.Assembly.add

    def watch(self, shard, n, meta):  # the stamp of each per-video file as it enters its shard
        if n == 0 and shard.name == "shard-00001.h5":
            merged_stamps.append(self.work_file(shard, n).stat().st_mtime_ns)
        return add(self, shard, n, meta)

    monkeypatch.setattr(assemble.Assembly, "add", watch)
    resumed = extract(ucf_tree, out, storage=storage)
    assert (resumed.processed, resumed.reused) == (1, 3)  # only the interrupted video was computed
    assert not (out / ".work").exists() and not list(out.glob("*.tmp"))
    assert read_shards(out) == read_shards(tmp_path / "ref")
    assert merged_stamps == [stamp]  # the finished per-video file was merged as it was, not written again


def test_videos_enter_their_shard_as_they_finish(ucf_tree: Path, tmp_path: Path, monkeypatch, read_shards) -> None:
    """The main process copies each finished video into its shard's .tmp at once (not all at the end), and
    the shard keeps its temporary name until its last video is in."""
    states = []
    add = assemble.Assembly.add

    def spy(self, shard, n, meta) -> None:
        add(self, shard, n, meta)
        f, copied = self.assembling[shard.name]
        states.append((shard.name, len(self.resolved[shard.name]), meta.video_id in f["videos"] and "num_frames" in
                       f[f"videos/{meta.video_id}"].attrs, len(copied), (self.out / shard.name).exists()))

    monkeypatch.setattr(assemble.Assembly, "add", spy)
    out = tmp_path / "out"
    summary = extract(ucf_tree, out, storage=StorageConfig(videos_per_shard=3))
    assert summary.processed == 4 and len(states) == 4
    assert all(in_tmp and not final_exists for _, _, in_tmp, _, final_exists in states)
    # Copied on arrival: when a video enters the .tmp, every video of its shard finished so far is in it.
    assert all(copied == resolved for _, resolved, _, copied, _ in states)
    assert sorted((name, count) for name, _, _, count, _ in states) == [
        ("shard-00000.h5", 1), ("shard-00000.h5", 2), ("shard-00000.h5", 3), ("shard-00001.h5", 1)]
    assert not list(out.glob("*.tmp")) and verify_output(out).ok
    reference = tmp_path / "ref"
    monkeypatch.setattr(assemble.Assembly, "add", add)
    extract(ucf_tree, reference, storage=StorageConfig(videos_per_shard=3), workers=1)
    assert read_shards(out) == read_shards(reference)


def test_a_different_run_in_out_is_refused(ucf_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extract(ucf_tree, out)
    with pytest.raises(RunConflict, match=r"flow\.bound is 20\.0 there and 10\.0 now"):
        extract(ucf_tree, out, flow=FlowConfig(method="farneback", bound=10.0))
    with pytest.raises(RunConflict, match=r"flow\.method is 'farneback' there and 'tvl1' now"):
        extract(ucf_tree, out, flow=FlowConfig(method="tvl1"))
    with pytest.raises(RunConflict, match=r"decode\.frame_step is 1 there and 2 now"):
        extract(ucf_tree, out, decode=DecodeConfig(frame_step=2))
    write_video(ucf_tree / "Run" / "v_Run_g09.mp4", random_frames(4, 48, 64))
    with pytest.raises(RunConflict, match="different video list"):
        extract(ucf_tree, out)
    classes, metas = plan_videos(ucf_tree)
    with pytest.raises(RunConflict, match="split into 1 task"):
        run_extract(videos_root=ucf_tree, out=out, videos=metas[:2], classes=classes, task_index=0, task_count=2,
                    flow=FlowConfig(method="farneback"), progress=False)


def test_a_rerun_that_labels_the_videos_otherwise_is_refused(tmp_path: Path) -> None:
    """A corrected --labels file on a rerun would keep the finished videos' old labels and give the rest new ones."""
    videos = tmp_path / "clips"
    for i, name in enumerate(("a.mp4", "b.mp4", "c.mp4")):
        write_video(videos / name, random_frames(4, 32, 32, seed=i))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.mp4,jump\nb.mp4,run\nc.mp4,run\n")
    classes, metas = plan_videos(videos, labels=[labels])
    out = tmp_path / "out"
    run = dict(videos_root=videos, out=out, classes=classes, flow=FlowConfig(method="farneback"), workers=1,
               progress=False)
    run_extract(videos=metas, **run)
    assert run_extract(videos=metas, **run).reused == 3  # the same labels: resumed
    labels.write_text("path,label\na.mp4,run\nb.mp4,jump\nc.mp4,run\n")  # the same classes, two videos swapped
    classes, metas = plan_videos(videos, labels=[labels])
    with pytest.raises(RunConflict, match=r"labelled its videos otherwise \(--labels, --class-index or --unlabelled"):
        run_extract(videos=metas, **run)


def test_array_task_names_and_manifest_parts(ucf_tree: Path, tmp_path: Path) -> None:
    classes, metas = plan_videos(ucf_tree)
    out = tmp_path / "out"
    summary = run_extract(videos_root=ucf_tree, out=out, videos=metas[1:3], classes=classes, task_index=1,
                          task_count=3, flow=FlowConfig(method="farneback"), workers=2, progress=False)
    assert summary.shards == ["task00001-shard-00000.h5"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest-00001-of-00003.json", "task00001-shard-00000.h5"]
    parts = mf.read_manifests(out)
    assert [p["task"] for p in parts] == [{"index": 1, "count": 3}] and parts[0]["num_videos"] == 2
    assert mf.missing_tasks(parts) == [0, 2]


def test_plan_shards_sorts_and_splits() -> None:
    from flowprep.extract.writer import VideoMeta

    metas = [VideoMeta(f"C/{n}", f"C/{n}.avi", 0, "C") for n in "edcba"]
    plans = plan_shards(metas, videos_per_shard=2, task_index=2, task_count=4)
    assert [p.name for p in plans] == [f"task00002-shard-0000{i}.h5" for i in range(3)]
    assert [[v.video_id for v in p.videos] for p in plans] == [["C/a", "C/b"], ["C/c", "C/d"], ["C/e"]]


def _resolved_at(out: Path) -> int:
    """Videos a killed run had finished: in listed shards, or per-video files of unlisted shards."""
    listed = json.loads((out / "manifest.json").read_text())["shards"] if (out / "manifest.json").exists() else []
    done = sum(len(s["videos"]) for s in listed)
    names = {s["name"] for s in listed}
    work = out / ".work"
    if work.exists():
        done += sum(1 for d in work.iterdir() if d.name + ".h5" not in names for _ in d.glob("*.h5"))
    return done


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path: Path, read_shards) -> None:
    videos = make_ucf_tree(tmp_path / "v", classes=("A", "B", "C"), per_class=2, frames=16, height=120, width=160)
    out = tmp_path / "out"
    cmd = [str(FLOWPREP), "extract", "--videos", str(videos), "--out", str(out), "--method", "farneback",
           "--workers", "2", "--videos-per-shard", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _resolved_at(out) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "the run finished before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes, as kill -9 on a node would
        proc.wait()
    resolved = _resolved_at(out)
    assert 0 < resolved < 6
    listed = sum(len(s["videos"]) for s in json.loads((out / "manifest.json").read_text())["shards"])
    report = verify_output(out)
    assert not report.ok and f"incomplete: {listed} of 6 videos" in format_report(report)
    rerun = extract(videos, out, storage=StorageConfig(videos_per_shard=2))  # the same run, resumed
    assert (rerun.processed, rerun.reused, rerun.failures) == (6 - resolved, resolved, [])
    reference = extract(videos, tmp_path / "ref", storage=StorageConfig(videos_per_shard=2))
    assert reference.processed == 6
    assert read_shards(out) == read_shards(tmp_path / "ref")
    assert len(read_shards(out)) == 6
