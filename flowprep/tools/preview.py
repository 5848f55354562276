"""``flowprep preview``: RGB frames beside their flow (HSV colouring) with a colour-wheel legend.

Reads one video through the documented shard format only (docs/shard-format.md): the manifests list
the shards and their videos; flow is dequantized with the dataset's ``scale_factor``/``add_offset``.
Writes a PNG grid of frame pairs, or an animated GIF (Pillow) or MP4 (H.264, PyAV).
"""

from __future__ import annotations

import difflib
import errno
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import click
import cv2
import h5py
import numpy as np

from flowprep.errors import FiniteFloat, OutPath, RunError, environment_failure, unwritable_cause
from flowprep.extract.manifest import replacing
from flowprep.format import ManifestError, dequantize, manifest_paths, read_manifest, video_id as video_id_of
from flowprep.tools.hsv import flow_to_rgb, legend

GAP = 4  # pixels between panels
BACKGROUND = 40  # grey of the canvas, as the legend's
FORMATS = (".png", ".gif", ".mp4")


class PreviewError(ValueError):
    """Bad input (folder, video id): reported to the user as one line."""


class OutError(PreviewError):
    """An --out the command cannot write (a name it does not support, a missing or unwritable folder): a usage
    error, found before any shard is read."""


def check_out(out: Path) -> Path:
    """Refuse an ``out`` that cannot become a picture before any work: a suffix other than .png/.gif/.mp4, a folder
    that does not exist, one this process may not write into; the file to write (where a link ``out`` points)."""
    if out.suffix.lower() not in FORMATS:
        raise OutError(f"expected --out ending in {', '.join(FORMATS)}, got {out.name}")
    dest = Path(os.path.realpath(out))  # a link, dangling too: its target is written, the link stays
    if not dest.parent.is_dir():
        raise OutError(f"expected an existing folder for --out, got {dest.parent}: no such folder")
    if not os.access(dest.parent, os.W_OK | os.X_OK):
        cause = "read-only file system" if os.statvfs(dest.parent).f_flag & os.ST_RDONLY else "permission denied"
        raise OutError(f"cannot write into {dest.parent}: {cause} ({out})")
    return dest


@dataclass(frozen=True)
class PreviewVideo:
    video_id: str
    class_name: str
    fields: np.ndarray  # indices i of the flow fields shown (motion from frame i to i + 1)
    flow: np.ndarray  # float32 (n, 2, H, W), pixels
    rgb: np.ndarray | None  # uint8 (n, H, W, 3): frame i of each field; None for --no-rgb shards
    fps: float
    bound: float


def find_shard(root: Path, video_id: str) -> Path:
    """The shard file holding ``video_id``, found through the manifest(s)."""
    if not root.is_dir():
        raise PreviewError(f"expected a shard folder (with manifest.json), got {root}: no such folder")
    manifests = manifest_paths(root)
    if not manifests:
        raise PreviewError(f"expected manifest.json or manifest-*-of-*.json in {root}, found none: is it a flowprep "
                           "output folder?")
    known: list[str] = []
    for m in manifests:
        try:
            shards = read_manifest(m)["shards"]
        except ManifestError as exc:
            raise PreviewError(str(exc)) from None
        for shard in shards:
            if video_id in shard["videos"]:
                return root / shard["name"]
            known.extend(shard["videos"])
    close = difflib.get_close_matches(video_id, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else f" ({len(known)} videos listed)"
    raise PreviewError(f"unknown video id {video_id!r} in {root}{hint}")


def pick_fields(num_fields: int, count: int | None) -> np.ndarray:
    """``count`` flow indices spread evenly over the video (all of them for None)."""
    if num_fields < 1:
        raise PreviewError("expected a video with at least 2 frames (1 flow field), got 1")
    if count is None or count >= num_fields:
        return np.arange(num_fields)
    return np.unique(np.rint(np.linspace(0, num_fields - 1, max(count, 1))).astype(int))


def load_video(root: str | Path, video_id: str, *, frames: int | None = None) -> PreviewVideo:
    """Read ``frames`` evenly spaced flow fields (all if None) and their first RGB frames."""
    root = Path(root)
    video_id = video_id_of(video_id.strip("/").removeprefix("videos/"))  # a list-file path names the same video
    path = find_shard(root, video_id)
    if not path.is_file():
        raise PreviewError(f"the manifest lists {video_id} in {path.name}, but {path} does not exist")
    damaged = f"; the shard is damaged (flowprep verify {root} names it, a rerun of flowprep extract with --check repairs it)"
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        if exc.errno == errno.EACCES:  # not damaged: the repair advised below would change nothing
            raise PreviewError(f"cannot read {path}: permission denied (fix its permissions)") from None
        raise PreviewError(f"{path} cannot be opened as HDF5 ({' '.join(str(exc).split())}){damaged}") from None
    with f:
        try:
            return _read_video(f, path, video_id, frames, damaged)
        except PreviewError:
            raise
        except (KeyError, RuntimeError, OSError, ValueError) as exc:  # h5py on damaged metadata (a header, a heap)
            raise PreviewError(f"{path}: {video_id} cannot be read ({' '.join(str(exc).split())[:200]}){damaged}"
                               ) from None


def _read_video(f: h5py.File, path: Path, video_id: str, frames: int | None, damaged: str) -> PreviewVideo:
    if f"videos/{video_id}/flow" not in f:
        raise PreviewError(f"expected /videos/{video_id}/flow in {path}, as its manifest says; it is not there")
    g = f["videos"][video_id]
    ds = g["flow"]
    idx = pick_fields(ds.shape[0], frames)
    try:
        q = ds[idx.tolist()] if len(idx) < ds.shape[0] else ds[:]
    except (OSError, RuntimeError) as exc:  # a chunk its filter cannot inflate
        raise PreviewError(f"{path}: the flow of {video_id} cannot be read ({' '.join(str(exc).split())}){damaged}"
                           ) from None
    flow = dequantize(q, ds.attrs["scale_factor"], ds.attrs["add_offset"])
    rgb = None
    if "rgb" in g:
        frames = []
        for i in idx:
            frame = cv2.imdecode(g["rgb"][i], cv2.IMREAD_COLOR)
            if frame is None or frame.shape[:2] != q.shape[2:]:
                raise PreviewError(f"{path}: rgb[{i}] of {video_id} is not a {q.shape[3]}x{q.shape[2]} JPEG{damaged}")
            frames.append(frame[..., ::-1])  # the JPEGs hold RGB pictures; OpenCV decodes them in BGR order
        rgb = np.stack(frames)
    meta = (str(g.attrs["class_name"]), float(g.attrs["fps"]), float(ds.attrs["bound"]))
    return PreviewVideo(video_id, meta[0], idx, flow, rgb, meta[1], meta[2])


def auto_max_flow(flow: np.ndarray) -> float:
    """A round brightness scale: the 99th percentile of |flow| over the whole preview, up to 0.5 px steps."""
    mag = np.hypot(flow[:, 0], flow[:, 1])
    return max(0.5, math.ceil(float(np.percentile(mag, 99)) * 2) / 2)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1, cv2.LINE_AA)


