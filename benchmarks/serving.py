"""Serving benchmark: the split pipeline vs the monolithic model over real HTTP, and one emulated link.

    python benchmarks/serving.py                 # ~2-3 min on 2 cores; writes benchmarks/results/serving.json
    python benchmarks/serving.py --quick         # fewer requests (CI smoke run)

Part 1 (loopback load): the trained MNIST CNN (examples/mnist) compiled twice -- split after
``relu_3`` into edge + cloud tiers, and as one tier (the monolithic model). Each cloud side is a
``splitc serve`` process on 127.0.0.1; the client (this process) runs the edge partition and sends
the boundary tensor (split), or sends the raw input (monolithic). For each concurrency level,
closed-loop client threads send requests until a request count or a time budget is reached
(whichever first); throughput and p50/p99 latency per pipeline, in one run, and every answer is
checked against the in-process runner.

Part 2 (emulated link): edge and cloud in two network namespaces joined by a veth pair; the
bandwidth is the kernel's ``tc tbf`` on both veth ends. This kernel has no ``netem`` qdisc, so the
round-trip delay is added by a userspace relay in the edge namespace that holds every chunk for
rtt/2 in each direction (labelled ``delay: userspace relay``). Without namespaces (not root, no
``ip``), both bandwidth and delay come from that relay on loopback, labelled
``in-process rate limiter (fallback)``. Sequential requests measure end-to-end latency; the link's
share (median over the link minus median on plain loopback, same code) is compared with the
planner's prediction for that link (``rtt + 8 * bytes / bandwidth``, manifest ``transfers[0].predicted_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from splitc.runtime.process import start_tier_process, stop_tier_process  # noqa: E402

MODEL = ROOT / "examples" / "mnist" / "mnist_cnn.pt"
SPLIT_AT = "relu_3"   # 24.5 KiB boundary tensor (layer2 output, 32 x 14 x 14 fp32)
NS_EDGE, NS_CLOUD = "splitc-bench-edge", "splitc-bench-cloud"
VETH_EDGE, VETH_CLOUD = "splb-edge", "splb-cloud"
IP_EDGE, IP_CLOUD = "10.231.77.1", "10.231.77.2"


# --------------------------------------------------------------------------- helpers
def _percentiles(latencies: list[float]) -> dict[str, float]:
    a = np.asarray(latencies) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def _start_server(bundle: Path, tier: str, host: str = "127.0.0.1", netns: str | None = None,
                  timeout_s: float = 90.0) -> tuple[subprocess.Popen, str]:
    return start_tier_process(bundle, tier, host=host, extra_args=("--threads", "1", "--max-inflight", "8"),
                              prefix=("ip", "netns", "exec", netns) if netns else (), timeout_s=timeout_s, cwd=ROOT)


_stop = stop_tier_process


def compile_bundles(work: Path, bandwidth: str, rtt_ms: float) -> tuple[Path, Path]:
    """The split bundle (planner told the emulated link) and the monolithic one."""
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model

    if not MODEL.exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "mnist" / "train_mnist.py")], check=True, cwd=ROOT)
    split, mono = work / "split", work / "mono"
    compile_model(str(MODEL), CompileOptions(targets=("edge", "cloud-cpu"), split=(SPLIT_AT,),
                                             bandwidths=(bandwidth,), rtts_ms=(rtt_ms,), emit=("none",)),
                  split, input_shapes=[(1, 1, 28, 28)])
    compile_model(str(MODEL), CompileOptions(targets=("cloud-cpu",), emit=("none",)), mono,
                  input_shapes=[(1, 1, 28, 28)])
    return split, mono


def _samples(n: int) -> list[dict[str, np.ndarray]]:
    data = np.load(ROOT / "examples" / "mnist" / "test.npz")["x"][:n]
    return [{"x": data[i:i + 1].astype(np.float32)} for i in range(len(data))]


# --------------------------------------------------------------------------- part 1: loopback load
def load_run(client, samples, references, concurrency: int, max_requests: int, max_seconds: float) -> dict:
    """Closed loop: ``concurrency`` threads send requests until ``max_requests`` or ``max_seconds``."""
    from splitc.runtime.client import RemoteError

    latencies, errors, wrong = [], [], []
    counter = iter(range(max_requests))
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            k = i % len(samples)
            try:
                result = client.infer(samples[k])
            except RemoteError as exc:
                errors.append(str(exc))
                continue
            latencies.append(result.latency_s)
            if not np.allclose(result.outputs["output_0"], references[k], rtol=1e-4, atol=1e-5):
                wrong.append(i)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + 60)
    elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(latencies), "errors": len(errors), "wrong_answers": len(wrong),
            "seconds": round(elapsed, 3), "throughput_rps": round(len(latencies) / elapsed, 2),
            **_percentiles(latencies or [0.0])}


def loopback_load(split: Path, mono: Path, concurrencies: list[int], max_requests: int, max_seconds: float) -> dict:
    from splitc.runtime.client import SplitClient
    from splitc.runtime.runner import BundleRunner

    samples = _samples(64)
    references = [BundleRunner(mono).run(s)["output_0"] for s in samples]
    results = {"split": [], "monolithic": []}
    procs = []
    try:
        split_proc, split_url = _start_server(split, "cloud-cpu")
        mono_proc, mono_url = _start_server(mono, "cloud-cpu")
        procs += [split_proc, mono_proc]
        clients = {"split": SplitClient(split, remote=split_url, threads=1),
                   "monolithic": SplitClient(mono, remote=mono_url, threads=1)}
        for name, client in clients.items():  # warm up both (sessions, connections)
            for s in samples[:8]:
                client.infer(s)
        for c in concurrencies:
            for name in ("split", "monolithic"):  # interleaved, same conditions
                row = load_run(clients[name], samples, references, c, max_requests, max_seconds)
                results[name].append(row)
                print(f"[loopback] {name:10s} concurrency {c}: {row['requests']} req in {row['seconds']:.1f}s, "
                      f"{row['throughput_rps']:.1f} req/s, p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                      f"errors {row['errors']}, wrong {row['wrong_answers']}", flush=True)
    finally:
        for p in procs:
            _stop(p)
    return results


# --------------------------------------------------------------------------- part 2: emulated link
class DelayRelay:
    """TCP relay holding every chunk ``delay_s`` in each direction; with ``rate_bps`` also paces chunks
    like a link of that bandwidth (the fallback when no kernel rate limiting is available)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay_s: float,
                 rate_bps: float | None = None) -> None:
        self.target, self.delay_s, self.rate_bps = target, delay_s, rate_bps
        self.sock = socket.create_server(listen)
        self.address = self.sock.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipe(client, upstream)
            self._pipe(upstream, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        chunks: queue.Queue = queue.Queue()
        link_free = [0.0]

        def reader() -> None:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                now = time.perf_counter()
                if self.rate_bps and data:  # serialise on the emulated link, then propagate
                    start = max(now, link_free[0])
                    link_free[0] = start + 8 * len(data) / self.rate_bps
                    chunks.put((link_free[0] + self.delay_s, data))
                else:
                    chunks.put((now + self.delay_s, data))
                if not data:
                    return

        def writer() -> None:
            while True:
                due, data = chunks.get()
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                try:
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=reader, daemon=True).start()
        threading.Thread(target=writer, daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def setup_namespaces(rate_bps: float) -> None:
    teardown_namespaces()
    _sh("ip", "netns", "add", NS_EDGE)
    _sh("ip", "netns", "add", NS_CLOUD)
    _sh("ip", "link", "add", VETH_EDGE, "type", "veth", "peer", "name", VETH_CLOUD)
    for ns, dev, ip in ((NS_EDGE, VETH_EDGE, IP_EDGE), (NS_CLOUD, VETH_CLOUD, IP_CLOUD)):
        _sh("ip", "link", "set", dev, "netns", ns)
        _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        _sh("ip", "-n", ns, "link", "set", dev, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        rate = f"{int(rate_bps)}bit"
        # a small bucket (a few MTUs): a large burst would let the first KiBs of every request pass at
        # veth speed and make the link look faster than its bandwidth
        burst = max(4096, int(rate_bps / 8 / 250))
        _sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
            "burst", str(burst), "latency", "1s")
        # a fresh cwnd after every idle gap would add round trips the planner does not model
        _sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_slow_start_after_idle=0")


def teardown_namespaces() -> None:
    for ns in (NS_EDGE, NS_CLOUD):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def namespaces_available() -> tuple[bool, str]:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        return False, "needs root and iproute2 (ip, tc)"
    probe = "splitc-bench-probe"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok, "ok" if ok else "ip netns add failed"


def link_client(args) -> None:
    """Runs inside the edge namespace (or in-process for the fallback): relay + sequential requests."""
    from splitc.runtime.client import SplitClient

    host, port = args.server.removeprefix("http://").split(":")
    relay = DelayRelay(("127.0.0.1", 0), (host, int(port)), args.rtt_ms / 2e3,
                       rate_bps=args.relay_rate_bps or None)
    client = SplitClient(args.bundle, remote=f"http://127.0.0.1:{relay.address[1]}", threads=1)
    samples = _samples(args.requests)
    for s in samples[:3]:
        client.infer(s)  # warm-up (connection, sessions)
    latencies, wire_bytes = [], 0
    for s in samples:
        result = client.infer(s)
        latencies.append(result.latency_s)
        wire_bytes = result.wire_bytes
    relay.close()
    Path(args.result).write_text(json.dumps({"latencies_s": latencies, "wire_bytes": wire_bytes}))


def emulated_link(split: Path, bandwidth_bps: float, rtt_ms: float, requests: int, force_fallback: bool) -> dict:
    from splitc.runtime.client import SplitClient

    manifest = json.loads((split / "manifest.json").read_text())
    predicted_link_s = manifest["transfers"][0]["predicted_s"]
    ok, why = namespaces_available()
    use_netns = ok and not force_fallback
    mode = ("network namespaces + veth; bandwidth: tc tbf on both veth ends; delay: userspace relay "
            "(no netem qdisc in this kernel)") if use_netns else \
        f"in-process rate limiter (fallback: {why if not ok else 'forced'}): loopback + userspace relay for bandwidth and delay"
    result_file = Path(tempfile.mkstemp(suffix=".json")[1])
    procs = []
    try:
        # baseline: same client code, plain loopback, sequential
        base_proc, base_url = _start_server(split, "cloud-cpu")
        procs.append(base_proc)
        base = SplitClient(split, remote=base_url, threads=1)
        samples = _samples(requests)
        for s in samples[:3]:
            base.infer(s)
        base_lat = [base.infer(s).latency_s for s in samples]
        _stop(base_proc)
        if use_netns:
            setup_namespaces(bandwidth_bps)
            proc, url = _start_server(split, "cloud-cpu", host=IP_CLOUD, netns=NS_CLOUD)
            procs.append(proc)
            cmd = ["ip", "netns", "exec", NS_EDGE, sys.executable, __file__, "_link-client", "--bundle", str(split),
                   "--server", url, "--rtt-ms", str(rtt_ms), "--requests", str(requests), "--result", str(result_file)]
        else:
            proc, url = _start_server(split, "cloud-cpu")
            procs.append(proc)
            cmd = [sys.executable, __file__, "_link-client", "--bundle", str(split), "--server", url,
                   "--rtt-ms", str(rtt_ms), "--requests", str(requests), "--result", str(result_file),
                   "--relay-rate-bps", str(bandwidth_bps)]
        subprocess.run(cmd, check=True, cwd=ROOT, timeout=300)
        measured = json.loads(result_file.read_text())
    finally:
        for p in procs:
            _stop(p)
        if use_netns:
            teardown_namespaces()
        result_file.unlink(missing_ok=True)
    link_p50 = float(np.median(measured["latencies_s"]))
    base_p50 = float(np.median(base_lat))
    model_bytes = manifest["transfers"][0]["bytes"]
    row = {
        "mode": mode, "bandwidth_bps": bandwidth_bps, "rtt_ms": rtt_ms, "requests": len(measured["latencies_s"]),
        "transfer_bytes_manifest": model_bytes, "wire_message_bytes": measured["wire_bytes"],
        "predicted_link_ms": round(predicted_link_s * 1e3, 3),
        "predicted_total_ms_on_catalog_targets": round(manifest["plan"]["predicted"]["latency_s"] * 1e3, 3),
        "loopback": _percentiles(base_lat), "emulated": _percentiles(measured["latencies_s"]),
        "measured_link_ms": round((link_p50 - base_p50) * 1e3, 3),
    }
    row["link_error_pct"] = round(100 * (row["measured_link_ms"] - row["predicted_link_ms"]) / row["predicted_link_ms"], 1)
    print(f"[link] {mode}\n[link] {bandwidth_bps / 1e6:g} Mbps, rtt {rtt_ms:g} ms, {model_bytes} B tensor "
          f"({measured['wire_bytes']} B wire message): predicted link {row['predicted_link_ms']:.2f} ms, measured "
          f"{row['measured_link_ms']:.2f} ms (p50 {row['emulated']['p50_ms']:.2f} ms over the link - p50 "
          f"{row['loopback']['p50_ms']:.2f} ms on loopback), error {row['link_error_pct']:+.1f}%", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    inner = sub.add_parser("_link-client")  # internal: runs inside the edge namespace
    inner.add_argument("--bundle", required=True)
    inner.add_argument("--server", required=True)
    inner.add_argument("--rtt-ms", type=float, required=True)
    inner.add_argument("--requests", type=int, required=True)
    inner.add_argument("--result", required=True)
    inner.add_argument("--relay-rate-bps", type=float, default=0.0)
    parser.add_argument("--requests", type=int, default=2000, help="Max requests per load run.")
    parser.add_argument("--seconds", type=float, default=15.0, help="Max seconds per load run.")
    parser.add_argument("--concurrency", default="1,4", help="Client threads per load run (comma list).")
    parser.add_argument("--bandwidth", default="20mbps", help="Emulated link bandwidth.")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="Emulated link round-trip time.")
    parser.add_argument("--link-requests", type=int, default=40, help="Sequential requests over the emulated link.")
    parser.add_argument("--fallback", action="store_true", help="Use the in-process rate limiter even when netns works.")
    parser.add_argument("--quick", action="store_true", help="Small counts (smoke run).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving.json"))
    args = parser.parse_args()
    if args.command == "_link-client":
        return link_client(args)
    if args.quick:
        args.requests, args.seconds, args.link_requests = 60, 5.0, 12
    from splitc.units import parse_bandwidth

    bandwidth_bps = parse_bandwidth(args.bandwidth)
    with tempfile.TemporaryDirectory(prefix="splitc-serving-") as work:
        split, mono = compile_bundles(Path(work), args.bandwidth, args.rtt_ms)
        load = loopback_load(split, mono, [int(c) for c in args.concurrency.split(",")], args.requests, args.seconds)
        link = emulated_link(split, bandwidth_bps, args.rtt_ms, args.link_requests, args.fallback)
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "model": str(MODEL.relative_to(ROOT)), "split_after": SPLIT_AT, "bounds": {
                  "max_requests": args.requests, "max_seconds": args.seconds},
              "loopback_load": load, "emulated_link": link}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from _provenance import write_results  # the commit and whether the tree was clean
    write_results(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
