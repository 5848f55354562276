"""The demo over several seeds (``--seeds 0-4 --jobs N``): ``parse_seeds`` reads the option, ``run_seeds`` runs
``python -m flowprep.demo`` once per seed (each into OUT/seed-N, up to N at a time) and writes the table of all of
them (``seed_row`` per seed, ``format_seeds_table`` with the mean and range) to OUT/seeds.md and seeds.json.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from flowprep.demo.plan import code_version
from flowprep.demo.steps import DemoError


def parse_seeds(text: str) -> list[int]:
    """``0-4`` or ``0,2,5`` (or both: ``0-2,7``) -> sorted distinct seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None or int(m[2] or m[1]) < int(m[1]):
            raise click.BadParameter(f"expected seeds like 0-4 or 0,2,5, got {text!r}")
        seeds.update(range(int(m[1]), int(m[2] or m[1]) + 1))
    if not seeds:
        raise click.BadParameter(f"no seeds in {text!r}")
    return sorted(seeds)


def seed_row(seed: int, summary: dict[str, Any]) -> dict[str, Any]:
    """One seed's top-1 per stream, the fused one's margin over the better stream (in test videos) and its weight."""
    top1, n = summary["top1"], summary["test_videos"]
    better = max(top1["spatial"], top1["temporal"])
    return {"seed": seed, **top1, "alpha": summary["alpha"], "fused_minus_better_videos": round((top1["fused"] - better) * n),
            "wall_s": summary["wall_s"]}


def format_seeds_table(rows: list[dict[str, Any]], *, chance: float, test_videos: int) -> str:
    """Per-seed top-1 and fusion weight, then the mean and the range (min to max) of each column, as Markdown."""
    cols = ("spatial", "temporal", "fused", "fused_minus_better_videos", "alpha")
    cells = [[str(r["seed"])] + [f"{100 * r[c]:.1f}%" for c in cols[:3]]
             + [f"{r['fused_minus_better_videos']:+d}", f"{r['alpha']:.2f}"] for r in rows]
    lo = {c: min(r[c] for r in rows) for c in cols}
    hi = {c: max(r[c] for r in rows) for c in cols}
    mean = {c: sum(r[c] for r in rows) / len(rows) for c in cols}
    cells.append(["mean"] + [f"{100 * mean[c]:.1f}%" for c in cols[:3]]
                 + [f"{mean['fused_minus_better_videos']:+.1f}", f"{mean['alpha']:.2f}"])
    cells.append(["range"] + [f"{100 * lo[c]:.1f}-{100 * hi[c]:.1f}%" for c in cols[:3]]
                 + [f"{lo['fused_minus_better_videos']:+d} to {hi['fused_minus_better_videos']:+d}",
                    f"{lo['alpha']:.2f}-{hi['alpha']:.2f}"])
    head = ["seed", "spatial", "temporal", "fused", "fused - better stream (videos)", "spatial weight"]
    width = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(f"{h:<{w}}" for h, w in zip(head, width)) + " |",
             "|" + "|".join("-" * (w + 1) + ":" for w in width) + "|"]
    lines += ["| " + " | ".join(f"{c:>{w}}" for c, w in zip(row, width)) + " |" for row in cells]
    seeds = ", ".join(str(r["seed"]) for r in rows)
    return "\n".join(lines) + (f"\n\nTop-1 on {test_videos} test videos for each of seeds {seeds} (chance "
                               f"{100 * chance:.1f}%); the fused column's margin over the better single stream is in "
                               "test videos.")


def run_seeds(out: Path, seeds: list[int], *, demo_args: list[str], jobs: int = 1) -> list[dict[str, Any]]:
    """``python -m flowprep.demo --seed N --out OUT/seed-N --quiet DEMO_ARGS`` for each seed (up to ``jobs`` at a
    time; each log in OUT/seed-N.log), then their table with its mean and range in OUT/seeds.md and seeds.json."""
    out.mkdir(parents=True, exist_ok=True)
    pending, running, t0 = list(seeds), {}, time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            argv = ["-m", "flowprep.demo", "--out", str(out / f"seed-{seed}"), "--seed", str(seed), "--quiet", *demo_args]
            click.secho("$ " + shlex.join(["python", *argv]), fg="cyan")
            log = open(out / f"seed-{seed}.log", "w")  # noqa: SIM115 (closed when the run ends)
            running[seed] = (subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT), log)
        time.sleep(0.5)
        for seed, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[seed]
            if proc.returncode != 0:
                for other, _ in running.values():
                    other.wait()
                raise DemoError(f"seed {seed} failed (exit {proc.returncode}); see {out / f'seed-{seed}.log'}",
                                proc.returncode)
            click.echo(f"   seed {seed} done ({time.perf_counter() - t0:.0f} s since the start)")
    summaries = [json.loads((out / f"seed-{seed}" / "summary.json").read_text()) for seed in seeds]
    rows = [seed_row(seed, summary) for seed, summary in zip(seeds, summaries)]
    table = format_seeds_table(rows, chance=summaries[0]["chance"], test_videos=summaries[0]["test_videos"])
    plan = {k: v for k, v in summaries[0]["plan"].items() if k != "seed"}
    record = {"command": shlex.join(["python", "-m", "flowprep.demo", "--seeds", format_seeds(seeds), "--jobs", str(jobs),
                                     "--out", str(out), *demo_args]),
              "seeds": seeds, "rows": rows, "plan": plan, "code": code_version(),
              "wall_s": round(time.perf_counter() - t0, 1), "table": table}
    (out / "seeds.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "seeds.md").write_text(table + "\n")
    click.secho(f"\n== the demo over seeds {format_seeds(seeds)}", bold=True)
    click.echo(table)
    click.echo(f"\n(also {out / 'seeds.md'} and {out / 'seeds.json'}; each seed's demo in {out}/seed-N)")
    return rows


def format_seeds(seeds: list[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))
