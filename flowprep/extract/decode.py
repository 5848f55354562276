"""Decode one video into RGB frame chunks with decord, or PyAV for codecs decord cannot decode (resized, strided).

Before decord opens a file: its container header must not declare more bytes than the file has
(a cut-off download: AVI and MKV demuxers would otherwise decode the frames before the cut without
a word), and PyAV probes it (the header and the first keyframe): that names broken inputs in one clean
line instead of FFmpeg's log noise and gives the native size that ``short_side`` needs before decord is
opened at the output size, and the rotation the container asks for (its display matrix: phone videos),
so that frames come out upright, as FFmpeg's tools and OpenCV show them. Every way a *file* can be
unusable becomes a ``DecodeError`` (a recorded failure); anything else is a bug and propagates.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator

import av
import av.filter
import decord
import numpy as np
from av.sidedata.sidedata import Type as SideDataType
from decord._ffi.base import DECORDError

# decord logs every FFmpeg complaint about damaged input to stderr; the failure is recorded anyway.
decord.logging.set_level(decord.logging.QUIET)

# Header sizes, for the truncation check: a file cut short (an interrupted download or copy) still
# declares its full length in the container header. Frame counts in headers are no test: tools that
# cut videos often leave them stale (OpenCV's own sample tree.avi declares 444 frames and holds 68).
_EBML_MAGIC, _SEGMENT_ID = b"\x1a\x45\xdf\xa3", b"\x18\x53\x80\x67"


def _ebml_vint(f: BinaryIO) -> tuple[int, bool]:
    """(value, is the 'unknown size' marker) of an EBML variable-size integer at the file position."""
    first = f.read(1)
    if not first or first[0] == 0:
        raise ValueError("bad EBML size")
    length = 9 - first[0].bit_length()
    value = first[0] & (0xFF >> length)
    for byte in f.read(length - 1):
        value = (value << 8) | byte
    return value, value == (1 << (7 * length)) - 1


def declared_length(path: Path) -> int | None:
    """Bytes the container headers say the file has (RIFF/AVI, ISO BMFF/MP4/MOV, EBML/MKV/WebM).

    For MP4, and for MKV/WebM whose segment size is unknown (a live recording), the top-level boxes (the
    segment's elements) are walked until one runs past the end of the file, so the value is a lower bound
    there. None when the format declares no length: nothing to compare.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF":
            return int.from_bytes(head[4:8], "little") + 8
        if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
            end, size = 0, path.stat().st_size
            while end < size:  # walk the top-level boxes, stop at the first past the end
                f.seek(end)
                box = f.read(16)
                if len(box) < 8:
                    return end + 8
                length = int.from_bytes(box[:4], "big")
                if length == 1 and len(box) == 16:
                    length = int.from_bytes(box[8:16], "big")
                if length == 0:  # "extends to the end of the file"
                    return None
                if length < 8:
                    return None  # not a box: let the decoder judge
                end += length
            return end
        if head[:4] == _EBML_MAGIC:
            f.seek(4)
            try:
                size, _ = _ebml_vint(f)
                f.seek(size, 1)
                if f.read(4) != _SEGMENT_ID:
                    return None
                size, unknown = _ebml_vint(f)
                if not unknown:
                    return f.tell() + size
                # A live recording's segment (FFmpeg's muxer writing to a pipe, a stream recorder): its size is
                # unknown, its elements' (clusters') are not. Walk them, stop at the first past the end.
                end, file_size = f.tell(), path.stat().st_size
                while end < file_size:
                    f.seek(end)
                    _ebml_vint(f)  # the element's ID
                    size, unknown = _ebml_vint(f)
                    if unknown:
                        return None  # nothing to compare
                    end = f.tell() + size
                return end
            except ValueError:
                return None
    return None


# Frame widths decord 0.6.0 cannot deliver, natively or resized ("Check failed: from_size == to_size" in
# DECORDArrayCopyFromTo): every even width from 2 to 698 and every odd one to 399 was tried from a 320x240
# H.264 clip, and native videos of these widths fail the same way.
DECORD_BAD_WIDTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 48, 72)
# The largest side --size and --short-side accept: 8K (7680x4320) fits. Far larger sizes fail inside ffmpeg's
# filter graph for every video alike (30000x30000 does), which would blame each file for a bad option.
MAX_SIDE = 8192


