"""KServe ``InferenceService`` per server tier: Triton replicas of the tier's repository, scaled by KServe.

Scale-out is KServe's and Triton's job, not splitc's: ``<tier>/kserve/inferenceservice.yaml`` runs
the tier's Triton repository (``<tier>/triton/``, the design NVIDIA's container serves) with KServe's
Triton runtime and lets Knative add replicas when requests in flight per replica exceed the target.
It is built with the ``kserve`` SDK's own models (``V1beta1InferenceService`` and the Kubernetes
types it embeds) and checked by parsing it back into them (:func:`validate`). Without the SDK the
file is not written and a note says so.

* ``storageUri``: ``pvc://splitc-bundle/<tier>/triton``, i.e. a PersistentVolumeClaim named
  ``splitc-bundle`` holding the bundle folder; with another store (``s3://``, ``gs://``) change it.
* resources: a GPU (``nvidia.com/gpu: 1``) for tiers whose target runs TensorRT or CUDA; memory
  requested for the partitions' weights (3x, for ONNX Runtime's copies and arena) plus the server and
  one python stub per model; the memory limit is the target's usable memory. splitc targets carry no
  core count, so CPU is requested at one core and not limited.
* autoscaling: 1 to 4 replicas, Knative's ``concurrency`` metric with the tier's dynamic-batch size
  (or 4) as the target per replica.

kserve's package ``__init__`` starts its model server machinery, which registers the protobuf package
``inference`` that ``tritonclient.grpc`` registers too (the two cannot share a process). Only
``kserve.models``, ``kserve.api_client`` and ``kserve.constants`` are needed here, so they are loaded
without running that ``__init__`` (a namespace stand-in for the package, only if kserve is not
already imported).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import sys
import types
from pathlib import Path
from typing import Any, Mapping

from splitc.runtime.v2 import fingerprint, model_name

__all__ = ["inference_service", "validate", "emit_kserve", "kserve_sdk", "STORAGE_URI"]

log = logging.getLogger("splitc")

STORAGE_URI = "pvc://splitc-bundle/{tier}/triton"
_MIB = 2**20


def kserve_sdk() -> types.SimpleNamespace | None:
    """``models``, ``ApiClient`` and ``constants`` of the kserve SDK, or None when it is not installed."""
    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        if spec is None or not spec.submodule_search_locations:
            return None
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kserve"] = package
    try:  # import_module: the real package rebinds the attribute kserve.constants to its inner module
        api_client = importlib.import_module("kserve.api_client")
        constants = importlib.import_module("kserve.constants.constants")
        models = importlib.import_module("kserve.models")
    except ImportError as exc:
        log.warning("[kserve] the kserve SDK is installed but does not import (%s)", exc)
        return None
    return types.SimpleNamespace(models=models, ApiClient=api_client.ApiClient, constants=constants)


def _quantity(nbytes: float) -> str:
    return f"{max(64, int(math.ceil(nbytes / _MIB / 64)) * 64)}Mi"


def _resources(manifest: Mapping[str, Any], tier: Mapping[str, Any], weights_bytes: int) -> dict[str, dict[str, str]]:
    target = tier["target"]
    models = 1 + sum(p["tier_index"] == tier["index"] for p in manifest["partitions"])  # BLS tier step + partitions
    request = 64 * _MIB + models * 256 * _MIB + 3 * weights_bytes
    limit = max(request, target.get("memory_bytes", 0) * target.get("usable_memory_fraction", 0.7))
    requests = {"cpu": "1", "memory": _quantity(request)}
    limits = {"memory": _quantity(limit)}
    if target.get("backend") in ("tensorrt", "torch"):
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = "1"
    return {"requests": requests, "limits": limits}


def _name(manifest: Mapping[str, Any], tier: Mapping[str, Any]) -> str:
    stem = Path(str(manifest.get("model", {}).get("source", {}).get("path", "model"))).stem
    text = re.sub(r"[^a-z0-9-]+", "-", f"splitc-{stem}-{tier['name']}".lower()).strip("-")
    return text[:63].rstrip("-")


def inference_service(manifest: Mapping[str, Any], tier: Mapping[str, Any], weights_bytes: int,
                      max_batch: int = 0, storage_uri: str | None = None) -> dict[str, Any]:
    """The InferenceService of one server tier as a dict (built with the SDK's models, then serialised).

    Raises:
        RuntimeError: the kserve SDK is not installed.
    """
    sdk = kserve_sdk()
    if sdk is None:
        raise RuntimeError("the kserve SDK is not installed (pip install kserve)")
    from kubernetes.client import V1ObjectMeta, V1ResourceRequirements

    m = sdk.models
    resources = _resources(manifest, tier, weights_bytes)
    isvc = m.V1beta1InferenceService(
        api_version=sdk.constants.KSERVE_V1BETA1,
        kind=sdk.constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=_name(manifest, tier), labels={"app.kubernetes.io/managed-by": "splitc"},
            annotations={"splitc.io/model": model_name(tier["index"]),
                         "splitc.io/tier-sha256": fingerprint(manifest, tier["index"]),
                         "serving.kserve.io/deploymentMode": "Serverless"}),
        spec=m.V1beta1InferenceServiceSpec(predictor=m.V1beta1PredictorSpec(
            min_replicas=1, max_replicas=4, scale_metric="concurrency", scale_target=max(max_batch, 4),
            model=m.V1beta1ModelSpec(
                name="kserve-container",  # without it the SDK writes name: ''
                model_format=m.V1beta1ModelFormat(name="triton", version="2"),
                runtime="kserve-tritonserver", protocol_version="v2",
                storage_uri=storage_uri or STORAGE_URI.format(tier=tier["name"]),
                args=["--exit-timeout-secs=10"],
                resources=V1ResourceRequirements(requests=resources["requests"], limits=resources["limits"])))))
    return sdk.ApiClient().sanitize_for_serialization(isvc)


def _from_dict(data: Any, klass: str, sdk: types.SimpleNamespace) -> Any:
    """The SDK object for ``data`` (kserve's ``ApiClient`` deserializer cannot resolve the Kubernetes types it
    embeds, "module 'kserve.models' has no attribute 'V1ObjectMeta'", and drops unknown keys silently)."""
    import kubernetes.client.models as k8s

    if data is None:
        return None
    listed = re.fullmatch(r"[lL]ist\[(.*)\]", klass)
    if listed:
        if not isinstance(data, list):
            raise ValueError(f"expected a list for {klass}, got {data!r}")
        return [_from_dict(d, listed.group(1), sdk) for d in data]
    mapped = re.fullmatch(r"dict\(str, (.*)\)|Dict\[str, (.*)\]", klass)
    if mapped:
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping for {klass}, got {data!r}")
        return {k: _from_dict(v, mapped.group(1) or mapped.group(2), sdk) for k, v in data.items()}
    natives = {"str": str, "int": int, "float": (int, float), "bool": bool, "object": object}
    if klass in natives:
        want = natives[klass]
        if want is not object and (not isinstance(data, want) or (klass == "int" and isinstance(data, bool))):
            raise ValueError(f"{data!r} is not a {klass}")
        return data
    if klass in ("datetime", "date"):
        return data
    cls = getattr(sdk.models, klass, None) or getattr(k8s, klass, None)
    if cls is None:
        raise ValueError(f"unknown type {klass}")
    if not isinstance(data, dict):
        raise ValueError(f"{klass}: expected an object, got {data!r}")
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json))
    if unknown:
        raise ValueError(f"{klass}: unknown field(s) {unknown}")
    return cls(**{by_json[k]: _from_dict(v, cls.openapi_types[by_json[k]], sdk) for k, v in data.items()})


def validate(doc: Mapping[str, Any]) -> Any:
    """Parse ``doc`` into the SDK's models (unknown keys, wrong types, missing required fields raise
    ``ValueError``), check that serialising it back loses nothing, and return the object."""
    sdk = kserve_sdk()
    if sdk is None:
        raise RuntimeError("the kserve SDK is not installed (pip install kserve)")
    for key, value in (("apiVersion", sdk.constants.KSERVE_V1BETA1), ("kind", sdk.constants.KSERVE_KIND_INFERENCESERVICE)):
        if doc.get(key) != value:
            raise ValueError(f"{key} must be {value!r}, got {doc.get(key)!r}")
    obj = _from_dict(dict(doc), "V1beta1InferenceService", sdk)
    back = sdk.ApiClient().sanitize_for_serialization(obj)
    if back != doc:
        raise ValueError(f"serialising the parsed document changes it: {json.dumps(back, sort_keys=True)[:300]}")
    model = (doc.get("spec", {}).get("predictor", {}).get("model") or {})
    if not model.get("modelFormat", {}).get("name") or not model.get("storageUri"):
        raise ValueError("spec.predictor.model needs modelFormat.name and storageUri")
    return obj


def emit_kserve(stage: Path, manifest: Mapping[str, Any], tier: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``<tier>/kserve/inferenceservice.yaml`` (validated); returns ``{"path", "files", "notes"}``."""
    import yaml

    folder = stage / tier["name"] / "kserve"
    weights = sum((stage / p["file"]).stat().st_size for p in manifest["partitions"] if p["tier_index"] == tier["index"])
    batching = stage / tier["name"] / "triton" / "batching.json"
    max_batch = json.loads(batching.read_text())["max_batch_size"] if batching.is_file() else 0
    try:
        doc = inference_service(manifest, tier, weights, max_batch)
    except RuntimeError as exc:
        note = f"no KServe InferenceService: {exc}"
        log.warning("[kserve] %s", note)
        return {"path": None, "files": [], "notes": [note]}
    validate(doc)
    text = yaml.safe_dump(doc, sort_keys=False)
    validate(yaml.safe_load(text))  # what the user applies is the YAML text
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "inferenceservice.yaml"
    path.write_text(f"# KServe InferenceService for tier '{tier['name']}' (written by splitc): Triton serving\n"
                    f"# {tier['name']}/triton/ from a PVC named splitc-bundle holding the bundle folder.\n"
                    f"# kubectl apply -f {tier['name']}/kserve/inferenceservice.yaml\n" + text, encoding="utf-8")
    return {"path": f"{tier['name']}/kserve", "files": [str(path.relative_to(stage))], "notes": []}
