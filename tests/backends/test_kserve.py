"""The KServe InferenceService of a server tier: built with the kserve SDK, valid against its models (checked in a
process that imports the whole kserve package, which cannot share a process with tritonclient.grpc)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# find_spec, not importorskip: importing the kserve package here would clash with tritonclient.grpc in this process
if importlib.util.find_spec("kserve") is None:
    pytest.skip("the kserve SDK builds and validates the InferenceService (pip install kserve)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]

_CHECK = r"""
import json, sys
import yaml
import kserve                                   # the whole SDK, model server included
from splitc.backends.kserve import validate

doc = yaml.safe_load(open(sys.argv[1]).read())
obj = validate(doc)
assert isinstance(obj, kserve.V1beta1InferenceService)
problems = {}
for what, change in (("typo", lambda d: d["spec"]["predictor"]["model"].__setitem__(
                         "storageURI", d["spec"]["predictor"]["model"].pop("storageUri"))),
                     ("wrong type", lambda d: d["spec"]["predictor"].__setitem__("minReplicas", "one")),
                     ("kind", lambda d: d.__setitem__("kind", "Deployment"))):
    bad = json.loads(json.dumps(doc))
    change(bad)
    try:
        validate(bad)
        problems[what] = None
    except ValueError as exc:
        problems[what] = str(exc)
print(json.dumps({"name": obj.metadata.name, "runtime": obj.spec.predictor.model.runtime, "problems": problems}))
"""


def test_inference_service_validates_against_the_sdk(bundle3):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    [record] = [a for a in manifest["artifacts"] if a["kind"] == "triton"]
    path = bundle3 / record["kserve"] / "inferenceservice.yaml"
    assert str(path.relative_to(bundle3)) in record["files"]
    doc = yaml.safe_load(path.read_text())
    model = doc["spec"]["predictor"]["model"]
    assert doc["kind"] == "InferenceService" and doc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "pvc://splitc-bundle/edge-cpu/triton"  # the tier's repository (NVIDIA's container)
    target = manifest["tiers"][1]["target"]
    limit_mib = int(model["resources"]["limits"]["memory"].removesuffix("Mi"))
    assert limit_mib * 2**20 >= target["memory_bytes"] * target["usable_memory_fraction"] - 64 * 2**20
    assert "nvidia.com/gpu" not in model["resources"]["limits"]  # an edge CPU tier
    assert doc["metadata"]["annotations"]["splitc.io/model"] == "splitc_tier1"
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", _CHECK, str(path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["runtime"] == "kserve-tritonserver" and result["name"].startswith("splitc-")
    assert "unknown field(s) ['storageURI']" in result["problems"]["typo"]
    assert "'one' is not a int" in result["problems"]["wrong type"]
    assert "kind must be" in result["problems"]["kind"]


def test_a_gpu_tier_asks_for_a_gpu():
    from splitc.backends.kserve import inference_service

    tier = {"index": 1, "name": "cloud-gpu-t4", "target": {"backend": "tensorrt", "memory_bytes": 16 * 2**30,
                                                          "usable_memory_fraction": 0.9}}
    x = {"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]}
    manifest = {"model": {"source": {"path": "/x/resnet50.pt"}, "inputs": [x],
                          "outputs": [{"name": "output_0", "tensor": "fc", "dtype": "float32", "shape": [1, 5]}]},
                "tiers": [{"index": 0, "name": "jetson"}, tier], "exits": [],
                "partitions": [{"index": 0, "tier_index": 1, "sha256": "-", "inputs": [x], "outputs": []}],
                "transfers": [{"link": 0, "from_tier": 0, "to_tier": 1, "tensors": [x]}]}
    doc = inference_service(manifest, tier, weights_bytes=100 * 2**20, max_batch=8)
    resources = doc["spec"]["predictor"]["model"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1" and resources["requests"]["nvidia.com/gpu"] == "1"
    assert resources["requests"]["memory"] == "896Mi"  # 64 Mi server + 2 x 256 Mi models + 3 x 100 Mi weights
    assert doc["metadata"]["name"] == "splitc-resnet50-cloud-gpu-t4" and doc["spec"]["predictor"]["scaleTarget"] == 8
