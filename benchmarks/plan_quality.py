#!/usr/bin/env python
"""Plan quality: the planner's choice for ResNet-50 vs edge-only and cloud-only, at three bandwidths.

Usage::

    python benchmarks/plan_quality.py          # ~1 min on 2 cores; writes benchmarks/results/plan_quality.{json,md}

For each uplink bandwidth, ``splitc plan`` (the real pass pipeline: trace, profile,
candidates, DAG reorder, plan) chooses cuts under two objectives -- latency only, and
``--weights latency=1,cost=2`` -- and the same cost model evaluates the two fixed
placements a user would otherwise pick: everything on the edge device, or the raw image
sent to the cloud. Ratios are split / baseline (below 1 = the split is better).

These are PREDICTED figures (the cost model and the price models of the built-in
targets), not measurements: they show what the optimiser buys over fixed placements under
the model; benchmarks/profile_accuracy.py and benchmarks/gpu/ check the model against
measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from splitc.core.options import CompileOptions  # noqa: E402
from splitc.planning.objectives import evaluate_plans  # noqa: E402
from splitc.driver.pipeline import plan_model  # noqa: E402
from splitc.planning.plan import build_problem  # noqa: E402

BANDWIDTHS = ("2mbps", "20mbps", "200mbps")
TIERS = ("raspberry-pi-4", "cloud-gpu-t4")
RPS = 20.0


def run(model: str, shape: tuple[int, ...]) -> list[dict]:
    rows = []
    for bw in BANDWIDTHS:
        for label, extra in (("latency", {}), ("latency=1,cost=2", {"weights": ("latency=1", "cost=2")})):
            start = time.perf_counter()
            options = CompileOptions(targets=TIERS, bandwidths=(bw,), rps=RPS, **extra)
            prepared = plan_model(model, options, [shape])
            plan_s = time.perf_counter() - start
            ctx, gm = prepared.ctx, prepared.traced.graph_module
            result = ctx.plan_result
            problem = build_problem(gm, ctx.candidates, ctx.tiers, result.links)
            n = problem.n
            fixed = evaluate_plans(problem, ctx.tiers, np.array([[n], [0]]), RPS)  # edge-only, cloud-only
            best = result.best
            row = {"bandwidth": bw, "objective": label, "cut_after": [a or "input" for a in best.after],
                   "latency_ms": best.latency_s * 1e3, "usd_per_million": best.metrics["usd_per_million"],
                   "edge_only_ms": fixed.latency_s[0] * 1e3, "edge_only_usd_per_million": fixed.usd_per_request[0] * 1e6,
                   "cloud_only_ms": fixed.latency_s[1] * 1e3, "cloud_only_usd_per_million": fixed.usd_per_request[1] * 1e6,
                   "plan_wall_s": plan_s}
            rows.append(row)
            print(f"[plan_quality] {bw:>8} {label:<17} cut after {', '.join(row['cut_after'])}: "
                  f"{row['latency_ms']:.1f} ms ${row['usd_per_million']:.3g}/M (edge-only {row['edge_only_ms']:.1f} ms, "
                  f"cloud-only {row['cloud_only_ms']:.1f} ms) [{plan_s:.1f} s]", flush=True)
    return rows


def ratio(a: float, b: float) -> str:
    return "-" if b == 0 else f"{a / b:.2f}"


def table(rows: list[dict]) -> str:
    lines = ["| uplink | objective | chosen cut | latency ms | $/M req | vs edge-only (latency, cost) | "
             "vs cloud-only (latency, cost) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['bandwidth']} | {r['objective']} | {', '.join(r['cut_after'])} | {r['latency_ms']:.1f} | "
            f"{r['usd_per_million']:.3g} | {ratio(r['latency_ms'], r['edge_only_ms'])}, "
            f"{ratio(r['usd_per_million'], r['edge_only_usd_per_million'])} | "
            f"{ratio(r['latency_ms'], r['cloud_only_ms'])}, "
            f"{ratio(r['usd_per_million'], r['cloud_only_usd_per_million'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision.models:resnet50")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "plan_quality.json"))
    args = parser.parse_args()
    rows = run(args.model, (1, 3, 224, 224))
    md = table(rows)
    print(md)
    out = Path(args.out)
    from _provenance import write_results  # the commit and whether the tree was clean
    write_results(out, {"model": args.model, "tiers": TIERS, "rps": RPS, "rows": rows,
                        "note": "predicted by the cost and price models, not measured"})
    out.with_suffix(".md").write_text(
        f"Plan quality, {args.model}, {' -> '.join(TIERS)}, {RPS:g} requests/s (PREDICTED by the cost model; "
        f"ratios = chosen / baseline, < 1 is better). Command: `python benchmarks/plan_quality.py`.\n\n" + md + "\n")


if __name__ == "__main__":
    main()
