"""The edge side: run the local tiers of a bundle, send the rest to a remote tier over HTTP.

``splitc run BUNDLE --input x.npy --remote http://host:8000`` asks the server which tier it
runs (``GET /health``), runs every tier before it here (partition, exit decision, encoding:
:meth:`BundleRunner.tier_step`), sends the encoded transfer as one wire message and decodes
the OUTPUTS answer. Without ``--remote`` every tier runs in this process.

Failures are reported per request as :class:`RemoteError` (which server, what happened,
the request id); a batch never aborts because one request failed. Connection failures and
503 answers are retried ``retries`` times with a growing pause; a request is never retried
after the server accepted it and then timed out, unless ``retry_timeouts`` is set (inference
is idempotent, but a retry would double the load of a slow server).

Example:
    >>> client = SplitClient("bundle/", remote="http://127.0.0.1:8000")     # doctest: +SKIP
    >>> result = client.infer({"x": image})                                    # doctest: +SKIP
    >>> result.outputs["output_0"].shape, result.answered_by                   # doctest: +SKIP
    ((1, 10), 1)
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from splitc.errors import SplitcError
from splitc.runtime import wire
from splitc.runtime.encoding import encode, numpy_dtype
from splitc.runtime.runner import BundleRunner
from splitc.runtime.server import WIRE_CONTENT_TYPE

__all__ = ["SplitClient", "Result", "RemoteError", "split_batch", "load_request_arrays", "format_results",
           "save_outputs"]


_MAX_BACKOFF_S = 2.0


class RemoteError(Exception):
    """One request failed at or on the way to the remote tier.

    Attributes:
        url: the server. code: ``unreachable``, ``timeout``, ``disconnected``, or the server's error code.
        status: the HTTP status (None when no answer came). request_id: hex id of the request.
    """

    def __init__(self, url: str, code: str, message: str, status: int | None = None, request_id: str = "") -> None:
        self.url, self.code, self.status, self.request_id = url, code, status, request_id
        super().__init__(f"{url}: {message}" + (f" (HTTP {status}, {code})" if status else f" ({code})")
                         + (f" [request {request_id}]" if request_id else ""))


@dataclass
class Result:
    """One answered request."""

    outputs: dict[str, np.ndarray]
    answered_by: int       # tier index that produced the answer (an exit or the last tier)
    latency_s: float       # wall time of the whole request on this side
    request_id: str
    wire_bytes: int = 0    # bytes of the message sent to the remote tier (0 when all local)
    attempts: int = 1


class SplitClient:
    """Runs a bundle's local tiers and forwards to ``remote``.

    Args:
        bundle: the bundle folder (the same bundle as the server's: checked by hash).
        remote: base URL of the server of the first remote tier; None = everything in-process.
        timeout_s: connect and read timeout of every HTTP call.
        retries: extra attempts on connection failures and 503 answers.
        backoff_s: pause before the first retry (doubles each time, at most 2 s).
        retry_timeouts: also retry requests that timed out.
        threads: ONNX Runtime intra-op threads per session (0 = default).
    """

    def __init__(self, bundle: str | Path, remote: str | None = None, timeout_s: float = 30.0, retries: int = 0,
                 backoff_s: float = 0.2, retry_timeouts: bool = False, threads: int = 0) -> None:
        self.bundle = Path(bundle)
        if not (self.bundle / "manifest.json").is_file():
            raise SplitcError(f"'{bundle}' is not a splitc bundle (no manifest.json)", "pass the folder given to -o")
        self.manifest = json.loads((self.bundle / "manifest.json").read_text("utf-8"))
        self.digest = wire.bundle_hash(self.bundle)
        self.timeout_s, self.retries, self.backoff_s, self.retry_timeouts = timeout_s, retries, backoff_s, retry_timeouts
        self.remote = remote.rstrip("/") if remote else None
        self._local = threading.local()
        self.remote_tier = len(self.manifest["tiers"])  # first tier not run here
        if self.remote:
            url = urllib.parse.urlsplit(self.remote)
            if url.scheme != "http" or not url.hostname:
                raise SplitcError(f"--remote '{remote}' is not an http://host:port URL")
            self._host, self._port, self._prefix = url.hostname, url.port or 80, url.path.rstrip("/")
            self.remote_tier = self._handshake()
        self.runner = BundleRunner(self.bundle, threads=threads, tiers=range(self.remote_tier))  # local tiers only

    # -- connection handling ---------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        """Close this thread's keep-alive connection."""
        self._drop_connection()

    def _http(self, method: str, path: str, body: bytes | None = None, request_id: str = ""
              ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP exchange on the keep-alive connection (a stale connection is reopened once)."""
        for reuse in (True, False):
            conn = self._connection()
            try:
                headers = {"Content-Type": WIRE_CONTENT_TYPE} if body is not None else {}
                conn.request(method, self._prefix + path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self._drop_connection()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            except TimeoutError:
                self._drop_connection()
                raise RemoteError(self.remote, "timeout", f"no answer within {self.timeout_s:g} s",
                                  request_id=request_id) from None
            except (http.client.RemoteDisconnected, http.client.IncompleteRead, BrokenPipeError,
                    ConnectionResetError) as exc:
                self._drop_connection()  # a keep-alive connection the server closed: retry once on a fresh one
                if not reuse:
                    raise RemoteError(self.remote, "disconnected", f"server closed the connection ({exc})",
                                      request_id=request_id) from None
            except http.client.HTTPException as exc:
                self._drop_connection()
                raise RemoteError(self.remote, "bad_answer", f"broken HTTP answer ({exc!r})",
                                  request_id=request_id) from None
            except OSError as exc:
                self._drop_connection()
                raise RemoteError(self.remote, "unreachable", f"cannot connect: {exc.strerror or exc}",
                                  request_id=request_id) from None
        raise AssertionError("unreachable")

    def _handshake(self) -> int:
        try:
            status, _, data = self._http("GET", "/health")
        except RemoteError as exc:
            raise SplitcError(f"cannot reach the remote tier: {exc}", "start it with 'splitc serve' or check "
                                                                      "--remote") from None
        if status != 200:
            raise SplitcError(f"{self.remote}/health answered HTTP {status}", "is this a splitc server?")
        try:
            health = json.loads(data)
            remote_hash, tier = health["bundle_sha256"], int(health["tier_index"])
        except (ValueError, KeyError, TypeError):
            raise SplitcError(f"{self.remote}/health is not a splitc health document", "is this a splitc server?")
        if remote_hash != self.digest.hex():
            raise SplitcError(f"the server at {self.remote} runs another bundle (manifest sha256 "
                              f"{remote_hash[:12]}..., local {self.digest.hex()[:12]}...)",
                              "deploy the same bundle folder on both sides")
        if health.get("wire_version") != wire.VERSION:
            raise SplitcError(f"the server speaks wire version {health.get('wire_version')}, this client {wire.VERSION}")
        return tier

    # -- requests ----------------------------------------------------------------------------------
    def infer(self, inputs: Mapping[str, np.ndarray]) -> Result:
        """Run one request; raises :class:`RemoteError` if the remote part failed."""
        start = time.perf_counter()
        request_id = os.urandom(16)
        held = {s["name"]: np.asarray(inputs[s["name"]]) for s in self.manifest["model"]["inputs"]}
        for tier in range(self.remote_tier):
            held, answer, payloads = self.runner.tier_step(tier, held)
            if answer is not None or payloads is None:
                outputs = answer if answer is not None else self.runner.outputs(held)
                return Result(outputs, tier, time.perf_counter() - start, request_id.hex())
            if tier + 1 < self.remote_tier:
                held = self.runner.decode_transfer(tier, payloads)
                continue
            specs = next(t for t in self.manifest["transfers"] if t["link"] == tier)["tensors"]
            tensors = [wire.Tensor(s["name"], s["dtype"], tuple(s["shape"]), payloads[s["name"]]) for s in specs]
            return self._send(wire.Message(wire.KIND_TRANSFER, self.digest, tier, request_id, tensors), start)
        if self.remote_tier == 0:  # the server runs tier 0: ship the raw model inputs
            tensors = [wire.Tensor(s["name"], s["dtype"], tuple(s["shape"]), encode(held[s["name"]], s))
                       for s in self.manifest["model"]["inputs"]]
            return self._send(wire.Message(wire.KIND_INPUTS, self.digest, 0, request_id, tensors), start)
        return Result(self.runner.outputs(held), len(self.manifest["tiers"]) - 1, time.perf_counter() - start,
                      request_id.hex())

    def _send(self, message: wire.Message, start: float) -> Result:
        body = wire.serialize(message)
        rid = message.request_id.hex()
        attempt, pause = 0, self.backoff_s
        while True:
            attempt += 1
            try:
                status, headers, data = self._http("POST", "/v1/infer", body, rid)
                if status == 503:
                    raise RemoteError(self.remote, "busy", _error_text(data), status, rid)
                break
            except RemoteError as exc:
                retryable = exc.code in {"unreachable", "disconnected", "busy"} or (
                    exc.code == "timeout" and self.retry_timeouts)
                if not retryable or attempt > self.retries:
                    if attempt > 1:
                        exc.args = (f"{exc.args[0]}; gave up after {attempt} attempts",)
                    raise
                time.sleep(pause)
                pause = min(2 * pause, _MAX_BACKOFF_S)
        if status != 200:
            code = _error_code(data)
            raise RemoteError(self.remote, code, _error_text(data), status, rid)
        try:
            answer = wire.parse(data)
        except wire.WireError as exc:
            raise RemoteError(self.remote, "bad_answer", f"answer is not a wire message: {exc}", status, rid) from None
        if answer.kind != wire.KIND_OUTPUTS or answer.request_id != message.request_id:
            raise RemoteError(self.remote, "bad_answer", "answer is not the outputs of this request", status, rid)
        outputs = {t.name: _raw_array(t) for t in answer.tensors}
        return Result(outputs, answer.index, time.perf_counter() - start, rid, len(body), attempt)

    def infer_many(self, batch: Sequence[Mapping[str, np.ndarray]], concurrency: int = 1
                   ) -> list[Result | RemoteError]:
        """Run every request of ``batch`` (``concurrency`` at a time); failures are returned, not raised."""
        def one(inputs):
            try:
                return self.infer(inputs)
            except RemoteError as exc:
                return exc

        if concurrency <= 1:
            return [one(x) for x in batch]
        with ThreadPoolExecutor(concurrency, thread_name_prefix="splitc-client") as pool:
            return list(pool.map(one, batch))


def _raw_array(t: wire.Tensor) -> np.ndarray:
    dtype = numpy_dtype(t.dtype)
    count = int(np.prod(t.shape, dtype=np.int64))
    if count * dtype.itemsize != len(t.payload):
        raise RemoteError("", "bad_answer", f"output '{t.name}': {len(t.payload)} bytes for {t.dtype} {list(t.shape)}")
    return np.frombuffer(t.payload, dtype=dtype).reshape(t.shape).astype(dtype.newbyteorder("="))


def _error_code(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return "http_error"


def _error_text(data: bytes) -> str:
    try:
        return str(json.loads(data)["message"])
    except (ValueError, KeyError, TypeError):
        return data[:200].decode("utf-8", "replace").strip() or "no details"


def split_batch(manifest: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Cut user arrays into requests of the model's static input shapes.

    Each array is either exactly one request (the input's shape), a stack of requests
    (``[N, *shape]``), or requests concatenated on axis 0 (``[N * shape[0], *shape[1:]]``).
    Every input must give the same number of requests.
    """
    counts, requests = {}, {}
    for spec in manifest["model"]["inputs"]:
        name, shape = spec["name"], tuple(spec["shape"])
        if name not in arrays:
            raise SplitcError(f"no array for model input '{name}'", f"inputs: {[s['name'] for s in manifest['model']['inputs']]}")
        array = np.asarray(arrays[name]).astype(numpy_dtype(spec["dtype"]).newbyteorder("="), copy=False)
        if array.shape == shape:
            parts = [array]
        elif array.ndim == len(shape) + 1 and array.shape[1:] == shape:
            parts = list(array)
        elif shape and array.shape[1:] == shape[1:] and shape[0] and array.shape[0] % shape[0] == 0:
            parts = [array[i:i + shape[0]] for i in range(0, array.shape[0], shape[0])]
        else:
            raise SplitcError(f"input '{name}' has shape {list(array.shape)}; the bundle needs {list(shape)} per request",
                              f"pass {list(shape)}, [N, *{list(shape)}] or [N*{shape[0] if shape else 1}, ...]")
        counts[name], requests[name] = len(parts), parts
    if len(set(counts.values())) > 1:
        raise SplitcError(f"inputs give different numbers of requests: {counts}")
    n = next(iter(counts.values()))
    return [{name: requests[name][i] for name in requests} for i in range(n)]


def load_request_arrays(path: str | Path, manifest: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Arrays of a ``.npy`` (one-input models) or ``.npz`` (by input name) file."""
    names = [s["name"] for s in manifest["model"]["inputs"]]
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SplitcError(f"cannot read --input '{path}': {exc}", "pass a .npy or .npz file") from None
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise SplitcError(f"the model has {len(names)} inputs {names}; a .npy file gives one",
                              "pass a .npz keyed by input name")
        return {names[0]: data}
    return {k: data[k] for k in data.files}


def format_results(manifest: Mapping[str, Any], results: Sequence[Result | RemoteError]) -> str:
    """One line per request: outputs (shape, argmax), which tier answered, latency; or the failure."""
    tiers, lines = manifest["tiers"], []
    for i, r in enumerate(results):
        if isinstance(r, Exception):
            lines.append(f"request {i}: FAILED: {r}")
            continue
        shown = ", ".join(f"{k} {list(v.shape)}" + (f" argmax {int(v.argmax())}" if v.size > 1 else f" = {v.item():g}")
                          for k, v in r.outputs.items())
        lines.append(f"request {i}: {shown} (answered by tier {r.answered_by} '{tiers[r.answered_by]['name']}', "
                     f"{r.latency_s * 1e3:.1f} ms)")
    return "\n".join(lines)


def save_outputs(path: str | Path, results: Sequence[Result | RemoteError]) -> None:
    """Write the outputs of the answered requests to ``.npz`` (concatenated on axis 0, request order)."""
    ok = [r for r in results if not isinstance(r, Exception)]
    if ok:
        np.savez(path, **{k: np.concatenate([r.outputs[k] for r in ok]) for k in ok[0].outputs})
