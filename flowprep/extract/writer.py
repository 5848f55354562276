"""Write one video into an HDF5 file, following docs/shard-format.md.

``VideoWriter`` streams: flow arrives in batches as it is computed, so a long video never has to
fit in memory. Crash safety lives one level up (the worker writes to a temporary file and renames).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Sequence

import h5py
import numpy as np
from isal import isal_zlib


from flowprep.format import SHARD_FORMAT as FORMAT_NAME
from flowprep.format import SHARD_VERSION as FORMAT_VERSION
from flowprep.format import VIDEOS_GROUP, scale_and_offset
from flowprep.extract.quantize import quantize


@dataclass(frozen=True)
class VideoMeta:
    """What a shard records about one source video."""

    video_id: str  # path relative to --videos, posix separators, no extension
    source: str  # path relative to --videos, with extension
    label: int  # 0-based
    class_name: str


def write_file_attrs(f: h5py.File, params: dict) -> None:
    """Root attributes: format name/version and the run parameters as JSON."""
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["params"] = json.dumps(params, sort_keys=True)


class VideoWriter:
    """Append-only writer for ``/videos/<video_id>`` inside an open h5py file.

    Usage::

        with VideoWriter(f, meta, height=240, width=320, bound=20.0) as w:
            w.append_flow(q)          # uint8 (n, 2, H, W), any number of calls
            w.append_rgb(jpegs)       # list of JPEG bytes, any number of calls
            w.finish(num_frames=..., fps=...)
    """

    def __init__(
        self,
        f: h5py.File,
        meta: VideoMeta,
        *,
        height: int,
        width: int,
        bound: float,
        rgb: bool = True,
        jpeg_quality: int = 90,
        compression: str | None = "gzip",
        compression_level: int | None = 1,
    ) -> None:
        self.meta = meta
        self.group = f.require_group(VIDEOS_GROUP).create_group(meta.video_id)
        scale, offset = scale_and_offset(bound)
        opts = {"compression": compression}
        self._isal_level: int | None = None
        if compression == "gzip":
            # The chunks are standard zlib streams under HDF5's gzip filter (every HDF5 reader inflates
            # them), but deflated with ISA-L (write_direct_chunk): faster than zlib level 1 and smaller
            # (BENCHMARKS.md, "Extraction", the compression table). ISA-L levels are 0-3.
            if compression_level is None or not 0 <= compression_level <= 3:
                raise ValueError(f"gzip compression_level must be 0-3 (ISA-L levels), got {compression_level}")
            opts["compression_opts"] = compression_level
            self._isal_level = compression_level
        # One frame per chunk: a training sample reads L consecutive frames and nothing else.
        self.flow = self.group.create_dataset(
            "flow",
            shape=(0, 2, height, width),
            maxshape=(None, 2, height, width),
            dtype=np.uint8,
            chunks=(1, 2, height, width),
            **opts,
        )
        self.flow.attrs["scale_factor"] = np.float32(scale)
        self.flow.attrs["add_offset"] = np.float32(offset)
        self.flow.attrs["bound"] = np.float32(bound)
        self.flow.attrs["units"] = "pixels"
        self.flow.attrs["channels"] = "u,v"
        self.rgb = None
        if rgb:
            self.rgb = self.group.create_dataset(
                "rgb", shape=(0,), maxshape=(None,), dtype=h5py.vlen_dtype(np.uint8), chunks=(64,)
            )
            self.rgb.attrs["encoding"] = "jpeg"
            self.rgb.attrs["quality"] = jpeg_quality
            self.rgb.attrs["height"] = height
            self.rgb.attrs["width"] = width
            self.rgb.attrs["color"] = "RGB"
        self._height, self._width, self.bound = height, width, bound

    def quantize(self, flow: np.ndarray) -> np.ndarray:
        """Float flow -> the codes this video's attributes describe (the writer owns its bound)."""
        return quantize(flow, self.bound)

    def append_flow(self, q: np.ndarray) -> None:
        if q.dtype != np.uint8 or q.ndim != 4 or q.shape[1:] != (2, self._height, self._width):
            raise ValueError(
                f"expected uint8 flow of shape (n, 2, {self._height}, {self._width}), "
                f"got {q.dtype} {q.shape}"
            )
        n = self.flow.shape[0]
        self.flow.resize(n + q.shape[0], axis=0)
        if self._isal_level is None:
            self.flow[n:] = q
            return
        for i, field in enumerate(q):  # one field per chunk
            self.flow.id.write_direct_chunk((n + i, 0, 0, 0), isal_zlib.compress(field.tobytes(), self._isal_level))

    def append_rgb(self, jpegs: Sequence[bytes]) -> None:
        if self.rgb is None:
            raise RuntimeError("this writer was created with rgb=False")
        n = self.rgb.shape[0]
        self.rgb.resize(n + len(jpegs), axis=0)
        # One write per batch: a write per frame costs ~0.15 ms more per frame (HDF5 selection + heap call).
        if jpegs:
            self.rgb[n:] = [np.frombuffer(buf, dtype=np.uint8) for buf in jpegs]

    def finish(self, *, num_frames: int, fps: float, rotation: int | None = None) -> None:
        """Check the counts and write the video attributes (last, after the data).

        ``rotation``: degrees the source's coded picture was turned to store it upright (None: not known, not written).
        """
        if self.flow.shape[0] != num_frames - 1:
            raise ValueError(f"{num_frames} frames need {num_frames - 1} flow fields, got {self.flow.shape[0]}")
        if self.rgb is not None and self.rgb.shape[0] != num_frames:
            raise ValueError(f"expected {num_frames} RGB frames, got {self.rgb.shape[0]}")
        a = self.group.attrs
        a["label"] = np.int64(self.meta.label)
        a["class_name"] = self.meta.class_name
        a["source"] = self.meta.source
        a["num_frames"] = np.int64(num_frames)
        a["fps"] = np.float64(fps)
        if rotation is not None:
            a["rotation"] = np.int64(rotation)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None
