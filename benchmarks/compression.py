"""Compression filters for quantized flow: bytes per field and ms per field to write and to read.

The rows rewrite the quantized flow of an extraction (one field per chunk, appended in batches of 32 as the
writer does) in this process, single-threaded: through flowprep's own writer, HDF5's filters, and ISA-L
deflate into raw gzip chunks. "read" goes through HDF5's filter pipeline (any reader); "direct read" reads
the raw chunk and inflates it with libdeflate, as ``trainer.data.read`` does (and, for comparison, with ISA-L). Plugin rows (Blosc, LZ4, Zstd)
appear when ``hdf5plugin`` imports. Used by ``benchmarks.extract``.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import click
import deflate
import h5py
import numpy as np
from isal import isal_zlib

from flowprep.config import StorageConfig
from flowprep.extract.writer import VideoMeta, VideoWriter


def hdf5plugin() -> ModuleType | None:
    os.environ.setdefault("BLOSC_NTHREADS", "1")  # single-threaded, as in a worker that owns one core
    try:
        import hdf5plugin as module
    except ImportError:
        return None
    return module


Writer = Callable[[h5py.File, np.ndarray], h5py.Dataset]


def _create(f: h5py.File, q: np.ndarray, **opts: Any) -> h5py.Dataset:
    return f.create_dataset("flow", shape=(0, *q.shape[1:]), maxshape=(None, *q.shape[1:]), dtype=np.uint8,
                            chunks=(1, *q.shape[1:]), **opts)


def h5py_filter(**opts: Any) -> Writer:
    """HDF5's own filter pipeline compresses each chunk."""
    def write(f: h5py.File, q: np.ndarray) -> h5py.Dataset:
        ds = _create(f, q, **opts)
        for s in range(0, len(q), 32):
            ds.resize(min(s + 32, len(q)), axis=0)
            ds[s:s + 32] = q[s:s + 32]
        return ds
    return write


def isal_chunks(level: int) -> Writer:
    """Each field deflated by ISA-L into a zlib stream, stored under HDF5's gzip filter (any reader inflates it)."""
    def write(f: h5py.File, q: np.ndarray) -> h5py.Dataset:
        ds = _create(f, q, compression="gzip", compression_opts=level)
        ds.resize(len(q), axis=0)
        for i, field in enumerate(q):
            ds.id.write_direct_chunk((i, 0, 0, 0), isal_zlib.compress(field.tobytes(), level))
        return ds
    return write


def flowprep_writer(f: h5py.File, q: np.ndarray) -> h5py.Dataset:
    """Whatever ``flowprep.extract.writer.VideoWriter`` does with the default storage settings."""
    c = StorageConfig()
    w = VideoWriter(f, VideoMeta("b/v", "b/v.avi", 0, "b"), height=q.shape[2], width=q.shape[3], bound=20.0,
                    rgb=False, compression=c.compression, compression_level=c.compression_level)
    for s in range(0, len(q), 32):
        w.append_flow(q[s:s + 32])
    w.finish(num_frames=len(q) + 1, fps=25.0)
    return w.flow


def filters() -> dict[str, Writer]:
    c = StorageConfig()
    out = {f"flowprep writer (default: {c.compression}-{c.compression_level})": flowprep_writer,
           "none": h5py_filter(), "gzip-1 zlib (HDF5 filter)": h5py_filter(compression="gzip", compression_opts=1),
           "gzip-4 zlib (HDF5 filter)": h5py_filter(compression="gzip", compression_opts=4),
           "lzf": h5py_filter(compression="lzf")}
    out.update({f"gzip ISA-L-{k} (direct chunks)": isal_chunks(k) for k in (0, 1, 2, 3)})
    plugin = hdf5plugin()
    if plugin is not None:
        bits = plugin.Blosc.BITSHUFFLE
        out.update({name: h5py_filter(**opts) for name, opts in (
            ("lz4 (plugin)", plugin.LZ4()), ("zstd-1 (plugin)", plugin.Zstd(clevel=1)),
            ("zstd-3 (plugin)", plugin.Zstd(clevel=3)),
            ("blosc-lz4 bitshuffle (plugin)", plugin.Blosc(cname="lz4", clevel=5, shuffle=bits)),
            ("blosc-zstd-1 bitshuffle (plugin)", plugin.Blosc(cname="zstd", clevel=1, shuffle=bits)))})
    return out


