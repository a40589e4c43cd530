"""AWS-Lambda-style handlers for faas tiers.

For each faas tier with a partition, ``<tier>/faas/handler.py`` is a Lambda handler
(``handler.handler``) that runs :class:`splitc.runtime.server.TierService` -- the very code
``splitc serve`` runs, ONNX Runtime inside -- on API Gateway / function-URL events carrying KServe
v2 REST requests (the protocol every splitc tier speaks):

    {"rawPath": "/v2/models/splitc_tier2/infer", "requestContext": {"http": {"method": "POST"}},
     "headers": {"inference-header-content-length": "123"}, "isBase64Encoded": true,
     "body": "<base64 of the v2 request: JSON header + binary tensors>"}

and answers ``{"statusCode", "headers", "isBase64Encoded", "body"}`` (the v2 answer in base64, with
``Inference-Header-Content-Length`` when it carries binary tensors, or ``{"error": ...}``). Every
other v2 endpoint (health, metadata, config) works too. The service is built once per container
(cold start) and reused by warm invocations. Packaging: the bundle folder (manifest.json + this
tier's folder), plus ``pip install onnxruntime numpy`` and the ``splitc`` package (only
``splitc.runtime`` and ``splitc.errors`` are imported; no torch). ``SPLITC_BUNDLE`` overrides where
the bundle is, ``SPLITC_NEXT_URL`` sends the outgoing transfer to the next tier's server instead of
running it in the function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["emit_faas", "HANDLER_SOURCE"]

HANDLER_SOURCE = '''"""AWS Lambda handler for tier {tier!r} of a splitc bundle (written by splitc).

Event: API Gateway HTTP API / Lambda function URL (payload 2.0) or REST API (1.0) style, carrying a
KServe v2 REST request (POST /v2/models/<model>/infer, GET /v2/health/ready, ...).
"""

import base64
import binascii
import json
import os
from pathlib import Path

from splitc.runtime.server import TierService

TIER = {tier!r}
BUNDLE = os.environ.get("SPLITC_BUNDLE", str(Path(__file__).resolve().parents[2]))
_service = None  # built on the first (cold) invocation, reused while the container is warm


def _get_service():
    global _service
    if _service is None:
        _service = TierService(BUNDLE, TIER, next_url=os.environ.get("SPLITC_NEXT_URL") or None,
                               max_inflight=1, queue_timeout_s=1.0)
    return _service


def _answer(status, body, content_type, headers=None):
    return {{"statusCode": status, "headers": {{"Content-Type": content_type, **(headers or {{}})}},
            "isBase64Encoded": True, "body": base64.b64encode(body).decode("ascii")}}


def handler(event, context=None):
    service = _get_service()
    http = (event.get("requestContext") or {{}}).get("http") or {{}}
    method = (http.get("method") or event.get("httpMethod") or "POST").upper()
    path = event.get("rawPath") or event.get("path") or "/"
    raw = event.get("body") or ""
    try:
        body = base64.b64decode(raw, validate=True) if event.get("isBase64Encoded") else raw.encode("latin-1")
    except (binascii.Error, ValueError, UnicodeEncodeError):
        error = {{"error": "the event body is not valid base64 / latin-1 text"}}
        return _answer(400, json.dumps(error).encode(), "application/json")
    reply = service.handle_http(method, path, event.get("headers") or {{}}, body)
    return _answer(reply.status, reply.body, reply.content_type, reply.headers)
'''


def emit_faas(stage: Path, manifest: dict[str, Any], tier: dict[str, Any]) -> dict[str, Any] | None:
    """Write the handler of one faas tier; returns its artifact record (None: no partition)."""
    if not any(p["tier_index"] == tier["index"] for p in manifest["partitions"]):
        return None
    folder = stage / tier["name"] / "faas"
    folder.mkdir(parents=True, exist_ok=True)
    handler = folder / "handler.py"
    handler.write_text(HANDLER_SOURCE.format(tier=tier["name"]), encoding="utf-8")
    requirements = folder / "requirements.txt"
    requirements.write_text("onnxruntime>=1.18\nnumpy>=1.24\nsplitc\n", encoding="utf-8")
    return {"kind": "faas", "tier_index": tier["index"], "path": f"{tier['name']}/faas",
            "files": sorted(str(f.relative_to(stage)) for f in (handler, requirements)),
            "entry_point": "handler.handler", "notes": []}