def render_pair(rgb: np.ndarray | None, flow: np.ndarray, *, max_flow: float, zoom: int) -> np.ndarray:
    """[RGB frame | flow colouring], each magnified ``zoom`` times (nearest: pixels stay visible)."""
    col = flow_to_rgb(flow, max_flow=max_flow)
    left = rgb if rgb is not None else np.full_like(col, BACKGROUND)
    big = [cv2.resize(im, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST) for im in (left, col)]
    gap = np.full((big[0].shape[0], GAP, 3), BACKGROUND, np.uint8)
    return np.concatenate([big[0], gap, big[1]], axis=1)


def _compose(
    tiles: Sequence[np.ndarray], labels: Sequence[str], *, columns: int, title: str, side: np.ndarray
) -> np.ndarray:
    """Title on top, tiles in a grid (each under its label), ``side`` (the legend) on the right."""
    th, tw = tiles[0].shape[:2]
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    height = 24 + max(rows * (th + 18), side.shape[0]) + GAP
    width = columns * (tw + GAP) + side.shape[1] + GAP
    canvas = np.full((height + height % 2, width + width % 2, 3), BACKGROUND, np.uint8)  # even: yuv420p
    _text(canvas, title, (GAP, 17))
    for k, (tile, label) in enumerate(zip(tiles, labels)):
        y, x = 24 + (k // columns) * (th + 18), GAP + (k % columns) * (tw + GAP)
        _text(canvas, label, (x, y + 12), 0.4)
        canvas[y + 16 : y + 16 + th, x : x + tw] = tile
    x = GAP + columns * (tw + GAP)
    canvas[24 : 24 + side.shape[0], x : x + side.shape[1]] = side
    return canvas


def zoom_for(height: int) -> int:
    """Integer magnification that makes small frames (e.g. 112 px) readable."""
    return max(1, math.ceil(160 / height))


def _tiles(video: PreviewVideo, max_flow: float) -> tuple[list[np.ndarray], list[str]]:
    zoom = zoom_for(video.flow.shape[2])
    tiles = [
        render_pair(None if video.rgb is None else video.rgb[k], video.flow[k], max_flow=max_flow, zoom=zoom)
        for k in range(len(video.fields))
    ]
    return tiles, [f"frame {i} -> {i + 1}" for i in video.fields]


def render_grid(video: PreviewVideo, *, max_flow: float, columns: int = 4) -> np.ndarray:
    """One picture: a grid of [frame | flow] pairs, labelled with the frame index, and the legend."""
    tiles, labels = _tiles(video, max_flow)
    title = f"{video.video_id} ({video.class_name})"
    return _compose(tiles, labels, columns=columns, title=title, side=legend(max_flow=max_flow))


def render_animation(video: PreviewVideo, *, max_flow: float) -> list[np.ndarray]:
    """One picture per flow field: [frame | flow] and the legend, all of the same size."""
    tiles, labels = _tiles(video, max_flow)
    side, title = legend(max_flow=max_flow), f"{video.video_id} ({video.class_name})"
    return [_compose([t], [lab], columns=1, title=title, side=side) for t, lab in zip(tiles, labels)]


def write_png(image: np.ndarray, path: Path) -> None:
    ok, png = cv2.imencode(".png", image[..., ::-1])  # written by Python: a full disk is an OSError with its errno
    if not ok:
        raise PreviewError(f"could not encode {path.name} as PNG")
    path.write_bytes(png.tobytes())


def write_gif(images: Sequence[np.ndarray], path: Path, *, fps: float) -> None:
    from PIL import Image

    frames = [Image.fromarray(im) for im in images]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)


