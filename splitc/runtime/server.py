"""Serve one tier of a bundle over HTTP (``splitc serve BUNDLE --tier NAME --port N [--next URL]``).

Endpoints:
    ``POST /v1/infer``  body: one wire message (:mod:`splitc.runtime.wire`), content type
        ``application/x-splitc-wire``. Tier 0 accepts the model inputs (kind INPUTS); tier k > 0
        accepts the tensors of link k-1 (kind TRANSFER), encoded exactly as the manifest says.
        The tier runs its step (:meth:`BundleRunner.tier_step`: partition, exit decision,
        encoding of its outgoing transfer). Then: if the request ends here (exit, or nothing
        goes further) the answer is an OUTPUTS message; otherwise the transfer goes to
        ``--next`` (the next tier's server) and its answer is relayed, or, without ``--next``,
        the remaining tiers run in this process (decoding each transfer as the manifest says).
    ``GET /health``     JSON: tier, what the tier accepts, bundle sha256, wire version, load.

Errors are JSON ``{"error": code, "message": ..., "request_id": ...}`` with a 4xx status
for anything the client sent wrong (400 malformed, 409 other bundle, 411 no length,
413 too large, 422 wrong tensors for this tier, 404/405 wrong path/method), 502/504 when the
next tier failed or timed out, 503 when the server is saturated, 500 for a bug (logged
with its traceback). No request can stop the server: every handler catches everything.

Concurrency: ``ThreadingHTTPServer`` (one thread per connection, HTTP/1.1 keep-alive),
at most ``max_inflight`` requests compute at once (others wait up to ``queue_timeout_s``,
then 503); sockets time out after ``read_timeout_s`` of silence, forwarding after
``forward_timeout_s``. :class:`TierService` holds all of this independent of HTTP, so the
FaaS handler (:mod:`splitc.backends.faas`) runs exactly the same code.

Example:
    >>> server = start_server("bundle/", tier="cloud-gpu-t4", port=0)   # doctest: +SKIP
    >>> server.url                                                      # doctest: +SKIP
    'http://127.0.0.1:41234'
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import traceback
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from splitc.errors import SplitcError
from splitc.runtime import wire
from splitc.runtime.encoding import decode, numpy_dtype
from splitc.runtime.runner import BundleRunner

__all__ = ["TierService", "Reply", "RequestError", "start_server", "serve", "resolve_tier", "outputs_message",
           "WIRE_CONTENT_TYPE", "DEFAULT_MAX_BODY_BYTES"]

log = logging.getLogger("splitc")

WIRE_CONTENT_TYPE = "application/x-splitc-wire"
DEFAULT_MAX_BODY_BYTES = 256 * 2**20  # hard cap; the per-bundle limit below is usually far smaller
_HEADROOM_BYTES = 64 * 1024           # wire header + tensor table allowance


@dataclass
class Reply:
    """What to answer: HTTP status, body bytes and content type."""

    status: int
    body: bytes
    content_type: str = WIRE_CONTENT_TYPE
    headers: dict[str, str] = field(default_factory=dict)


class RequestError(Exception):
    """A request this tier refuses: ``status`` (4xx/5xx) and a stable ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code = status, code
        super().__init__(message)


def _error_reply(status: int, code: str, message: str, request_id: bytes | None = None) -> Reply:
    body = {"error": code, "message": message, "request_id": request_id.hex() if request_id else None}
    return Reply(status, (json.dumps(body) + "\n").encode("utf-8"), "application/json")


def resolve_tier(manifest: Mapping[str, Any], tier: str | int) -> int:
    """Tier index for a tier folder name, requested name/alias, target name, or index."""
    tiers = manifest["tiers"]
    text = str(tier).strip()
    if text.isdigit() and int(text) < len(tiers):
        return int(text)
    for t in tiers:
        if text.lower() in {t["name"].lower(), t["requested"].lower(), t["target"]["name"].lower()}:
            return t["index"]
    names = ", ".join(f"{t['index']}={t['name']}" for t in tiers)
    raise SplitcError(f"tier '{tier}' is not in this bundle", f"pass one of: {names}")


def outputs_message(outputs: Mapping[str, np.ndarray], digest: bytes, tier: int, request_id: bytes) -> bytes:
    """An OUTPUTS message with ``outputs`` as raw little-endian tensors."""
    tensors = []
    for name, value in outputs.items():
        array = np.asarray(value)
        dtype = "bool" if array.dtype == np.bool_ else array.dtype.name
        tensors.append(wire.Tensor(name, dtype, tuple(array.shape),
                                   np.ascontiguousarray(array, dtype=numpy_dtype(dtype)).tobytes()))
    return wire.serialize(wire.Message(wire.KIND_OUTPUTS, digest, tier, request_id, tensors))


