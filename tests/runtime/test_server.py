"""Serving over real HTTP on 127.0.0.1: answers equal the in-process runner, bad input gets a clear 4xx
and the server keeps serving, concurrency, chaining with --next, timeouts."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time

import numpy as np
import pytest

from splitc.errors import SplitcError
from splitc.runtime import wire
from splitc.runtime.client import RemoteError, SplitClient, split_batch
from splitc.runtime.runner import BundleRunner
from splitc.runtime.server import TierService, start_server


@pytest.fixture(scope="module")
def runner(bundle3):
    return BundleRunner(bundle3)


@pytest.fixture(scope="module")
def last(bundle3):
    """Server of the last tier (aws-lambda, index 2)."""
    server = start_server(bundle3, "aws-lambda", port=0, read_timeout_s=2.0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def middle(bundle3, last):
    """Server of the edge tier (index 1), forwarding link 1 to the last tier's server."""
    server = start_server(bundle3, "edge", port=0, next_url=last.url)
    yield server
    server.shutdown()
    server.server_close()


def _inputs(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def _post(url: str, body: bytes, headers: dict | None = None, path: str = "/v1/infer"):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _transfer_message(bundle, link: int, held: dict, **changes) -> wire.Message:
    runner = BundleRunner(bundle)
    payloads = runner.encode_transfer(link, held)
    specs = next(t for t in runner.manifest["transfers"] if t["link"] == link)["tensors"]
    tensors = [wire.Tensor(s["name"], s["dtype"], tuple(s["shape"]), payloads[s["name"]]) for s in specs]
    fields = dict(kind=wire.KIND_TRANSFER, bundle_hash=wire.bundle_hash(bundle), index=link,
                  request_id=os.urandom(16), tensors=tensors)
    fields.update(changes)
    return wire.Message(**fields)


def test_remote_answers_equal_the_in_process_runner(bundle3, runner, middle):
    client = SplitClient(bundle3, remote=middle.url)
    assert client.remote_tier == 1
    for seed in range(3):
        result = client.infer(_inputs(seed))
        expected = runner.run(_inputs(seed))
        assert result.answered_by == 2
        np.testing.assert_array_equal(result.outputs["output_0"], expected["output_0"])
        assert result.wire_bytes > sum(t["bytes"] for t in runner.manifest["transfers"][0]["tensors"])


def test_client_can_skip_to_the_last_tier(bundle3, runner, last):
    client = SplitClient(bundle3, remote=last.url)
    assert client.remote_tier == 2  # tiers 0 and 1 run on this side
    np.testing.assert_array_equal(client.infer(_inputs(7)).outputs["output_0"], runner.run(_inputs(7))["output_0"])


def test_tier0_server_takes_raw_inputs(bundle3, runner):
    server = start_server(bundle3, 0, port=0)  # runs every tier in-process after receiving the model inputs
    try:
        client = SplitClient(bundle3, remote=server.url)
        assert client.remote_tier == 0
        result = client.infer(_inputs(3))
        np.testing.assert_array_equal(result.outputs["output_0"], runner.run(_inputs(3))["output_0"])
    finally:
        server.shutdown()
        server.server_close()


def test_concurrent_clients(bundle3, runner, middle):
    client = SplitClient(bundle3, remote=middle.url)
    batch = [_inputs(i) for i in range(24)]
    results = client.infer_many(batch, concurrency=6)
    assert not [r for r in results if isinstance(r, Exception)]
    for inputs, result in zip(batch, results):
        np.testing.assert_array_equal(result.outputs["output_0"], runner.run(inputs)["output_0"])
    assert len({r.request_id for r in results}) == len(results)


def test_health(bundle3, middle):
    with socket.create_connection(("127.0.0.1", middle.server_address[1]), timeout=5):
        pass
    host, port = middle.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/health")
    health = json.loads(conn.getresponse().read())
    assert health["status"] == "ok" and health["tier_index"] == 1 and health["tier"] == "edge-cpu"
    assert health["accepts"]["kind"] == "transfer" and health["accepts"]["link"] == 0
    assert health["bundle_sha256"] == wire.bundle_hash(bundle3).hex() and health["wire_version"] == wire.VERSION


def _bad_requests(bundle3, runner):
    held = runner.run_partition(0, _inputs(0))
    good = _transfer_message(bundle3, 0, held)
    t0, t1 = good.tensors
    return {
        "garbage": (b"not a wire message at all, just text" * 3, 400, "bad_magic"),
        "json": (json.dumps({"x": [[1.0, 2.0]]}).encode(), 400, "bad_magic"),
        "truncated": (wire.serialize(good)[:-10], 400, "truncated"),
        "other bundle": (wire.serialize(_transfer_message(bundle3, 0, held, bundle_hash=b"\1" * 32)), 409,
                         "bundle_mismatch"),
        "wrong link": (wire.serialize(_transfer_message(bundle3, 0, held, index=1)), 422, "wrong_tier"),
        "inputs kind": (wire.serialize(_transfer_message(bundle3, 0, held, kind=wire.KIND_INPUTS)), 422, "wrong_tier"),
        "missing tensor": (wire.serialize(_transfer_message(bundle3, 0, held, tensors=[t0])), 422, "wrong_tensors"),
        "wrong shape": (wire.serialize(_transfer_message(bundle3, 0, held, tensors=[
            t0, wire.Tensor(t1.name, t1.dtype, (1, 8, 4, 16), t1.payload)])), 422, "wrong_tensor_type"),
        "wrong dtype": (wire.serialize(_transfer_message(bundle3, 0, held, tensors=[
            t0, wire.Tensor(t1.name, "float64", t1.shape, t1.payload + t1.payload)])), 422, "wrong_tensor_type"),
        "short payload": (wire.serialize(_transfer_message(bundle3, 0, held, tensors=[
            t0, wire.Tensor(t1.name, t1.dtype, t1.shape, t1.payload[:-4])])), 422, "bad_payload"),
    }


def test_bad_payloads_get_a_clear_4xx_and_the_server_keeps_serving(bundle3, runner, middle):
    for what, (body, status, code) in _bad_requests(bundle3, runner).items():
        got, data = _post(middle.url, body)
        error = json.loads(data)
        assert (got, error["error"]) == (status, code), (what, error)
        assert error["message"], what
    client = SplitClient(bundle3, remote=middle.url)
    np.testing.assert_array_equal(client.infer(_inputs(1)).outputs["output_0"], runner.run(_inputs(1))["output_0"])


def _raw_exchange(address, data: bytes) -> str:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(data)
        return b"".join(iter(lambda: sock.recv(4096), b"")).decode(errors="replace")


def test_http_level_errors(bundle3, middle):
    assert _post(middle.url, b"x" * 10, path="/v2/other")[0] == 404
    address = middle.server_address[:2]
    # oversized: refused from the Content-Length alone, before reading the body
    answer = _raw_exchange(address, b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
    assert answer.startswith("HTTP/1.1 413") and '"error": "too_large"' in answer
    answer = _raw_exchange(address, b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith("HTTP/1.1 411") and '"error": "length_required"' in answer
    answer = _raw_exchange(address, b"PUT /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert answer.startswith("HTTP/1.1 405") and '"error": "method_not_allowed"' in answer
    answer = _raw_exchange(address, b"\x16\x03\x01 this is not http\r\n\r\n")  # e.g. a TLS hello
    assert '"error": "bad_http"' in answer  # an unparsable request line is answered HTTP/0.9 style: body only


def test_slow_client_is_dropped_without_blocking_others(bundle3, runner, last):
    host, port = last.server_address[:2]  # read timeout 2 s
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"\0" * 10)
        start = time.monotonic()
        client = SplitClient(bundle3, remote=last.url)  # others are served meanwhile
        np.testing.assert_array_equal(client.infer(_inputs(2)).outputs["output_0"], runner.run(_inputs(2))["output_0"])
        assert sock.recv(4096) == b""  # the server closed the stalled connection
        assert 1.5 < time.monotonic() - start < 8


def test_client_timeout_and_unreachable_are_clear(bundle3, middle):
    client = SplitClient(bundle3, remote=middle.url, timeout_s=0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    client.remote = f"http://127.0.0.1:{silent.getsockname()[1]}"
    client._port = silent.getsockname()[1]
    client.close()
    try:
        with pytest.raises(RemoteError, match="no answer within 0.5 s") as info:
            client.infer(_inputs(0))
        assert info.value.code == "timeout" and info.value.request_id
    finally:
        silent.close()
    client.close()
    with pytest.raises(RemoteError, match="cannot connect") as info:
        client.infer(_inputs(0))
    assert info.value.code == "unreachable"


def test_next_tier_down_is_a_502(bundle3, runner):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    server = start_server(bundle3, "edge", port=0, next_url=f"http://127.0.0.1:{port}", forward_timeout_s=2)
    try:
        with pytest.raises(RemoteError, match="next tier") as info:
            SplitClient(bundle3, remote=server.url).infer(_inputs(0))
        assert info.value.status == 502 and info.value.code == "next_tier_unreachable"
    finally:
        server.shutdown()
        server.server_close()


def test_saturated_server_answers_503(bundle3, runner):
    service = TierService(bundle3, "aws-lambda", max_inflight=1, queue_timeout_s=0.05, runner=runner)
    held = runner.run_tier(1, runner.run_tier(0, _inputs(0))[0])[0]
    body = wire.serialize(_transfer_message(bundle3, 1, runner.run_partition(1, runner.run_tier(0, _inputs(0))[0])))
    assert held
    service._slots.acquire()  # one request "in flight"
    try:
        reply = service.handle(body)
        assert reply.status == 503 and json.loads(reply.body)["error"] == "busy"
    finally:
        service._slots.release()
    assert service.handle(body).status == 200


def test_user_errors(bundle3, tmp_path):
    with pytest.raises(SplitcError, match="tier 'gpu-farm' is not in this bundle.*0=jetson-orin-nano"):
        TierService(bundle3, "gpu-farm")
    with pytest.raises(SplitcError, match="--next given for tier 'aws-lambda', the last tier"):
        TierService(bundle3, "aws-lambda", next_url="http://127.0.0.1:1")
    with pytest.raises(SplitcError, match="not a splitc bundle"):
        TierService(tmp_path, "edge")
    with pytest.raises(SplitcError, match="cannot reach the remote tier"):
        SplitClient(bundle3, remote="http://127.0.0.1:9", timeout_s=1)


def test_split_batch_shapes(bundle3, runner):
    manifest = runner.manifest
    one = np.zeros((1, 3, 8, 8), np.float32)
    assert len(split_batch(manifest, {"x": one})) == 1
    assert len(split_batch(manifest, {"x": np.zeros((5, 1, 3, 8, 8), np.float32)})) == 5
    assert len(split_batch(manifest, {"x": np.zeros((4, 3, 8, 8), np.float32)})) == 4
    with pytest.raises(SplitcError, match=r"has shape \[2, 3, 9, 9\]; the bundle needs \[1, 3, 8, 8\]"):
        split_batch(manifest, {"x": np.zeros((2, 3, 9, 9), np.float32)})


def test_server_survives_a_burst_of_garbage_from_many_threads(bundle3, runner, middle):
    bodies = [b[0] for b in _bad_requests(bundle3, runner).values()]
    statuses = []

    def hammer(i):
        for body in bodies:
            statuses.append(_post(middle.url, body)[0])

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(statuses) == 4 * len(bodies) and all(400 <= s < 500 for s in statuses)
    client = SplitClient(bundle3, remote=middle.url)
    np.testing.assert_array_equal(client.infer(_inputs(4)).outputs["output_0"], runner.run(_inputs(4))["output_0"])


def test_an_exit_on_the_server_answers_without_forwarding(bundle3, runner):
    exiting = BundleRunner(bundle3)
    early = {"output_0": np.full((1, 5), 7.0, np.float32)}
    exiting.exit_decision = lambda part, held: early if part == 1 else None  # as if partition 1's exit fired
    dead = f"http://127.0.0.1:{_closed_port()}"  # forwarding would fail with a 502
    server = start_server(bundle3, "edge", port=0, next_url=dead, runner=exiting)
    try:
        result = SplitClient(bundle3, remote=server.url).infer(_inputs(0))
        assert result.answered_by == 1
        np.testing.assert_array_equal(result.outputs["output_0"], early["output_0"])
    finally:
        server.shutdown()
        server.server_close()


def test_an_exit_on_the_client_sends_nothing(bundle3):
    server = start_server(bundle3, "edge", port=0)
    try:
        client = SplitClient(bundle3, remote=server.url)
        client.runner.exit_decision = lambda part, held: {"output_0": np.ones((1, 5), np.float32)} if part == 0 else None
        served = server.service.stats["served"]
        result = client.infer(_inputs(0))
        assert result.answered_by == 0 and result.wire_bytes == 0
        assert server.service.stats["served"] == served
    finally:
        server.shutdown()
        server.server_close()


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


def test_encoded_transfers_cross_the_wire_as_the_manifest_says(f16_bundle):
    manifest = json.loads((f16_bundle / "manifest.json").read_text())
    tensors = manifest["transfers"][0]["tensors"]
    assert {t["encoding"]["kind"] for t in tensors} != {"raw"} or {t["dtype"] for t in tensors} == {"float16"}
    runner = BundleRunner(f16_bundle)
    server = start_server(f16_bundle, 1, port=0)
    try:
        client = SplitClient(f16_bundle, remote=server.url)
        for seed in range(3):
            result = client.infer(_inputs(seed))
            np.testing.assert_array_equal(result.outputs["output_0"], runner.run(_inputs(seed))["output_0"])
        fp32_bytes = sum(4 * int(np.prod(t["shape"])) for t in tensors)
        assert result.wire_bytes < 0.6 * fp32_bytes  # two bytes per value, plus the header
    finally:
        server.shutdown()
        server.server_close()
