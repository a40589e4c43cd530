"""Serving benchmark: splitc's server and each Triton design on one workload, batching with exits, the emulated
link against the planner, and live re-split while the link's bandwidth changes. Every answer is checked.

    python benchmarks/serving.py                          # ~12 min on 2 cores; benchmarks/results/serving.json
    python benchmarks/serving.py --quick                  # small counts (the CI smoke run)
    python benchmarks/serving.py --parts designs,resplit  # a subset: designs, batching, link, resplit

Part 1, designs (loopback): the trained MNIST CNN (examples/mnist) split after ``relu_3`` into edge + cloud-cpu
tiers, and compiled as one cloud-cpu tier (the monolithic model). The client (this process) runs the edge
partition and sends the boundary tensor (the monolithic row sends the raw input). Servers, all started before
measuring and measured in interleaved rounds, same requests: ``splitc serve`` (its own KServe v2 server); Triton
(the nvidia-pytriton wheel, python backend only) with (a) the python tier step running ONNX Runtime, with and
without dynamic batching; (b) the python BLS tier step calling the partition model; (c) an ensemble over the
partition model. The wheel has no ONNX Runtime backend, so in (b) and (c) the partition model is a python model
running ONNX Runtime (same name, I/O and batching as the ``backend: "onnxruntime"`` config NVIDIA's container
runs): (b) and (c) here include one python stub more than in the container. Closed loop, 1 and N client threads,
HTTP and gRPC: req/s, p50, p99, errors, wrong answers.

Part 2, batching with exits: the MNIST CNN on pi -> edge -> c6i-large with an exit on the device and one on the
edge server tier (uint8 transfers; compiled with --no-verify, see tests/runtime/conftest.py). Only requests that
reach the edge tier are sent; N clients. Triton (a) serves the edge and cloud tiers as separate models (the client
calls them in turn), with and without dynamic batching, and splitc's server as a reference. Reported: latency of
requests answered by the edge tier's exit vs of those forwarded, Triton's executions by batch size, and the model's
own count of executions that mixed exit answers and forwarded ones (splitc/runtime/batching.py says what happens to
a batch when some of its requests leave).

Part 3, link: edge and cloud in two network namespaces joined by a veth with ``tc tbf`` on both ends. This kernel
has no ``netem``: the round trip is added by a userspace relay in the edge namespace that holds every chunk for
rtt/2 each way. Without namespaces (not root, no ``ip``) a relay on loopback does bandwidth and delay (labelled
fallback). The link's share (median over the link minus median on loopback, same client) is compared with the
planner's prediction ``rtt + 8 * bytes / bandwidth``, and its bandwidth part alone (the share minus the injected
round trip) with ``8 * bytes / bandwidth``: the injected round trip is exact by construction, so the first figure
flatters the model.

Part 4, live re-split: torchvision ResNet-18 (random weights, 128x128, float16 transfers) on pi -> edge compiled
at 60 Mbit/s with ``--bandwidth-range 100kbps:1gbps``: three variants (all on the Pi below ~30 Mbit/s, cut after
maxpool up to ~111 Mbit/s, raw input above). ``splitc serve`` in the cloud namespace serves every variant; the
client in the edge namespace changes the link's rate in phases (60 -> 500 -> 60 -> 15 Mbit/s). An adaptive client
(link monitor + switch points) and a fixed one (the bundle's own plan) alternate requests: per phase, p50 latency
of each, which variant answered, and when the switch happened after each rate change.

Do not quote figures from a busy machine: run it on a quiet one (``--quick`` is a smoke test only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
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
CALIB = ROOT / "examples" / "mnist" / "calib.npz"
SPLIT_AT = "relu_3"   # 24.5 KiB boundary tensor (layer2 output, 32 x 14 x 14 fp32)
NS_EDGE, NS_CLOUD = "splitc-bench-edge", "splitc-bench-cloud"
VETH_EDGE, VETH_CLOUD = "splb-edge", "splb-cloud"
IP_EDGE, IP_CLOUD = "10.231.77.1", "10.231.77.2"
RESPLIT_PHASES_MBPS = (60, 500, 60, 15)


# --------------------------------------------------------------------------- helpers
def _percentiles(latencies: list[float]) -> dict[str, float]:
    a = np.asarray(latencies or [0.0]) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def _start_server(bundle: Path, tier: str, host: str = "127.0.0.1", netns: str | None = None,
                  extra: tuple[str, ...] = (), timeout_s: float = 180.0):
    return start_tier_process(bundle, tier, host=host, extra_args=("--threads", "1", "--max-inflight", "8", *extra),
                              prefix=("ip", "netns", "exec", netns) if netns else (), timeout_s=timeout_s, cwd=ROOT)


def _stop(tier) -> None:
    stop_tier_process(tier.proc)


def _samples(n: int, offset: int = 0) -> list[dict[str, np.ndarray]]:
    data = np.load(ROOT / "examples" / "mnist" / "test.npz")["x"][offset:offset + n]
    return [{"x": data[i:i + 1].astype(np.float32).reshape(1, 1, 28, 28)} for i in range(len(data))]


def _ensure_model() -> None:
    if not MODEL.exists() or not CALIB.exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "mnist" / "train_mnist.py")], check=True, cwd=ROOT)


def _git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "clean": git("status", "--porcelain") == ""}


# --------------------------------------------------------------------------- bundles
def compile_bundles(work: Path, parts: set[str], bandwidth: str, rtt_ms: float) -> dict[str, Path]:
    """Every bundle the chosen parts need (compiled into ``work``)."""
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model

    _ensure_model()
    out = {}
    if parts & {"designs", "link"}:
        out["split"], out["mono"] = work / "split", work / "mono"
        compile_model(str(MODEL), CompileOptions(targets=("edge", "cloud-cpu"), split=(SPLIT_AT,),
                                                 bandwidths=(bandwidth,), rtts_ms=(rtt_ms,)),
                      out["split"], input_shapes=[(1, 1, 28, 28)])
        compile_model(str(MODEL), CompileOptions(targets=("cloud-cpu",)), out["mono"], input_shapes=[(1, 1, 28, 28)])
    if "batching" in parts:  # --no-verify: see tests/runtime/conftest.py (uint8 + exits verification bug)
        out["exits"] = work / "exits"
        compile_model(str(MODEL), CompileOptions(targets=("pi", "edge", "c6i-large"), split=("stem_2", "add_1"),
                                                 exits=("auto",), calib=str(CALIB), accuracy_target=0.99,
                                                 transfer_dtype="uint8", verify=False), out["exits"])
    if "resplit" in parts:
        out["variants"] = work / "variants"
        compile_model("torchvision.models:resnet18", CompileOptions(
            targets=("pi", "edge"), transfer_dtype="float16", bandwidths=("60mbps",),
            bandwidth_range="100kbps:1gbps", verify=False), out["variants"], input_shapes=[(1, 3, 128, 128)])
    return out


# --------------------------------------------------------------------------- closed-loop load
def load_run(client, samples, check, concurrency: int, max_requests: int, max_seconds: float) -> dict:
    """``concurrency`` threads send requests until ``max_requests`` or ``max_seconds``; ``check(k, result)``
    says whether the answer to sample k is right. Returns counts and the latencies (seconds)."""
    from splitc.runtime.client import RemoteError

    latencies, errors, wrong, by_tier = [], [], [], {}
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
            with lock:
                latencies.append(result.latency_s)
                by_tier.setdefault(result.answered_by, []).append(result.latency_s)
                if not check(k, result):
                    wrong.append(i)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + 120)
    return {"latencies": latencies, "errors": errors, "wrong": wrong, "seconds": time.perf_counter() - start,
            "by_tier": by_tier}


def _row(name: str, runs: list[dict], **fields) -> dict:
    latencies = [x for r in runs for x in r["latencies"]]
    seconds = sum(r["seconds"] for r in runs)
    errors = [e for r in runs for e in r["errors"]]
    row = {"pipeline": name, **fields, "requests": len(latencies), "errors": len(errors),
           "wrong_answers": sum(len(r["wrong"]) for r in runs), "seconds": round(seconds, 3),
           "throughput_rps": round(len(latencies) / seconds, 2) if seconds else 0.0, **_percentiles(latencies)}
    if errors:
        row["first_error"] = errors[0][:300]
    return row


# --------------------------------------------------------------------------- part 1: designs
def _triton(bundle: Path, tiers: list[int], design: str, batching: bool, **kw):
    from splitc.backends.triton import serving_repository
    from splitc.runtime.triton_server import TritonServer

    repo = Path(tempfile.mkdtemp(prefix="splitc-bench-repo-"))
    for tier in tiers:
        serving_repository(bundle, tier, repo, design=design, batching=batching, threads=1, **kw)
    server = TritonServer(repo, exit_timeout_s=5)
    try:
        server.start()
    finally:
        shutil.rmtree(repo, ignore_errors=True)  # the server serves its own copy
    return server


def designs(split: Path, mono: Path, concurrencies: list[int], protocols: list[str], max_requests: int,
            max_seconds: float, rounds: int) -> list[dict]:
    """Part 1: every server and design, interleaved rounds, same requests."""
    from splitc.runtime.client import SplitClient
    from splitc.runtime.runner import BundleRunner

    samples = _samples(64)
    references = {"split": [BundleRunner(split).run(s)["output_0"] for s in samples],
                  "mono": [BundleRunner(mono).run(s)["output_0"] for s in samples]}
    configs = [  # (row name, bundle, server factory)
        ("splitc server", "split", lambda: _start_server(split, "cloud-cpu")),
        ("splitc server, monolithic bundle", "mono", lambda: _start_server(mono, "cloud-cpu")),
        ("Triton (a) python tier step, ORT inside, dynamic batching", "split",
         lambda: _triton(split, [1], "python", True)),
        ("Triton (a) python tier step, ORT inside, max_batch_size 0", "split",
         lambda: _triton(split, [1], "python", False)),
        ("Triton (b) BLS tier step -> partition model*", "split", lambda: _triton(split, [1], "bls", True)),
        ("Triton (c) ensemble -> partition model*", "split", lambda: _triton(split, [1], "ensemble", True)),
    ]
    servers, clients, rows = {}, {}, []
    try:
        for name, kind, start in configs:
            servers[name] = start()
            for protocol in protocols:
                url = _url(servers[name], protocol)
                clients[(name, protocol)] = SplitClient(split if kind == "split" else mono, remote=url, threads=1,
                                                        adapt=False)
                for s in samples[:8]:  # warm-up: sessions, connections
                    clients[(name, protocol)].infer(s)
        for c in concurrencies:
            runs: dict = {}
            per_run = max(1, max_requests // rounds)
            for _ in range(rounds):  # interleaved: every config sees the same machine conditions
                for name, kind, _ in configs:
                    for protocol in protocols:
                        ref = references[kind]
                        runs.setdefault((name, protocol), []).append(load_run(
                            clients[(name, protocol)], samples,
                            lambda k, r, ref=ref: np.array_equal(r.outputs["output_0"], ref[k]),
                            c, per_run, max_seconds / rounds))
            for name, _, _ in configs:
                for protocol in protocols:
                    row = _row(name, runs[(name, protocol)], protocol=protocol, concurrency=c)
                    rows.append(row)
                    print(f"[designs] {name:58s} {protocol:4s} c={c}: {row['throughput_rps']:8.1f} req/s, p50 "
                          f"{row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, errors {row['errors']}, wrong "
                          f"{row['wrong_answers']}", flush=True)
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.stop() if hasattr(server, "http_url") else _stop(server)
    return rows


def _url(server, protocol: str) -> str:
    if hasattr(server, "http_url"):  # a TritonServer
        return server.http_url if protocol == "http" else server.grpc_url
    return server.url if protocol == "http" else server.grpc_url


# --------------------------------------------------------------------------- part 2: batching with exits
def _model_stats(log_tail: str) -> list[dict]:
    """The statistics each splitc tier model logs when Triton unloads it (the log quotes the message as a string)."""
    found = []
    for line in log_tail.splitlines():
        match = re.search(r'"(splitc \{.*\})"\s*$', line)
        if match:
            found.append(json.loads(json.loads(f'"{match.group(1)}"').removeprefix("splitc ")))
    return found


def batching(bundle: Path, concurrency: int, max_requests: int, max_seconds: float) -> list[dict]:
    """Part 2: dynamic batching on a server tier whose partition has an exit."""
    from splitc.runtime.client import SplitClient

    with SplitClient(bundle) as local:
        pool = _samples(600)
        references = [local.infer(s) for s in pool]
    samples = [s for s, r in zip(pool, references) if r.answered_by > 0]  # those the device does not answer
    expected = [r for r in references if r.answered_by > 0]
    exits_at_edge = sum(r.answered_by == 1 for r in expected)
    print(f"[batching] {len(samples)} of {len(pool)} digits reach the edge tier; {exits_at_edge} exit there",
          flush=True)

    def check(k, result):
        want = expected[k]
        return (np.array_equal(result.outputs["output_0"], want.outputs["output_0"])
                and (result.answered_by, result.exit) == (want.answered_by, want.exit))

    rows = []
    for name, batched in (("Triton (a), dynamic batching", True), ("Triton (a), max_batch_size 0", False),
                          ("splitc server", None)):
        if batched is None:
            server = _start_server(bundle, "edge")
            url = server.url
        else:
            server = _triton(bundle, [1, 2], "python", batched)
            url = server.http_url
        stats, model_stats = {}, []
        try:
            with SplitClient(bundle, remote=url, threads=1, adapt=False) as client:
                for s in samples[:8]:
                    client.infer(s)
                run = load_run(client, samples, check, concurrency, max_requests, max_seconds)
            if batched is not None:
                import tritonclient.http as tc

                admin = tc.InferenceServerClient(url.removeprefix("http://"))
                model = admin.get_inference_statistics("splitc_tier1")["model_stats"][0]
                admin.close()
                stats = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in model.get("batch_stats", [])}
        finally:
            if batched is None:
                _stop(server)
            else:
                model_stats = _model_stats(server.stop()["log_tail"])
        row = _row(name, [run], concurrency=concurrency)
        row["exit_at_edge"] = _percentiles(run["by_tier"].get(1, []))
        row["forwarded_to_cloud"] = _percentiles(run["by_tier"].get(2, []))
        row["exit_at_edge"]["requests"] = len(run["by_tier"].get(1, []))
        row["forwarded_to_cloud"]["requests"] = len(run["by_tier"].get(2, []))
        if stats:
            executions = sum(stats.values())
            row["triton_executions_by_batch_size"] = dict(sorted(stats.items()))
            row["mean_batch_size"] = round(sum(k * v for k, v in stats.items()) / executions, 3)
        edge = next((m for m in model_stats if m["model"] == "splitc_tier1"), None)
        if edge:
            row["edge_model"] = edge  # answers by kind, executions that mixed exits and forwards, partition runs
        rows.append(row)
        print(f"[batching] {name:32s} c={concurrency}: {row['throughput_rps']:.1f} req/s; exit answers p50 "
              f"{row['exit_at_edge']['p50_ms']:.2f} ms, forwarded p50 {row['forwarded_to_cloud']['p50_ms']:.2f} ms; "
              f"batches {row.get('triton_executions_by_batch_size', '-')}; mixed executions "
              f"{edge['answers']['mixed_calls'] if edge else '-'}; wrong {row['wrong_answers']}", flush=True)
    return rows


# --------------------------------------------------------------------------- part 3: emulated link
class DelayRelay:
    """TCP relay holding every chunk ``delay_s`` in each direction; with ``rate_bps`` also paces chunks like a
    link of that bandwidth (the fallback when no kernel rate limiting is available). ``rate_bps`` may change."""

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


def _tbf(rate_bps: float, verb: str = "add") -> None:
    """Set the rate of both veth ends (``tc qdisc add|change``)."""
    for ns, dev in ((NS_EDGE, VETH_EDGE), (NS_CLOUD, VETH_CLOUD)):
        # a small bucket (a few MTUs): a large burst would let the first KiBs of every request pass at veth
        # speed and make the link look faster than its bandwidth
        burst = max(4096, int(rate_bps / 8 / 250))
        _sh("ip", "netns", "exec", ns, "tc", "qdisc", verb, "dev", dev, "root", "tbf", "rate", f"{int(rate_bps)}bit",
            "burst", str(burst), "latency", "1s")


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
        # a fresh cwnd after every idle gap would add round trips the planner does not model
        _sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_slow_start_after_idle=0")
    _tbf(rate_bps)


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
    relay = DelayRelay(("127.0.0.1", 0), (host, int(port)), args.rtt_ms / 2e3, rate_bps=args.relay_rate_bps or None)
    samples = _samples(args.requests)
    with SplitClient(args.bundle, remote=f"http://127.0.0.1:{relay.address[1]}", threads=1, adapt=False) as client:
        for s in samples[:3]:
            client.infer(s)  # warm-up (connection, sessions)
        latencies, wire_bytes = [], 0
        for s in samples:
            result = client.infer(s)
            latencies.append(result.latency_s)
            wire_bytes = result.wire_bytes
    relay.close()
    Path(args.result).write_text(json.dumps({"latencies_s": latencies, "wire_bytes": wire_bytes}))


def _mode(use_netns: bool, why: str) -> str:
    if use_netns:
        return ("network namespaces + veth; bandwidth: tc tbf on both veth ends; delay: userspace relay "
                "(no netem qdisc in this kernel)")
    return f"in-process rate limiter (fallback: {why}): loopback + userspace relay for bandwidth and delay"


def emulated_link(split: Path, bandwidth_bps: float, rtt_ms: float, requests: int, force_fallback: bool) -> dict:
    """Part 3: the measured link share against the planner, and its bandwidth part alone."""
    from splitc.runtime.client import SplitClient

    manifest = json.loads((split / "manifest.json").read_text())
    ok, why = namespaces_available()
    use_netns = ok and not force_fallback
    mode = _mode(use_netns, why if not ok else "forced")
    result_file = Path(tempfile.mkstemp(suffix=".json")[1])
    servers = []
    try:
        base = _start_server(split, "cloud-cpu")  # baseline: same client code, plain loopback, sequential
        servers.append(base)
        samples = _samples(requests)
        with SplitClient(split, remote=base.url, threads=1, adapt=False) as client:
            for s in samples[:3]:
                client.infer(s)
            base_lat = [client.infer(s).latency_s for s in samples]
        _stop(base)
        cmd = [sys.executable, __file__, "_link-client", "--bundle", str(split), "--rtt-ms", str(rtt_ms),
               "--requests", str(requests), "--result", str(result_file)]
        if use_netns:
            setup_namespaces(bandwidth_bps)
            server = _start_server(split, "cloud-cpu", host=IP_CLOUD, netns=NS_CLOUD)
            cmd = ["ip", "netns", "exec", NS_EDGE, *cmd, "--server", server.url]
        else:
            server = _start_server(split, "cloud-cpu")
            cmd += ["--server", server.url, "--relay-rate-bps", str(bandwidth_bps)]
        servers.append(server)
        subprocess.run(cmd, check=True, cwd=ROOT, timeout=600)
        measured = json.loads(result_file.read_text())
    finally:
        for s in servers:
            _stop(s)
        if use_netns:
            teardown_namespaces()
        result_file.unlink(missing_ok=True)
    link_p50, base_p50 = float(np.median(measured["latencies_s"])), float(np.median(base_lat))
    model_bytes = manifest["transfers"][0]["bytes"]
    measured_link_ms = (link_p50 - base_p50) * 1e3
    predicted_link_ms = manifest["transfers"][0]["predicted_s"] * 1e3
    predicted_bw_ms = 8 * model_bytes / bandwidth_bps * 1e3
    row = {
        "mode": mode, "bandwidth_bps": bandwidth_bps, "rtt_ms": rtt_ms, "requests": len(measured["latencies_s"]),
        "transfer_bytes_manifest": model_bytes, "wire_bytes": measured["wire_bytes"],
        "predicted_link_ms": round(predicted_link_ms, 3),
        "predicted_total_ms_on_catalog_targets": round(manifest["plan"]["predicted"]["latency_s"] * 1e3, 3),
        "loopback": _percentiles(base_lat), "emulated": _percentiles(measured["latencies_s"]),
        "measured_link_ms": round(measured_link_ms, 3),
        "link_error_pct": round(100 * (measured_link_ms - predicted_link_ms) / predicted_link_ms, 1),
        # the round trip is injected exactly by the relay: only the bandwidth part tests the model
        "predicted_bandwidth_ms": round(predicted_bw_ms, 3),
        "measured_bandwidth_ms": round(measured_link_ms - rtt_ms, 3),
    }
    row["bandwidth_error_pct"] = round(100 * (row["measured_bandwidth_ms"] - predicted_bw_ms) / predicted_bw_ms, 1)
    print(f"[link] {mode}\n[link] {bandwidth_bps / 1e6:g} Mbps, rtt {rtt_ms:g} ms, {model_bytes} B tensor: predicted "
          f"link {row['predicted_link_ms']:.2f} ms, measured {row['measured_link_ms']:.2f} ms (p50 "
          f"{row['emulated']['p50_ms']:.2f} - {row['loopback']['p50_ms']:.2f} ms on loopback), error "
          f"{row['link_error_pct']:+.1f}%; bandwidth part: predicted {predicted_bw_ms:.2f} ms, measured "
          f"{row['measured_bandwidth_ms']:.2f} ms, error {row['bandwidth_error_pct']:+.1f}%", flush=True)
    return row


# --------------------------------------------------------------------------- part 4: live re-split
def resplit_client(args) -> None:
    """Runs inside the edge namespace (or in-process for the fallback): phases of link rates, an adaptive and a
    fixed client alternating requests, every answer checked against the variant that produced it."""
    from splitc.runtime.client import SplitClient
    from splitc.runtime.link import LinkMonitor
    from splitc.runtime.runner import BundleRunner

    bundle = Path(args.bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    references = {i: BundleRunner(bundle / v["bundle"], threads=1) for i, v in enumerate(manifest["plan"]["variants"])}
    host, port = args.server.removeprefix("http://").split(":")
    phases = [float(p) * 1e6 for p in args.phases.split(",")]
    relay = DelayRelay(("127.0.0.1", 0), (host, int(port)), args.rtt_ms / 2e3,
                       rate_bps=phases[0] if args.fallback else None)
    url = f"http://127.0.0.1:{relay.address[1]}"
    rng = np.random.default_rng(0)
    images = [{"x": rng.standard_normal((1, 3, 128, 128)).astype(np.float32)} for _ in range(8)]
    expected = {i: [r.run(x)["output_0"] for x in images] for i, r in references.items()}
    adaptive = SplitClient(bundle, remote=url, threads=1, monitor=LinkMonitor(window=6, max_age_s=8.0))
    fixed = SplitClient(bundle, remote=url, threads=1, adapt=False)
    trace = []
    try:
        for warm in images[:2]:
            fixed.infer(warm)
        for p, rate in enumerate(phases):
            if args.fallback:
                relay.rate_bps = rate
            elif p:
                _tbf(rate, "change")
            for i in range(args.per_phase):
                k = (p * args.per_phase + i) % len(images)
                for name, client in (("adaptive", adaptive), ("fixed", fixed)):
                    result = client.infer(images[k])
                    variant = result.variant if result.variant is not None else next(
                        j for j, v in enumerate(manifest["plan"]["variants"]) if v.get("bundle") == ".")
                    trace.append({"phase": p, "rate_mbps": rate / 1e6, "i": i, "client": name, "variant": variant,
                                  "latency_ms": round(result.latency_s * 1e3, 3), "wire_bytes": result.wire_bytes,
                                  "right": bool(np.array_equal(result.outputs["output_0"], expected[variant][k])),
                                  "estimate_mbps": (adaptive.monitor.bandwidth_bps() or 0) / 1e6
                                  if name == "adaptive" else None})
        switches = adaptive.switches
    finally:
        adaptive.close()
        fixed.close()
        relay.close()
    Path(args.result).write_text(json.dumps({"trace": trace, "switches": switches,
                                             "rtt_ms_measured": adaptive.monitor.snapshot()["rtt_ms"]}))


def resplit(bundle: Path, rtt_ms: float, per_phase: int, force_fallback: bool) -> dict:
    """Part 4: live re-split over the emulated link while its bandwidth changes."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    ok, why = namespaces_available()
    use_netns = ok and not force_fallback
    result_file = Path(tempfile.mkstemp(suffix=".json")[1])
    server = None
    phases = ",".join(str(p) for p in RESPLIT_PHASES_MBPS)
    cmd = [sys.executable, __file__, "_resplit-client", "--bundle", str(bundle), "--rtt-ms", str(rtt_ms),
           "--phases", phases, "--per-phase", str(per_phase), "--result", str(result_file)]
    try:
        if use_netns:
            setup_namespaces(RESPLIT_PHASES_MBPS[0] * 1e6)
            server = _start_server(bundle, "edge", host=IP_CLOUD, netns=NS_CLOUD)
            cmd = ["ip", "netns", "exec", NS_EDGE, *cmd, "--server", server.url]
        else:
            server = _start_server(bundle, "edge")
            cmd += ["--server", server.url, "--fallback"]
        subprocess.run(cmd, check=True, cwd=ROOT, timeout=1800)
        measured = json.loads(result_file.read_text())
    finally:
        if server is not None:
            _stop(server)
        if use_netns:
            teardown_namespaces()
        result_file.unlink(missing_ok=True)
    trace = measured["trace"]
    phases_out = []
    for p, rate in enumerate(RESPLIT_PHASES_MBPS):
        row = {"phase": p, "rate_mbps": rate}
        for name in ("adaptive", "fixed"):
            mine = [t for t in trace if t["phase"] == p and t["client"] == name]
            row[name] = {**_percentiles([t["latency_ms"] / 1e3 for t in mine]),
                         "variants": {str(v): sum(t["variant"] == v for t in mine) for v in sorted({t["variant"] for t in mine})},
                         "wrong_answers": sum(not t["right"] for t in mine)}
        first = next((t["i"] for t in trace if t["phase"] == p and t["client"] == "adaptive"
                      and t["variant"] == _best_variant(manifest, rate * 1e6)), None)
        row["adaptive_on_best_variant_from_request"] = first
        phases_out.append(row)
        print(f"[resplit] {rate:>4} Mbit/s: adaptive p50 {row['adaptive']['p50_ms']:.1f} ms {row['adaptive']['variants']}"
              f" (best variant from request {first}), fixed p50 {row['fixed']['p50_ms']:.1f} ms; wrong "
              f"{row['adaptive']['wrong_answers'] + row['fixed']['wrong_answers']}", flush=True)
    return {"mode": _mode(use_netns, why if not ok else "forced"), "rtt_ms": rtt_ms, "per_phase": per_phase,
            "variants": [{"range_bps": v["range_bps"], "cut_after": [c["after"] for c in v["plan"]["cuts"]],
                          "bundle": v["bundle"]} for v in manifest["plan"]["variants"]],
            "phases": phases_out, "switches": measured["switches"], "trace": trace}