class TierService:
    """One tier of a bundle as a request handler, independent of the transport.

    Args:
        bundle: the bundle folder.
        tier: tier name (folder, requested name, target name) or index.
        next_url: base URL of the next tier's server; None runs the remaining tiers here.
        max_inflight: requests computing at once; more wait ``queue_timeout_s`` then get 503.
        forward_timeout_s: connect/read timeout of the call to ``next_url``.
        threads: ONNX Runtime intra-op threads per session (0 = default).
        runner: an existing runner of the same bundle (tests); built when None.
    """

    def __init__(self, bundle: str | Path, tier: str | int, next_url: str | None = None, max_inflight: int = 4,
                 queue_timeout_s: float = 10.0, forward_timeout_s: float = 30.0, threads: int = 0,
                 runner: BundleRunner | None = None) -> None:
        self.bundle = Path(bundle)
        if not (self.bundle / "manifest.json").is_file():
            raise SplitcError(f"'{bundle}' is not a splitc bundle (no manifest.json)", "pass the folder given to -o")
        self.manifest = runner.manifest if runner else json.loads((self.bundle / "manifest.json").read_text("utf-8"))
        self.digest = wire.bundle_hash(self.bundle)
        self.tier_index = resolve_tier(self.manifest, tier)
        # this tier's partition, and the later ones when they run here (no --next)
        needed = [self.tier_index] if next_url else range(self.tier_index, len(self.manifest["tiers"]))
        self.runner = runner or BundleRunner(self.bundle, threads=threads, tiers=needed)
        self.tier_name = self.manifest["tiers"][self.tier_index]["name"]
        self.next_url = next_url.rstrip("/") if next_url else None
        self.forward_timeout_s = forward_timeout_s
        self.queue_timeout_s = queue_timeout_s
        self._slots = threading.BoundedSemaphore(max_inflight)
        self.max_inflight = max_inflight
        self._stats_lock = threading.Lock()
        self.stats = {"served": 0, "rejected": 0, "failed": 0, "in_flight": 0}
        self.accept_kind, self.accept_specs = self._accepted()
        self.max_body_bytes = min(DEFAULT_MAX_BODY_BYTES,
                                  2 * sum(_spec_bytes(s) for s in self.accept_specs) + _HEADROOM_BYTES)
        if self.next_url and self.tier_index + 1 >= len(self.manifest["tiers"]):
            raise SplitcError(f"--next given for tier '{self.tier_name}', the last tier of the bundle",
                              "drop --next")

    # -- what this tier accepts -------------------------------------------------------------
    def _accepted(self) -> tuple[int, list[dict[str, Any]]]:
        if self.tier_index == 0:
            return wire.KIND_INPUTS, [dict(s, encoding={"kind": "raw"}) for s in self.manifest["model"]["inputs"]]
        link = self.tier_index - 1
        transfer = next((t for t in self.manifest["transfers"] if t["link"] == link), None)
        if transfer is None:
            raise SplitcError(f"tier '{self.tier_name}' receives nothing in this bundle (no transfer on link {link}: "
                              f"the plan finishes before it)", "serve a tier that runs a partition")
        return wire.KIND_TRANSFER, transfer["tensors"]

    def health(self) -> dict[str, Any]:
        """The ``GET /health`` document."""
        with self._stats_lock:
            stats = dict(self.stats)
        return {"status": "ok", "tier": self.tier_name, "tier_index": self.tier_index,
                "accepts": {"kind": wire.KIND_NAMES[self.accept_kind],
                            "link": self.tier_index - 1 if self.accept_kind == wire.KIND_TRANSFER else None,
                            "tensors": [{"name": s["name"], "shape": s["shape"], "dtype": s["dtype"]}
                                        for s in self.accept_specs]},
                "bundle_sha256": self.digest.hex(), "wire_version": wire.VERSION, "next": self.next_url,
                "max_body_bytes": self.max_body_bytes, "max_inflight": self.max_inflight, **stats}

    # -- one request ----------------------------------------------------------------------------
    def handle(self, body: bytes) -> Reply:
        """Answer one wire message; never raises."""
        request_id = None
        try:
            message = wire.parse(body, self.max_body_bytes)
            request_id = message.request_id
            held = self._check_and_decode(message)
            if not self._slots.acquire(timeout=self.queue_timeout_s):
                raise RequestError(503, "busy", f"tier '{self.tier_name}' is saturated ({self.max_inflight} requests "
                                                f"in flight for {self.queue_timeout_s:g} s); retry later")
            try:
                self._count("in_flight", +1)
                reply = self._run_from_here(held, message.request_id)
            finally:
                self._count("in_flight", -1)
                self._slots.release()
            self._count("served", +1)
            return reply
        except wire.WireError as exc:
            self._count("rejected", +1)
            return _error_reply(413 if exc.code == "too_large" else 400, exc.code, str(exc), request_id)
        except RequestError as exc:
            self._count("rejected" if exc.status < 500 else "failed", +1)
            return _error_reply(exc.status, exc.code, str(exc), request_id)
        except Exception as exc:  # a bug: keep serving, log the traceback, tell the client
            self._count("failed", +1)
            log.error("internal error on tier '%s':\n%s", self.tier_name, traceback.format_exc())
            return _error_reply(500, "internal", f"{type(exc).__name__}: {exc}", request_id)

    def _count(self, key: str, delta: int) -> None:
        with self._stats_lock:
            self.stats[key] += delta

    def _check_and_decode(self, message: wire.Message) -> dict[str, np.ndarray]:
        if message.bundle_hash != self.digest:
            raise RequestError(409, "bundle_mismatch",
                               f"message is for bundle {message.bundle_hash.hex()[:12]}..., this server runs bundle "
                               f"{self.digest.hex()[:12]}... (manifest.json differs); deploy the same bundle on "
                               f"both tiers")
        want = wire.KIND_NAMES[self.accept_kind]
        link = self.tier_index - 1
        if message.kind != self.accept_kind or (self.accept_kind == wire.KIND_TRANSFER and message.index != link):
            got = wire.KIND_NAMES[message.kind] + (f" of link {message.index}" if message.kind == wire.KIND_TRANSFER
                                                   else "")
            raise RequestError(422, "wrong_tier", f"tier '{self.tier_name}' accepts {want}"
                               f"{f' of link {link}' if self.accept_kind == wire.KIND_TRANSFER else ''}, got {got}")
        specs = {s["name"]: s for s in self.accept_specs}
        got_names = [t.name for t in message.tensors]
        if sorted(got_names) != sorted(specs):
            raise RequestError(422, "wrong_tensors", f"tier '{self.tier_name}' expects tensors {sorted(specs)}, "
                                                     f"got {sorted(got_names)}")
        for t in message.tensors:
            spec = specs[t.name]
            if t.dtype != spec["dtype"] or list(t.shape) != list(spec["shape"]):
                raise RequestError(422, "wrong_tensor_type",
                                   f"tensor '{t.name}' is {t.dtype} {list(t.shape)}, tier '{self.tier_name}' expects "
                                   f"{spec['dtype']} {spec['shape']}")
        try:
            if self.accept_kind == wire.KIND_INPUTS:
                return {t.name: decode(t.payload, specs[t.name]) for t in message.tensors}
            return self.runner.decode_transfer(link, message.payloads())
        except ValueError as exc:  # payload length / encoding parameters inconsistent with the manifest
            raise RequestError(422, "bad_payload", str(exc)) from None

    def _run_from_here(self, held: dict[str, np.ndarray], request_id: bytes) -> Reply:
        tier = self.tier_index
        while True:
            held, answer, payloads = self.runner.tier_step(tier, held)
            if answer is not None or payloads is None:
                outputs = answer if answer is not None else self.runner.outputs(held)
                return Reply(200, outputs_message(outputs, self.digest, tier, request_id),
                             headers={"X-Splitc-Answered-By": str(tier)})
            if self.next_url and tier == self.tier_index:
                tensors = [wire.Tensor(s["name"], s["dtype"], tuple(s["shape"]), payloads[s["name"]])
                           for s in self._transfer_specs(tier)]
                body = wire.serialize(wire.Message(wire.KIND_TRANSFER, self.digest, tier, request_id, tensors))
                return self._forward(body, request_id)
            held = self.runner.decode_transfer(tier, payloads)  # no next server: continue in this process
            tier += 1

    def _transfer_specs(self, link: int) -> list[dict[str, Any]]:
        return next(t for t in self.manifest["transfers"] if t["link"] == link)["tensors"]

    def _forward(self, body: bytes, request_id: bytes) -> Reply:
        url = urllib.parse.urlsplit(self.next_url)
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=self.forward_timeout_s)
        try:
            conn.request("POST", (url.path.rstrip("/") or "") + "/v1/infer", body=body,
                         headers={"Content-Type": WIRE_CONTENT_TYPE})
            response = conn.getresponse()
            data = response.read()
        except TimeoutError:
            raise RequestError(504, "next_tier_timeout", f"next tier {self.next_url} did not answer within "
                                                         f"{self.forward_timeout_s:g} s") from None
        except OSError as exc:
            raise RequestError(502, "next_tier_unreachable", f"next tier {self.next_url}: {exc}") from None
        finally:
            conn.close()
        if response.status != 200:
            detail = data[:300].decode("utf-8", "replace").strip()
            raise RequestError(502, "next_tier_error", f"next tier {self.next_url} answered {response.status}: {detail}")
        answered = response.getheader("X-Splitc-Answered-By")
        return Reply(200, data, headers={"X-Splitc-Answered-By": answered} if answered else {})


