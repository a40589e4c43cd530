"""The headline, measured: the planner's chosen split vs device-only and server-only over an emulated link.

One command (root, iproute2; ~20-30 min on a quiet 2-core machine, most of it profiling and ResNet-50)::

    python benchmarks/end_to_end.py                      # resnet50 (--bottleneck auto) and the MNIST example
    python benchmarks/end_to_end.py --quick --models mnist --bandwidths 20mbps     # smoke run (~3 min)

Set-up, as a deployment would have it on this 2-core machine: the **device** is CPU 0 (one ONNX
Runtime thread), the **server** is CPU 1 (one thread), pinned with ``taskset``. They sit in two
network namespaces joined by a veth pair whose bandwidth is ``tc tbf`` on both ends; this kernel has
no ``netem``, so the round trip (``--rtt-ms``, default 20 ms) is added by the userspace relay of
``benchmarks/serving.py`` in the device namespace (as ``benchmarks/serving.py`` does). Steps:

1. **Profile each side where it runs**: ``splitc profile --model MODEL --threads 1`` pinned to the
   device's core and to the server's core (one target file per side and model: microbenchmarks plus
   that model's own node times), the uplink set to the emulated link.
2. **Plan and compile three bundles** per model and bandwidth with those two targets and the link
   (``--bandwidth``, ``--rtt-ms``): the planner's choice (ResNet-50 with ``--bottleneck auto`` on
   random calibration images; MNIST on its real calibration digits), **device-only** (one tier) and
   **server-only** (``--split input``: the raw input crosses the link).
3. **Measure**: sequential requests through the real client (``splitc.runtime.client.SplitClient``)
   in the device namespace on CPU 0 and ``splitc serve`` in the server namespace on CPU 1 (device-only:
   the client alone). p50 per bundle beside the planner's prediction for it; the noise of each p50 is
   the half-width of a bootstrap 95 % interval of the median.
4. **Speedup** of the chosen plan over the better single tier, and the check the issue asks for: the
   chosen plan must not measure slower than the better single tier by more than the noise (the two
   intervals' half-widths added). When the planner chooses one tier, the chosen plan *is* that
   single-tier run: it is measured once and the speedup is 1 by definition.

Without namespaces (not root, or no ``ip``/``tc``), it stops with one line saying so (exit 2): the
headline is not measured on loopback. Emulation limit: ``tbf`` passes its bucket (1,600 bytes at
2-200 Mbps) at line speed after every idle gap, so a message of a few KB crosses faster than
bytes / bandwidth (MNIST's 3 KB input at 2 Mbps: ~6 ms less); negligible for ResNet-50's tensors.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NS_DEV, NS_SRV = "splitc-e2e-dev", "splitc-e2e-srv"
VETH_DEV, VETH_SRV = "spe2e-dev", "spe2e-srv"
IP_DEV, IP_SRV = "10.231.78.1", "10.231.78.2"
DEVICE_CPU, SERVER_CPU = "0", "1"
RESULTS = ROOT / "benchmarks" / "results"
MNIST = ROOT / "examples" / "mnist"
MODELS = {
    "resnet50": {"spec": "torchvision.models:resnet50", "shape": (1, 3, 224, 224), "bottleneck": "auto"},
    "mnist": {"spec": str(MNIST / "mnist_cnn.pt"), "shape": (1, 1, 28, 28), "bottleneck": None},
}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def namespaces_available() -> tuple[bool, str]:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc") or not shutil.which("taskset"):
        return False, "needs root, iproute2 (ip, tc) and taskset"
    probe = "splitc-e2e-probe"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok, "ok" if ok else "ip netns add failed"


def setup_link(rate_bps: float) -> None:
    """Two namespaces, a veth pair, ``tc tbf`` at ``rate_bps`` on both ends (the relay adds the round trip)."""
    teardown_link()
    _sh("ip", "netns", "add", NS_DEV)
    _sh("ip", "netns", "add", NS_SRV)
    _sh("ip", "link", "add", VETH_DEV, "type", "veth", "peer", "name", VETH_SRV)
    for ns, dev, ip in ((NS_DEV, VETH_DEV, IP_DEV), (NS_SRV, VETH_SRV, IP_SRV)):
        _sh("ip", "link", "set", dev, "netns", ns)
        _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        _sh("ip", "-n", ns, "link", "set", dev, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        # the smallest bucket tbf works with (a full-size packet, and one timer tick at 250 Hz): it lets its
        # bucket through at line speed after every idle gap, so a message of a few KB crosses faster than
        # bytes / bandwidth (MNIST's 3 KB input at 2 Mbps: ~6 ms less); negligible for large tensors
        burst = max(1600, int(rate_bps / 8 / 250))
        _sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{int(rate_bps)}bit",
            "burst", str(burst), "latency", "2s")
        _sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_slow_start_after_idle=0")


def teardown_link() -> None:
    for ns in (NS_DEV, NS_SRV):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# --------------------------------------------------------------------------- 1. profiles


def profile_sides(models: list[str], work: Path, quick: bool) -> dict[tuple[str, str], Path]:
    """``splitc profile --model`` of each model, once pinned to the device's core and once to the server's."""
    files = {}
    for side, cpu, kind in (("device", DEVICE_CPU, "device"), ("server", SERVER_CPU, "edge")):
        for model in models:
            cfg = MODELS[model]
            out = work / f"e2e-{side}-{model}.yaml"
            cmd = ["taskset", "-c", cpu, sys.executable, "-m", "splitc", "profile", "--name", f"e2e-{side}",
                   "--kind", kind, "--threads", "1", "--model", cfg["spec"],
                   "--input-shape", ",".join(map(str, cfg["shape"])), "-o", str(out), "--force", "-q"]
            if quick:
                cmd.append("--quick")
            say(f"[e2e] profiling the {side} (CPU {cpu}, 1 thread) with {model}'s nodes")
            subprocess.run(cmd, check=True, cwd=ROOT, timeout=3600)
            files[(side, model)] = out
    return files


# --------------------------------------------------------------------------- 2. bundles


def calibration(model: str, work: Path, quick: bool) -> str | None:
    if model == "mnist":
        return str(MNIST / "calib.npz")
    path = work / f"{model}-calib.npz"  # random weights: random images (agreement with the full model is the target)
    if not path.exists():
        rng = np.random.default_rng(0)
        np.savez(path, x=rng.standard_normal((64 if quick else 128, *MODELS[model]["shape"][1:]), dtype=np.float32))
    return str(path)


def compile_bundles(model: str, files, bandwidth: str, rtt_ms: float, work: Path, quick: bool) -> dict[str, Path]:
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model

    cfg = MODELS[model]
    targets_files = (str(files[("device", model)]), str(files[("server", model)]))
    common = dict(targets_files=targets_files, bandwidths=(bandwidth,), rtts_ms=(rtt_ms,), emit=("none",))
    knobs = {"bottleneck": cfg["bottleneck"], "calib": calibration(model, work, quick)} if cfg["bottleneck"] else {}
    plans = {
        "chosen": CompileOptions(targets=("e2e-device", "e2e-server"), **knobs, **common),
        "device-only": CompileOptions(targets=("e2e-device",), **common),
        "server-only": CompileOptions(targets=("e2e-device", "e2e-server"), split=("input",), **common),
    }
    out = {}
    for name, options in plans.items():
        folder = work / f"{model}-{bandwidth}-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        say(f"[e2e] {model} @ {bandwidth}: compiling the {name} bundle")
        compile_model(cfg["spec"], options, folder, input_shapes=[cfg["shape"]])
        out[name] = folder
    return out


def placement(bundle: Path) -> str:
    """Which tiers run something: ``device-only``, ``server-only`` or ``split``."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    tiers = {p["tier_index"] for p in manifest["partitions"]}
    return "device-only" if tiers == {0} else "server-only" if tiers == {1} else "split"


