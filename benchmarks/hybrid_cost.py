"""The survey's hybrid case: a small VM for the shallow part and FaaS for the deep part, with early exits,
against one larger VM -- monetary cost per million requests of the plan splitc chooses each way.

One command (trains what is missing first: the MNIST example, ~1 min, and a torchvision ResNet-18 on the same
digits at 64x64, ~3 min on 2 busy cores; cached under benchmarks/results/tmp/):

    python benchmarks/hybrid_cost.py [--out benchmarks/results/hybrid_cost.json] [--models mnist,resnet18]

For each model and each chain -- ``c6i-large,aws-lambda`` (hybrid) and ``c6i-xlarge`` (one larger VM) -- the exit
heads are trained once (``--exits auto``, ``--accuracy-target 0.99``); then for every request rate and SLO the plan
pass runs with ``--objective cost``, choosing exit thresholds and cuts jointly (``splitc plan MODEL --calib ...
--exits auto --objective cost --target c6i-large,aws-lambda --rps R [--slo-ms S --slo-quantile q]`` does the same).
Reported per row: the chosen placement, $/million requests each way and the saving, the predicted p50/p99, and
the exit rates measured on held-out data (digits no head, threshold or model training saw; PyTorch heads on the
traced model, whose decisions compile-time verification shows equal to ONNX Runtime's); the cost is given both
with the calibration exit rates the planner used and re-evaluated with the held-out rates.

Models: the MNIST example (MnistResNet, labels: exit accuracy against the labels) and torchvision's ``resnet18``
(``num_classes=10``, trained here on the digits upsampled to 3x64x64; its exits are trained on its own outputs:
calibration data without labels, accuracy = agreement with the full model).

Request rates are multiples of what one c6i.large carries with the exits (``0.7 / expected busy``, the planner's
target utilisation) plus the whole model's c6i.large-vs-Lambda cost indifference point (x 0.5, 1, 2): from a trickle
(FaaS cold starts in the tail) through the range where one c6i.large no longer carries every request but could carry
the shallow part, to beyond one c6i.xlarge. SLOs (``busy`` = the whole model on c6i.large without exits): none;
p99 <= 1.2 busy (rules out FaaS cold starts in the tail); p99 <= 0.75 busy (the slowest path must be faster than
c6i.large); p50 <= 0.25 busy (only plans where most requests exit early meet it). Everything here is a
*prediction* of the cost and latency models (splitc/planning/pricing.py, docs/cost.md) with measured exit rates:
no timing is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from splitc.compression.settings import adjust_problem  # noqa: E402
from splitc.core.options import CompileOptions  # noqa: E402
from splitc.core.pass_manager import PassManager  # noqa: E402
from splitc.driver.pipeline import default_passes, prepare  # noqa: E402
from splitc.errors import SplitcError  # noqa: E402
from splitc.exits.heads import _backbone_pass, _weighted, outcome  # noqa: E402
from splitc.exits.train_exits import TrainExitsPass  # noqa: E402
from splitc.planning.objectives import evaluate_plans  # noqa: E402
from splitc.planning.plan import ChainPlanner, PlanPass, PlanSettings  # noqa: E402
from splitc.exits.heads import plan_exits  # noqa: E402

HYBRID = ("c6i-large", "aws-lambda")
SINGLE = ("c6i-xlarge",)
#: request rates as multiples of what one c6i.large carries with the exits (trickle .. beyond one c6i.xlarge)
RATE_MULTIPLES = (1e-5, 0.01, 0.1, 0.5, 0.9, 1.05, 1.2, 1.4, 1.7, 2.1, 2.6)
CACHE = ROOT / "benchmarks/results/tmp/hybrid"


# ------------------------------------------------------------------------------------------- models


def mnist_model() -> dict:
    folder = ROOT / "examples/mnist"
    if not (folder / "mnist_cnn.pt").exists():
        subprocess.run([sys.executable, str(ROOT / "examples/mnist/train_mnist.py"), "--out-dir", str(folder)],
                       check=True)
    test = np.load(folder / "test.npz")
    return {"name": "MnistResNet (examples/mnist)", "model": str(folder / "mnist_cnn.pt"),
            "calib": str(folder / "calib.npz"), "held_out": test["x"].astype(np.float32), "labels": test["y"]}


def _digits_3x(images: np.ndarray, size: int) -> np.ndarray:
    x = torch.nn.functional.interpolate(torch.from_numpy(images), size=size, mode="bilinear", align_corners=False)
    return ((x.repeat(1, 3, 1, 1) - 0.13) / 0.31).numpy().astype(np.float32)


def resnet18_model(size: int = 64, epochs: int = 2) -> dict:
    """torchvision resnet18 (10 classes) trained on the digits at ``size`` x ``size``; calib without labels."""
    import torchvision

    from examples.mnist.train_mnist import load_digits, split_indices

    folder = CACHE / f"resnet18-{size}"
    images, labels = load_digits()
    train, calib, test = split_indices(len(images))
    if not (folder / "resnet18.pt").exists():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        x, y = torch.from_numpy(_digits_3x(images[train], size)), torch.from_numpy(labels[train])
        start = time.perf_counter()
        for epoch in range(epochs):
            model.train()
            for batch in torch.randperm(len(x)).split(64):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
            print(f"[resnet18] epoch {epoch + 1}/{epochs} ({time.perf_counter() - start:.0f}s)", flush=True)
        torch.save(model.eval(), folder / "resnet18.pt")
        np.savez(folder / "calib.npz", x=_digits_3x(images[calib], size))  # no labels: exits learn its own outputs
    model = torch.load(folder / "resnet18.pt", weights_only=False).eval()
    held_out = _digits_3x(images[test], size)
    with torch.no_grad():
        own = torch.cat([model(torch.from_numpy(b)) for b in np.array_split(held_out, 10)]).argmax(1).numpy()
    print(f"[resnet18] held-out accuracy against the labels {np.mean(own == labels[test]):.4f}", flush=True)
    return {"name": f"torchvision resnet18 (digits at 3x{size}x{size}, exits on its own outputs)",
            "model": str(folder / "resnet18.pt"), "calib": str(folder / "calib.npz"), "held_out": held_out,
            "labels": None, "accuracy_vs_labels": float(np.mean(own == labels[test]))}


# ------------------------------------------------------------------------------------------- planning


@dataclasses.dataclass
class Chain:
    """One chain of one model with its exit heads trained, ready to plan at any rate and SLO."""

    targets: tuple[str, ...]
    gm: object
    ctx: object
    options: CompileOptions
    held_conf: np.ndarray  # [candidates, held-out samples]
    held_pred: np.ndarray
    held_truth: np.ndarray
    held_full: np.ndarray


def train_chain(spec: dict, targets: tuple[str, ...]) -> Chain:
    options = CompileOptions(targets=targets, exits=("auto",), calib=spec["calib"], accuracy_target=0.99,
                             objective="cost", emit=("none",))
    prepared = prepare(spec["model"], options)
    passes = default_passes()
    upto = passes[:next(i for i, p in enumerate(passes) if isinstance(p, TrainExitsPass)) + 1]
    gm = PassManager(upto).run(prepared.traced.graph_module, prepared.ctx)
    setup = prepared.ctx.exits
    heads = {c.node: c.head for c in setup.candidates}
    feats, logits = _backbone_pass(gm, heads, [spec["held_out"]])  # held-out: what no head or threshold saw
    conf, pred = [], []
    with torch.no_grad():
        for c in setup.candidates:
            scores = torch.softmax(c.head.mlp(feats[c.node]), dim=1)
            conf.append(scores.max(1).values.numpy().astype(np.float64))
            pred.append(scores.argmax(1).numpy())
    full = logits.argmax(1).numpy()
    truth = spec["labels"] if spec["labels"] is not None else full
    return Chain(targets, gm, prepared.ctx, options, np.array(conf), np.array(pred), truth, full)


def held_out_rates(chain: Chain) -> tuple[np.ndarray, float]:
    """Unconditional exit rate of every candidate and pipeline accuracy on the held-out data, chosen thresholds."""
    setup = chain.ctx.exits
    thresholds = {c.candidate.node: c.threshold for c in setup.chosen}
    exit_at = np.full(chain.held_conf.shape[1], -1)
    for e, c in enumerate(setup.candidates):
        take = (exit_at < 0) & (chain.held_conf[e] >= thresholds.get(c.node, np.inf))
        exit_at[take] = e
    pred = chain.held_full.copy()
    for e in range(len(setup.candidates)):
        pred[exit_at == e] = chain.held_pred[e][exit_at == e]
    betas = np.array([np.mean(exit_at == e) for e in range(len(setup.candidates))])
    return betas, float(np.mean(pred == chain.held_truth))


def plan_at(chain: Chain, rps: float, slo_ms: float | None, quantile: str) -> dict:
    """The plan ``--objective cost --rps rps [--slo-ms]`` chooses (exits and cuts jointly), and its figures."""
    ctx, setup = chain.ctx, chain.ctx.exits
    options = dataclasses.replace(chain.options, rps=rps, slo_ms=slo_ms, slo_quantile=quantile)
    ctx.options = options
    ctx.set_settings(PlanSettings.from_options(options))
    setup.chosen, setup.summary = [], {}
    try:
        PlanPass(adjusters=[adjust_problem, plan_exits]).run(chain.gm, ctx)
    except SplitcError as exc:
        return {"feasible": False, "reason": exc.one_line()}
    best = ctx.plan_result.best
    m = best.metrics
    betas, accuracy = held_out_rates(chain)
    active = [setup.candidates.index(c.candidate) for c in setup.chosen]
    base = adjust_problem(ctx.planner.base_problem(chain.gm, ctx), chain.gm, ctx)
    held = evaluate_plans(_weighted(base, setup, active, betas), ctx.tiers, np.array([best.cuts]), rps)
    _, _, cal_full = outcome(setup, [np.inf] * len(setup.candidates), setup.splits["calibrate"])
    tiers = [t.name for t in ctx.tiers]
    bounds = (0, *best.cuts, len(ctx.candidates.nodes))
    runs = [tiers[t] for t in range(len(tiers)) if bounds[t + 1] > bounds[t]]
    return {
        "feasible": True,
        "placement": " + ".join(runs) + (f" (cut after {best.after[0]})" if len(runs) > 1 else ""),
        "cuts": list(best.after),
        "exits": [{"node": c.candidate.node, "tier": tiers[int(np.searchsorted(bounds[1:], c.candidate.position,
                                                                                 side='right'))],
                   "threshold": c.threshold, "exit_rate_calibrate": c.beta_calibrate,
                   "exit_rate_held_out": float(betas[setup.candidates.index(c.candidate)])} for c in setup.chosen],
        "reach": list(best.reach),
        "usd_per_million": m["usd_per_million"],
        "usd_per_million_held_out_rates": float(held.usd_per_request[0] * 1e6),
        "tier_usd_per_million": [v * 1e6 for v in m["tier_usd_per_request"]],
        "latency_s": best.latency_s, "p50_s": m["p50_s"], "p99_s": m["p99_s"],
        "p50_s_held_out_rates": float(held.p50_s[0]), "p99_s_held_out_rates": float(held.p99_s[0]),
        "latency_distribution": m.get("latency_distribution", []),
        "accuracy_held_out": accuracy, "full_model_accuracy_calibrate": cal_full,
        "indifference": ctx.plan_result.objective.get("indifference", []),
    }


def full_model_busy(chain: Chain) -> float:
    """Predicted seconds of the whole model (no exits) on the chain's first tier."""
    return float(ChainPlanner().base_problem(chain.gm, chain.ctx).node_time[0].sum())


