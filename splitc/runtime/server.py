"""``splitc serve BUNDLE --tier NAME``: one tier of a bundle over KServe v2, HTTP and gRPC.

The protocol is the Open Inference Protocol (KServe v2) that Triton speaks, so ``splitc run
--remote`` and any v2 client (``tritonclient``, ``curl``) talk to this server and to Triton alike.
The models are :class:`~splitc.runtime.tier_model.TierModel` (``splitc_tier<T>``, and
``splitc_v<i>_tier<T>`` for each bandwidth variant of the bundle whose plan sends something to this
tier); their contract is :mod:`splitc.runtime.v2`.

HTTP (``--port``; the binary tensor extension, ``Inference-Header-Content-Length``, carries
uint8/float16 tensors byte-exact; JSON ``data`` works too)::

    GET  /v2/health/live | /v2/health/ready | /v2
    GET  /v2/models/<m>[/versions/1]            metadata        GET .../ready     200 when loaded
    GET  /v2/models/<m>[/versions/1]/config     Triton-style model configuration (splitc_tier_sha256)
    GET  /v2/models/<m>/stats                   answers by kind, batching
    POST /v2/models/<m>[/versions/1]/infer      inference
    POST /v2/repository/index                   the models (Triton's repository extension)

gRPC (``--grpc-port``, default ``--port`` + 1 as Triton): ``inference.GRPCInferenceService`` with the
service definitions ``tritonclient`` ships (``service_pb2_grpc``), so no protocol code is written
here for gRPC; the HTTP side is written on :mod:`http.server` because kserve's REST server
(FastAPI) registers the same protobuf package as ``tritonclient.grpc`` and cannot share a process
with our gRPC side or with a client (see :mod:`splitc.runtime.v2`).

Chains: without ``--next`` the tiers after this one run in this process too (one answer per
request); with ``--next URL`` this tier forwards the next link's tensors to that server (v2, HTTP
or gRPC) and relays its answer; with ``--single-tier`` it answers the next link's tensors and the
client calls the next tier itself, as with Triton.

Errors: ``{"error": "..."}`` with 400 for anything the client sent wrong (malformed JSON or binary
data, wrong tensor names/dtypes/shapes, unknown datatype), 404 unknown model or path, 405 method,
411 no length, 413 too large, 502/504 when ``--next`` failed or timed out, 503 when saturated
(``--max-inflight``), 500 for a bug (logged with its traceback); gRPC maps them to
INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE/DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL. No request
stops the server.

Example:
    >>> server = start_server("bundle/", tier="cloud-gpu-t4", port=0)   # doctest: +SKIP
    >>> server.url, server.grpc_url                                     # doctest: +SKIP
    ('http://127.0.0.1:41234', 'grpc://127.0.0.1:41235')
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from splitc.errors import SplitcError
from splitc.runtime.runner import BundleRunner, load_manifest
from splitc.runtime.tier_model import TierModel
from splitc.runtime.v2 import (HEADER_LENGTH, V2_DATATYPES, V2Error, infer_response_body, model_name,
                               parse_infer_request, served_tiers)

__all__ = ["TierService", "Reply", "RunningServer", "start_server", "serve", "resolve_tier", "DEFAULT_MAX_BODY_BYTES"]

log = logging.getLogger("splitc")

DEFAULT_MAX_BODY_BYTES = 256 * 2**20  # hard cap; the per-model limit below is usually far smaller
_HEADROOM_BYTES = 64 * 1024           # JSON header allowance
_JSON_FACTOR = 24                     # a value as JSON text takes up to ~24 bytes
_MODEL_PATH = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/[a-z]+)?$")


@dataclass
class Reply:
    """What to answer over HTTP: status, body bytes, content type, extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, doc: Any) -> Reply:
    return Reply(status, (json.dumps(doc) + "\n").encode("utf-8"))


def _error(status: int, message: str) -> Reply:
    return _json(status, {"error": message})


def resolve_tier(manifest: Mapping[str, Any], tier: str | int) -> int:
    """Tier index for a tier folder name, requested name/alias, target name, or index."""
    tiers = manifest["tiers"]
    text = str(tier).strip()
    if text.isdigit() and int(text) < len(tiers):
        return int(text)
    for t in tiers:
        names = {t["name"].lower(), t["requested"].lower(), t["target"]["name"].lower(),
                 *(a.lower() for a in t["target"].get("aliases", []))}
        if text.lower() in names:
            return t["index"]
    names = ", ".join(f"{t['index']}={t['name']}" for t in tiers)
    raise SplitcError(f"tier '{tier}' is not in this bundle", f"pass one of: {names}")