def filter_run(q: np.ndarray, write: Writer, path: Path) -> tuple[float, float, tuple[float, float] | None, float]:
    """(ms per field to compress + write, ms per field to read one field through HDF5, the same reading the raw
    chunk and inflating it with (libdeflate as trainer.data.read does, ISA-L) (gzip only), bytes per field) of ``q``."""
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        ds = write(f, q)
        name, size = ds.name, ds.id.get_storage_size()
    seconds = time.perf_counter() - t0
    with h5py.File(path, "r") as f:
        ds, t0 = f[name], time.perf_counter()
        back = np.stack([ds[i] for i in range(len(q))])
        read = time.perf_counter() - t0
        direct = None
        if ds.compression == "gzip":
            t0 = time.perf_counter()
            raw = [deflate.zlib_decompress(ds.id.read_direct_chunk((i, 0, 0, 0))[1], q[0].nbytes) for i in range(len(q))]
            t1 = time.perf_counter()
            [isal_zlib.decompress(ds.id.read_direct_chunk((i, 0, 0, 0))[1], bufsize=q[0].nbytes) for i in range(len(q))]
            direct = ((t1 - t0) / len(q) * 1e3, (time.perf_counter() - t1) / len(q) * 1e3)
            if np.frombuffer(b"".join(raw), np.uint8).reshape(q.shape).tobytes() != q.tobytes():
                raise click.ClickException(f"{name}: expected the raw chunks to inflate to the flow, got other bytes")
    if not np.array_equal(back, q):
        raise click.ClickException(f"{name}: expected the flow back unchanged, got different values")
    path.unlink()
    return seconds / len(q) * 1e3, read / len(q) * 1e3, direct, size / len(q)


def compression_table(flows: dict[str, np.ndarray], reps: int, work: Path) -> dict[str, dict[str, Any]]:
    names = list(filters().items())
    runs: dict[str, list[tuple]] = {f"{m}:{k}": [] for m in flows for k, _ in names}
    for rep in range(reps):
        for name, write in names[rep % len(names):] + names[:rep % len(names)]:
            for method, q in flows.items():
                runs[f"{method}:{name}"].append(filter_run(q, write, work / "filter.h5"))
    return {k: {"write_ms_per_field": statistics.median(r[0] for r in v),
                "read_ms_per_field": statistics.median(r[1] for r in v),
                "direct_read_ms_per_field": statistics.median(r[2][0] for r in v) if v[0][2] is not None else None,
                "direct_isal_read_ms_per_field": statistics.median(r[2][1] for r in v) if v[0][2] is not None else None,
                "bytes_per_field": v[0][3], "fields": len(flows[k.split(":")[0]]), "runs": v} for k, v in runs.items()}


def compression_markdown(table: dict[str, dict[str, Any]], methods: list[str]) -> list[str]:
    """The compression table as markdown lines (one row per filter, four columns per flow method)."""
    lines: list[str] = []
    lines += ["Compression, ms per 320x240 field in one process: write = compress + write; read = through HDF5's "
              "filter (any reader); direct read = raw chunk + libdeflate inflate (the trainer's path) / + ISA-L inflate "
              "(gzip only).", "",
              "| filter | " + " | ".join(f"{m} bytes/field | write | read | direct read" for m in methods) + " |",
              "| --- |" + " ---: |" * (4 * len(methods))]
    for name in filters():
        cells = [table[f"{m}:{name}"] for m in methods]
        lines.append(f"| {name} | " + " | ".join(
            f"{c['bytes_per_field']:.0f} | {c['write_ms_per_field']:.2f} | {c['read_ms_per_field']:.2f} | "
            + (f"{c['direct_read_ms_per_field']:.2f} / {c['direct_isal_read_ms_per_field']:.2f}"
               if c["direct_read_ms_per_field"] is not None else "-")
            for c in cells) + " |")
    return lines
