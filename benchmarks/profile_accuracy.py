"""Accuracy of ``splitc profile`` targets: predicted vs measured latency of real partitions, in two modes.

One command (profiles this machine, then measures; ~15 min for two runs on a quiet 2-core machine)::

    python benchmarks/profile_accuracy.py                    # two runs back to back -> benchmarks/results/profile_accuracy.{json,md}
    python benchmarks/profile_accuracy.py --runs 1 --quick --models resnet18     # smoke run (~1-2 min)
    python benchmarks/profile_accuracy.py --device cuda --runs 1 --modes predicted   # on a GPU: eager torch partitions

Each run, from scratch:

1. ``splitc profile`` of this machine (microbenchmarks only; none of the models below is used by
   the fit) -> the **predicted** target.
2. For each of resnet50, mobilenet_v3_large, vit_b_16, efficientnet_b0, convnext_tiny
   (torchvision, random weights, seed 0, input 1x3x224x224: no downloads), three cuts are
   forced at the quarters of the compute-node list (the nearest legal cut that ships a single
   tensor, within 1/8 of the list; else the nearest legal cut): four partitions, produced by
   the compiler itself (``prepare`` + ``default_passes`` with ``--split``) and written by
   :func:`splitc.backends.onnx_export.export_partitions` exactly as ``splitc compile`` writes
   them. Each partition is timed in ONNX Runtime on the boundary tensors the cut pass recorded,
   by the one timing method (:mod:`splitc.targets.timing`: warm-up, then the 10th percentile of
   >= 20 runs and >= 1 s; the profile's thread count).
3. **Model-specific** mode: ``splitc profile --model`` of that model (the same target plus this
   model's own node times, :func:`splitc.targets.model_profiler.measure_model`), then the same
   forced cuts planned with it.

**Predicted** = the planner's figure for that tier (``plan.compute_s``: the nodes' times, the
partition's run overhead and its layout conversions at the cuts), what ``splitc plan`` uses.
**Error** = predicted / measured - 1. Goals (issue 17): predicted mode median |error| <= 10 %,
worst <= 25 %; model-specific mode median <= 5 %, worst <= 15 %.

With ``--runs 2`` (the default) everything above runs twice back to back; both runs are reported,
and so is the **run-to-run spread of the measurements themselves**: per partition,
``|m1 - m2| / mean(m1, m2)`` of its measured time in the two runs (median and worst), the noise
against which the errors must be read. The JSON records the load average before and after.

**On a GPU** (``--device cuda``, predicted mode) each partition is the compiler's own
``torch.fx.GraphModule`` run in eager PyTorch on CUDA with BatchNorms folded into convolutions
(``torch.fx.experimental.optimization.fuse``: what the cost model assumes), timed by
:func:`splitc.targets.machine_profiler.time_torch`; profile with ``splitc profile --device cuda``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("resnet50", "mobilenet_v3_large", "vit_b_16", "efficientnet_b0", "convnext_tiny")
MODES = ("predicted", "model-specific")
GOALS = {"predicted": (0.10, 0.25), "model-specific": (0.05, 0.15)}  # median, worst |error|
RESULTS = ROOT / "benchmarks" / "results"
SHAPE = (1, 3, 224, 224)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def profile_target(args, tmp: Path, run: int) -> tuple[Path, str, dict]:
    """A fresh microbenchmark profile of this machine (never fitted on the benchmark models)."""
    from splitc.targets.machine_profiler import ProfileConfig, profile_machine, write_profile

    name = "this-machine"
    config = ProfileConfig(name=name, threads=args.threads, quick=args.quick, device=args.device,
                           kind="cloud-vm" if args.device == "cuda" else "edge",
                           command=f"splitc profile --name {name} --threads {args.threads}"
                                   f"{' --quick' if args.quick else ''} --device {args.device}")
    result = profile_machine(config, progress=say)
    path = tmp / f"run{run}-{name}.yaml"
    write_profile(result, path)
    return path, name, result.to_dict()


def choose_cuts(cands) -> list[str]:
    """Node names to cut after: nearest single-tensor legal cut to each quarter of the node list."""
    n = len(cands.nodes)
    chosen: list[str] = []
    last = 0
    for q in (0.25, 0.5, 0.75):
        k = round(q * n)
        legal = [c for c in cands.cuts if c.legal and c.after is not None and c.index > last]
        single = [c for c in legal if len(c.crossing) == 1 and abs(c.index - k) <= n / 8]
        best = min(single or legal, key=lambda c: abs(c.index - k))
        chosen.append(best.after)
        last = best.index
    return chosen


def compiled(spec: str, target_file: Path, target: str, cuts: list[str] | None):
    """The compiler's partitions of ``spec`` for four tiers of ``target`` (cuts forced when given)."""
    from splitc.core.options import CompileOptions
    from splitc.core.pass_manager import PassManager
    from splitc.driver.pipeline import default_passes, plan_model, prepare

    if cuts is None:
        planned = plan_model(spec, CompileOptions(targets=(target,) * 2, targets_files=(str(target_file),)), [SHAPE])
        cuts = choose_cuts(planned.ctx.candidates)
    options = CompileOptions(targets=(target,) * 4, targets_files=(str(target_file),), split=tuple(cuts))
    prepared = prepare(spec, options, [SHAPE])
    PassManager(default_passes()).run(prepared.traced.graph_module, prepared.ctx)
    return prepared, cuts


