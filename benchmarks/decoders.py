"""decord vs the PyAV fallback (AV1's decoder) on the same 8-bit H.264 video: frames/s, interleaved.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.decoders [--source vtest.avi] [--reps 5]

The first ``--frames`` frames of ``--source`` are re-encoded to H.264 (x264 defaults) at its own size; each
repetition decodes it through ``VideoStream`` twice per setting (native size, --short-side 256), once with decord
and once with the fallback forced (``decode.PYAV_CODECS``), one thread each, alternating which goes first.
Prints the median frames/s of each and the ratio.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import click

from flowprep.extract import decode


def _encode(source: Path, out: Path, frames: int) -> Path:
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        stream = None
        for n, frame in enumerate(src.decode(video=0)):
            if n == frames:
                break
            if stream is None:
                stream = dst.add_stream("libx264", rate=Fraction(25))
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return out


def _rate(path: Path, decoder: str, options: dict) -> float:
    decode.PYAV_CODECS = ("h264",) if decoder == "pyav" else ()
    start = time.perf_counter()
    stream = decode.VideoStream(path, **options)
    count = sum(len(chunk) for chunk in stream.chunks())
    return count / (time.perf_counter() - start)


@click.command()
@click.option("--source", type=click.Path(exists=True, path_type=Path),
              default=Path("bench-out/media/vtest.avi"), show_default=True)
@click.option("--frames", default=300, show_default=True)
@click.option("--reps", default=5, show_default=True)
def main(source: Path, frames: int, reps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _encode(source, Path(tmp) / "clip.mp4", frames)
        for name, options in (("native", {}), ("--short-side 256", {"short_side": 256})):
            rates: dict[str, list[float]] = {"decord": [], "pyav": []}
            for rep in range(reps):
                for decoder in (("decord", "pyav") if rep % 2 == 0 else ("pyav", "decord")):
                    rates[decoder].append(_rate(path, decoder, options))
            d, p = (statistics.median(rates[k]) for k in ("decord", "pyav"))
            click.echo(f"{name}: decord {d:.0f} frames/s, PyAV fallback {p:.0f} frames/s, PyAV/decord {p / d:.2f}")


if __name__ == "__main__":
    main()
