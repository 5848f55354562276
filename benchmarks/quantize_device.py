"""Quantizing flow to codes: flowprep's CPU call (``cv2.addWeighted``) against the same formula in torch.

Why the flow process quantizes on the CPU (flowprep/torchflow/batching.py): ``cv2.addWeighted`` rounds at
exact ties differently in its SIMD body and its scalar tail, so a code can depend on where a value sits in
the array, and only the same call on the same array gives the codes a worker would write. This measures
what that costs and how often a device-style formula (f * a + b, round half to even, clamp, uint8) would
write other codes, on real TV-L1 flow of the built-in sample at 320x240:

    PYTHONPATH=. .venv/bin/python -m benchmarks.quantize_device --out bench-out/quantize_device.json

Time: median of --reps calls on one (2, 240, 320) float32 pair, one thread each (torch on the CPU; the
GPU session can pass --device cuda, which then times the kernel with synchronisation).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import cv2
import numpy as np
import torch

from benchmarks.machine import machine_facts
from flowprep.config import TVL1Params
from flowprep.extract.decode import VideoStream
from flowprep.extract.flow import FlowEstimator
from flowprep.extract.quantize import quantize
from flowprep.format import scale_and_offset
from flowprep.tools.sample import DEFAULT_CLASSES, make_sample

BOUND = 20.0


def torch_quantize(flow: torch.Tensor, bound: float) -> torch.Tensor:
    scale, offset = scale_and_offset(bound)
    return (flow * (1.0 / scale) + (-offset / scale)).round().clamp(0, 255).to(torch.uint8)


def median_ms(fn, reps: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--classes", default=2, show_default=True, help="The sample's first N classes.")
@click.option("--videos", default=2, show_default=True, help="Sample videos per class to take flow from (>= 2).")
@click.option("--frames", default=6, show_default=True, help="Frames per sample video.")
@click.option("--reps", default=200, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def main(out: Path, classes: int, videos: int, frames: int, reps: int, device: str) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    pair = np.ascontiguousarray(rng.normal(0, 6, (2, 240, 320)).astype(np.float32))
    on_dev = torch.from_numpy(pair).to(dev)
    timing = {"cpu_addweighted_ms": median_ms(lambda: quantize(pair, BOUND), reps),
              f"torch_{dev.type}_ms": median_ms(lambda: torch_quantize(on_dev, BOUND), reps, sync),
              "torch_cpu_with_copies_ms" if dev.type == "cpu" else "torch_device_with_copies_ms":
                  median_ms(lambda: torch_quantize(torch.from_numpy(pair).to(dev), BOUND).cpu(), reps, sync)}
    # Real TV-L1 flow (OpenCV's default parameters) of the built-in sample at 320x240, chunk by chunk
    estimator = FlowEstimator(method="tvl1", tvl1=TVL1Params())
    total = differ = moved = 0
    with tempfile.TemporaryDirectory() as tmp:
        make_sample(tmp, videos_per_class=videos, clips_per_group=1, width=320, height=240, frames=frames,
                    classes=DEFAULT_CLASSES[:classes], val=False)
        paths = sorted(p for p in Path(tmp, "videos").rglob("*") if p.suffix in (".avi", ".mp4"))
        for path in paths:
            gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for chunk in VideoStream(str(path), num_threads=1).chunks()
                    for f in chunk]
            flow = np.stack([estimator(a, b) for a, b in zip(gray[:-1], gray[1:])])  # (n - 1, 2, H, W), a chunk
            codes = quantize(flow, BOUND)
            device_codes = torch_quantize(torch.from_numpy(flow).to(dev), BOUND).cpu().numpy()
            alone = np.stack([quantize(f, BOUND) for f in flow])  # each pair on its own: other positions
            total += codes.size
            differ += int((codes != device_codes).sum())
            moved += int((codes != alone).sum())
    result = {"facts": machine_facts(), "torch": torch.__version__, "device": str(dev), "reps": reps, **timing,
              "videos": len(paths), "pairs": total // (2 * 240 * 320), "codes": total,
              "codes_differ_torch_vs_cpu": differ, "codes_differ_pair_alone_vs_chunk": moved}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "facts"}))


if __name__ == "__main__":
    main()