def model_specific_target(spec: str, target_file: Path, target: str, args, tmp: Path) -> tuple[Path, dict]:
    """``splitc profile --model``'s table for ``spec`` added to the profiled target (written to a new file)."""
    import dataclasses

    from splitc.core.options import CompileOptions
    from splitc.core.pass_manager import PassManager
    from splitc.core.passes.eliminate_dead_code import EliminateDeadCodePass
    from splitc.core.passes.fold_constants import FoldConstantsPass
    from splitc.core.passes.fold_static_shapes import FoldStaticShapesPass
    from splitc.core.passes.profile import ProfilePass
    from splitc.driver.pipeline import prepare
    from splitc.targets.model_profiler import measure_model
    from splitc.targets.target import load_targets_file, write_targets_file

    base = load_targets_file(target_file)[0]
    prepared = prepare(spec, CompileOptions(targets=(target,), targets_files=(str(target_file),)), [SHAPE])
    gm = PassManager([EliminateDeadCodePass(), FoldConstantsPass(), ProfilePass(), FoldStaticShapesPass()]).run(
        prepared.traced.graph_module, prepared.ctx)
    ctx = prepared.ctx
    start = time.perf_counter()
    table = measure_model(gm, ctx.example_inputs, [s.name for s in ctx.input_specs], base, threads=args.threads,
                          model=spec, command=f"splitc profile --model {spec} --input-shape 1,3,224,224",
                          input_shapes=[SHAPE], quick=args.quick)
    seconds = time.perf_counter() - start
    path = tmp / f"{target_file.stem}-{spec.split(':')[-1]}.yaml"
    write_targets_file([dataclasses.replace(base, model_profile=table)], path)
    return path, {"measured_model_ms": table.measured_s * 1e3, "model_profile_s": seconds}


def time_partition_torch(part, quick: bool, device: str = "cuda") -> dict:
    """Eager torch: the partition's GraphModule with conv+BN folded (measured) and as is (reference)."""
    import copy

    import torch
    from torch.fx.experimental.optimization import fuse

    from splitc.targets.machine_profiler import time_torch

    inputs = [x.to(device) for x in part.example_inputs]
    plain = copy.deepcopy(part.graph_module).eval()
    folded = fuse(plain)  # a copy: conv+BN pairs whose conv has one user, the pattern the profile pass marks foldable
    window = {"min_runs": 20 if quick else 50, "min_seconds": 0.3 if quick else 1.0}
    out = {}
    for key, gm in (("folded", folded), ("unfolded", plain)):
        gm = gm.to(device)
        out[key] = time_torch(gm, inputs, **window)
        del gm
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def measure_partitions(prepared, args, tmp: Path, tag: str) -> list[dict]:
    """Each partition timed as ``splitc compile`` writes it (ONNX Runtime) or as its GraphModule (cuda)."""
    from splitc.backends.onnx_export import export_partitions
    from splitc.targets.timing import make_session, time_session

    ctx = prepared.ctx
    out = []
    if args.device == "cuda":
        for part in ctx.partitions:
            timed = time_partition_torch(part, args.quick)
            measured, runs, spread = timed["folded"]
            out.append({"measured_s": measured, "runs": runs, "spread": spread,
                        "measured_unfolded_ms": timed["unfolded"][0] * 1e3})
        return out
    paths = [tmp / f"{tag}-part{p.index}.onnx" for p in ctx.partitions]
    report = export_partitions(ctx.partitions, paths)
    for part, path in zip(ctx.partitions, paths):
        session = make_session(path, args.threads)
        feeds = {name: x.numpy() for name, x in zip(part.inputs, part.example_inputs)}
        measured, runs, spread = time_session(session, feeds, min_runs=5 if args.quick else 20,
                                              min_seconds=0.3 if args.quick else 1.0)
        del session
        out.append({"measured_s": measured, "runs": runs, "spread": spread, "export": report.method})
        path.unlink()
    return out