def _runs_something(manifest: Mapping[str, Any], tier_index: int) -> bool:
    return any(p["tier_index"] >= tier_index for p in manifest["partitions"])


class TierService:
    """The models of one tier (the bundle's and its variants'), independent of the transport.

    Args:
        bundle: the bundle folder.
        tier: tier name (folder, requested name, target name or alias) or index.
        next_url: v2 URL of the next tier's server (``http://``/``grpc://``); the next link's tensors go
            there and its answer is relayed. None: later tiers run here (or see ``single_tier``).
        single_tier: run this tier only and answer the next link's tensors (the client calls onwards).
        max_inflight: requests computing at once; more wait ``queue_timeout_s`` then get 503.
        forward_timeout_s: timeout of the call to ``next_url``.
        threads: ONNX Runtime intra-op threads per session (0 = its default).
        runner: an existing runner of the bundle for its own model (tests); built when None.
        variants: also serve the bundle's bandwidth variants (``variants/v<i>/``).
    """

    def __init__(self, bundle: str | Path, tier: str | int, next_url: str | None = None, single_tier: bool = False,
                 max_inflight: int = 4, queue_timeout_s: float = 10.0, forward_timeout_s: float = 30.0,
                 threads: int = 0, runner: BundleRunner | None = None, variants: bool = True) -> None:
        self.bundle = Path(bundle)
        if not (self.bundle / "manifest.json").is_file():
            raise SplitcError(f"'{bundle}' is not a splitc bundle (no manifest.json)", "pass the folder given to -o")
        self.manifest = runner.manifest if runner else load_manifest(self.bundle)
        self.tier_index = resolve_tier(self.manifest, tier)
        self.tier_name = self.manifest["tiers"][self.tier_index]["name"]
        last = len(self.manifest["tiers"]) - 1
        if next_url and self.tier_index >= last:
            raise SplitcError(f"--next given for tier '{self.tier_name}', the last tier of the bundle", "drop --next")
        if self.tier_index not in served_tiers(self.manifest):
            raise SplitcError(f"tier '{self.tier_name}' receives nothing in this bundle (no transfer on link "
                              f"{self.tier_index - 1}: the plan finishes before it)", "serve a tier that runs a partition")
        if not _runs_something(self.manifest, self.tier_index):
            raise SplitcError(f"tier '{self.tier_name}' and the tiers after it run no partition in this bundle",
                              "serve a tier that runs a partition")
        self.next_url = next_url
        self._next = None
        if next_url:
            from splitc.runtime.client import Transport

            self._next = Transport(next_url, forward_timeout_s)
        run_to = self.tier_index if (next_url or single_tier) else last
        self.models: dict[str, TierModel] = {}
        own = TierModel(self.bundle, self.tier_index, last_tier=run_to, threads=threads, runner=runner)
        self.models[own.name] = own
        if variants:
            self._add_variants(run_to if run_to == self.tier_index else None, threads)
        self.queue_timeout_s, self.max_inflight = queue_timeout_s, max_inflight
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._stats_lock = threading.Lock()
        self.stats = {"served": 0, "rejected": 0, "failed": 0, "in_flight": 0}
        self.max_body_bytes = {name: min(DEFAULT_MAX_BODY_BYTES, _JSON_FACTOR * sum(
            int(np.prod(s.shape)) * np.dtype(np.bool_ if s.dtype == "bool" else s.dtype).itemsize
            for s in m.contract.inputs) + _HEADROOM_BYTES) for name, m in self.models.items()}

    def _add_variants(self, single: int | None, threads: int) -> None:
        for i, entry in enumerate(self.manifest.get("plan", {}).get("variants", [])):
            folder = entry.get("bundle")
            if not folder or folder in (".", ""):
                continue
            path = self.bundle / folder
            variant_manifest = load_manifest(path)
            if self.tier_index not in served_tiers(variant_manifest) or not _runs_something(variant_manifest,
                                                                                             self.tier_index):
                continue  # this variant's plan runs nothing here (the client runs it without this server)
            last = len(variant_manifest["tiers"]) - 1 if single is None else single
            model = TierModel(path, self.tier_index, last_tier=last, threads=threads, variant=i)
            self.models[model.name] = model

    # -- requests (any transport) ------------------------------------------------------------------
    def model(self, name: str) -> TierModel:
        """The model ``name``; V2Error 404 naming the served ones otherwise."""
        model = self.models.get(name)
        if model is None:
            raise V2Error(404, f"unknown model '{name}'; this server serves {sorted(self.models)}")
        return model

    def infer(self, name: str, inputs: Mapping[str, np.ndarray], request_id: str = "") -> dict[str, np.ndarray]:
        """Answer one request to model ``name`` (forwarding to ``--next`` when the answer continues there).

        Raises:
            V2Error: the status and message to answer.
        """
        start = time.perf_counter()
        try:
            model = self.model(name)
            if not self._slots.acquire(timeout=self.queue_timeout_s):
                raise V2Error(503, f"tier '{self.tier_name}' is saturated ({self.max_inflight} requests in flight for "
                                   f"{self.queue_timeout_s:g} s); retry later")
            try:
                self._count("in_flight", +1)
                [answer] = model.infer([inputs])
            finally:
                self._count("in_flight", -1)
                self._slots.release()
            if isinstance(answer, V2Error):
                raise answer
            if self._next is not None and int(answer["splitc_next"][0]) >= 0:
                answer = self._forward(model, answer, request_id)
            answer["splitc_server_us"] = np.array([int((time.perf_counter() - start) * 1e6)], np.int64)
        except V2Error as exc:
            self._count("rejected" if exc.status < 500 or exc.status == 503 else "failed", +1)
            raise
        self._count("served", +1)
        return answer

    def _forward(self, model: TierModel, answer: Mapping[str, np.ndarray], request_id: str) -> dict[str, np.ndarray]:
        from splitc.runtime.client import RemoteError

        nxt = int(answer["splitc_next"][0])
        variant = model.variant
        tensors = {s.name: answer[s.name] for s in model.contract.forward_outputs}
        try:
            outputs, _ = self._next.infer(model_name(nxt, variant), tensors, request_id)
        except RemoteError as exc:
            status = 504 if exc.code == "timeout" else 502
            raise V2Error(status, f"next tier {self.next_url} failed: {exc}") from None
        missing = [n for n in ("splitc_next", "splitc_exit", "splitc_tier") if n not in outputs]
        if missing:
            raise V2Error(502, f"next tier {self.next_url} answered without {missing}")
        return dict(outputs)

    def _count(self, key: str, delta: int) -> None:
        with self._stats_lock:
            self.stats[key] += delta

    # -- documents ---------------------------------------------------------------------------------
    def metadata(self, name: str) -> dict[str, Any]:
        """The v2 model metadata document."""
        contract = self.model(name).contract
        return {"name": name, "versions": ["1"], "platform": "splitc",
                "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in contract.inputs],
                "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                            for s in contract.outputs()]}

    def config(self, name: str) -> dict[str, Any]:
        """Triton's model-configuration document (JSON form), with the splitc parameters."""
        model = self.model(name)
        contract = model.contract

        def block(specs):
            return [{"name": s.name, "data_type": f"TYPE_{s.datatype}",
                     "dims": [str(d) for d in s.shape]} for s in specs]

        return {"name": name, "platform": "splitc", "max_batch_size": 0, "input": block(contract.inputs),
                "output": block(contract.outputs()),
                "parameters": {"splitc_tier": {"string_value": str(model.tier_index)},
                               "splitc_tier_sha256": {"string_value": contract.fingerprint},
                               "splitc_last_tier": {"string_value": str(model.last_tier)}}}

    def server_metadata(self) -> dict[str, Any]:
        """The v2 server metadata document."""
        from importlib import metadata

        try:
            version = metadata.version("splitc")
        except metadata.PackageNotFoundError:  # run from a source tree
            version = "unknown"
        return {"name": "splitc", "version": version,
                "extensions": ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]}

    def repository_index(self) -> list[dict[str, Any]]:
        """Triton's repository index: every model, READY."""
        return [{"name": n, "version": "1", "state": "READY"} for n in sorted(self.models)]

    # -- HTTP, transport-free (the FaaS handler calls this too) ---------------------------------------
    def handle_http(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Answer one HTTP request of the v2 REST protocol; never raises."""
        try:
            return self._route(method.upper(), path.split("?")[0].rstrip("/") or "/",
                               {k.lower(): v for k, v in headers.items()}, body)
        except V2Error as exc:
            return _error(exc.status, str(exc))
        except Exception as exc:  # a bug: keep serving, log the traceback, tell the client
            self._count("failed", +1)
            log.error("internal error on tier '%s':\n%s", self.tier_name, traceback.format_exc())
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    def _route(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if path in ("/v2/health/live", "/v2/health/ready"):
            return self._get(method, lambda: Reply(200, b""))
        if path == "/v2":
            return self._get(method, lambda: _json(200, self.server_metadata()))
        if path == "/v2/repository/index":
            if method != "POST":
                raise V2Error(405, f"{method} {path}: use POST")
            return _json(200, self.repository_index())
        match = _MODEL_PATH.match(path)
        if not match:
            raise V2Error(404, f"no such endpoint {path}; see /v2/models/<model>[/infer|/ready|/config]")
        name, version, rest = match["model"], match["version"], match["rest"] or ""
        if version not in (None, "1"):
            raise V2Error(404, f"model '{name}' has only version 1, not {version!r}")
        if rest == "/infer":
            if method != "POST":
                raise V2Error(405, f"{method} {path}: use POST")
            return self._infer_http(name, headers, body)
        if rest == "/ready":
            return self._get(method, lambda: Reply(200 if name in self.models else 400, b""))
        if rest == "/config":
            return self._get(method, lambda: _json(200, self.config(name)))
        if rest == "/stats":
            return self._get(method, lambda: _json(200, self.model(name).stats()))
        if rest:
            raise V2Error(404, f"no such endpoint {path}")
        return self._get(method, lambda: _json(200, self.metadata(name)))

    @staticmethod
    def _get(method: str, answer) -> Reply:
        if method != "GET":
            raise V2Error(405, f"{method} is not allowed here; use GET")
        return answer()

    def _infer_http(self, name: str, headers: Mapping[str, str], body: bytes) -> Reply:
        self.model(name)
        length = headers.get(HEADER_LENGTH.lower())
        if length is not None and not str(length).strip().isdigit():
            raise V2Error(400, f"{HEADER_LENGTH} '{length}' is not a number")
        request = parse_infer_request(body, int(length) if length is not None else None)
        answer = self.infer(name, request.inputs, request.id or "")
        if request.requested is not None:
            unknown = sorted(set(request.requested) - set(answer))
            declared = {s.name for s in self.models[name].contract.outputs()}
            if set(unknown) - declared:
                raise V2Error(400, f"model '{name}' has no output(s) {sorted(set(unknown) - declared)}")
            answer = {k: v for k, v in answer.items() if k in request.requested}
        data, header_length = infer_response_body(name, request.id, answer, request.binary)
        if header_length is None:
            return Reply(200, data)
        return Reply(200, data, "application/octet-stream", {HEADER_LENGTH: str(header_length)})


# --------------------------------------------------------------------------- HTTP transport
class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive front of :meth:`TierService.handle_http`."""

    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16    # headers and body leave in one write: two small writes meet Nagle + delayed ACK (~40 ms)
    service: TierService  # set on the subclass made by start_server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, headers too long...) as v2 JSON too."""
        self.close_connection = True
        text = message or explain or self.responses.get(code, ("error",))[0]
        self._send(_error(code, f"HTTP error {code}: {text}"))

    def _body_limit(self) -> int:
        match = _MODEL_PATH.match(self.path.split("?")[0])
        return self.service.max_body_bytes.get(match["model"], 64 * 1024) if match else 64 * 1024

    def _handle(self) -> None:
        try:
            body = b""
            if self.command in ("POST", "PUT", "PATCH"):
                length = self.headers.get("Content-Length")
                if length is None or not length.strip().isdigit():
                    self.close_connection = True
                    return self._send(_error(411, f"{self.command} needs a Content-Length"))
                length, limit = int(length), self._body_limit()
                if length > limit:
                    self.close_connection = True  # the body is not read: the connection cannot be reused
                    return self._send(_error(413, f"body of {length} bytes exceeds this model's limit of {limit} "
                                                  f"bytes"))
                body = self.rfile.read(length)
                if len(body) != length:
                    self.close_connection = True
                    return self._send(_error(400, f"body ended after {len(body)} of {length} bytes"))
            self._send(self.service.handle_http(self.command, self.path, dict(self.headers.items()), body))
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # slow or vanished client: drop the connection, keep serving
        except Exception:  # a bug in this handler must not take the server down
            log.error("internal error in the HTTP handler:\n%s", traceback.format_exc())
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815 - http.server naming


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True       # a stuck connection never blocks shutdown
    allow_reuse_address = True  # restart on the same port right after a crash
    request_queue_size = 64


# --------------------------------------------------------------------------- gRPC transport
def _grpc_servicer(service: TierService):
    """A ``GRPCInferenceServiceServicer`` (tritonclient's generated definitions) over ``service``."""
    import grpc
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

    codes = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.INVALID_ARGUMENT,
             502: grpc.StatusCode.UNAVAILABLE, 503: grpc.StatusCode.RESOURCE_EXHAUSTED,
             504: grpc.StatusCode.DEADLINE_EXCEEDED}
    typed = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "INT32": "int_contents",
             "INT8": "int_contents", "UINT8": "uint_contents", "BOOL": "bool_contents"}
    from_v2 = {v: k for k, v in V2_DATATYPES.items()}

    def abort(context, exc: V2Error):
        context.abort(codes.get(exc.status, grpc.StatusCode.INTERNAL), str(exc))

    def inputs_of(request) -> dict[str, np.ndarray]:
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise V2Error(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
        out = {}
        for i, tensor in enumerate(request.inputs):
            if tensor.datatype not in from_v2:
                raise V2Error(400, f"input '{tensor.name}': datatype {tensor.datatype!r} is not supported")
            dtype = np.dtype(np.bool_ if tensor.datatype == "BOOL" else from_v2[tensor.datatype])
            shape = [int(d) for d in tensor.shape]
            count = int(np.prod(shape, dtype=np.int64))
            if raw:
                if len(raw[i]) != count * dtype.itemsize:
                    raise V2Error(400, f"input '{tensor.name}': {len(raw[i])} raw bytes for {tensor.datatype} {shape}")
                array = np.frombuffer(raw[i], dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
            else:
                field_name = typed.get(tensor.datatype)
                values = list(getattr(tensor.contents, field_name)) if field_name else []
                if len(values) != count:
                    raise V2Error(400, f"input '{tensor.name}': {len(values)} values for shape {shape}")
                array = np.asarray(values, dtype=dtype).reshape(shape)
            if tensor.name in out:
                raise V2Error(400, f"input '{tensor.name}' is given twice")
            out[tensor.name] = array
        return out

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request, context):  # noqa: N802 - gRPC method names
            return service_pb2.ServerLiveResponse(live=True)

        def ServerReady(self, request, context):  # noqa: N802
            return service_pb2.ServerReadyResponse(ready=True)

        def ModelReady(self, request, context):  # noqa: N802
            return service_pb2.ModelReadyResponse(ready=request.name in service.models
                                                  and request.version in ("", "1"))

        def ServerMetadata(self, request, context):  # noqa: N802
            doc = service.server_metadata()
            return service_pb2.ServerMetadataResponse(name=doc["name"], version=doc["version"],
                                                      extensions=doc["extensions"])

        def ModelMetadata(self, request, context):  # noqa: N802
            try:
                doc = service.metadata(request.name)
            except V2Error as exc:
                abort(context, exc)
            meta = service_pb2.ModelMetadataResponse.TensorMetadata
            return service_pb2.ModelMetadataResponse(
                name=doc["name"], versions=doc["versions"], platform=doc["platform"],
                inputs=[meta(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in doc["inputs"]],
                outputs=[meta(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in doc["outputs"]])

        def ModelConfig(self, request, context):  # noqa: N802
            try:
                doc = service.config(request.name)
            except V2Error as exc:
                abort(context, exc)
            config = model_config_pb2.ModelConfig(name=doc["name"], platform=doc["platform"], max_batch_size=0)
            for key, blocks in (("input", config.input), ("output", config.output)):
                for t in doc[key]:
                    blocks.add(name=t["name"], data_type=model_config_pb2.DataType.Value(t["data_type"]),
                               dims=[int(d) for d in t["dims"]])
            for key, value in doc["parameters"].items():
                config.parameters[key].string_value = value["string_value"]
            return service_pb2.ModelConfigResponse(config=config)

        def RepositoryIndex(self, request, context):  # noqa: N802
            entry = service_pb2.RepositoryIndexResponse.ModelIndex
            return service_pb2.RepositoryIndexResponse(models=[entry(**m) for m in service.repository_index()])

        def ModelInfer(self, request, context):  # noqa: N802
            try:
                inputs = inputs_of(request)
                answer = service.infer(request.model_name, inputs, request.id)
                wanted = [o.name for o in request.outputs]
                if wanted:
                    answer = {k: v for k, v in answer.items() if k in wanted}
            except V2Error as exc:
                abort(context, exc)
            except Exception as exc:  # noqa: BLE001 - a bug: keep serving
                log.error("internal error in ModelInfer:\n%s", traceback.format_exc())
                context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
            response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
            for name, value in answer.items():
                array = np.ascontiguousarray(value)
                kind = "bool" if array.dtype == np.bool_ else array.dtype.name
                response.outputs.add(name=name, datatype=V2_DATATYPES[kind], shape=list(array.shape))
                response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
            return response

    return Servicer(), service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server


# --------------------------------------------------------------------------- starting and stopping
class RunningServer:
    """A started tier server: ``url`` (HTTP), ``grpc_url`` (None without gRPC), ``service``, ``stop()``."""

    def __init__(self, service: TierService, http: _HTTPServer, grpc_server: Any, grpc_port: int | None) -> None:
        self.service, self._http, self._grpc = service, http, grpc_server
        host, port = http.server_address[:2]
        self.host, self.port, self.grpc_port = host, port, grpc_port
        self.url = f"http://{host}:{port}"
        self.grpc_url = f"grpc://{host}:{grpc_port}" if grpc_port else None

    def stop(self) -> None:
        """Stop both transports and the models' threads."""
        self._http.shutdown()
        self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait(5)
        for model in self.service.models.values():
            model.close()


def start_server(bundle: str | Path, tier: str | int, host: str = "127.0.0.1", port: int = 0,
                 grpc_port: int | None = 0, next_url: str | None = None, read_timeout_s: float = 30.0,
                 **service_options: Any) -> RunningServer:
    """Start serving ``tier`` of ``bundle`` in background threads; returns the :class:`RunningServer`.

    Args:
        port: HTTP port (0 = any free one). grpc_port: gRPC port (0 = any free one, None = no gRPC).
        Other keyword arguments go to :class:`TierService`.
    """
    service = TierService(bundle, tier, next_url=next_url, **service_options)
    handler = type("Handler", (_Handler,), {"service": service, "timeout": read_timeout_s})
    try:
        http = _HTTPServer((host, port), handler)
    except OSError as exc:
        raise SplitcError(f"cannot listen on {host}:{port}: {exc.strerror}", "choose another --port") from None
    grpc_server, bound = None, None
    if grpc_port is not None:
        import grpc
        from concurrent.futures import ThreadPoolExecutor

        servicer, add = _grpc_servicer(service)
        limit = max(service.max_body_bytes.values())
        grpc_server = grpc.server(ThreadPoolExecutor(max(4, 2 * service.max_inflight), thread_name_prefix="splitc-grpc"),
                                  options=[("grpc.max_receive_message_length", limit),
                                           ("grpc.max_send_message_length", DEFAULT_MAX_BODY_BYTES),
                                           ("grpc.so_reuseport", 0)])
        add(servicer, grpc_server)
        try:
            bound = grpc_server.add_insecure_port(f"{host}:{grpc_port}")
        except RuntimeError:
            bound = 0
        if not bound:
            http.server_close()
            raise SplitcError(f"cannot listen for gRPC on {host}:{grpc_port}", "choose another --grpc-port")
        grpc_server.start()
    threading.Thread(target=http.serve_forever, name=f"splitc-serve-{service.tier_name}", daemon=True).start()
    return RunningServer(service, http, grpc_server, bound)


def serve(bundle: str | Path, tier: str | int, host: str = "127.0.0.1", port: int = 8000,
          grpc_port: int | None = None, next_url: str | None = None, **options: Any) -> None:
    """Serve until interrupted (SIGINT/SIGTERM); prints one line with the URLs when ready.

    ``grpc_port`` None means ``port + 1`` (``port`` 0: any free one); -1 turns gRPC off.
    """
    import signal

    if grpc_port is None:
        grpc_port = port + 1 if port else 0
    server = start_server(bundle, tier, host=host, port=port, grpc_port=None if grpc_port < 0 else grpc_port,
                          next_url=next_url, **options)
    service = server.service
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    chain = f"next: {next_url}" if next_url else ("next: answered to the client" if options.get("single_tier")
                                                  else "later tiers: in-process")
    print(f"serving tier '{service.tier_name}' (index {service.tier_index}) of {service.bundle} on {server.url}"
          + (f" and {server.grpc_url}" if server.grpc_url else "")
          + f" (KServe v2; models: {', '.join(sorted(service.models))}; {chain})", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        log.info("stopped after %d request(s) served, %d rejected, %d failed", service.stats["served"],
                 service.stats["rejected"], service.stats["failed"])