def _best_variant(manifest: dict, rate_bps: float) -> int:
    from splitc.runtime.link import variant_for

    return variant_for(manifest["plan"]["variants"], rate_bps)


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    inner = sub.add_parser("_link-client")  # internal: runs inside the edge namespace
    for a in ("--bundle", "--server", "--result"):
        inner.add_argument(a, required=True)
    inner.add_argument("--rtt-ms", type=float, required=True)
    inner.add_argument("--requests", type=int, required=True)
    inner.add_argument("--relay-rate-bps", type=float, default=0.0)
    inner2 = sub.add_parser("_resplit-client")  # internal: runs inside the edge namespace
    for a in ("--bundle", "--server", "--result", "--phases"):
        inner2.add_argument(a, required=True)
    inner2.add_argument("--rtt-ms", type=float, required=True)
    inner2.add_argument("--per-phase", type=int, required=True)
    inner2.add_argument("--fallback", action="store_true")
    parser.add_argument("--parts", default="designs,batching,link,resplit", help="Which parts to run.")
    parser.add_argument("--requests", type=int, default=3000, help="Max requests per load run.")
    parser.add_argument("--seconds", type=float, default=9.0, help="Max seconds per load run (split into rounds).")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds per load run.")
    parser.add_argument("--concurrency", default="1,4", help="Client threads per load run (comma list).")
    parser.add_argument("--protocols", default="http,grpc", help="KServe v2 transports to measure.")
    parser.add_argument("--bandwidth", default="20mbps", help="Emulated link bandwidth (part 3).")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="Emulated link round-trip time.")
    parser.add_argument("--link-requests", type=int, default=40, help="Sequential requests over the emulated link.")
    parser.add_argument("--per-phase", type=int, default=24, help="Requests per client per bandwidth phase (part 4).")
    parser.add_argument("--fallback", action="store_true", help="Use the in-process rate limiter even when netns works.")
    parser.add_argument("--quick", action="store_true", help="Small counts (smoke run).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving.json"))
    args = parser.parse_args()
    if args.command == "_link-client":
        return link_client(args)
    if args.command == "_resplit-client":
        return resplit_client(args)
    if args.quick:
        args.requests, args.seconds, args.rounds, args.link_requests, args.per_phase = 40, 1.5, 1, 8, 5
        args.protocols, args.concurrency = "http", "1,2"
    from splitc.units import parse_bandwidth

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"designs", "batching", "link", "resplit"}
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
              "git": _git_state(), "quick": args.quick, "model": str(MODEL.relative_to(ROOT)), "split_after": SPLIT_AT,
              "bounds": {"max_requests": args.requests, "max_seconds": args.seconds, "rounds": args.rounds}}
    with tempfile.TemporaryDirectory(prefix="splitc-serving-") as work:
        bundles = compile_bundles(Path(work), parts, args.bandwidth, args.rtt_ms)
        if "designs" in parts:
            report["designs"] = designs(bundles["split"], bundles["mono"], concurrencies,
                                        [p.strip() for p in args.protocols.split(",")], args.requests, args.seconds,
                                        args.rounds)
        if "batching" in parts:
            report["batching_with_exits"] = batching(bundles["exits"], max(concurrencies) * 2, args.requests,
                                                     args.seconds)
        if "link" in parts:
            report["emulated_link"] = emulated_link(bundles["split"], parse_bandwidth(args.bandwidth), args.rtt_ms,
                                                    args.link_requests, args.fallback)
        if "resplit" in parts:
            report["live_resplit"] = resplit(bundles["variants"], args.rtt_ms / 2, args.per_phase, args.fallback)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from _provenance import write_results  # the commit and whether the tree was clean
    write_results(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