def exits_capacity(chain: Chain) -> tuple[float, float]:
    """(expected seconds per request on c6i.large with the exits chosen at no SLO, the c6i.large vs aws-lambda cost
    indifference rate for the whole model with those exits: below it FaaS alone is cheaper)."""
    from splitc.planning.pricing import indifference_rps

    plan_at(chain, 0.7 / full_model_busy(chain), None, "p50")  # exits as chosen for the cost objective
    setup = chain.ctx.exits
    active = [setup.candidates.index(c.candidate) for c in setup.chosen]
    chosen = {c.candidate.node: c.threshold for c in setup.chosen}
    _, betas, _ = outcome(setup, [chosen.get(c.node, np.inf) for c in setup.candidates], setup.splits["calibrate"])
    base = _weighted(ChainPlanner().base_problem(chain.gm, chain.ctx), setup, active, betas)
    expected = [float(base.weighted_node_time(t).sum()) for t in range(2)]  # [c6i-large, aws-lambda]
    vm, faas = chain.ctx.tiers
    return expected[0], indifference_rps(vm, expected[0], faas, expected[1], float(base.memory_of(0, base.n)))


def run_model(spec: dict) -> dict:
    print(f"== {spec['name']}", flush=True)
    hybrid, single = train_chain(spec, HYBRID), train_chain(spec, SINGLE)
    busy = full_model_busy(hybrid)
    expected, indifference = exits_capacity(hybrid)
    capacity = 0.7 / expected  # one c6i.large at 70 % utilisation, with the exits
    slos = [(None, "p50"), (1.2 * busy * 1e3, "p99"), (0.75 * busy * 1e3, "p99"), (0.25 * busy * 1e3, "p50")]
    rates = sorted({capacity * m for m in RATE_MULTIPLES} |
                   ({indifference * f for f in (0.5, 1.0, 2.0)} if np.isfinite(indifference) else set()))
    print(f"whole model on c6i.large: {busy * 1e3:.3f} ms without exits, {expected * 1e3:.3f} ms expected with them: "
          f"one c6i.large carries {capacity:.1f} req/s at 70 % utilisation; c6i.large vs aws-lambda cost "
          f"indifference for the whole model with its exits: {indifference:.2f} req/s", flush=True)
    rows = []
    for rps in rates:
        multiple = rps / capacity
        for slo_ms, quantile in slos:
            a, b = plan_at(hybrid, rps, slo_ms, quantile), plan_at(single, rps, slo_ms, quantile)
            row = {"rps": rps, "capacity_multiple": multiple, "slo_ms": slo_ms, "slo_quantile": quantile,
                   "hybrid": a, "single_vm": b}
            if a["feasible"] and b["feasible"]:
                row["saving"] = 1 - a["usd_per_million"] / b["usd_per_million"]
                row["saving_held_out_rates"] = (1 - a["usd_per_million_held_out_rates"] /
                                                b["usd_per_million_held_out_rates"])
            rows.append(row)
            slo = "no SLO" if slo_ms is None else f"{quantile} <= {slo_ms:.2f} ms"
            print(f"{rps:10.3f} req/s ({multiple:.3g} x one c6i.large), {slo:18s}: hybrid {_words(a)} | "
                  f"c6i.xlarge {_words(b)}" + (f" | saving {row['saving']:.1%}" if "saving" in row else ""), flush=True)
    return {"model": spec["name"], "full_model_busy_c6i_large_s": busy, "expected_busy_c6i_large_s": expected,
            "c6i_large_capacity_rps": capacity,
            "whole_model_indifference_rps": indifference if np.isfinite(indifference) else None,
            **({"accuracy_vs_labels": spec["accuracy_vs_labels"]} if "accuracy_vs_labels" in spec else {}),
            "slos": [{"slo_ms": s, "quantile": q} for s, q in slos], "rows": rows}