# --------------------------------------------------------------------------- 3. measuring


def samples(model: str, n: int) -> list[dict[str, np.ndarray]]:
    if model == "mnist":
        data = np.load(MNIST / "test.npz")["x"][:n].astype(np.float32)
        return [{"x": data[i:i + 1]} for i in range(len(data))]
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal(MODELS[model]["shape"], dtype=np.float32)} for _ in range(n)]


def client(args) -> None:
    """Inside the device namespace, on the device's core: sequential requests, latencies to a JSON file."""
    import torch

    from splitc.runtime.client import SplitClient

    torch.set_num_threads(1)
    remote = None
    relay = None
    if args.server:
        from benchmarks.serving import DelayRelay

        host, port = args.server.removeprefix("http://").split(":")
        relay = DelayRelay(("127.0.0.1", 0), (host, int(port)), args.rtt_ms / 2e3)
        remote = f"http://127.0.0.1:{relay.address[1]}"
    runner = SplitClient(args.bundle, remote=remote, threads=1, timeout_s=120.0)
    inputs = samples(args.model, args.requests)
    for s in inputs[:3]:
        runner.infer(s)  # warm-up: sessions, connection
    latencies = [runner.infer(s).latency_s for s in inputs]
    if relay is not None:
        relay.close()
    Path(args.result).write_text(json.dumps({"latencies_s": latencies}))


