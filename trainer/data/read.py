"""Reading a video's frames and flow fields from its shard: JPEG frames decoded to RGB, flow as uint8 codes.

Flow is read chunk by chunk with ``read_direct_chunk`` and inflated with libdeflate (the ``deflate``
package; one field per chunk, as the format says), and the window is copied into the item, skipping
HDF5's filter pipeline. libdeflate inflates a whole buffer of known size, which is exactly a chunk, faster
than ISA-L and far faster than HDF5's zlib filter (BENCHMARKS.md, compression table). Other chunk layouts
or filters fall back to an h5py hyperslab read.

HDF5 files are opened lazily, in the process that reads (each DataLoader worker), never before fork, and
cached per process; a cache inherited through fork is dropped, not reused.

A damaged shard (a chunk that does not inflate, HDF5 metadata that does not read) raises ``DataError``
naming the shard, the video and the field or frame; raised in a loader worker, it reaches the main process
as that one line (``trainer.data.errors.DataError``).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import deflate
import h5py
import numpy as np
from torch.utils.data import get_worker_info

from trainer.data.errors import DAMAGED, DataError, one_line, unreadable
from trainer.data.shards import VideoRecord


def _opencv_pool_across_fork() -> None:
    """Fork with OpenCV's thread pool at one thread: a forked DataLoader worker inherits the pool's state but
    not its threads, and its ``cv2.setNumThreads(1)`` then waited forever when the parent's pool had run
    (reproduced: an in-process ``flowprep extract``, then a DataLoader with workers). The parent gets its
    thread count back after the fork; the child keeps one thread, which is what a loader worker wants."""
    saved: list[int] = []

    def before() -> None:
        saved.append(cv2.getNumThreads())
        cv2.setNumThreads(1)

    def after_in_parent() -> None:
        if saved:
            cv2.setNumThreads(saved.pop())

    os.register_at_fork(before=before, after_in_parent=after_in_parent)


_opencv_pool_across_fork()

# Per-process cache of open HDF5 files. The pid check drops handles inherited through fork: an HDF5 file
# object must not be shared between processes.
_files: dict[Path, h5py.File] = {}
_flows: dict[tuple[Path, str], tuple[h5py.Dataset, str]] = {}  # (shard, video) -> flow dataset, read mode
_files_pid = -1


def _open(rec: VideoRecord) -> h5py.File:
    """The open shard of ``rec`` (cached per process)."""
    global _files, _flows, _files_pid
    path = rec.shard
    if _files_pid != os.getpid():
        _files, _flows, _files_pid = {}, {}, os.getpid()
        if get_worker_info() is not None:
            cv2.setNumThreads(1)  # one worker = one core; OpenCV's own pool would oversubscribe
    f = _files.get(path)
    if f is None:
        # No chunk cache: a sample reads each chunk once, so a cache would only hold memory (measured:
        # same read speed with and without).
        try:
            f = _files[path] = h5py.File(path, "r", rdcc_nbytes=0)
        except PermissionError:  # not damaged (its mode changed since the index was read)
            raise unreadable(path) from None
        except OSError as e:
            raise DataError(f"{path}: cannot be opened as HDF5 to read {rec.video_id} ({one_line(e)}); {DAMAGED}") from None
    return f


def _damaged(rec: VideoRecord, what: str, e: BaseException) -> DataError:
    return DataError(f"{rec.shard}: {what} of {rec.video_id} cannot be read ({one_line(e)}); {DAMAGED}")

def read_frame(rec: VideoRecord, t: int) -> np.ndarray:
    """Frame t as (3, H, W) uint8 RGB."""
    f = _open(rec)
    try:
        buf = f[f"videos/{rec.video_id}/rgb"][t]
    except (OSError, KeyError, RuntimeError) as e:  # h5py: damaged chunk or metadata
        raise _damaged(rec, f"frame {t}", e) from None
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"{rec.shard}: frame {t} of {rec.video_id} is not a decodable JPEG; {DAMAGED}")
    return bgr[:, :, ::-1].transpose(2, 0, 1)  # BGR (H, W, 3) -> RGB (3, H, W), a view


def _flow_dataset(rec: VideoRecord) -> tuple[h5py.Dataset, str]:
    """The video's flow dataset and how to read it: "gzip" / "raw" chunk by chunk, else "hyperslab"."""
    f = _open(rec)  # first: in a new process this drops the handles inherited through fork
    key = (rec.shard, rec.video_id)
    if key not in _flows:
        try:
            ds = f[f"videos/{rec.video_id}/flow"]
        except (OSError, KeyError, RuntimeError) as e:
            raise _damaged(rec, "the flow dataset", e) from None
        one_field = ds.chunks == (1, *ds.shape[1:])
        plain = not ds.shuffle and not ds.fletcher32 and ds.scaleoffset is None
        mode = {"gzip": "gzip", None: "raw"}.get(ds.compression, "hyperslab") if one_field and plain else "hyperslab"
        _flows[key] = ds, mode
    return _flows[key]