def measure_model(model: str, target_file: Path, target: str, args, tmp: Path, run: int) -> dict:
    from splitc.core.graph import COMPUTE_OPS

    spec = f"torchvision.models:{model}"
    prepared, cuts = compiled(spec, target_file, target, None)
    ctx = prepared.ctx
    plan = ctx.plan_result.best
    timings = measure_partitions(prepared, args, tmp, f"run{run}-{model}")
    rows = []
    for part, timed in zip(ctx.partitions, timings):
        nodes = [n for n in part.graph_module.graph.nodes if n.op in COMPUTE_OPS]
        rows.append({"model": model, "partition": part.index, "after": cuts[part.index] if part.index < 3 else "output",
                     "nodes": len(nodes), "gflops": sum(n.meta.get("splitc.flops", 0) for n in nodes) / 1e9,
                     "measured_ms": timed["measured_s"] * 1e3, "runs": timed["runs"], "spread": timed["spread"],
                     "export": timed.get("export"),
                     "predicted": {"predicted_ms": plan.compute_s[part.tier_index] * 1e3},
                     **({"measured_unfolded_ms": timed["measured_unfolded_ms"]} if "measured_unfolded_ms" in timed
                        else {})})
    extra = {}
    if "model-specific" in args.modes:
        specific_file, extra = model_specific_target(spec, target_file, target, args, tmp)
        specific, _ = compiled(spec, specific_file, target, cuts)
        splan = specific.ctx.plan_result.best
        figures = specific.ctx.plan_result.figures
        for row in rows:
            tier = row["partition"]
            row["model-specific"] = {"predicted_ms": splan.compute_s[tier] * 1e3,
                                     "measured_nodes": figures[tier]["measured_nodes"], "nodes_total": figures[tier]["nodes"]}
    for row in rows:
        for mode in args.modes:
            if mode in row:
                row[mode]["error"] = row[mode]["predicted_ms"] / row["measured_ms"] - 1.0
        say(f"[accuracy] run {run} {model} part{row['partition']}: measured {row['measured_ms']:.2f} ms; "
            + ", ".join(f"{mode} {row[mode]['predicted_ms']:.2f} ms ({row[mode]['error'] * 100:+.1f}%)"
                        for mode in args.modes if mode in row))
    return {"model": model, "cuts_after": cuts, "rows": rows, **extra}


def summarise(rows: list[dict], modes) -> dict:
    out = {}
    for mode in modes:
        errors = np.abs([r[mode]["error"] for r in rows if mode in r])
        if not len(errors):
            continue
        goal_median, goal_worst = GOALS[mode]
        out[mode] = {"median_abs_error": float(np.median(errors)), "worst_abs_error": float(errors.max()),
                     "partitions": int(len(errors)), "goal_median": goal_median, "goal_worst": goal_worst,
                     "met": bool(np.median(errors) <= goal_median and errors.max() <= goal_worst)}
    return out


def run_to_run(runs: list[dict]) -> dict | None:
    """|m1 - m2| / mean of each partition's measured time across the first two runs."""
    if len(runs) < 2:
        return None
    first = {(r["model"], r["partition"]): r["measured_ms"] for r in runs[0]["rows"]}
    spreads = [abs(r["measured_ms"] - first[(r["model"], r["partition"])])
               / (0.5 * (r["measured_ms"] + first[(r["model"], r["partition"])]))
               for r in runs[1]["rows"] if (r["model"], r["partition"]) in first]
    return {"median": float(np.median(spreads)), "worst": float(np.max(spreads)), "partitions": len(spreads)}


def table(rows: list[dict], modes) -> str:
    header = "| model | partition | cut after | nodes | GFLOPs | measured ms |"
    rule = "|---|---|---|---:|---:|---:|"
    for mode in modes:
        header += f" {mode} ms | {mode} error % |"
        rule += "---:|---:|"
    lines = [header, rule]
    for r in rows:
        line = (f"| {r['model']} | {r['partition']} | `{r['after']}` | {r['nodes']} | {r['gflops']:.3f} | "
                f"{r['measured_ms']:.2f} |")
        for mode in modes:
            m = r.get(mode)
            line += f" {m['predicted_ms']:.2f} | {m['error'] * 100:+.1f} |" if m else " - | - |"
        lines.append(line)
    return "\n".join(lines)


