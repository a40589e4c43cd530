"""AWS-Lambda-style handlers for faas tiers.

For each faas tier with a partition, ``<tier>/faas/handler.py`` is a Lambda handler
(``handler.handler``) that runs :class:`splitc.runtime.server.TierService` -- the very
code ``splitc serve`` runs, ONNX Runtime inside -- on API Gateway / function-URL events:

    {"rawPath": "/v1/infer", "requestContext": {"http": {"method": "POST"}},
     "isBase64Encoded": true, "body": "<base64 of one wire message>"}

and answers ``{"statusCode", "headers", "isBase64Encoded", "body"}`` (the wire answer in
base64, or the JSON error). ``GET /health`` works too. The service is built once per
container (cold start) and reused by warm invocations. Packaging: the bundle folder
(manifest.json + this tier's folder), plus ``pip install onnxruntime numpy`` and the
``splitc`` package (only ``splitc.runtime`` and ``splitc.errors`` are imported;
no torch). ``SPLITC_BUNDLE`` overrides where the bundle is, ``SPLITC_NEXT_URL`` sends the
outgoing transfer to the next tier instead of running it in the function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["emit_faas", "HANDLER_SOURCE"]

HANDLER_SOURCE = '''"""AWS Lambda handler for tier {tier!r} of a splitc bundle (written by splitc).

Event: API Gateway HTTP API / Lambda function URL (payload 2.0) or REST API (1.0) style.
"""

import base64
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


def _answer(status, body, content_type):
    return {{"statusCode": status, "headers": {{"Content-Type": content_type}}, "isBase64Encoded": True,
            "body": base64.b64encode(body).decode("ascii")}}


def handler(event, context=None):
    service = _get_service()
    http = (event.get("requestContext") or {{}}).get("http") or {{}}
    method = (http.get("method") or event.get("httpMethod") or "POST").upper()
    path = event.get("rawPath") or event.get("path") or "/v1/infer"
    if method == "GET" and path == "/health":
        return _answer(200, json.dumps(service.health()).encode(), "application/json")
    if method != "POST" or path != "/v1/infer":
        error = {{"error": "not_found", "message": f"{{method}} {{path}}: use POST /v1/infer or GET /health"}}
        return _answer(404, json.dumps(error).encode(), "application/json")
    raw = event.get("body") or ""
    try:
        body = base64.b64decode(raw, validate=True) if event.get("isBase64Encoded") else raw.encode("latin-1")
    except (ValueError, UnicodeEncodeError):
        error = {{"error": "bad_body", "message": "body is not valid base64 / latin-1 text"}}
        return _answer(400, json.dumps(error).encode(), "application/json")
    reply = service.handle(body)
    return _answer(reply.status, reply.body, reply.content_type)
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
