"""Accuracy of a ``splitc profile`` target: predicted vs measured latency of real partitions.

One command (profiles this machine first, ~1-3 min, unless a target file is given)::

    python benchmarks/profile_accuracy.py                         # writes benchmarks/results/profile_accuracy.{json,md}
    python benchmarks/profile_accuracy.py --targets-file my.yaml --target my-laptop   # reuse a profile
    python benchmarks/profile_accuracy.py --quick                 # quick profile, fewer repeats (a smoke run)

For each of resnet50, mobilenet_v3_large and vit_b_16 (torchvision, random weights,
seed 0, input 1x3x224x224: no downloads) three cuts are forced at the quarters of
the compute-node list (the nearest legal cut that ships a single tensor, within
1/8 of the list; else the nearest legal cut), giving four partitions. They are
produced by the compiler itself: ``prepare`` + ``default_passes`` with
``CompileOptions(split=..., targets=(profiled,) * 4)``, then written by
:func:`splitc.backends.onnx_export.export_partition` (TorchScript export + onnxsim)
exactly as ``splitc compile`` writes them. Each partition is run in ONNX Runtime
(CPU, the profile's thread count, default graph optimisations) on the boundary
tensors the cut pass recorded: warm-up, then the median of >= 10 runs and >= 1 s.

**Predicted** = the sum of :func:`splitc.targets.cost_model.node_time` over the
partition's nodes on the profiled target (what the planner uses; checked equal to
the plan's per-tier ``compute_s``). **Error** = predicted / measured - 1. The
benchmark models are never used by the profile's fit (no training on the test set).

**On a GPU** (``--device cuda``; profiles with ``splitc profile --device cuda``
unless a target file is given) each partition is the compiler's own
``torch.fx.GraphModule`` of that partition (``part.graph_module``, what the cut pass
built), run in eager PyTorch on CUDA, fp32, batch 1, on the same boundary tensors:
:func:`splitc.targets.machine_profiler.time_torch` (warm-up, ``perf_counter`` around the call
and ``torch.cuda.synchronize``, median of >= 50 runs and >= 1 s). The measured figure
is the partition with each BatchNorm that follows a convolution folded into it
(``torch.fx.experimental.optimization.fuse``): what splitc's ONNX export does and what
its cost model assumes (``splitc.foldable`` BatchNorms cost nothing), i.e. the torch
partition as one would deploy it. The unfolded GraphModule is timed too and recorded
(``measured_unfolded_ms``) for reference. Results go to ``profile_accuracy_cuda.{json,md}``;
``--save-target FILE`` also keeps the evaluated target YAML. The commands on a GPU machine::

    splitc profile --device cuda --kind cloud-vm --name h100-profile -o benchmarks/results/h100-profile.yaml
    python benchmarks/profile_accuracy.py --device cuda \
        --targets-file benchmarks/results/h100-profile.yaml --target h100-profile

Timings on a shared machine are inflated and noisy; the JSON records the load
average before and after, and the spread of the runs of every partition.
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

MODELS = ("resnet50", "mobilenet_v3_large", "vit_b_16")
GOAL_MEDIAN, GOAL_WORST = 0.15, 0.30
RESULTS = ROOT / "benchmarks" / "results"


def get_target(args, tmp: Path) -> tuple[Path, str, dict | None]:
    """The target file to evaluate: the one given, or a fresh profile of this machine."""
    if args.targets_file:
        return Path(args.targets_file), args.target, None
    from splitc.targets.machine_profiler import ProfileConfig, profile_machine, write_profile

    config = ProfileConfig(name="this-machine", threads=args.threads, quick=args.quick, device=args.device,
                           kind="cloud-vm" if args.device == "cuda" else "edge",
                           command=f"profile_machine(threads={args.threads}, quick={args.quick}, "
                                   f"device={args.device!r})")
    result = profile_machine(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    path = tmp / "this-machine.yaml"
    write_profile(result, path)
    return path, "this-machine", result.to_dict()


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


def measure_model(model: str, target_file: Path, target: str, threads: int, quick: bool, tmp: Path,
                  device: str = "cpu") -> dict:
    from splitc.core.options import CompileOptions
    from splitc.core.pass_manager import PassManager
    from splitc.driver.pipeline import default_passes, plan_model, prepare
    from splitc.core.graph import COMPUTE_OPS
    from splitc.targets.cost_model import node_time
    from splitc.backends.onnx_export import export_partition
    from splitc.targets.machine_profiler import make_session, time_session

    spec, shape = f"torchvision.models:{model}", [(1, 3, 224, 224)]
    planned = plan_model(spec, CompileOptions(targets=(target,) * 2, targets_files=(str(target_file),)), shape)
    cuts = choose_cuts(planned.ctx.candidates)
    options = CompileOptions(targets=(target,) * 4, targets_files=(str(target_file),), split=tuple(cuts))
    prepared = prepare(spec, options, shape)
    PassManager(default_passes()).run(prepared.traced.graph_module, prepared.ctx)
    ctx = prepared.ctx
    tier = ctx.tiers[0]
    rows = []
    for part in ctx.partitions:
        nodes = [n for n in part.graph_module.graph.nodes if n.op in COMPUTE_OPS]
        predicted = float(sum(node_time(n, tier) for n in nodes))
        planned_s = ctx.plan_result.best.compute_s[part.tier_index]
        extra = {}
        if device == "cuda":
            timed = time_partition_torch(part, quick)
            measured, runs, spread = timed["folded"]
            extra = {"measured_unfolded_ms": timed["unfolded"][0] * 1e3,
                     "foldable_batchnorms": sum(bool(n.meta.get("splitc.foldable")) for n in nodes)}
        else:
            path = tmp / f"{model}-part{part.index}.onnx"
            export_partition(part, path)
            session = make_session(path, threads)
            feeds = {name: x.numpy() for name, x in zip(part.inputs, part.example_inputs)}
            measured, runs, spread = time_session(session, feeds, min_runs=5 if quick else 10,
                                                  min_seconds=0.3 if quick else 1.0)
            del session
        rows.append({**extra, "model": model, "partition": part.index, "after": cuts[part.index] if part.index < 3 else "output",
                     "nodes": len(nodes), "gflops": sum(n.meta.get("splitc.flops", 0) for n in nodes) / 1e9,
                     "predicted_ms": predicted * 1e3, "plan_compute_ms": planned_s * 1e3,
                     "measured_ms": measured * 1e3, "runs": runs, "spread": spread,
                     "error": predicted / measured - 1.0})
        print(f"[accuracy] {model} part{part.index}: predicted {predicted * 1e3:.2f} ms, measured "
              f"{measured * 1e3:.2f} ms ({rows[-1]['error'] * 100:+.0f}%)", file=sys.stderr, flush=True)
    return {"model": model, "cuts_after": cuts, "rows": rows}


def table(rows: list[dict]) -> str:
    unfolded = any("measured_unfolded_ms" in r for r in rows)
    lines = ["| model | partition | cut after | nodes | GFLOPs | predicted ms | measured ms | error % |"
             + (" measured, BN unfolded ms |" if unfolded else ""),
             "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" if unfolded else "")]
    for r in rows:
        lines.append(f"| {r['model']} | {r['partition']} | `{r['after']}` | {r['nodes']} | {r['gflops']:.3f} | "
                     f"{r['predicted_ms']:.2f} | {r['measured_ms']:.2f} | {r['error'] * 100:+.1f} |"
                     + (f" {r['measured_unfolded_ms']:.2f} |" if unfolded else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets-file", help="A target YAML written by 'splitc profile' (default: profile now).")
    parser.add_argument("--target", default=None, help="Its target name (with --targets-file).")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = default), as profiled.")
    parser.add_argument("--quick", action="store_true", help="Quick profile and fewer repeats.")
    parser.add_argument("--models", default=",".join(MODELS), help="Comma-separated torchvision models.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: ONNX Runtime partitions; cuda: the partitions' GraphModules in eager torch on CUDA.")
    parser.add_argument("--out", default=None,
                        help="JSON destination (.md beside); default benchmarks/results/profile_accuracy[_cuda].json.")
    parser.add_argument("--save-target", default=None, help="Also copy the evaluated target YAML here.")
    args = parser.parse_args()
    args.out = args.out or str(RESULTS / ("profile_accuracy_cuda.json" if args.device == "cuda"
                                          else "profile_accuracy.json"))
    if args.targets_file and not args.target:
        parser.error("--target NAME is required with --targets-file")
    logging.basicConfig(level=logging.WARNING)
    import torch

    from splitc.errors import SplitcError
    from splitc.targets.machine_profiler import check_device

    try:
        check_device(args.device)  # before minutes of planning: no GPU -> one line, exit 2
    except SplitcError as err:
        parser.exit(2, f"error: {err}\n")

    torch.set_num_threads(max(1, args.threads or os.cpu_count() or 1))
    start, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        target_file, target, profile = get_target(args, tmp)
        target_yaml = target_file.read_text(encoding="utf-8")
        if args.save_target:
            Path(args.save_target).write_text(target_yaml, encoding="utf-8")
        results = [measure_model(m.strip(), target_file, target, args.threads, args.quick, tmp, args.device)
                   for m in args.models.split(",") if m.strip()]
    rows = [r for res in results for r in res["rows"]]
    errors = np.abs([r["error"] for r in rows])
    summary = {"median_abs_error": float(np.median(errors)), "worst_abs_error": float(errors.max()),
               "goal_median": GOAL_MEDIAN, "goal_worst": GOAL_WORST,
               "met": bool(np.median(errors) <= GOAL_MEDIAN and errors.max() <= GOAL_WORST)}
    import onnxruntime
    import torch

    payload = {
        "command": " ".join(["python", "benchmarks/profile_accuracy.py", *sys.argv[1:]]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                    "load_average_before": load_before, "load_average_after": os.getloadavg(),
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                    "torch_cuda": torch.version.cuda if args.device == "cuda" else None},
        "device": args.device,
        "threads": args.threads, "quick": args.quick, "duration_s": time.perf_counter() - start,
        "summary": summary, "rows": rows, "models": [{k: v for k, v in r.items() if k != "rows"} for r in results],
        "target_yaml": target_yaml, "profile": profile,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from _provenance import write_results  # the commit and whether the tree was clean
    write_results(out, payload)
    runtime = (f"{payload['machine']['gpu']}, eager torch {torch.__version__} CUDA {torch.version.cuda}, fp32, "
               f"BatchNorms folded into convs" if args.device == "cuda"
               else f"ONNX Runtime {onnxruntime.__version__}, threads {args.threads or 'default'}")
    md = (f"# Profile accuracy{' (torch on CUDA)' if args.device == 'cuda' else ''}\n\n`{payload['command']}` on "
          f"{payload['date_utc']} ({os.cpu_count()} CPUs, {runtime}; "
          f"load average before/after {load_before[0]:.2f}/{os.getloadavg()[0]:.2f})\n\n{table(rows)}\n\n"
          f"Median |error| {summary['median_abs_error'] * 100:.1f}% (goal <= {GOAL_MEDIAN * 100:.0f}%), worst "
          f"{summary['worst_abs_error'] * 100:.1f}% (goal <= {GOAL_WORST * 100:.0f}%): "
          f"{'met' if summary['met'] else 'NOT met'}.\n")
    if max(load_before[0], os.getloadavg()[0]) > 0.5 * (os.cpu_count() or 1) + 1:  # others shared the cores
        md += ("\n**Contended run**: other processes loaded the CPUs during this run; the profile and the "
               "partitions were timed under different interference, so these errors are not meaningful. "
               "Rerun on a quiet machine.\n")
    out.with_suffix(".md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
