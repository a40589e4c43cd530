"""The KServe v2 pieces: the HTTP body codec (what tritonclient sends, byte for byte), tier contracts and
the fingerprint that keeps a client off a server of another bundle."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from splitc.runtime.v2 import (HEADER_LENGTH, V2Error, fingerprint, infer_response_body, model_name,
                               parse_infer_request, served_tiers, tier_contract)

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] builds the reference bodies")


def _tritonclient_body(arrays: dict, binary: bool = True) -> tuple[bytes, int | None]:
    inputs = []
    for name, value in arrays.items():
        kind = {"float32": "FP32", "uint8": "UINT8", "float16": "FP16", "int64": "INT64", "bool": "BOOL"}[
            "bool" if value.dtype == np.bool_ else value.dtype.name]
        tensor = tritonclient_http.InferInput(name, list(value.shape), kind)
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    return tritonclient_http.InferenceServerClient.generate_request_body(inputs)


def test_parses_what_tritonclient_sends_binary_and_json():
    rng = np.random.default_rng(0)
    arrays = {"q": rng.integers(0, 256, (1, 4, 3)).astype(np.uint8),
              "h": np.array([[np.inf, -0.0, 6e-8, np.nan]], np.float16),  # subnormal, inf, NaN survive
              "f": rng.standard_normal((2, 3)).astype(np.float32), "b": np.array([True, False])}
    body, header_length = _tritonclient_body(arrays)
    request = parse_infer_request(body, header_length)
    assert request.binary is True and request.requested is None
    for name, value in arrays.items():
        got = request.inputs[name]
        assert got.dtype == value.dtype and got.shape == value.shape
        assert got.tobytes() == value.tobytes()
    json_only = {k: v for k, v in arrays.items() if k != "h"}  # FP16 has no JSON form
    body, header_length = _tritonclient_body(json_only, binary=False)
    assert header_length is None
    request = parse_infer_request(body)
    for name, value in json_only.items():
        np.testing.assert_array_equal(request.inputs[name], value)


def test_response_body_round_trips_through_tritonclient():
    outputs = {"logits": np.arange(10, dtype=np.float32).reshape(1, 10), "splitc_next": np.array([-1], np.int32),
               "q": np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4)}
    body, header_length = infer_response_body("m", "7", outputs, True)
    result = tritonclient_http.InferResult.from_response_body(body, header_length=header_length)
    assert result.get_response()["id"] == "7"
    for name, value in outputs.items():
        np.testing.assert_array_equal(result.as_numpy(name), value)
        assert result.as_numpy(name).dtype == value.dtype
    body, header_length = infer_response_body("m", None, outputs, False)  # JSON data
    assert header_length is None
    parsed = tritonclient_http.InferResult.from_response_body(body)
    np.testing.assert_array_equal(parsed.as_numpy("q"), outputs["q"])


@pytest.mark.parametrize("body, header_length, message", [
    (b"{not json", None, "not JSON"),
    (json.dumps({"inputs": []}).encode(), None, "no 'inputs' list"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}).encode(), None,
     "datatype 'BYTES' is not supported"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0]}]}).encode(), None,
     "1 values in 'data' for shape \\[2\\]"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": []}]}).encode(), None,
     "'shape' must be a list of non-negative integers"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}]}).encode(), None,
     "is not a list of FP32 values"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                             "parameters": {"binary_data_size": 8}}]}).encode() + b"\0" * 4, None,
     "binary_data_size 8 runs past the end"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                             "parameters": {"binary_data_size": 4}}]}).encode() + b"\0" * 4, None,
     "4 bytes of binary data for FP32 \\[2\\]"),
    (b'{"inputs": []}', 99, f"{HEADER_LENGTH} 99 does not fit"),
])
def test_malformed_requests_say_what_is_wrong(body, header_length, message):
    if header_length is None and b"binary_data_size" in body:
        header_length = body.index(b"}]}") + 3
    with pytest.raises(V2Error, match=message) as info:
        parse_infer_request(body, header_length)
    assert info.value.status == 400


def test_trailing_binary_bytes_are_refused():
    body = json.dumps({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [2],
                                   "parameters": {"binary_data_size": 2}}]}).encode()
    with pytest.raises(V2Error, match="2 bytes of binary data follow the last input"):
        parse_infer_request(body + b"\1\2\3\4", len(body))


def test_contract_and_fingerprint(bundle3):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    assert served_tiers(manifest) == [0, 1, 2] and model_name(1) == "splitc_tier1" and model_name(2, 3) == \
        "splitc_v3_tier2"
    middle = tier_contract(manifest, 1)
    assert [s.name for s in middle.inputs] == [t["name"] for t in manifest["transfers"][0]["tensors"]]
    assert [s.name for s in middle.forward_outputs] == [t["name"] for t in manifest["transfers"][1]["tensors"]]
    assert middle.next_tier == 2 and middle.batchable()
    names = [s.name for s in middle.outputs()]
    assert names[-4:] == ["splitc_next", "splitc_exit", "splitc_tier", "splitc_server_us"]
    whole = tier_contract(manifest, 1, last_tier=2)
    assert not whole.forward_outputs and whole.next_tier is None and whole.fingerprint == middle.fingerprint
    changed = copy.deepcopy(manifest)
    changed["transfers"][1]["tensors"][0]["encoding"] = {"kind": "float16", "in_graph": True}
    assert fingerprint(changed, 1) != fingerprint(manifest, 1)  # a later link matters for tier 1's answers
    assert fingerprint(changed, 2) != fingerprint(manifest, 2)
    changed = copy.deepcopy(manifest)
    changed["verification"] = {"passed": False}  # what the answers do not depend on
    assert fingerprint(changed, 1) == fingerprint(manifest, 1)
