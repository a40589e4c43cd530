"""The Lambda-style handler of a faas tier, invoked locally with API-Gateway-style events carrying KServe v2 requests."""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil

import numpy as np
import pytest

from splitc.runtime.runner import BundleRunner
from splitc.runtime.tier_model import wire_arrays
from splitc.runtime.v2 import tier_contract

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] builds the v2 request")


def _load_handler(path):
    spec = importlib.util.spec_from_file_location("splitc_faas_handler_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _event(body: bytes, method="POST", path="/v2/models/splitc_tier2/infer", headers=None) -> dict:
    return {"rawPath": path, "requestContext": {"http": {"method": method}}, "isBase64Encoded": True,
            "headers": headers or {}, "body": base64.b64encode(body).decode()}


def test_handler_answers_like_the_runner(bundle3, tmp_path):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    record = next(a for a in manifest["artifacts"] if a["kind"] == "faas")
    assert record["entry_point"] == "handler.handler" and manifest["tiers"][record["tier_index"]]["target"]["kind"] == "faas"
    package = tmp_path / "lambda-package"  # what gets deployed: the manifest and this tier's folder only
    package.mkdir()
    shutil.copy(bundle3 / "manifest.json", package)
    shutil.copytree(bundle3 / "aws-lambda", package / "aws-lambda")
    handler = _load_handler(package / record["path"] / "handler.py").handler
    runner = BundleRunner(bundle3)
    x = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    held = runner.run_tier(0, x)[0]
    _, _, payloads = runner.tier_step(1, held)  # what tier 1 sends to the function on link 1
    inputs = []
    for name, value in wire_arrays(payloads, tier_contract(manifest, 2).inputs).items():
        tensor = tritonclient_http.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    body, length = tritonclient_http.InferenceServerClient.generate_request_body(inputs, request_id="r7")
    answer = handler(_event(body, headers={"inference-header-content-length": str(length)}), None)
    assert answer["statusCode"] == 200 and answer["isBase64Encoded"]
    header_length = int(answer["headers"]["Inference-Header-Content-Length"])
    result = tritonclient_http.InferResult.from_response_body(base64.b64decode(answer["body"]),
                                                              header_length=header_length)
    assert result.get_response()["id"] == "r7" and int(result.as_numpy("splitc_tier")[0]) == 2
    np.testing.assert_array_equal(result.as_numpy("output_0"), runner.run(x)["output_0"])

    ready = handler({"rawPath": "/v2/health/ready", "requestContext": {"http": {"method": "GET"}}}, None)
    assert ready["statusCode"] == 200
    meta = json.loads(base64.b64decode(handler({"rawPath": "/v2/models/splitc_tier2",
                                                "requestContext": {"http": {"method": "GET"}}}, None)["body"]))
    assert meta["name"] == "splitc_tier2"
    bad = handler(_event(b"garbage" * 20), None)
    assert bad["statusCode"] == 400 and "not JSON" in json.loads(base64.b64decode(bad["body"]))["error"]
    assert handler(_event(b"", path="/other"), None)["statusCode"] == 404
    assert handler({"body": "%%%", "isBase64Encoded": True}, None)["statusCode"] == 400