def bad_width_reason(width: int, *, resized: bool) -> str | None:
    """Why decord cannot give frames ``width`` pixels wide, or None when it can."""
    if width not in DECORD_BAD_WIDTHS:
        return None
    widths = ", ".join(map(str, DECORD_BAD_WIDTHS))
    fix = "choose a --size or --short-side that gives another width" if resized else (
        "decode it resized (--size) to another width")
    return f"decord cannot deliver frames {width} px wide (a decord limitation, widths {widths}): {fix}"


class DecodeError(Exception):
    """The file cannot be used as a video: not a video, empty, truncated, damaged, too short."""


@dataclass(frozen=True)
class VideoInfo:
    """What decoding will produce: ``num_frames`` frames of ``height`` x ``width`` at ``fps``, upright."""

    num_frames: int  # after frame_step
    fps: float  # of the produced frames (source fps / frame_step)
    height: int
    width: int
    source_frames: int  # frames in the file
    source_height: int  # of the coded picture, before the rotation
    source_width: int
    rotation: int = 0  # degrees (0, 90, 180, 270) the coded picture is turned counter-clockwise to be upright


def output_size(
    width: int, height: int, *, size: tuple[int, int] | None = None, short_side: int | None = None
) -> tuple[int, int]:
    """(W, H) of the decoded frames: ``size`` as given, or the short side scaled to ``short_side``."""
    if size is not None:
        return size
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _short_reason(exc: BaseException) -> str:
    """decord messages start with '[time] /path/file.cc:123: '; keep what comes after."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^(\[[\d:]+\] \S+?:\d+: )+", "", text)


# Codecs (FFmpeg's names) that decord 0.6.0's FFmpeg 4.1 has no decoder for: it fails to open them ("cannot find
# video stream with wanted index: -1"), and with a cover picture beside the video it would open the cover
# instead. YouTube serves AV1. PyAV (its own, newer FFmpeg) decodes these instead, as decord would
# (``_PyAVFrames``); tests/flowprep/extract/test_decode.py checks that decord still cannot.
PYAV_CODECS = ("av1",)


def decoder_for(codec: str) -> str:
    """'pyav' for a video stream of ``codec`` (FFmpeg's name, e.g. 'h264', 'av1') that decord cannot decode,
    else 'decord' (faster: its index seeks, and it decodes in its own thread)."""
    return "pyav" if codec in PYAV_CODECS else "decord"


# decord 0.6.0 (FFmpeg 4.1 inside) turns the frames of MP4/MOV files upright itself, by the display matrix
# of the track header, before it resizes; it leaves other containers' matrices (Matroska/WebM, which FFmpeg 8
# and OpenCV honour) unapplied. tests/flowprep/extract/test_decode.py checks both for every rotation.
_DECORD_TURNS = ("mov,mp4,m4a,3gp,3g2,mj2",)


def display_rotation(frame: av.VideoFrame) -> int:
    """Degrees (0, 90, 180 or 270) the display turns ``frame`` counter-clockwise: its DISPLAYMATRIX side data.

    Read as FFmpeg's ``av_display_rotation_get`` and rounded to whole degrees as OpenCV does (OpenCV then
    applies 90 as cv2.ROTATE_90_COUNTERCLOCKWISE). Other angles and mirrored pictures are refused: OpenCV
    and decord leave the first unapplied and turn the second by 180 degrees instead of mirroring it.
    """
    matrix = next((bytes(sd) for sd in frame.side_data if sd.type == SideDataType.DISPLAYMATRIX), None)
    if matrix is None:
        return 0
    m = np.frombuffer(matrix, dtype=np.int32)  # 3x3, row-major, FFmpeg's own byte order; a, b, c, d in 16.16
    a, b, c, d = (float(m[i]) for i in (0, 1, 3, 4))
    if math.hypot(a, c) == 0 or math.hypot(b, d) == 0:
        return 0  # a degenerate matrix: FFmpeg reads no angle from it either
    if a * d - b * c < 0:
        raise DecodeError("the container asks to show it mirrored (its display matrix flips the picture); "
                          "flowprep turns frames upright but does not mirror them")
    turn = round(-math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))) % 360
    if turn % 90:
        raise DecodeError(f"the container asks to show it turned by {turn} degrees; flowprep turns frames "
                          "upright only by multiples of 90 degrees")
    return turn


def upright(frames: np.ndarray, turn: int) -> np.ndarray:
    """Frames (n, H, W, C) turned ``turn`` degrees counter-clockwise (a multiple of 90), as contiguous arrays."""
    k = turn // 90 % 4
    return np.ascontiguousarray(np.rot90(frames, k, axes=(1, 2))) if k else frames


@dataclass(frozen=True)
class _Probe:
    width: int  # of the coded picture
    height: int
    rotation: int  # degrees counter-clockwise that make it upright (``display_rotation``)
    decord_turns: int  # the part of ``rotation`` decord applies itself
    codec: str  # FFmpeg's name of the video codec (``decoder_for``)
    left_out: int  # frames an MP4 edit list leaves out (a clip cut with ``ffmpeg -ss ... -c copy``)


def _probe(path: Path) -> _Probe:
    """The first video stream's coded size (container header) and rotation (its first keyframe's side data)."""
    try:
        # The first keyframe's side data is enough: decoding the frames before a late one (a stream cut
        # mid-GOP) took seconds at 1080p. A stream without any keyframe is read again, every frame decoded.
        for skip in ("NONKEY", "DEFAULT"):
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise DecodeError("no video stream")
                stream = container.streams.video[0]
                width, height = stream.codec_context.width, stream.codec_context.height
                stream.codec_context.thread_count = 1  # one frame: more threads would only cost their start
                stream.codec_context.skip_frame = skip
                first = next(container.decode(stream), None)  # none: decord finds the video too short
                rotation = 0 if first is None else display_rotation(first)
                decord_turns = rotation if container.format.name in _DECORD_TURNS else 0
                codec = stream.codec_context.codec.canonical_name
                left_out = sum(entry.is_discard for entry in stream.index_entries)  # the MP4 index: read, not decoded
            if first is not None:
                break
    except av.FFmpegError as exc:
        raise DecodeError(f"not a readable video ({exc.strerror or type(exc).__name__})") from exc
    if width <= 0 or height <= 0:
        raise DecodeError(f"video stream has no frame size ({width}x{height})")
    return _Probe(width, height, rotation, decord_turns, codec, left_out)


def _turned(width: int, height: int, turn: int) -> tuple[int, int]:
    """(W, H) of a ``width`` x ``height`` picture turned by ``turn`` degrees (a multiple of 90)."""
    return (height, width) if turn % 180 else (width, height)


class _DecordFrames:
    """decord's frames: ``width`` x ``height`` (-1: as coded, turned by decord for MP4), RGB. ``left_out``: the
    frames an MP4 edit list leaves out (``_Probe.left_out``), which decord counts and gives as copies of the last
    frame, at the end: not counted here, so never asked for."""

    def __init__(self, path: Path, width: int, height: int, num_threads: int, left_out: int) -> None:
        self._left_out = left_out
        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height,
                                              num_threads=num_threads)
        # decord raises a bare RuntimeError when FFmpeg cannot open the file, DECORDError when it
        # cannot index it, and asserts that the frame count is positive.
        except (RuntimeError, DECORDError, AssertionError) as exc:
            raise DecodeError(f"decord cannot open it: {_short_reason(exc)}") from exc
        self.fps = float(self._reader.get_avg_fps())

    def __len__(self) -> int:
        return len(self._reader) - self._left_out

    def batches(self, indices: np.ndarray, chunk_frames: int) -> Iterator[np.ndarray]:
        """The frames at ``indices`` (ascending), at most ``chunk_frames`` at a time."""
        for start in range(0, len(indices), chunk_frames):
            idx = indices[start : start + chunk_frames]
            try:
                yield self._reader.get_batch(idx.tolist()).asnumpy()
            except DECORDError as exc:  # damaged or missing packets discovered while decoding
                raise DecodeError(f"decoding failed at frame {int(idx[0])}: {_short_reason(exc)}") from exc


# decord's filter graph turns MP4 frames by their rotation (``_DECORD_TURNS``) before it scales them; the same
# filters here, keyed by degrees counter-clockwise.
_TRANSPOSES = {0: "", 90: "transpose=2,", 180: "transpose=1,transpose=1,", 270: "transpose=1,"}


class _PyAVFrames:
    """The frames decord would give, decoded by PyAV (``decoder_for``): as many frames as the stream has
    packets (decord's count, less those an MP4 edit list leaves out, as ``_DecordFrames`` counts them), and each
    through decord's own filter graph, ``transpose`` for ``turns`` then
    ``scale=W:H`` (FFmpeg's default bilinear) to rgb24. Equal to decord's frames to the bit for 8-bit H.264,
    HEVC and VP9 (tests/flowprep/extract/test_decode.py). The packets are counted in a first pass over the file
    (demuxed, not decoded); the frames are decoded in a second, chunk by chunk, never seeking.
    """

    def __init__(self, path: Path, width: int, height: int, turns: int, num_threads: int) -> None:
        self._path, self._num_threads = path, num_threads
        self._filters = f"{_TRANSPOSES[turns]}scale={width}:{height}:flags=bilinear,format=rgb24"
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                self.fps = float(stream.average_rate) if stream.average_rate else math.nan
                # Not those an MP4 edit list leaves out (a clip cut with ``ffmpeg -ss ... -c copy`` starts at the
                # keyframe before the cut): FFmpeg drops their frames after decoding them.
                self._count = sum(1 for packet in container.demux(stream) if packet.size and not packet.is_discard)
        except av.FFmpegError as exc:
            raise DecodeError(f"PyAV cannot read it: {exc.strerror or type(exc).__name__}") from exc

    def __len__(self) -> int:
        return self._count

    def batches(self, indices: np.ndarray, chunk_frames: int) -> Iterator[np.ndarray]:
        """The frames at ``indices`` (ascending), at most ``chunk_frames`` at a time."""
        chunk: list[np.ndarray] = []
        done, at = 0, 0  # indices delivered; the frame being decoded
        with av.open(str(self._path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = self._num_threads
            stream.codec_context.thread_type = "AUTO"
            frames, graph = container.decode(stream), None
            while done < len(indices):
                try:
                    frame = next(frames, None)
                except av.FFmpegError as exc:  # damaged packets discovered while decoding
                    raise DecodeError(f"decoding failed at frame {at}: {exc.strerror or type(exc).__name__}") from exc
                if frame is None:
                    raise DecodeError(f"decoding failed at frame {at}: the stream holds {len(self)} packets "
                                      f"but decodes to {at} frames")
                if at == indices[done]:
                    if graph is None:
                        graph = self._graph(frame, stream.time_base)
                    graph.push(frame)
                    chunk.append(graph.pull().to_ndarray())
                    done += 1
                    if len(chunk) == chunk_frames or done == len(indices):
                        yield np.stack(chunk)
                        chunk = []
                at += 1

    def _graph(self, frame: av.VideoFrame, time_base: Fraction) -> av.filter.Graph:
        graph = av.filter.Graph()
        chain = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                                  time_base=frame.time_base or time_base)]
        chain += [graph.add(*f.split("=", 1)) for f in self._filters.split(",")] + [graph.add("buffersink")]
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        graph.configure()
        return graph


class VideoStream:
    """An open video: ``info`` up front, then frames in chunks of at most ``chunk_frames``."""

    def __init__(
        self,
        path: str | Path,
        *,
        size: tuple[int, int] | None = None,
        short_side: int | None = None,
        frame_step: int = 1,
        num_threads: int = 1,
    ) -> None:
        if frame_step < 1:
            raise ValueError(f"frame_step must be >= 1, got {frame_step}")
        path = Path(path)
        try:
            file_size = path.stat().st_size
            declared = declared_length(path) if file_size else None
        except OSError as exc:  # vanished or unreadable since it was listed
            raise DecodeError(f"cannot read the file: {exc.strerror}") from exc
        if file_size == 0:
            raise DecodeError("empty file (0 bytes)")
        if declared is not None and declared > file_size:
            raise DecodeError(f"truncated: the container declares {declared} bytes, the file has {file_size}")
        probe = _probe(path)
        # --size and --short-side apply to the upright (display) picture; decord delivers it turned by
        # decord_turns and resized to (dec_w, dec_h), this class turns it the rest of the way (self._turn).
        out_w, out_h = output_size(*_turned(probe.width, probe.height, probe.rotation), size=size,
                                   short_side=short_side)
        self._turn = (probe.rotation - probe.decord_turns) % 360
        dec_w, dec_h = _turned(out_w, out_h, self._turn)
        resize = (dec_w, dec_h) != _turned(probe.width, probe.height, probe.decord_turns)
        if decoder_for(probe.codec) == "pyav":
            self._reader: _DecordFrames | _PyAVFrames = _PyAVFrames(path, dec_w, dec_h, probe.decord_turns, num_threads)
        else:
            reason = bad_width_reason(dec_w, resized=resize)
            if reason:
                raise DecodeError(reason)
            self._reader = _DecordFrames(path, dec_w if resize else -1, dec_h if resize else -1, num_threads,
                                         probe.left_out)
        present = len(self._reader)
        self._indices = np.arange(0, present, frame_step)
        if len(self._indices) < 2:
            raise DecodeError(
                f"too short: {len(self._indices)} frame(s) (of {present}, frame step {frame_step}), "
                "flow needs at least 2"
            )
        self.path = path
        self.info = VideoInfo(
            num_frames=len(self._indices),
            fps=self._reader.fps / frame_step,
            height=out_h,
            width=out_w,
            source_frames=present,
            source_height=probe.height,
            source_width=probe.width,
            rotation=probe.rotation,
        )
        self._decoded_shape = (dec_h, dec_w, 3)

    def chunks(self, chunk_frames: int = 32) -> Iterator[np.ndarray]:
        """Yield upright RGB uint8 arrays (n, H, W, 3), n <= chunk_frames, covering all ``info.num_frames``."""
        for batch in self._reader.batches(self._indices, chunk_frames):
            if batch.shape[1:] != self._decoded_shape:
                raise DecodeError(
                    f"frame size changed mid-stream: expected {self._decoded_shape[0]}x{self._decoded_shape[1]}, "
                    f"got {batch.shape[1]}x{batch.shape[2]}"
                )
            yield upright(batch, self._turn)


def iter_frames(
    path: str | Path,
    *,
    size: tuple[int, int] | None = None,
    short_side: int | None = None,
    frame_step: int = 1,
    chunk_frames: int = 32,
    num_threads: int = 1,
) -> Iterator[np.ndarray]:
    """Decode ``path`` into RGB chunks (n, H, W, 3) uint8; see ``VideoStream``."""
    stream = VideoStream(path, size=size, short_side=short_side, frame_step=frame_step, num_threads=num_threads)
    yield from stream.chunks(chunk_frames)