def measure(model: str, bundle: Path, requests: int, rtt_ms: float, server_tier: str | None) -> list[float]:
    """Latencies of sequential requests: client on CPU 0 in the device namespace, server on CPU 1 in the other."""
    from splitc.runtime.process import start_tier_process, stop_tier_process

    result = Path(tempfile.mkstemp(suffix=".json")[1])
    proc = None
    try:
        cmd = ["ip", "netns", "exec", NS_DEV, "taskset", "-c", DEVICE_CPU, sys.executable, __file__, "_client",
               "--bundle", str(bundle), "--model", model, "--requests", str(requests), "--rtt-ms", str(rtt_ms),
               "--result", str(result)]
        if server_tier is not None:
            tier = start_tier_process(bundle, server_tier, host=IP_SRV, cwd=ROOT, timeout_s=180,
                                      extra_args=("--threads", "1"),
                                      prefix=("ip", "netns", "exec", NS_SRV, "taskset", "-c", SERVER_CPU))
            proc, url = tier.proc, tier.url
            cmd += ["--server", url]
        subprocess.run(cmd, check=True, cwd=ROOT, timeout=3600)
        return json.loads(result.read_text())["latencies_s"]
    finally:
        if proc is not None:
            stop_tier_process(proc)
        result.unlink(missing_ok=True)


def p50_with_noise(latencies: list[float], seed: int = 0) -> tuple[float, float]:
    """The median and the half-width of a bootstrap 95 % interval of it (seconds)."""
    a = np.asarray(latencies)
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(a, size=(2000, len(a)), replace=True), axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(np.median(a)), float((hi - lo) / 2)


def run_model(model: str, files, bandwidth: str, rtt_ms: float, requests: int, work: Path, quick: bool) -> dict:
    from splitc.units import parse_bandwidth

    bundles = compile_bundles(model, files, bandwidth, rtt_ms, work, quick)
    setup_link(parse_bandwidth(bandwidth))
    rows = {}
    chosen_where = placement(bundles["chosen"])
    try:
        for name in ("device-only", "server-only", "chosen"):
            bundle = bundles[name]
            manifest = json.loads((bundle / "manifest.json").read_text())
            where = chosen_where if name == "chosen" else name
            if name == "chosen" and where != "split":  # the planner chose one tier: the same run, measured once
                rows[name] = {**rows[where], "predicted_ms": manifest["plan"]["predicted"]["latency_s"] * 1e3,
                              "same_as": where}
                continue
            server = None if where == "device-only" else "e2e-server"
            say(f"[e2e] {model} @ {bandwidth}: measuring {name} ({where}), {requests} requests")
            latencies = measure(model, bundle, requests, rtt_ms, server)
            p50, noise = p50_with_noise(latencies)
            plan = manifest["plan"]
            rows[name] = {"placement": where, "cuts_after": [c["after"] for c in plan["cuts"]],
                          "predicted_ms": plan["predicted"]["latency_s"] * 1e3, "p50_ms": p50 * 1e3,
                          "noise_ms": noise * 1e3, "p90_ms": float(np.percentile(latencies, 90)) * 1e3,
                          "requests": len(latencies), "figures": plan.get("figures", []),
                          "compression": plan.get("compression")}
            say(f"[e2e]   p50 {p50 * 1e3:.2f} ms (+- {noise * 1e3:.2f}), predicted "
                f"{rows[name]['predicted_ms']:.2f} ms")
    finally:
        teardown_link()
    single = min(("device-only", "server-only"), key=lambda k: rows[k]["p50_ms"])
    chosen = rows["chosen"]
    noise = chosen["noise_ms"] + rows[single]["noise_ms"]
    return {"model": model, "bandwidth": bandwidth, "rtt_ms": rtt_ms, "plans": rows, "best_single": single,
            "speedup_over_best_single": rows[single]["p50_ms"] / chosen["p50_ms"],
            "slower_than_best_single_beyond_noise": chosen["p50_ms"] > rows[single]["p50_ms"] + noise,
            "noise_ms": noise}


