"""How often the PyTorch TV-L1 port (flowprep.torchflow.tvl1, CPU) differs from OpenCV's DualTVL1, per frame pair.

Every video under ``--videos`` is decoded as ``flowprep extract`` decodes it (flowprep.extract.decode, gray
frames as flowprep.extract.flow.to_gray); each consecutive pair's float flow is computed by OpenCV
(``FlowEstimator``, what ``flowprep extract --engine opencv`` runs) and by the port (all the video's pairs in
one batch, float32, CPU, one thread), and the two are compared bit for bit and after quantization
(``flowprep.extract.quantize.quantize``, ``--bound``). Rows: pairs and videos whose float flow is bit-identical,
codes that differ and by how much, and the issue's gate (>= 99.5% of codes within one, >= 85% exact).

``--torch-hypot`` runs the port with ``torch.hypot`` in float32 (what it used before it computed OpenCV's
hypot in float64), to measure what that cost.

    PYTHONPATH=. python3 -m benchmarks.port_vs_opencv --videos /tmp/s1/videos --nscales 3 --warps 3 --out r.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import cv2
import numpy as np
import torch

from flowprep.config import TVL1Params
from flowprep.extract.decode import iter_frames
from flowprep.extract.flow import FlowEstimator, to_gray
from flowprep.extract.quantize import quantize

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm", ".mov")


@click.command()
@click.option("--videos", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSON results.")
@click.option("--nscales", default=5, show_default=True)
@click.option("--warps", default=5, show_default=True)
@click.option("--bound", default=20.0, show_default=True)
@click.option("--stride", default=1, show_default=True, help="Every N-th video (sorted by path): a subset of all classes.")
@click.option("--limit", default=0, help="At most this many videos (after --stride); 0: all.")
@click.option("--torch-hypot", is_flag=True, help="The port with torch.hypot in float32 (before the fix).")
def main(videos: Path, out: Path, nscales: int, warps: int, bound: float, stride: int, limit: int,
         torch_hypot: bool) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    import flowprep.torchflow.tvl1 as tvl1

    if torch_hypot:
        tvl1.hypot_as_opencv = torch.hypot  # primal_dual_step looks it up at call time
    params = TVL1Params(nscales=nscales, warps=warps)
    paths = sorted(p for p in videos.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)[::stride]
    if limit:
        paths = paths[:limit]
    estimator = FlowEstimator(method="tvl1", tvl1=params)
    rows = []
    codes = codes_diff = codes_within1 = 0
    t_cv = t_port = 0.0
    for path in paths:
        gray = to_gray(np.concatenate(list(iter_frames(path))))
        start = time.perf_counter()
        ref = np.stack([estimator(gray[i], gray[i + 1]) for i in range(len(gray) - 1)])
        t_cv += time.perf_counter() - start
        start = time.perf_counter()
        ours = tvl1.tvl1_flow(gray[:-1], gray[1:], params).numpy()
        t_port += time.perf_counter() - start
        qd = np.abs(quantize(ref, bound).astype(int) - quantize(ours, bound).astype(int))
        float_diff = [int((r != o).sum()) for r, o in zip(ref, ours)]
        codes += qd.size
        codes_diff += int((qd > 0).sum())
        codes_within1 += int((qd <= 1).sum())
        rows.append({"video": str(path.relative_to(videos)), "pairs": len(ref),
                     "pairs_float_identical": sum(d == 0 for d in float_diff),
                     "codes_differing": int((qd > 0).sum()), "max_code_diff": int(qd.max())})
        if any(float_diff):
            click.echo(f"{rows[-1]['video']}: float flow differs on pairs "
                       f"{[i for i, d in enumerate(float_diff) if d]}, {rows[-1]['codes_differing']} codes "
                       f"(max {rows[-1]['max_code_diff']})", err=True)
    pairs = sum(r["pairs"] for r in rows)
    summary = {
        "params": {"nscales": nscales, "warps": warps, "bound": bound, "stride": stride, "limit": limit,
                   "torch_hypot": torch_hypot},
        "videos": len(rows),
        "videos_float_identical": sum(r["pairs_float_identical"] == r["pairs"] for r in rows),
        "pairs": pairs,
        "pairs_float_identical": sum(r["pairs_float_identical"] for r in rows),
        "codes": codes,
        "codes_differing": codes_diff,
        "max_code_diff": max((r["max_code_diff"] for r in rows), default=0),
        "within1": codes_within1 / codes if codes else None,
        "exact": 1 - codes_diff / codes if codes else None,
        "seconds_opencv": round(t_cv, 1),
        "seconds_port": round(t_port, 1),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
    }
    out.write_text(json.dumps({"summary": summary, "videos": rows}, indent=1) + "\n")
    click.echo(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
