"""The Lambda-style handler of a faas tier, invoked locally with API-Gateway-style events."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil

import numpy as np

from splitc.runtime import wire
from splitc.runtime.runner import BundleRunner


def _load_handler(path):
    spec = importlib.util.spec_from_file_location("splitc_faas_handler_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _event(body: bytes, method="POST", path="/v1/infer") -> dict:
    return {"rawPath": path, "requestContext": {"http": {"method": method}}, "isBase64Encoded": True,
            "body": base64.b64encode(body).decode()}


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
    held, _, payloads = runner.tier_step(1, held)  # what tier 1 sends to the function on link 1
    specs = manifest["transfers"][1]["tensors"]
    message = wire.Message(wire.KIND_TRANSFER, wire.bundle_hash(bundle3), 1, os.urandom(16),
                           [wire.Tensor(s["name"], s["dtype"], tuple(s["shape"]), payloads[s["name"]]) for s in specs])
    answer = handler(_event(wire.serialize(message)), None)
    assert answer["statusCode"] == 200 and answer["isBase64Encoded"]
    out = wire.parse(base64.b64decode(answer["body"]))
    assert out.kind == wire.KIND_OUTPUTS and out.request_id == message.request_id and out.index == 2
    got = np.frombuffer(out.tensors[0].payload, np.float32).reshape(out.tensors[0].shape)
    np.testing.assert_array_equal(got, runner.run(x)["output_0"])

    health = handler({"rawPath": "/health", "requestContext": {"http": {"method": "GET"}}}, None)
    assert json.loads(base64.b64decode(health["body"]))["tier"] == "aws-lambda"
    bad = handler(_event(b"garbage" * 20), None)
    assert bad["statusCode"] == 400 and json.loads(base64.b64decode(bad["body"]))["error"] == "bad_magic"
    assert handler(_event(b"", path="/other"), None)["statusCode"] == 404
    assert handler({"body": "%%%", "isBase64Encoded": True}, None)["statusCode"] == 400