def table(rows: list[dict]) -> str:
    lines = ["| model | uplink | plan | placement | predicted ms | measured p50 ms (95 % CI half-width) | "
             "speedup vs better single tier | check |", "|---|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        for name in ("chosen", "device-only", "server-only"):
            p = r["plans"][name]
            where = p["placement"] + (f" (after {', '.join(a or 'input' for a in p['cuts_after'])})"
                                      if p["placement"] == "split" else "")
            speed = f"{r['speedup_over_best_single']:.2f}x" if name == "chosen" else ""
            check = "" if name != "chosen" else ("SLOWER beyond noise" if r["slower_than_best_single_beyond_noise"]
                                                  else "ok")
            lines.append(f"| {r['model']} | {r['bandwidth']} | {name} | {where} | {p['predicted_ms']:.2f} | "
                         f"{p['p50_ms']:.2f} ({p['noise_ms']:.2f}) | {speed} | {check} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    inner = sub.add_parser("_client")  # internal: runs inside the device namespace
    inner.add_argument("--bundle", required=True)
    inner.add_argument("--model", required=True)
    inner.add_argument("--server", default=None)
    inner.add_argument("--rtt-ms", type=float, default=0.0)
    inner.add_argument("--requests", type=int, required=True)
    inner.add_argument("--result", required=True)
    parser.add_argument("--models", default="resnet50,mnist", help=f"Comma-separated: {', '.join(MODELS)}.")
    parser.add_argument("--bandwidths", default="2mbps,20mbps,200mbps", help="Emulated uplink bandwidths.")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="Round trip added by the relay.")
    parser.add_argument("--requests", type=int, default=None, help="Sequential requests per bundle (default 60).")
    parser.add_argument("--quick", action="store_true", help="Quick profiles, fewer requests and calibration images.")
    parser.add_argument("--out", default=str(RESULTS / "end_to_end.json"))
    args = parser.parse_args()
    if args.command == "_client":
        return client(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")
    ok, why = namespaces_available()
    if not ok:
        parser.exit(2, f"error: the emulated link {why}; the headline is not measured on loopback\n")
    if "mnist" in models and not (MNIST / "mnist_cnn.pt").exists():
        subprocess.run([sys.executable, str(MNIST / "train_mnist.py")], check=True, cwd=ROOT)
    requests = args.requests or (15 if args.quick else 60)
    start, load_before = time.perf_counter(), os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="splitc-e2e-") as tmp:
        work = Path(tmp)
        files = profile_sides(models, work, args.quick)
        for model in models:
            for bandwidth in [b.strip() for b in args.bandwidths.split(",") if b.strip()]:
                rows.append(run_model(model, files, bandwidth, args.rtt_ms, requests, work, args.quick))
        targets = {f"{side}/{model}": path.read_text() for (side, model), path in files.items()}
    payload = {"command": " ".join(["python", "benchmarks/end_to_end.py", *sys.argv[1:]]),
               "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "duration_s": time.perf_counter() - start, "rtt_ms": args.rtt_ms, "requests": requests,
               "setup": "device = CPU 0, 1 ONNX Runtime thread; server = CPU 1, 1 thread (taskset); two network "
                        "namespaces, veth + tc tbf at the uplink bandwidth, round trip from a userspace relay",
               "rows": rows, "targets": targets}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from _provenance import write_results  # the commit and whether the tree was clean
    write_results(out, payload)
    md = (f"# End to end\n\n`{payload['command']}` on {payload['date_utc']}; {payload['setup']}; rtt "
          f"{args.rtt_ms:g} ms; {requests} sequential requests per bundle; load average before/after "
          f"{load_before[0]:.2f}/{payload['load_average_after'][0]:.2f}\n\n{table(rows)}\n")
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
