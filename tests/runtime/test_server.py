"""splitc's own KServe v2 server over real HTTP and gRPC on 127.0.0.1: answers equal the in-process runner
(every chain: later tiers in-process, --next forwarding, the client calling each tier), bad requests get a
clear 4xx and the server keeps serving, concurrency, timeouts, saturation."""

from __future__ import annotations

import copy
import http.client
import json
import shutil
import socket
import threading
import time

import numpy as np
import pytest

from splitc.errors import SplitcError
from splitc.runtime.client import RemoteError, SplitClient, split_batch
from splitc.runtime.runner import BundleRunner
from splitc.runtime.server import TierService, start_server
from splitc.runtime.tier_model import wire_arrays
from splitc.runtime.v2 import tier_contract

pytest.importorskip("tritonclient.grpc", reason="tritonclient[http,grpc] is the v2 client (pip install splitc[serving])")


@pytest.fixture(scope="module")
def runner(bundle3):
    return BundleRunner(bundle3)


@pytest.fixture(scope="module")
def last(bundle3):
    """Server of the last tier (aws-lambda, index 2)."""
    server = start_server(bundle3, "aws-lambda", port=0, read_timeout_s=2.0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def middle(bundle3):
    """Server of the edge tier (index 1), later tiers in-process."""
    server = start_server(bundle3, "edge", port=0)
    yield server
    server.stop()


def _inputs(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def _request(url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wire(runner, seed: int, link: int = 0) -> dict[str, np.ndarray]:
    held = _inputs(seed)
    for tier in range(link + 1):
        step_held, _, payloads = runner.tier_step(tier, held)
        held = runner.decode_transfer(tier, payloads) if tier < link else step_held
    return wire_arrays(payloads, tier_contract(runner.manifest, link + 1).inputs)


def _v2_body(tensors: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    import tritonclient.http as tc

    inputs = []
    for name, value in tensors.items():
        tensor = tc.InferInput(name, list(value.shape), {"float32": "FP32", "float16": "FP16", "uint8": "UINT8",
                                                         "float64": "FP64"}[value.dtype.name])
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    body, length = tc.InferenceServerClient.generate_request_body(inputs)
    return body, {"Inference-Header-Content-Length": str(length)} if length else {}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_remote_answers_equal_the_in_process_runner(bundle3, runner, middle, protocol):
    with SplitClient(bundle3, remote=middle.url if protocol == "http" else middle.grpc_url) as client:
        assert client.remote_tier == 1
        for seed in range(3):
            result = client.infer(_inputs(seed))
            assert result.answered_by == 2 and result.exit == -1
            np.testing.assert_array_equal(result.outputs["output_0"], runner.run(_inputs(seed))["output_0"])
            assert result.wire_bytes == sum(t["bytes"] for t in runner.manifest["transfers"][0]["tensors"])


@pytest.mark.parametrize("next_protocol", ["http", "grpc"])
def test_a_middle_tier_forwards_with_next(bundle3, runner, last, next_protocol):
    server = start_server(bundle3, "edge", port=0, next_url=last.url if next_protocol == "http" else last.grpc_url)
    try:
        assert sorted(server.service.models) == ["splitc_tier1"]
        with SplitClient(bundle3, remote=server.url) as client:
            for seed in range(3):
                result = client.infer(_inputs(seed))
                assert result.answered_by == 2
                np.testing.assert_array_equal(result.outputs["output_0"], runner.run(_inputs(seed))["output_0"])
    finally:
        server.stop()


def test_the_client_calls_each_tier_in_turn(bundle3, runner, last):
    server = start_server(bundle3, "edge", port=0, single_tier=True)
    try:
        with SplitClient(bundle3, remote=[server.grpc_url, last.url]) as client:
            assert client.remote_tier == 1
            result = client.infer(_inputs(5))
            assert result.answered_by == 2
            np.testing.assert_array_equal(result.outputs["output_0"], runner.run(_inputs(5))["output_0"])
            # the middle tier answers the next link's tensors: the client needs a server for tier 2
        with SplitClient(bundle3, remote=server.url) as alone:
            with pytest.raises(RemoteError, match="tier 2 .*splitc_tier2.* is served by none") as info:
                alone.infer(_inputs(5))
            assert info.value.code == "not_found"
    finally:
        server.stop()


def test_client_can_skip_to_the_last_tier(bundle3, runner, last):
    with SplitClient(bundle3, remote=last.url) as client:
        assert client.remote_tier == 2  # tiers 0 and 1 run on this side
        np.testing.assert_array_equal(client.infer(_inputs(7)).outputs["output_0"], runner.run(_inputs(7))["output_0"])


def test_tier0_server_takes_raw_inputs(bundle3, runner):
    server = start_server(bundle3, 0, port=0)  # every tier in-process after receiving the model inputs
    try:
        with SplitClient(bundle3, remote=server.url) as client:
            assert client.remote_tier == 0
            result = client.infer(_inputs(3))
            np.testing.assert_array_equal(result.outputs["output_0"], runner.run(_inputs(3))["output_0"])
    finally:
        server.stop()


def test_concurrent_clients(bundle3, runner, middle):
    with SplitClient(bundle3, remote=middle.url) as client:
        batch = [_inputs(i) for i in range(24)]
        results = client.infer_many(batch, concurrency=6)
    assert not [r for r in results if isinstance(r, Exception)]
    for inputs, result in zip(batch, results):
        np.testing.assert_array_equal(result.outputs["output_0"], runner.run(inputs)["output_0"])
    assert len({r.request_id for r in results}) == len(results)


def test_v2_endpoints(bundle3, runner, middle):
    assert _request(middle.url, "GET", "/v2/health/live")[0] == 200
    assert _request(middle.url, "GET", "/v2/health/ready")[0] == 200
    assert json.loads(_request(middle.url, "GET", "/v2")[1])["name"] == "splitc"
    meta = json.loads(_request(middle.url, "GET", "/v2/models/splitc_tier1")[1])
    assert [i["name"] for i in meta["inputs"]] == [t["name"] for t in runner.manifest["transfers"][0]["tensors"]]
    assert "output_0" in [o["name"] for o in meta["outputs"]]
    config = json.loads(_request(middle.url, "GET", "/v2/models/splitc_tier1/versions/1/config")[1])
    assert config["parameters"]["splitc_tier_sha256"]["string_value"] == tier_contract(runner.manifest, 1).fingerprint
    assert _request(middle.url, "GET", "/v2/models/splitc_tier1/ready")[0] == 200
    assert _request(middle.url, "GET", "/v2/models/splitc_tier9/ready")[0] == 400
    index = json.loads(_request(middle.url, "POST", "/v2/repository/index")[1])
    assert index == [{"name": "splitc_tier1", "version": "1", "state": "READY"}]
    stats = json.loads(_request(middle.url, "GET", "/v2/models/splitc_tier1/stats")[1])
    assert set(stats["answers"]) >= {"final", "exit", "forward", "failed"}


def _bad_requests(runner) -> dict[str, tuple[str, str, bytes, dict, int, str]]:
    wire = _wire(runner, 0)
    good, headers = _v2_body(wire)
    first, second = list(wire)
    return {
        "garbage": ("POST", "/v2/models/splitc_tier1/infer", b"not json at all" * 3, {}, 400, "not JSON"),
        "no inputs": ("POST", "/v2/models/splitc_tier1/infer", b'{"inputs": []}', {}, 400, "no 'inputs'"),
        "missing tensor": ("POST", "/v2/models/splitc_tier1/infer", *_v2_body({first: wire[first]}), 400,
                           "takes tensors"),
        "wrong shape": ("POST", "/v2/models/splitc_tier1/infer",
                        *_v2_body({first: wire[first], second: np.zeros((1, 8, 4, 16), wire[second].dtype)}), 400,
                        "expected"),
        "wrong dtype": ("POST", "/v2/models/splitc_tier1/infer",
                        *_v2_body({first: wire[first], second: wire[second].astype(np.float64)}), 400, "expected FP32"),
        "short binary": ("POST", "/v2/models/splitc_tier1/infer", good[:-4], headers, 400, "runs past the end"),
        "header length": ("POST", "/v2/models/splitc_tier1/infer", good, {"Inference-Header-Content-Length": "x"},
                          400, "is not a number"),
        "unknown model": ("POST", "/v2/models/splitc_tier7/infer", good, headers, 404, "unknown model"),
        "wrong version": ("POST", "/v2/models/splitc_tier1/versions/2/infer", good, headers, 404, "only version 1"),
        "unknown path": ("GET", "/v1/infer", b"", {}, 404, "no such endpoint"),
        "method": ("PUT", "/v2/models/splitc_tier1/infer", b"", {}, 405, "use POST"),
    }


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(bundle3, runner, middle):
    for what, (method, path, body, headers, status, message) in _bad_requests(runner).items():
        got, data = _request(middle.url, method, path, body, headers)
        assert got == status, (what, got, data)
        assert message in json.loads(data)["error"], (what, data)
    with SplitClient(bundle3, remote=middle.url) as client:
        np.testing.assert_array_equal(client.infer(_inputs(1)).outputs["output_0"], runner.run(_inputs(1))["output_0"])


def test_bad_grpc_requests_get_invalid_argument(bundle3, runner, middle):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    wire = _wire(runner, 0)
    channel = grpc.insecure_channel(middle.grpc_url.removeprefix("grpc://"))
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    def call(model, tensors, raw=None):
        request = service_pb2.ModelInferRequest(model_name=model)
        for name, value in tensors.items():
            request.inputs.add(name=name, datatype="FP32", shape=list(value.shape))
        request.raw_input_contents.extend(raw if raw is not None else [v.tobytes() for v in tensors.values()])
        try:
            stub.ModelInfer(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return grpc.StatusCode.OK, ""

    first, second = list(wire)
    assert call("splitc_tier1", {first: wire[first]})[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, details = call("splitc_tier1", wire, raw=[wire[first].tobytes(), wire[second].tobytes()[:-4]])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "raw bytes" in details
    assert call("nope", wire)[0] == grpc.StatusCode.NOT_FOUND
    assert call("splitc_tier1", wire)[0] == grpc.StatusCode.OK
    channel.close()


def _raw_exchange(address, data: bytes) -> str:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(data)
        return b"".join(iter(lambda: sock.recv(4096), b"")).decode(errors="replace")


def test_http_level_errors(middle):
    address = (middle.host, middle.port)
    # oversized: refused from the Content-Length alone, before reading the body
    answer = _raw_exchange(address, b"POST /v2/models/splitc_tier1/infer HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Length: 999999999\r\n\r\n")
    assert answer.startswith("HTTP/1.1 413") and "exceeds this model's limit" in answer
    answer = _raw_exchange(address, b"POST /v2/models/splitc_tier1/infer HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith("HTTP/1.1 411") and "needs a Content-Length" in answer
    answer = _raw_exchange(address, b"\x16\x03\x01 this is not http\r\n\r\n")  # e.g. a TLS hello
    assert '"error": "HTTP error 400' in answer


def test_slow_client_is_dropped_without_blocking_others(bundle3, runner, last):
    with socket.create_connection((last.host, last.port), timeout=10) as sock:  # read timeout 2 s
        sock.sendall(b"POST /v2/models/splitc_tier2/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                     + b"\0" * 10)
        start = time.monotonic()
        with SplitClient(bundle3, remote=last.url) as client:  # others are served meanwhile
            np.testing.assert_array_equal(client.infer(_inputs(2)).outputs["output_0"],
                                          runner.run(_inputs(2))["output_0"])
        assert sock.recv(4096) == b""  # the server closed the stalled connection
        assert 1.5 < time.monotonic() - start < 8


def test_client_timeout_and_unreachable_are_clear(bundle3, middle):
    from splitc.runtime.client import Transport

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    try:
        transport = Transport(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.5)
        with pytest.raises(RemoteError, match="no answer within 0.5 s") as info:
            transport.infer("splitc_tier1", {"x": np.zeros(1, np.float32)}, "r1")
        assert info.value.code == "timeout" and info.value.request_id == "r1"
        transport.close()
    finally:
        silent.close()
    port = _closed_port()
    for url in (f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{port}"):
        transport = Transport(url, timeout_s=2)
        with pytest.raises(RemoteError) as info:
            transport.infer("splitc_tier1", {"x": np.zeros(1, np.float32)})
        assert info.value.code == "unreachable" and str(info.value).startswith(url), str(info.value)
        transport.close()


def test_next_tier_down_is_a_502(bundle3):
    server = start_server(bundle3, "edge", port=0, next_url=f"http://127.0.0.1:{_closed_port()}", forward_timeout_s=2)
    try:
        with SplitClient(bundle3, remote=server.url) as client:
            with pytest.raises(RemoteError, match="next tier") as info:
                client.infer(_inputs(0))
        assert info.value.status == 502 and info.value.code == "bad_gateway"
    finally:
        server.stop()


def test_saturated_server_answers_503_and_the_client_retries(bundle3, runner):
    server = start_server(bundle3, "aws-lambda", port=0, max_inflight=1, queue_timeout_s=0.05)
    service = server.service
    try:
        wire = _wire(runner, 0, link=1)
        service._slots.acquire()  # one request "in flight"
        with pytest.raises(Exception) as info:
            service.infer("splitc_tier2", wire)
        assert getattr(info.value, "status", None) == 503
        with SplitClient(bundle3, remote=server.url, retries=0) as client:
            with pytest.raises(RemoteError) as remote:
                client.infer(_inputs(0))
            assert remote.value.code == "busy" and remote.value.status == 503
            threading.Timer(0.3, service._slots.release).start()
            client.retries, client.backoff_s = 20, 0.1
            result = client.infer(_inputs(0))  # retried until the slot frees
            assert result.attempts > 1
            np.testing.assert_array_equal(result.outputs["output_0"], runner.run(_inputs(0))["output_0"])
    finally:
        server.stop()


def test_user_errors(bundle3, tmp_path):
    with pytest.raises(SplitcError, match="tier 'gpu-farm' is not in this bundle.*0=jetson-orin-nano"):
        TierService(bundle3, "gpu-farm")
    with pytest.raises(SplitcError, match="--next given for tier 'aws-lambda', the last tier"):
        TierService(bundle3, "aws-lambda", next_url="http://127.0.0.1:1")
    with pytest.raises(SplitcError, match="not a splitc bundle"):
        TierService(tmp_path, "edge")
    with pytest.raises(SplitcError, match="cannot reach the remote tier"):
        SplitClient(bundle3, remote="http://127.0.0.1:9", timeout_s=1)
    with pytest.raises(SplitcError, match="is not an http://host:port or grpc://host:port URL"):
        SplitClient(bundle3, remote="ftp://x")


def test_a_server_of_another_bundle_is_refused(bundle3, tmp_path, middle):
    other = tmp_path / "other"
    shutil.copytree(bundle3, other)
    manifest = json.loads((other / "manifest.json").read_text())
    changed = copy.deepcopy(manifest)
    changed["transfers"][1]["tensors"][0]["encoding"] = {"kind": "float16", "in_graph": False,
                                                        "source_dtype": "float32"}
    changed["transfers"][1]["tensors"][0]["dtype"] = "float16"
    (other / "manifest.json").write_text(json.dumps(changed))
    with pytest.raises(SplitcError, match="runs model splitc_tier1 of another bundle"):
        SplitClient(other, remote=middle.url)


def test_a_server_that_drops_a_tensor_is_an_error_not_an_answer(bundle3, middle, monkeypatch):
    real = middle.service.infer

    def dropping(name, inputs, request_id=""):
        answer = real(name, inputs, request_id)
        answer.pop("output_0")
        return answer

    monkeypatch.setattr(middle.service, "infer", dropping)
    with SplitClient(bundle3, remote=middle.url) as client:
        with pytest.raises(RemoteError, match="answered without tensor 'output_0'") as info:
            client.infer(_inputs(0))
    assert info.value.code == "bad_answer"


def test_split_batch_shapes(runner):
    manifest = runner.manifest
    assert len(split_batch(manifest, {"x": np.zeros((1, 3, 8, 8), np.float32)})) == 1
    assert len(split_batch(manifest, {"x": np.zeros((5, 1, 3, 8, 8), np.float32)})) == 5
    assert len(split_batch(manifest, {"x": np.zeros((4, 3, 8, 8), np.float32)})) == 4
    with pytest.raises(SplitcError, match=r"has shape \[2, 3, 9, 9\]; the bundle needs \[1, 3, 8, 8\]"):
        split_batch(manifest, {"x": np.zeros((2, 3, 9, 9), np.float32)})


def test_server_survives_a_burst_of_garbage_from_many_threads(bundle3, runner, middle):
    requests = list(_bad_requests(runner).values())
    statuses = []

    def hammer():
        for method, path, body, headers, _, _ in requests:
            statuses.append(_request(middle.url, method, path, body, headers)[0])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(statuses) == 4 * len(requests) and all(400 <= s < 500 for s in statuses)
    with SplitClient(bundle3, remote=middle.url) as client:
        np.testing.assert_array_equal(client.infer(_inputs(4)).outputs["output_0"], runner.run(_inputs(4))["output_0"])


def test_an_exit_on_the_server_answers_without_forwarding(bundle3):
    exiting = BundleRunner(bundle3)
    early = {"output_0": np.full((1, 5), 7.0, np.float32)}
    exiting.exit_decision = lambda part, held: early if part == 1 else None  # as if partition 1's exit fired
    server = start_server(bundle3, "edge", port=0, next_url=f"http://127.0.0.1:{_closed_port()}", runner=exiting)
    try:  # forwarding would fail with a 502
        with SplitClient(bundle3, remote=server.url) as client:
            result = client.infer(_inputs(0))
        assert result.answered_by == 1
        np.testing.assert_array_equal(result.outputs["output_0"], early["output_0"])
    finally:
        server.stop()


def test_an_exit_on_the_client_sends_nothing(bundle3, middle):
    with SplitClient(bundle3, remote=middle.url) as client:
        client.runner.exit_decision = lambda part, held: {"output_0": np.ones((1, 5), np.float32)} if part == 0 else None
        served = middle.service.stats["served"]
        result = client.infer(_inputs(0))
    assert result.answered_by == 0 and result.wire_bytes == 0
    assert middle.service.stats["served"] == served


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def f16_bundle(tmp_path_factory):
    """Residual split after 'a' with boundary tensors sent as float16 (the manifest says how)."""
    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model

    out = tmp_path_factory.mktemp("f16") / "bundle"
    compile_model("tests.models:Residual", CompileOptions(targets=("jetson", "edge"), split=("a",),
                                                         transfer_dtype="float16", emit=("none",)),
                  out, input_shapes=[(1, 3, 8, 8)])
    return out


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_encoded_transfers_cross_the_wire_as_the_manifest_says(f16_bundle, protocol):
    manifest = json.loads((f16_bundle / "manifest.json").read_text())
    tensors = manifest["transfers"][0]["tensors"]
    assert {t["dtype"] for t in tensors} == {"float16"}
    runner = BundleRunner(f16_bundle)
    server = start_server(f16_bundle, 1, port=0)
    try:
        with SplitClient(f16_bundle, remote=server.url if protocol == "http" else server.grpc_url) as client:
            for seed in range(3):
                result = client.infer(_inputs(seed))
                np.testing.assert_array_equal(result.outputs["output_0"], runner.run(_inputs(seed))["output_0"])
        assert result.wire_bytes == sum(2 * int(np.prod(t["shape"])) for t in tensors)  # two bytes per value
    finally:
        server.stop()