def read_flow(rec: VideoRecord, start: int, stop: int, *, rows: tuple[int, int] | None = None,
              cols: tuple[int, int] | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Flow fields [start, stop) as (n, 2, h, w) uint8; past the last field, the last field is repeated.

    ``rows``/``cols``: (first, count) of a window, default the whole frame. ``out``: write into this
    (n, 2, h, w) uint8 array (e.g. part of a larger item) instead of a new one.
    """
    ds, mode = _flow_dataset(rec)
    n_fields, _, height, width = ds.shape
    r0, nr = rows or (0, height)
    c0, nc = cols or (0, width)
    stop_read = min(stop, n_fields)
    if out is None:
        out = np.empty((stop - start, 2, nr, nc), np.uint8)
    elif out.dtype != np.uint8 or out.shape != (stop - start, 2, nr, nc):
        raise ValueError(f"out must be uint8 {(stop - start, 2, nr, nc)}, got {out.dtype} {out.shape}")
    if mode == "hyperslab":
        try:
            out[:stop_read - start] = ds[start:stop_read, :, r0:r0 + nr, c0:c0 + nc]
        except (OSError, RuntimeError) as e:  # h5py: a chunk its filter cannot decode, damaged metadata
            raise _damaged(rec, f"fields {start}-{stop_read - 1}", e) from None
    else:
        nbytes = 2 * height * width
        for k, t in enumerate(range(start, stop_read)):
            try:
                mask, chunk = ds.id.read_direct_chunk((t, 0, 0, 0))
            except (OSError, KeyError, RuntimeError) as e:
                raise _damaged(rec, f"field {t}", e) from None
            if mask:
                raise DataError(f"{rec.shard}: field {t} of {rec.video_id} was stored with its filter skipped "
                                f"(mask {mask}); expected every chunk {mode}")
            try:
                buf = deflate.zlib_decompress(chunk, nbytes) if mode == "gzip" else chunk
            except deflate.DeflateError:
                raise DataError(f"{rec.shard}: field {t} of {rec.video_id} does not inflate (corrupt chunk); "
                                f"{DAMAGED}") from None
            if len(buf) != nbytes:
                raise DataError(f"{rec.shard}: field {t} of {rec.video_id} holds {len(buf)} bytes, expected {nbytes}; "
                                f"{DAMAGED}")
            out[k] = np.frombuffer(buf, np.uint8).reshape(2, height, width)[:, r0:r0 + nr, c0:c0 + nc]
    out[stop_read - start:] = out[stop_read - start - 1]
    return out


def flow_frame_size(rec: VideoRecord) -> tuple[int, int]:
    """(H, W) of the video's stored flow fields."""
    return tuple(_flow_dataset(rec)[0].shape[2:])  # type: ignore[return-value]
