"""A real Triton Inference Server (the nvidia-pytriton wheel: tritonserver 2.51, python backend) serving the
MNIST bundle with exits and uint8 transfers: every design answers exactly like the in-process runner over HTTP
and gRPC (exits fire identically), dynamic batching included; mismatched requests get 4xx and the server
keeps serving; a Triton killed and restarted mid-run gives clear errors, retries where safe and never a wrong
answer; ``splitc serve --server triton`` starts and stops cleanly; nothing is left behind."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from splitc.backends.triton import MAX_BATCH, serving_repository
from splitc.runtime.client import RemoteError, SplitClient
from splitc.runtime.process import start_tier_process, stop_tier_process
from splitc.runtime.triton_server import TritonServer, free_port_block
from splitc.runtime.v2 import tier_contract

pytest.importorskip("tritonclient.grpc", reason="tritonclient[http,grpc] is the v2 client")
pytestmark = pytest.mark.slow  # trains the MNIST example once per session and starts real servers

ROOT = Path(__file__).resolve().parents[2]


def _reference(bundle, digits):
    """(outputs, answering tier, exit) of every request, all tiers in this process."""
    with SplitClient(bundle) as local:
        return [local.infer(d) for d in digits]


def _repository(bundle, design: str, batching: bool = True) -> Path:
    repo = Path(tempfile.mkdtemp(prefix="splitc-test-repo-"))
    serving_repository(bundle, 1, repo, design="python" if design == "ensemble" else design, batching=batching,
                       threads=1)
    serving_repository(bundle, 2, repo, design=design, batching=batching, threads=1)
    return repo


def _check(results, expected):
    for got, want in zip(results, expected):
        assert not isinstance(got, Exception), got
        np.testing.assert_array_equal(got.outputs["output_0"], want.outputs["output_0"])
        assert (got.answered_by, got.exit) == (want.answered_by, want.exit)


@pytest.mark.parametrize("design", ["python", "bls", "ensemble"])
def test_every_design_answers_like_the_in_process_runner(mnist_exits_bundle, mnist_digits, triton_install, design,
                                                         no_leftovers):
    digits = mnist_digits[:150]
    expected = _reference(mnist_exits_bundle, digits)
    kinds = {(r.answered_by, r.exit) for r in expected}
    assert {(0, 0), (1, 1), (2, -1)} <= kinds  # the device exit, the server-tier exit and the last tier all fire
    repo = _repository(mnist_exits_bundle, design)
    with TritonServer(repo) as server:
        for url in (server.http_url, server.grpc_url):
            with SplitClient(mnist_exits_bundle, remote=url) as client:
                assert client.remote_tier == 1
                _check([client.infer(d) for d in digits], expected)
        info = server.stop()
    assert info["returncode"] == 0 and not info["killed"]


def test_a_three_tier_chain_over_two_tritons(mnist_exits_bundle, mnist_digits, triton_install, no_leftovers):
    """Each server tier in its own Triton: the client calls the edge tier, then the cloud tier it names."""
    digits = mnist_digits[:80]
    expected = _reference(mnist_exits_bundle, digits)
    repos = []
    for tier in (1, 2):
        repos.append(Path(tempfile.mkdtemp(prefix="splitc-test-repo-")))
        serving_repository(mnist_exits_bundle, tier, repos[-1], design="python", threads=1)
    with TritonServer(repos[0]) as edge, TritonServer(repos[1]) as cloud:
        with SplitClient(mnist_exits_bundle, remote=[edge.grpc_url, cloud.http_url]) as client:
            assert {t: u.url for t, u in client.variants[0].served.items()} == {1: edge.grpc_url, 2: cloud.http_url}
            _check([client.infer(d) for d in digits], expected)


def test_dynamic_batching_keeps_every_answer_and_exit(mnist_exits_bundle, mnist_digits, triton_install, no_leftovers):
    digits = mnist_digits[:240]
    expected = _reference(mnist_exits_bundle, digits)
    config = (_repository(mnist_exits_bundle, "python") / "splitc_tier1" / "config.pbtxt").read_text()
    assert f"max_batch_size: {MAX_BATCH}" in config and "dynamic_batching { }" in config
    with TritonServer(_repository(mnist_exits_bundle, "python")) as server:
        for url in (server.http_url, server.grpc_url):
            with SplitClient(mnist_exits_bundle, remote=url) as client:
                _check(client.infer_many(digits, concurrency=8), expected)
        import tritonclient.http as tc

        stats = tc.InferenceServerClient(server.http_url.removeprefix("http://"))
        model = stats.get_inference_statistics("splitc_tier1")["model_stats"][0]
        stats.close()
        sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in model["batch_stats"]}
        assert max(sizes) > 1, sizes  # Triton did hand the model batches of several requests
    with TritonServer(_repository(mnist_exits_bundle, "python", batching=False)) as server:
        with SplitClient(mnist_exits_bundle, remote=server.grpc_url) as client:
            _check(client.infer_many(digits[:60], concurrency=4), expected[:60])


def _without_times(text: str) -> list[str]:
    return [re.sub(r", [0-9.]+ ms", "", line) for line in text.splitlines()]


def _post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url + path, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_mismatched_requests_get_4xx_and_triton_keeps_serving(mnist_exits_bundle, mnist_digits, triton_install,
                                                              no_leftovers):
    manifest = json.loads((mnist_exits_bundle / "manifest.json").read_text())
    spec = tier_contract(manifest, 1).inputs[0]
    good = {"name": spec.name, "datatype": "UINT8", "shape": list(spec.shape)}
    size = int(np.prod(spec.shape))

    def body(**change):
        tensor = dict(good, **change)
        head = json.dumps({"inputs": [dict(tensor, parameters={"binary_data_size": size})]}).encode()
        return head + bytes(size), {"Inference-Header-Content-Length": str(len(head))}

    expected = _reference(mnist_exits_bundle, mnist_digits[:20])
    with TritonServer(_repository(mnist_exits_bundle, "python")) as server:
        cases = {
            "wrong dtype": (body(datatype="FP16"), 400),
            "wrong shape": (body(shape=[1, 16, 28, 27]), 400),
            "unknown input": (body(name="nope"), 400),
            "batch of two": (body(shape=[2] + list(spec.shape[1:])), 400),  # one request per call
            "unknown model": (body(), 404),
        }
        for what, ((data, headers), status) in cases.items():
            path = "/v2/models/splitc_tier9/infer" if what == "unknown model" else "/v2/models/splitc_tier1/infer"
            got, text = _post(server.http_url, path, data, headers)
            assert got == status, (what, got, text)
            assert "error" in json.loads(text), what
        got, _ = _post(server.http_url, "/v2/models/splitc_tier1/infer", b"{not json")
        assert got >= 400  # Triton answers malformed JSON with 500 (its choice), and keeps serving
        with SplitClient(mnist_exits_bundle, remote=server.http_url) as client:
            _check([client.infer(d) for d in mnist_digits[:20]], expected)


def test_triton_killed_and_restarted_mid_run(mnist_exits_bundle, mnist_digits, triton_install, no_leftovers):
    digits = [d for d, r in zip(mnist_digits[:200], _reference(mnist_exits_bundle, mnist_digits[:200]))
              if r.answered_by > 0][:36]  # requests that do reach the server
    expected = _reference(mnist_exits_bundle, digits)
    port = free_port_block(3)
    server = TritonServer(_repository(mnist_exits_bundle, "python"), port=port)
    server.start()
    try:
        for url in (server.http_url, server.grpc_url):
            client = SplitClient(mnist_exits_bundle, remote=url, timeout_s=5, retries=0)
            outcomes = []
            for i, digit in enumerate(digits):
                if i == 12:
                    server.kill()  # a crash: SIGKILL to the server and its stubs
                if i == 24:
                    server.stop()  # cleans up after the crash (shared memory) ...
                    server.start()  # ... and the same ports serve again
                try:
                    outcomes.append(client.infer(digit))
                except RemoteError as exc:
                    outcomes.append(exc)
            failed = [i for i, o in enumerate(outcomes) if isinstance(o, RemoteError)]
            assert failed == list(range(12, 24)), (url, failed)
            for i in failed:
                assert outcomes[i].code in {"unreachable", "disconnected"}, outcomes[i]
                assert str(outcomes[i]).startswith(url) and outcomes[i].request_id in str(outcomes[i])
            _check([o for o in outcomes if not isinstance(o, RemoteError)],
                   [e for e, o in zip(expected, outcomes) if not isinstance(o, RemoteError)])
            # with retries, a request sent while Triton restarts is answered once it is back, and rightly
            server.kill()
            client.retries, client.backoff_s = 60, 0.25
            restart = threading.Thread(target=lambda: (time.sleep(0.5), server.stop(), server.start()))
            restart.start()
            result = client.infer(digits[0])
            restart.join(120)
            assert result.attempts > 1
            _check([result], expected[:1])
            client.close()
    finally:
        server.stop()


def test_cli_serve_with_triton_starts_answers_and_stops_cleanly(mnist_exits_bundle, mnist_digits, triton_install,
                                                                tmp_path, no_leftovers):
    digits = mnist_digits[:30]
    np.save(tmp_path / "x.npy", np.stack([d["x"] for d in digits]))
    local = subprocess.run([sys.executable, "-m", "splitc", "run", str(mnist_exits_bundle), "--input",
                            str(tmp_path / "x.npy"), "--output", str(tmp_path / "local.npz")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr
    port = free_port_block(3)
    tier = start_tier_process(mnist_exits_bundle, "edge", port=port, extra_args=("--server", "triton", "--threads", "1"),
                              cwd=ROOT, timeout_s=180)
    try:
        assert tier.url == f"http://127.0.0.1:{port}" and tier.grpc_url == f"grpc://127.0.0.1:{port + 1}"
        assert "splitc_tier1, splitc_tier2" in tier.ready_line  # the later server tier is served too
        for url in (tier.url, tier.grpc_url):
            remote = subprocess.run([sys.executable, "-m", "splitc", "run", str(mnist_exits_bundle), "--input",
                                     str(tmp_path / "x.npy"), "--remote", url, "--output", str(tmp_path / "remote.npz")],
                                    cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert remote.returncode == 0, remote.stderr
            np.testing.assert_array_equal(np.load(tmp_path / "remote.npz")["output_0"],
                                          np.load(tmp_path / "local.npz")["output_0"])
            assert _without_times(remote.stdout) == _without_times(local.stdout)  # same class, tier and exit
    finally:
        start = time.monotonic()
        tier.proc.send_signal(signal.SIGTERM)
        assert tier.proc.wait(60) == 0
        assert time.monotonic() - start < 30
        stop_tier_process(tier.proc)