def _spec_bytes(spec: Mapping[str, Any]) -> int:
    return int(np.prod(spec["shape"], dtype=np.int64)) * numpy_dtype(spec["dtype"]).itemsize


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one TCP connection per client thread
    server_version = "splitc"
    disable_nagle_algorithm = True  # headers and body are two writes: without this, delayed ACKs add ~40 ms
    service: TierService  # set on the subclass built by start_server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s %s", self.address_string(), format % args)

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
        """http.server's own errors (bad request line, headers too long, ...) as JSON too."""
        self.close_connection = True
        text = message or explain or self.responses.get(code, ("error",))[0]
        self._send(_error_reply(code, "bad_http", f"HTTP error {code}: {text}"))

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path.split("?")[0] != "/health":
            return self._send(_error_reply(404, "not_found", f"no such endpoint {self.path}; use POST /v1/infer or "
                                                             f"GET /health"))
        body = (json.dumps(self.service.health()) + "\n").encode("utf-8")
        self._send(Reply(200, body, "application/json"))

    def do_POST(self) -> None:  # noqa: N802
        try:
            if self.path.split("?")[0] != "/v1/infer":
                self.close_connection = True
                return self._send(_error_reply(404, "not_found", f"no such endpoint {self.path}; POST to /v1/infer"))
            length = self.headers.get("Content-Length")
            if length is None or not length.strip().isdigit():
                self.close_connection = True
                return self._send(_error_reply(411, "length_required", "POST /v1/infer needs a Content-Length"))
            length = int(length)
            if length > self.service.max_body_bytes:
                self.close_connection = True  # the body is not read: the connection cannot be reused
                return self._send(_error_reply(413, "too_large", f"body of {length} bytes exceeds this tier's limit "
                                                                 f"of {self.service.max_body_bytes} bytes"))
            body = self.rfile.read(length)
            if len(body) != length:
                self.close_connection = True
                return self._send(_error_reply(400, "truncated", f"body ended after {len(body)} of {length} bytes"))
            self._send(self.service.handle(body))
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # slow or vanished client: drop the connection, keep serving
        except Exception:  # a bug in this handler must not take the server down
            log.error("internal error in the HTTP handler:\n%s", traceback.format_exc())
            self.close_connection = True

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        self._send(_error_reply(405, "method_not_allowed", f"{self.command} is not allowed; use POST /v1/infer or "
                                                           f"GET /health"))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True      # a stuck connection never blocks shutdown
    allow_reuse_address = True  # restart on the same port right after a crash
    request_queue_size = 64

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def start_server(bundle: str | Path, tier: str | int, host: str = "127.0.0.1", port: int = 0,
                 next_url: str | None = None, read_timeout_s: float = 30.0, **service_options) -> _Server:
    """Start serving ``tier`` of ``bundle`` in a background thread; returns the server (``.url``, ``.shutdown()``).

    ``port=0`` picks a free port. Other keyword arguments go to :class:`TierService`.
    """
    service = TierService(bundle, tier, next_url=next_url, **service_options)
    handler = type("Handler", (_Handler,), {"service": service, "timeout": read_timeout_s})
    try:
        server = _Server((host, port), handler)
    except OSError as exc:
        raise SplitcError(f"cannot listen on {host}:{port}: {exc.strerror}", "choose another --port") from None
    server.service = service
    threading.Thread(target=server.serve_forever, name=f"splitc-serve-{service.tier_name}", daemon=True).start()
    return server


def serve(bundle: str | Path, tier: str | int, host: str = "127.0.0.1", port: int = 8000,
          next_url: str | None = None, **options) -> None:
    """Serve until interrupted (SIGINT/SIGTERM); prints one line with the URL when ready."""
    import signal

    server = start_server(bundle, tier, host=host, port=port, next_url=next_url, **options)
    service = server.service
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"serving tier '{service.tier_name}' (index {service.tier_index}) of {service.bundle} on {server.url} "
          f"(accepts {wire.KIND_NAMES[service.accept_kind]}; next: {next_url or 'in-process'})", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        log.info("stopped after %d request(s) served, %d rejected, %d failed", service.stats["served"],
                 service.stats["rejected"], service.stats["failed"])
