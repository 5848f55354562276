"""``flowprep verify OUT``: is the output complete and intact, as docs/shard-format.md promises?

Complete: every manifest part of the run is present (all tasks of an array run) and every planned
video is in a shard or among the failures. Intact: every listed shard has the recorded size and
sha256, opens, and holds exactly the listed videos with the documented dtypes, shapes and
attributes, and no video appears twice. Failed videos are reported; they do not make a run fail.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from flowprep.extract import manifest as mf
from flowprep.format import SHARD_FORMAT, SHARD_VERSION, VIDEOS_GROUP, scale_and_offset, video_id


@dataclass
class VerifyReport:
    out: str
    complete: bool = False
    num_videos: int = 0  # planned, over the manifest parts present
    run_num_videos: int | None = None  # planned by all tasks together (inputs_num_videos); None: not recorded
    num_extracted: int = 0
    num_failed: int = 0
    task_count: int | None = None
    missing_tasks: list[int] = field(default_factory=list)  # array runs: no manifest part at all
    unfinished_tasks: list[int] = field(default_factory=list)  # a part is present, but its task has not finished
    shards: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    command: str = "extract"  # the flowprep command that made the output: "import-frames" for imported frames

    @property
    def ok(self) -> bool:
        return self.complete and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def _check_video(name: str, g: h5py.Group, classes: list[str], params: dict[str, Any]) -> list[str]:
    """Problems of one /videos/<id> group (empty when it follows the contract)."""
    a = g.attrs
    missing = [k for k in ("label", "class_name", "source", "num_frames", "fps") if k not in a]
    if missing:
        return [f"video {name}: missing attribute(s) {', '.join(missing)}"]
    problems = []
    if str(a["source"]) != name and video_id(str(a["source"])) != name:  # the path the video was made from
        problems.append(f"video {name}: attribute source is {a['source']!r}, which names another video")
    label, t = int(a["label"]), int(a["num_frames"])
    unlabelled = label == -1 and a["class_name"] == ""  # extract --unlabelled
    if not unlabelled and (not (0 <= label < len(classes)) or classes[label] != a["class_name"]):
        problems.append(f"video {name}: label {label} / class_name {a['class_name']!r} disagree with the manifest classes")
    if "flow" not in g:
        return problems + [f"video {name}: no flow dataset"]
    flow = g["flow"]
    if flow.dtype != np.uint8 or flow.ndim != 4 or flow.shape[:2] != (t - 1, 2):
        return problems + [f"video {name}: flow should be uint8 ({t - 1}, 2, H, W), is {flow.dtype} {flow.shape}"]
    h, w = flow.shape[2:]
    bound = params["flow"]["bound"]
    try:
        scale, offset = scale_and_offset(bound)
    except ValueError as exc:  # a run of a version that let --bound 1e308 through (its attributes are infinite)
        return problems + [f"video {name}: the run's bound {exc}"]
    fa = flow.attrs
    if not np.isclose(fa.get("scale_factor", np.nan), scale) or not np.isclose(fa.get("add_offset", np.nan), offset):
        problems.append(
            f"video {name}: flow scale_factor/add_offset {fa.get('scale_factor')}/{fa.get('add_offset')}, "
            f"expected {scale:.6g}/{offset:.6g} for bound {bound}"
        )
    if len(flow):
        flow[0]  # one chunk through the compression filter: a reader without the filter fails here
    if params["storage"]["rgb"] != ("rgb" in g):
        problems.append(f"video {name}: rgb is {'present' if 'rgb' in g else 'absent'}, the run params say rgb={params['storage']['rgb']}")
    elif "rgb" in g:
        rgb = g["rgb"]
        if rgb.shape != (t,):
            problems.append(f"video {name}: rgb should hold {t} frames, holds {rgb.shape}")
        else:
            frame = cv2.imdecode(rgb[0], cv2.IMREAD_COLOR)
            if frame is None or frame.shape != (h, w, 3):
                got = None if frame is None else frame.shape
                problems.append(f"video {name}: rgb[0] is not a {h}x{w} JPEG (decoded: {got})")
    return problems


def _check_shard(path: Path, entry: dict, classes: list[str], params: dict[str, Any]) -> list[str]:
    if not path.is_file():
        return ["missing"]
    size = path.stat().st_size
    if size != entry["size"]:
        return [f"size {size} bytes, the manifest says {entry['size']} (truncated or modified)"]
    damaged = mf.file_digest(path) != entry["sha256"]
    problems = ["sha256 differs from the manifest (the file is corrupted or was modified)"] if damaged else []
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        return problems + [f"cannot be opened as HDF5 ({' '.join(str(exc).split())})"]
    with f:
        try:
            return problems + _check_contents(f, entry, classes, params, read_all=damaged)
        except (KeyError, RuntimeError, OSError, ValueError) as exc:  # h5py on damaged metadata (a B-tree, a heap)
            return problems + [f"its HDF5 structure cannot be read ({' '.join(str(exc).split())[:200]})"]


def _check_contents(f: h5py.File, entry: dict, classes: list[str], params: dict[str, Any], *, read_all: bool) -> list[str]:
    """The shard's structure, video by video; ``read_all`` (a damaged shard) also inflates every flow
    chunk and decodes every frame, to name the videos the damage is in."""
    if f.attrs.get("format") != SHARD_FORMAT or f.attrs.get("format_version") != SHARD_VERSION:
        version = f.attrs.get("format_version")
        version = version.item() if hasattr(version, "item") else version  # 1, not np.int64(1)
        return [f"root attributes say format={f.attrs.get('format')!r} version={version!r}"]
    problems = []
    if json.loads(f.attrs.get("params", "null")) != params:
        problems.append("root attribute params differs from the manifest params")
    found: dict[str, h5py.Group] = {}

    def collect(name: str, obj: h5py.HLObject) -> None:  # a video group is one with attributes
        if isinstance(obj, h5py.Group) and "num_frames" in obj.attrs:
            found[name] = obj

    if VIDEOS_GROUP in f:
        f[VIDEOS_GROUP].visititems(collect)
    listed = set(entry["videos"])
    problems += [f"holds video {v} that the manifest does not list" for v in sorted(set(found) - listed)]
    problems += [f"lacks video {v} that the manifest lists" for v in sorted(listed - set(found))]
    for name in sorted(listed & set(found)):
        problems += _check_video(name, found[name], classes, params)
        if read_all:  # the first frame was checked above already: its problem is not named twice
            problems += [p for p in _read_video(name, found[name]) if p not in problems]
    return problems


def _read_video(name: str, g: h5py.Group) -> list[str]:
    """Read every array of a video: the first chunk or frame that fails is named."""
    for key in ("flow", "rgb"):
        if key not in g:
            continue
        ds = g[key]
        for i in range(len(ds)):
            try:
                item = ds[i]
            except (OSError, ValueError, RuntimeError) as exc:
                return [f"video {name}: {key}[{i}] cannot be read ({' '.join(str(exc).split())[:200]})"]
            if key == "rgb":
                frame = cv2.imdecode(item, cv2.IMREAD_COLOR)
                h, w = g["flow"].shape[2:] if "flow" in g else (None, None)
                if frame is None or (h is not None and frame.shape != (h, w, 3)):
                    got = None if frame is None else frame.shape
                    return [f"video {name}: rgb[{i}] is not a {h}x{w} JPEG (decoded: {got})"]
    return []


def verify_output(out: str | Path, *, progress: bool = False) -> VerifyReport:
    out = Path(out)
    report = VerifyReport(out=str(out))
    paths = mf.manifest_paths(out)
    if not paths:
        report.problems.append(f"{out}: no manifest (manifest.json or manifest-*-of-*.json): not a flowprep output, or the run never started")
        return report
    parts = []
    for path in paths:
        try:
            parts.append((path, mf.read_part(path)))
        except mf.ManifestError as exc:
            report.problems.append(str(exc))
    if not parts:
        return report
    counts = {m["task"]["count"] for _, m in parts}
    if len(counts) > 1:
        report.problems.append(f"manifest parts of different runs are mixed (task counts {sorted(counts)})")
        return report
    (report.task_count,) = counts
    for path, m in parts:
        expected = mf.manifest_name(task_index=m["task"]["index"], task_count=m["task"]["count"])
        if path.name != expected:
            report.problems.append(f"{path.name}: holds task {m['task']['index']} of {m['task']['count']}, expected name {expected}")
    report.missing_tasks = mf.missing_tasks([m for _, m in parts])
    recorded = {m.get("inputs_num_videos") for _, m in parts} - {None}
    if len(recorded) == 1 and isinstance(next(iter(recorded)), int):  # parts of older versions do not record it
        (report.run_num_videos,) = recorded
    listings: dict[str, list[int]] = {}
    for _, m in parts:
        if m.get("inputs_sha256"):
            listings.setdefault(m["inputs_sha256"], []).append(int(m["task"]["index"]))
    if len(listings) > 1:
        groups = "; ".join("task(s) " + ", ".join(map(str, sorted(t))) for t in sorted(listings.values()))
        report.problems.append(
            f"the tasks planned from different input listings ({groups}): the videos changed between task "
            "starts, so some videos may be in no task or in two; extract again into a new --out")
    params = parts[0][1]["params"]
    if params.get("flow", {}).get("method") == "imported":
        report.command = "import-frames"
    seen: dict[str, str] = {}
    complete = not report.missing_tasks
    shard_bar = tqdm(total=sum(len(m["shards"]) for _, m in parts), unit="shard", disable=not progress, desc="verify")
    for path, m in parts:
        if m["params"] != params:
            report.problems.append(f"{path.name}: params differ from {parts[0][0].name}")
        if m["classes"] != parts[0][1]["classes"]:
            report.problems.append(f"{path.name}: classes differ from {parts[0][0].name}")
        report.num_videos += m["num_videos"]
        report.failures += m["failures"]
        resolved = sum(len(s["videos"]) for s in m["shards"]) + len(m["failures"])
        if m["complete"] and resolved != m["num_videos"]:
            report.problems.append(f"{path.name}: says complete but accounts for {resolved} of {m['num_videos']} videos")
        if not (m["complete"] and resolved == m["num_videos"]):
            report.unfinished_tasks.append(int(m["task"]["index"]))
            complete = False
        for failure in m["failures"]:
            video = video_id(failure["path"])
            if video in seen:
                report.problems.append(f"{path.name}: failed video {failure['path']} is also in {seen[video]}")
            seen[video] = f"the failures of {path.name}"
        for entry in m["shards"]:
            report.shards.append(entry["name"])
            for problem in _check_shard(out / entry["name"], entry, m["classes"], params):
                report.problems.append(f"{entry['name']}: {problem}")
            for video in entry["videos"]:
                if video in seen:
                    report.problems.append(f"{entry['name']}: video {video} is also in {seen[video]}")
                seen[video] = entry["name"]
            report.num_extracted += len(entry["videos"])
            shard_bar.update(1)
    shard_bar.close()
    report.num_failed = len(report.failures)
    report.complete = complete
    report.unfinished_tasks.sort()
    return report


def _incomplete_line(report: VerifyReport, done: int) -> str:
    """What is missing: videos for a single run; for an array run, the tasks that have not finished and the
    videos done out of all tasks' (out of the present tasks' where older parts did not record the total)."""
    count = report.task_count or 1
    failed = f" ({report.num_failed} of them failed)" if report.num_failed else ""
    if count == 1:
        return f"incomplete: {done} of {report.num_videos} videos"
    waiting = sorted(set(report.missing_tasks) | set(report.unfinished_tasks))
    tasks = (f"{len(waiting)} of {count} tasks {'has' if len(waiting) == 1 else 'have'} not finished "
             f"(task{'s' if len(waiting) > 1 else ''} {', '.join(map(str, waiting))})")
    if report.run_num_videos is not None:
        return f"incomplete: {tasks}; {done} of {report.run_num_videos} videos done{failed}"
    if report.missing_tasks:  # the parts of an older version: how many videos the missing tasks hold is unknown
        return (f"incomplete: {tasks}; {done} of the {report.num_videos} videos the tasks present planned are done"
                f"{failed} (manifest parts of older versions do not record how many the missing tasks hold)")
    return f"incomplete: {tasks}; {done} of {report.num_videos} videos done{failed}"


def format_report(report: VerifyReport) -> str:
    lines = [f"problem: {p}" for p in report.problems]
    lines += [f"failed (not extracted): {f['path']}: {f['error']}" for f in report.failures]
    done = report.num_extracted + report.num_failed
    if report.missing_tasks:
        lines.append(
            f"missing manifest parts: task(s) {', '.join(map(str, report.missing_tasks))} of {report.task_count} "
            "(not started, still running, or lost)"
        )
    if report.unfinished_tasks and (report.task_count or 1) > 1:
        lines.append(
            f"unfinished tasks: {', '.join(map(str, report.unfinished_tasks))} of {report.task_count} "
            "(killed or still running: rerun the same task index to resume it)"
        )
    if not report.complete and report.task_count is not None:  # else no manifest part was read: said above
        lines.append(_incomplete_line(report, done))
    # a video in two shards, or tasks of different listings, need a new --out (said above): --check does not help
    repairable = [p for p in report.problems if p.split(":", 1)[0] in report.shards and " is also in " not in p]
    if repairable and not any("planned from different input listings" in p for p in report.problems):
        lines.append("to repair damaged or missing shards: rerun the same flowprep " +
                     ("extract command with --check" if report.command == "extract" else
                      f"{report.command} command (it checks every finished shard)"))
    summary = f"{report.num_extracted} videos in {len(report.shards)} shard(s), {report.num_failed} failed"
    lines.append(("OK: " if report.ok else "NOT OK: ") + summary)
    return "\n".join(lines)