def _words(r: dict) -> str:
    if not r["feasible"]:
        return f"infeasible ({r['reason'][:90]})"
    exits = ", ".join(f"{e['node']}@{e['tier']} {e['exit_rate_held_out']:.0%}" for e in r["exits"]) or "none"
    return (f"${r['usd_per_million']:.3f}/M ({r['placement']}; exits {exits}; p50 {r['p50_s'] * 1e3:.2f} "
            f"p99 {r['p99_s'] * 1e3:.2f} ms)")


def summary(report: dict) -> str:
    """A markdown table of every row (the README quotes a selection): placement, $/M each way, saving, p50/p99."""
    lines = ["| model | req/s (x one c6i.large with exits) | SLO | c6i-large,aws-lambda: plan | $/M | p50 / p99 ms | "
             "c6i-xlarge $/M | saving (calibration / held-out exit rates) |", "|---|---|---|---|---|---|---|---|"]
    for model in report["models"]:
        short = model["model"].split(" (")[0]
        for row in model["rows"]:
            a, b = row["hybrid"], row["single_vm"]
            slo = "-" if row["slo_ms"] is None else f"{row['slo_quantile']} <= {row['slo_ms']:.2f} ms"
            plan = a["placement"] if a["feasible"] else "no plan meets the SLO"
            cost = f"{a['usd_per_million']:.4g}" if a["feasible"] else "-"
            times = f"{a['p50_s'] * 1e3:.2f} / {a['p99_s'] * 1e3:.2f}" if a["feasible"] else "-"
            other = f"{b['usd_per_million']:.4g}" if b["feasible"] else "infeasible"
            saving = (f"{row['saving']:.1%} / {row['saving_held_out_rates']:.1%}" if "saving" in row else "-")
            lines.append(f"| {short} | {row['rps']:.4g} ({row['capacity_multiple']:.3g}x) | {slo} | {plan} | {cost} | "
                         f"{times} | {other} | {saving} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/hybrid_cost.json"))
    parser.add_argument("--models", default="mnist,resnet18", help="comma-separated: mnist, resnet18")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    start = time.perf_counter()
    models = {"mnist": mnist_model, "resnet18": resnet18_model}
    results = [run_model(models[name.strip()]()) for name in args.models.split(",") if name.strip()]
    report = {"benchmark": "hybrid_cost", "chains": {"hybrid": list(HYBRID), "single_vm": list(SINGLE)},
              "objective": "cost", "accuracy_target": 0.99, "target_kind": "relative",
              "seconds": time.perf_counter() - start, "models": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from _provenance import write_results  # the commit and whether the tree was clean
    write_results(out, report)
    table = summary(report)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