def markdown(payload: dict) -> str:
    modes = payload["modes"]
    md = [f"# Profile accuracy{' (torch on CUDA)' if payload['device'] == 'cuda' else ''}", "",
          f"`{payload['command']}` on {payload['date_utc']} ({payload['machine']['cpus']} CPUs, "
          f"{payload['machine']['runtime']}; load average before/after "
          f"{payload['machine']['load_average_before'][0]:.2f}/{payload['machine']['load_average_after'][0]:.2f}; "
          f"{payload['duration_s'] / 60:.1f} min)", ""]
    for run in payload["runs"]:
        md += [f"## Run {run['run']} ({run['date_utc']})", "", table(run["rows"], modes), ""]
        for mode, s in run["summary"].items():
            md.append(f"- **{mode}**: median |error| {s['median_abs_error'] * 100:.1f} % (goal <= "
                      f"{s['goal_median'] * 100:.0f} %), worst {s['worst_abs_error'] * 100:.1f} % (goal <= "
                      f"{s['goal_worst'] * 100:.0f} %), {s['partitions']} partitions: "
                      f"{'met' if s['met'] else 'NOT met'}")
        md.append("")
    spread = payload.get("run_to_run_spread")
    if spread:
        md.append(f"Run-to-run spread of the measured partitions (|m1 - m2| / mean): median "
                  f"{spread['median'] * 100:.1f} %, worst {spread['worst'] * 100:.1f} % over {spread['partitions']} "
                  "partitions.")
    if payload.get("contended"):
        md.append("\n**Contended run**: other processes loaded the CPUs during this run; the profile and the "
                  "partitions were timed under different interference, so these errors are not meaningful. "
                  "Rerun on a quiet machine.")
    return "\n".join(md) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="Complete runs back to back (profile + measure each).")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = default), as profiled.")
    parser.add_argument("--quick", action="store_true", help="Quick profile and fewer repeats (a smoke run).")
    parser.add_argument("--models", default=",".join(MODELS), help="Comma-separated torchvision models.")
    parser.add_argument("--modes", default=",".join(MODES), help="predicted, model-specific (comma-separated).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: ONNX Runtime partitions; cuda: the partitions' GraphModules in eager torch on CUDA.")
    parser.add_argument("--out", default=None,
                        help="JSON destination (.md beside); default benchmarks/results/profile_accuracy[_cuda].json.")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(args.modes) - set(MODES):
        parser.error(f"--modes: valid modes are {', '.join(MODES)}")
    if args.device == "cuda" and "model-specific" in args.modes:
        parser.error("--device cuda measures eager torch: use --modes predicted (model profiles are ONNX Runtime's)")
    args.out = args.out or str(RESULTS / ("profile_accuracy_cuda.json" if args.device == "cuda"
                                          else "profile_accuracy.json"))
    logging.basicConfig(level=logging.WARNING)
    import onnxruntime
    import torch

    from splitc.errors import SplitcError
    from splitc.targets.machine_profiler import check_device

    try:
        check_device(args.device)  # before minutes of planning: no GPU -> one line, exit 2
    except SplitcError as err:
        parser.exit(2, f"error: {err}\n")
    torch.set_num_threads(1)  # tracing, profiling and export only; ONNX Runtime has its own threads
    start, load_before = time.perf_counter(), os.getloadavg()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    runs = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for run in range(1, args.runs + 1):
            run_start = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            target_file, target, profile = profile_target(args, tmp, run)
            results = [measure_model(m, target_file, target, args, tmp, run) for m in models]
            rows = [r for res in results for r in res["rows"]]
            runs.append({"run": run, "date_utc": run_start, "summary": summarise(rows, args.modes), "rows": rows,
                         "models": [{k: v for k, v in r.items() if k != "rows"} for r in results],
                         "target_yaml": target_file.read_text(encoding="utf-8"), "profile": profile})
    load_after = os.getloadavg()
    runtime = (f"{torch.cuda.get_device_name()}, eager torch {torch.__version__} CUDA {torch.version.cuda}, fp32, "
               "BatchNorms folded into convs" if args.device == "cuda"
               else f"ONNX Runtime {onnxruntime.__version__}, threads {args.threads or 'default'}")
    payload = {
        "command": " ".join(["python", "benchmarks/profile_accuracy.py", *sys.argv[1:]]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "runtime": runtime,
                    "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                    "load_average_before": load_before, "load_average_after": load_after},
        "device": args.device, "threads": args.threads, "quick": args.quick, "modes": args.modes,
        "duration_s": time.perf_counter() - start, "goals": GOALS, "runs": runs,
        "run_to_run_spread": run_to_run(runs),
        "contended": max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1) + 1,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from _provenance import write_results  # the commit and whether the tree was clean
    write_results(out, payload)
    md = markdown(payload)
    out.with_suffix(".md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