def write_mp4(images: Sequence[np.ndarray], path: Path, *, fps: float) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "18"}
        for im in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(im, format="rgb24")))
        container.mux(stream.encode(None))


def write_preview(
    root: str | Path, video_id: str, out: str | Path, *, frames: int | None = None,
    max_flow: float | None = None, fps: float | None = None,
) -> dict:
    """Render ``video_id`` from the shard folder ``root`` into ``out`` (.png, .gif or .mp4)."""
    out = Path(out)
    dest = check_out(out)
    still = out.suffix.lower() == ".png"
    video = load_video(root, video_id, frames=(8 if frames is None else frames) if still else frames)
    max_flow = max_flow or auto_max_flow(video.flow)
    try:  # written beside it and renamed over it: never a picture cut short (a kill, a full disk), never an earlier
        with replacing(dest, hidden=True) as tmp:  # picture lost to a failed run
            if still:
                image = render_grid(video, max_flow=max_flow)
                write_png(image, tmp)
                size = image.shape[:2]
            else:
                images = render_animation(video, max_flow=max_flow)
                write = write_gif if out.suffix.lower() == ".gif" else write_mp4
                write(images, tmp, fps=fps or min(video.fps, 10.0))
                size = images[0].shape[:2]
    except OSError as exc:  # checked before, unless the folder's permissions or mount changed since
        cause = unwritable_cause(exc)
        if cause is None:
            raise
        raise OutError(f"cannot write into {dest.parent}: {cause} ({out})") from None
    return {"path": str(out), "fields": video.fields.tolist(), "height": size[0], "width": size[1],
            "max_flow": max_flow}


@click.command("preview")
@click.argument("shards", type=click.Path(path_type=Path))
@click.argument("video_id")
@click.option("--out", required=True, type=OutPath(dir_okay=False, path_type=Path),
              help="file.png (a grid of frame pairs), file.gif or file.mp4 (an animation).")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Frame pairs to show, spread evenly over the video.  [default: PNG 8, animation all]")
@click.option("--max-flow", type=FiniteFloat(min=0, min_open=True), default=None,
              help="|flow| in px/frame shown at full brightness, written on the legend.  "
              "[default: the 99th percentile of the shown fields, rounded up to 0.5 px]")
@click.option("--fps", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Animation speed.  [default: the video's fps, at most 10]")
def preview_command(
    shards: Path, video_id: str, out: Path, frames: int | None, max_flow: float | None, fps: float | None
) -> None:
    """Render VIDEO_ID from the shard folder SHARDS: RGB frames beside their optical flow.

    \b
    Flow colouring: hue = direction (right red, down yellow-green, left cyan, up violet),
    brightness = magnitude, full at --max-flow; see the colour wheel on the right.
    VIDEO_ID is the path under the videos folder without extension, e.g. MoveLeft/v_MoveLeft_g01_c01.
    An id that starts with '-' (Kinetics' YouTube ids) goes last, after '--': ... --out x.png -- -VtLx-mcPds_000012_000022
    Exit status 1: bad input (folder, video id, a damaged shard; one line); 2: an --out it cannot write (another
    suffix, a missing folder, permission denied, a read-only file system; one line, before any work); 75: writing
    --out failed (disk full, I/O error; one line, nothing left behind). The picture is written beside --out and
    renamed over it when whole: a preview killed or failing leaves no picture cut short, and an earlier one stays
    as it was.
    """
    try:
        info = write_preview(shards, video_id, out, frames=frames, max_flow=max_flow, fps=fps)
    except OutError as e:
        raise RunError(str(e)) from None
    except PreviewError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # PyAV's and Pillow's errors writing --out (disk full, I/O error)
        raise environment_failure(e, out.parent, action="rerun the same command", log=False) from None
    click.echo(f"{out}: {len(info['fields'])} frame pairs, {info['width']}x{info['height']}, "
               f"full brightness at {info['max_flow']:g} px/frame")
