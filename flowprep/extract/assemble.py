"""The output folder of one ``flowprep extract`` task while it runs: per-video files assembled into shards,
and the manifest that lists them.

``Assembly`` owns the files of a run (their layout: runner.py): it removes what a killed run left
half-written, repairs listed shards that are missing or damaged, gives failed videos another try (reopening
their finished shard), records each video's outcome, copies finished videos into their shard's ``.tmp`` as
they arrive, then renames the complete shard and lists it, with its sha256, in the manifest. The run itself
(planning, workers, progress) is runner.py.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import h5py
from tqdm import tqdm

from flowprep.extract import manifest as mf
from flowprep.extract.worker import failed_path, is_complete, read_failure
from flowprep.extract.writer import VideoMeta, write_file_attrs

WORK_DIR = ".work"


@dataclass(frozen=True)
class ShardPlan:
    name: str
    videos: list[VideoMeta]


class Assembly:
    def __init__(
        self, out: Path, videos_root: Path, shards: list[ShardPlan], manifest: dict, bar: tqdm, *, resume: bool
    ) -> None:
        self.out, self.videos_root, self.shards, self.manifest, self.bar = out, videos_root, shards, manifest, bar
        self.resume = resume
        self.manifest_path = out / mf.manifest_name(task_index=manifest["task"]["index"], task_count=manifest["task"]["count"])
        self.params = manifest["params"]
        self.done = {s["name"] for s in manifest["shards"]}
        self.failed = {f["path"]: f["error"] for f in manifest["failures"]}
        self.resolved: dict[str, dict[str, str | None]] = {s.name: {} for s in shards}  # video_id -> error or None
        self.logged = mf.failure_paths(out / mf.FAILURES)
        self.assembling: dict[str, tuple[h5py.File, set[str]]] = {}  # shard -> its open .tmp file, videos in it

    def work_dir(self, shard: ShardPlan) -> Path:
        return self.out / WORK_DIR / shard.name.removesuffix(".h5")

    def work_file(self, shard: ShardPlan, n: int) -> Path:
        return self.work_dir(shard) / f"{n:05d}.h5"

    def is_done(self, shard: ShardPlan) -> bool:
        return shard.name in self.done or all(v.source in self.failed for v in shard.videos)

    def clean(self) -> None:
        """Remove what a killed run left half-written; keep every finished result."""
        for tmp in [self.manifest_path.with_name(self.manifest_path.name + ".tmp")] + [
            self.out / (s.name + ".tmp") for s in self.shards
        ]:
            tmp.unlink(missing_ok=True)
        for shard in self.shards:
            work = self.work_dir(shard)
            if (self.is_done(shard) or not self.resume) and work.exists():
                shutil.rmtree(work)  # without a manifest, leftovers are of unknown origin
            if self.is_done(shard):
                continue
            (self.out / shard.name).unlink(missing_ok=True)  # renamed, but the manifest never listed it
            work.mkdir(parents=True, exist_ok=True)
            for debris in list(work.glob("*.tmp")) + list(work.glob("*.running")):
                debris.unlink()
            for n, meta in enumerate(shard.videos):
                path, failure = self.work_file(shard, n), read_failure(self.work_file(shard, n))
                if meta.source in self.failed:
                    self.resolved[shard.name][meta.video_id] = self.failed[meta.source]
                elif failure is not None:
                    self.record(shard, meta, failure["error"])
                elif path.exists() and not is_complete(path, meta.video_id):
                    path.unlink()
                elif path.exists():
                    self.resolved[shard.name][meta.video_id] = None

    def stamp(self, meta: VideoMeta) -> dict[str, int]:
        """Size and mtime of a video's file: a failed video whose file changes is tried again."""
        try:
            st = (self.videos_root / meta.source).stat()
        except OSError:
            return {}
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def repair(self, *, check: bool) -> list[str]:
        """Drop listed shards that are missing or damaged, so that their videos are extracted again.

        Always checks that each listed shard exists with the recorded size (cheap) and that the manifest
        lists it once, with the videos the plan puts there (a manifest edited by hand or merged by a tool can
        be valid JSON and still list other videos); ``check`` also compares its sha256 (reads every byte).
        Returns one line per repaired shard.
        """
        planned = {s.name: [v.video_id for v in s.videos if v.source not in self.failed] for s in self.shards}
        names = [entry["name"] for entry in self.manifest["shards"]]
        repaired, forgotten = [], set()
        for entry in list(self.manifest["shards"]):
            path = self.out / entry["name"]
            if entry["name"] in forgotten:
                continue
            if names.count(entry["name"]) > 1:
                problem = f"listed {names.count(entry['name'])} times in the manifest"
            elif planned.get(entry["name"]) != entry["videos"]:
                problem = "the manifest lists other videos than the plan puts there"
            else:
                problem = mf.shard_file_problem(path, entry, digest=check)
            if problem is None:
                continue
            self.forget(entry)
            forgotten.add(entry["name"])
            path.unlink(missing_ok=True)
            repaired.append(f"{entry['name']} ({problem}): extracting its {len(planned.get(entry['name'], []))} video(s) "
                            "again")
        return repaired

    def forget(self, entry: dict) -> None:
        """Unlist a finished shard (manifest written at once, before its file is touched)."""
        self.manifest["shards"] = [s for s in self.manifest["shards"] if s["name"] != entry["name"]]
        self.done.discard(entry["name"])
        self.write_manifest()

    def retry_failures(self, *, everything: bool) -> list[str]:
        """Give failed videos another try: those whose file changed since (size or mtime), or all.

        A failed video of a finished shard reopens the shard: its extracted videos are copied back
        into per-video files (not recomputed) and the shard is made again once the retried video is done.
        """
        where = {meta.source: (shard, n, meta) for shard in self.shards for n, meta in enumerate(shard.videos)}
        retried = []
        for failure in list(self.manifest["failures"]):
            if failure["path"] not in where:
                continue
            shard, n, meta = where[failure["path"]]
            changed = {k: v for k, v in self.stamp(meta).items() if k in failure and failure[k] != v}
            if not (everything or changed):
                continue
            listed = next((s for s in self.manifest["shards"] if s["name"] == shard.name), None)
            if listed is not None:
                self.reopen(shard, listed)
            self.manifest["failures"].remove(failure)
            del self.failed[failure["path"]]
            self.logged.discard(failure["path"])  # failing again is another time: logged and shown with its error
            failed_path(self.work_file(shard, n)).unlink(missing_ok=True)
            why = "its file changed" if changed else "--retry-failed"
            retried.append(f"{failure['path']} ({why}; it failed with: {failure['error']})")
        if retried:
            self.write_manifest()
        return retried

    def reopen(self, shard: ShardPlan, entry: dict) -> None:
        """Turn a finished shard back into per-video files, then unlist and remove it."""
        work = self.work_dir(shard)
        work.mkdir(parents=True, exist_ok=True)
        index = {meta.video_id: n for n, meta in enumerate(shard.videos)}
        with h5py.File(self.out / entry["name"], "r") as src:
            for video_id in entry["videos"]:
                dst = self.work_file(shard, index[video_id])
                tmp = dst.with_name(dst.name + ".tmp")
                tmp.unlink(missing_ok=True)
                with h5py.File(tmp, "x") as f:
                    parent = f.require_group(str(PurePosixPath("videos", video_id).parent))
                    src.copy(src[f"videos/{video_id}"], parent, name=PurePosixPath(video_id).name)
                os.replace(tmp, dst)
        self.forget(entry)
        (self.out / entry["name"]).unlink(missing_ok=True)

    def record(self, shard: ShardPlan, meta: VideoMeta, error: str | None) -> None:
        self.resolved[shard.name][meta.video_id] = error
        if error is None:
            return
        if meta.source not in self.failed:
            self.failed[meta.source] = error
            self.manifest["failures"].append({"path": meta.source, "error": error, **self.stamp(meta)})
        if meta.source not in self.logged:
            self.logged.add(meta.source)
            mf.append_failure(self.out / mf.FAILURES, {"path": meta.source, "error": error})
            self.bar.write(f"skipped {self.videos_root / meta.source}: {error}")

    def maybe_finish(self, shard: ShardPlan) -> None:
        if shard.name in self.done or len(self.resolved[shard.name]) < len(shard.videos):
            return
        ok = [(n, v) for n, v in enumerate(shard.videos) if self.resolved[shard.name][v.video_id] is None]
        if ok:
            self.merge(shard, ok)
        self.write_manifest()
        if self.work_dir(shard).exists():
            shutil.rmtree(self.work_dir(shard))

    def add(self, shard: ShardPlan, n: int, meta: VideoMeta) -> None:
        """Copy a finished video into its shard's temporary file now, while the workers go on.

        Assembling shards as videos finish (not all at the end) keeps the main process's H5Ocopy and
        most of the shard's fsync off the end of the run; H5Ocopy moves compressed chunks as they are.
        """
        if shard.name not in self.assembling:
            f = h5py.File(self.out / (shard.name + ".tmp"), "x")  # clean() removed any debris; never "w"
            write_file_attrs(f, self.params)
            self.assembling[shard.name] = (f, set())
        f, copied = self.assembling[shard.name]
        parent = f.require_group(str(PurePosixPath("videos", meta.video_id).parent))
        with h5py.File(self.work_file(shard, n), "r") as src:
            src.copy(src[f"videos/{meta.video_id}"], parent, name=PurePosixPath(meta.video_id).name)
        copied.add(meta.video_id)
        f.flush()
        os.fdatasync(f.id.get_vfd_handle())  # write back now, so the final fsync has little left to do

    def merge(self, shard: ShardPlan, ok: list[tuple[int, VideoMeta]]) -> None:
        """Complete the shard's temporary file (videos finished before a crash are copied now), then
        fsync, rename to the final name and list it in the manifest."""
        for n, meta in ok:
            if meta.video_id not in self.assembling.get(shard.name, (None, set()))[1]:
                self.add(shard, n, meta)
        f, _ = self.assembling.pop(shard.name)
        f.close()
        tmp, final = self.out / (shard.name + ".tmp"), self.out / shard.name
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        mf.fsync_dir(self.out)
        entry = {
            "name": shard.name,
            "size": final.stat().st_size,
            "sha256": mf.file_digest(final),
            "videos": [meta.video_id for _, meta in ok],
        }
        self.manifest["shards"] = sorted(self.manifest["shards"] + [entry], key=lambda s: s["name"])
        self.done.add(shard.name)

    def close_unfinished(self, *, after_error: bool = False) -> None:
        """Close the ``.tmp`` files of unfinished shards: debris that the next run removes.

        After an error, a close that fails too (the full disk that stopped the run fails HDF5's
        final flush) must not replace the first error, which is the one the user needs to see.
        """
        for f, _ in self.assembling.values():
            try:
                f.close()
            except Exception:
                if not after_error:
                    raise

    def write_manifest(self) -> None:
        self.manifest["complete"] = all(self.is_done(s) for s in self.shards)
        mf.write_json_atomic(self.manifest_path, self.manifest)
