"""The device side: run the local tiers of a bundle, call the server tiers over KServe v2 (HTTP or gRPC).

``splitc run BUNDLE --input x.npy --remote http://host:8000`` (or ``grpc://host:8001``; ``--remote``
may be given once per server) talks to any KServe v2 server that serves the bundle's tier models
(:mod:`splitc.runtime.v2`): ``splitc serve``, a Triton started by ``splitc serve --server triton``,
or Triton anywhere on the emitted repository. One code path for all of them, through
``tritonclient``:

1. **Handshake**: every server must be live; the client asks which ``splitc_tier<T>`` (and
   ``splitc_v<i>_tier<T>``) models are ready and checks each one's ``splitc_tier_sha256`` against
   its own manifest, so a client never talks to a server of another bundle.
2. **Request**: the tiers before the first served one run here (:meth:`BundleRunner.tier_step`:
   partitions, exit rule, encoding); the next link's tensors go as they are on the wire (uint8,
   float16: the binary tensor extension carries them byte-exact) to the first served tier. Its
   answer is final (``splitc_next`` = -1) or the next link's tensors, which go to the server of tier
   ``splitc_next``, and so on (a 3-tier chain is called tier by tier, unless a ``splitc serve
   --next`` tier forwards by itself). Every answer is checked against the manifest (names, dtypes,
   shapes) before it is returned: a server that drops or changes a tensor is an error, never a
   wrong answer.
3. **Failures** are per request (:class:`RemoteError`: which server, what happened, the request id).
   Connection failures and busy answers are retried ``retries`` times with a growing pause:
   inference has no side effects, so a retry is safe; a 4xx is never retried. Timeouts are retried
   only with ``retry_timeouts`` (a retry doubles the load of a slow server).
4. **Live re-split**: with a bundle compiled with ``--bandwidth-range`` and servers that serve the
   variants, the client measures the link (:class:`~splitc.runtime.link.LinkMonitor`) and moves to
   the variant the manifest's switch points call for; each request runs wholly in one variant, so
   every answer is exactly that variant's in-process answer.

``tritonclient.http`` clients belong to the thread that made them: each thread gets its own.

Example:
    >>> client = SplitClient("bundle/", remote="http://127.0.0.1:8000")     # doctest: +SKIP
    >>> result = client.infer({"x": image})                                    # doctest: +SKIP
    >>> result.outputs["output_0"].shape, result.answered_by                   # doctest: +SKIP
    ((1, 10), 1)
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from splitc.errors import SplitcError
from splitc.runtime.encoding import numpy_dtype
from splitc.runtime.link import LinkMonitor, variant_for
from splitc.runtime.runner import BundleRunner, load_manifest
from splitc.runtime.tier_model import exit_fired, wire_arrays
from splitc.runtime.v2 import V2_DATATYPES, TensorSpec, fingerprint, model_name, served_tiers, tier_contract

__all__ = ["SplitClient", "Result", "RemoteError", "Transport", "split_batch", "load_request_arrays",
           "format_results", "save_outputs"]

log = logging.getLogger("splitc")

_MAX_BACKOFF_S = 2.0
_RETRYABLE = {"unreachable", "disconnected", "busy"}
_GRPC_CODES = {"StatusCode.INVALID_ARGUMENT": ("rejected", 400), "StatusCode.NOT_FOUND": ("not_found", 404),
               "StatusCode.UNAVAILABLE": ("unreachable", None), "StatusCode.DEADLINE_EXCEEDED": ("timeout", None),
               "StatusCode.RESOURCE_EXHAUSTED": ("busy", 503), "StatusCode.INTERNAL": ("server_error", 500),
               "StatusCode.UNKNOWN": ("server_error", 500), "StatusCode.UNIMPLEMENTED": ("not_found", 404),
               "StatusCode.FAILED_PRECONDITION": ("rejected", 400)}
_HTTP_CODES = {400: "rejected", 404: "not_found", 413: "rejected", 500: "server_error", 502: "bad_gateway",
               503: "busy", 504: "gateway_timeout"}


class RemoteError(Exception):
    """One request failed at or on the way to a remote tier.

    Attributes:
        url: the server. code: ``unreachable``, ``disconnected``, ``timeout``, ``busy``, ``rejected`` (4xx),
            ``not_found``, ``server_error`` (5xx), ``bad_gateway``/``gateway_timeout`` (a forwarding
            server's next tier failed), ``bad_answer`` (the answer breaks the manifest).
        status: the HTTP status (or its gRPC equivalent) when the server answered. request_id: hex id.
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
    wire_bytes: int = 0    # tensor bytes sent to remote tiers (0 when all local)
    attempts: int = 1
    exit: int = -1         # manifest index of the exit that answered, -1 = none
    variant: int | None = None  # index in plan.variants of the bundle that ran it (None: no variants)


# --------------------------------------------------------------------------- one v2 endpoint
class Transport:
    """One KServe v2 server, through ``tritonclient`` (``http://host:port`` or ``grpc://host:port``).

    Args:
        url: the server; a bare ``host:port`` means HTTP.
        timeout_s: connect and network timeout of every call.
    """

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        text = url.strip()
        parsed = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
        if parsed.scheme not in ("http", "grpc") or not parsed.hostname or not parsed.port or \
                parsed.path not in ("", "/"):
            raise SplitcError(f"--remote '{url}' is not an http://host:port or grpc://host:port URL",
                              "e.g. http://127.0.0.1:8000 (HTTP) or grpc://127.0.0.1:8001 (gRPC)")
        self.url = f"{parsed.scheme}://{parsed.hostname}:{parsed.port}"
        self.protocol, self.address, self.timeout_s = parsed.scheme, f"{parsed.hostname}:{parsed.port}", timeout_s
        try:
            if self.protocol == "http":
                import tritonclient.http as tc
            else:
                import tritonclient.grpc as tc
        except ImportError:
            raise SplitcError(f"--remote {self.protocol}:// needs tritonclient",
                              f"pip install 'tritonclient[{self.protocol}]'") from None
        self._tc = tc
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    # -- clients (one per thread) ------------------------------------------------------------------
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = self._tc.InferenceServerClient(self.address, connection_timeout=self.timeout_s,
                                                         network_timeout=self.timeout_s)
            else:
                client = self._tc.InferenceServerClient(self.address)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def reset(self) -> None:
        """Drop this thread's client (after a connection failure: the next call reconnects)."""
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            _close_quietly(client)

    def close(self) -> None:
        """Close every thread's client (do it before stopping a server: an open keep-alive delays it)."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            _close_quietly(client)
        self._local = threading.local()

    # -- calls ---------------------------------------------------------------------------------------
    def error(self, exc: BaseException, request_id: str = "") -> RemoteError:
        """A :class:`RemoteError` for what tritonclient (or the socket under it) raised."""
        from tritonclient.utils import InferenceServerException

        if isinstance(exc, InferenceServerException):
            status_text = str(exc.status() or "")
            message = exc.message() or str(exc)
            if status_text.startswith("StatusCode."):
                code, status = _GRPC_CODES.get(status_text, ("server_error", 500))
                if code == "unreachable" and not _connect_failure(message):
                    code = "disconnected"
                if code in ("unreachable", "disconnected", "timeout"):
                    self.reset()
                return RemoteError(self.url, code, message, status, request_id)
            status = int(status_text) if status_text.isdigit() else None
            if status is None:  # raised by tritonclient itself (bad response, decoding)
                return RemoteError(self.url, "bad_answer", message, None, request_id)
            return RemoteError(self.url, _HTTP_CODES.get(status, "rejected" if status < 500 else "server_error"),
                               message, status, request_id)
        self.reset()
        if isinstance(exc, TimeoutError):
            return RemoteError(self.url, "timeout", f"no answer within {self.timeout_s:g} s", None, request_id)
        if isinstance(exc, ConnectionRefusedError) or (isinstance(exc, OSError) and not isinstance(
                exc, (ConnectionResetError, BrokenPipeError))):
            return RemoteError(self.url, "unreachable", f"cannot connect: {getattr(exc, 'strerror', None) or exc}",
                               None, request_id)
        return RemoteError(self.url, "disconnected", f"the server closed the connection ({type(exc).__name__}: "
                                                     f"{exc})", None, request_id)

    def _call(self, what: str, request_id: str = "") -> Any:
        try:
            return what(self._client())
        except Exception as exc:  # noqa: BLE001 - every failure becomes one RemoteError
            raise self.error(exc, request_id) from None

    def live(self) -> bool:
        """``GET /v2/health/live`` (raises :class:`RemoteError` when the server cannot be reached)."""
        return bool(self._call(lambda c: c.is_server_live()))

    def model_ready(self, name: str) -> bool:
        """Whether model ``name`` is loaded and ready (False for an unknown model)."""
        try:
            return bool(self._call(lambda c: c.is_model_ready(name)))
        except RemoteError as exc:
            if exc.code in ("rejected", "not_found", "server_error"):
                return False
            raise

    def model_config(self, name: str) -> dict[str, Any]:
        """The model's configuration (Triton's model-configuration extension) as JSON."""
        if self.protocol == "http":
            return self._call(lambda c: c.get_model_config(name))
        return self._call(lambda c: c.get_model_config(name, as_json=True)).get("config", {})

    def model_metadata(self, name: str) -> dict[str, Any]:
        """The v2 model metadata (name, inputs, outputs) as JSON."""
        if self.protocol == "http":
            return self._call(lambda c: c.get_model_metadata(name))
        return self._call(lambda c: c.get_model_metadata(name, as_json=True))

    def infer(self, model: str, tensors: Mapping[str, np.ndarray], request_id: str = ""
              ) -> tuple[dict[str, np.ndarray], int]:
        """One inference: ``(outputs, bytes of tensor data received)``; raises :class:`RemoteError`."""
        tc = self._tc
        inputs = []
        for name, value in tensors.items():
            array = np.ascontiguousarray(value)
            tensor = tc.InferInput(name, list(array.shape), V2_DATATYPES[_dtype_name(array.dtype)])
            if self.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            inputs.append(tensor)

        def call(client):
            if self.protocol == "http":
                return client.infer(model, inputs, request_id=request_id)
            return client.infer(model, inputs, request_id=request_id, client_timeout=self.timeout_s)

        result = self._call(call, request_id)
        response = result.get_response()
        names = [o["name"] for o in response.get("outputs", [])] if self.protocol == "http" else \
            [o.name for o in response.outputs]
        outputs = {name: result.as_numpy(name) for name in names}
        if any(v is None for v in outputs.values()):
            raise RemoteError(self.url, "bad_answer", f"model {model} answered tensors without data "
                                                      f"{[k for k, v in outputs.items() if v is None]}", None,
                              request_id)
        return outputs, sum(v.nbytes for v in outputs.values())


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do about it
        pass


def _connect_failure(message: str) -> bool:
    text = message.lower()
    return any(s in text for s in ("failed to connect", "connection refused", "connect failed",
                                   "dns resolution failed", "name resolution"))


def _dtype_name(dtype: np.dtype) -> str:
    return "bool" if dtype == np.bool_ else np.dtype(dtype).name


# --------------------------------------------------------------------------- the client
@dataclass
class _Variant:
    """One bundle the client may run a request in: the bundle itself or one of its bandwidth variants."""

    index: int | None           # index in plan.variants; None: the bundle has no variants
    model_index: int | None     # variant number in model names (None: splitc_tier<T>)
    folder: Path
    manifest: dict[str, Any]
    range_bps: tuple[float, float] | None
    served: dict[int, Transport] = field(default_factory=dict)  # tier -> server of splitc_[v<i>_]tier<T>
    first_remote: int = 0
    runner: BundleRunner | None = None


class SplitClient:
    """Runs a bundle's local tiers and calls the remote ones (see the module docstring).

    Args:
        bundle: the bundle folder (the same bundle as the servers': checked per tier model).
        remote: URL or URLs of the servers (``http://``/``grpc://host:port``); None = everything here.
        timeout_s: connect and network timeout of every call.
        retries: extra attempts on connection failures and busy answers.
        backoff_s: pause before the first retry (doubles each time, at most 2 s).
        retry_timeouts: also retry requests that timed out.
        threads: ONNX Runtime intra-op threads per session (0 = its default).
        adapt: follow the measured link across bandwidth variants (when the bundle and servers have them).
        monitor: the link monitor to use (a new one when None).
    """

    def __init__(self, bundle: str | Path, remote: str | Sequence[str] | None = None, timeout_s: float = 30.0,
                 retries: int = 0, backoff_s: float = 0.2, retry_timeouts: bool = False, threads: int = 0,
                 adapt: bool = True, monitor: LinkMonitor | None = None) -> None:
        self.bundle = Path(bundle)
        if not (self.bundle / "manifest.json").is_file():
            raise SplitcError(f"'{bundle}' is not a splitc bundle (no manifest.json)", "pass the folder given to -o")
        self.manifest = load_manifest(self.bundle)
        self.timeout_s, self.retries, self.backoff_s, self.retry_timeouts = timeout_s, retries, backoff_s, retry_timeouts
        urls = [remote] if isinstance(remote, str) else list(remote or [])
        self.transports = [Transport(u, timeout_s) for u in urls]
        self.monitor = monitor or LinkMonitor()
        self.switches: list[dict[str, Any]] = []
        self._requests = 0
        self._lock = threading.Lock()
        self.variants = self._variants(adapt and bool(self.transports))
        if self.transports:
            self._handshake()
        else:
            self.variants[0].first_remote = len(self.manifest["tiers"])  # every tier in this process
        for v in self.variants:
            v.runner = BundleRunner(v.folder, threads=threads, tiers=range(v.first_remote))
        self.current = next((i for i, v in enumerate(self.variants) if v.folder.resolve() == self.bundle.resolve()), 0)

    @property
    def remote_tier(self) -> int:
        """The first tier not run here (of the current variant)."""
        return self.variants[self.current].first_remote

    @property
    def runner(self) -> BundleRunner:
        """The runner of the local tiers of the current variant."""
        return self.variants[self.current].runner

    def _variants(self, adapt: bool) -> list[_Variant]:
        entries = self.manifest.get("plan", {}).get("variants", []) if adapt else []
        entries = [(i, v) for i, v in enumerate(entries) if v.get("bundle")]
        if not entries:
            return [_Variant(None, None, self.bundle, self.manifest, None)]
        out = []
        for i, v in entries:
            folder = (self.bundle / v["bundle"]).resolve()
            top = v["bundle"] in (".", "")
            out.append(_Variant(i, None if top else i, folder, self.manifest if top else load_manifest(folder),
                                tuple(v["range_bps"])))
        return out

    # -- handshake -------------------------------------------------------------------------------
    def _handshake(self) -> None:
        for transport in self.transports:
            try:
                transport.live()
            except RemoteError as exc:
                raise SplitcError(f"cannot reach the remote tier: {exc}",
                                  "start it with 'splitc serve' or check --remote") from None
        self._measure_rtt()
        for variant in self.variants:
            for tier in served_tiers(variant.manifest):
                name = model_name(tier, variant.model_index)
                for transport in self.transports:
                    if tier not in variant.served and transport.model_ready(name):
                        self._check_model(transport, name, variant, tier)
                        variant.served[tier] = transport
        usable = []
        for variant in self.variants:
            remote_parts = any(p["tier_index"] > 0 for p in variant.manifest["partitions"])
            if variant.served:
                variant.first_remote = min(variant.served)
            elif not remote_parts:  # the plan runs everything on the device: nothing to serve
                variant.first_remote = len(variant.manifest["tiers"])
            elif variant.model_index is None:
                looked = ", ".join(model_name(t) for t in served_tiers(self.manifest) if t > 0)
                raise SplitcError(f"no server at {', '.join(t.url for t in self.transports)} serves a tier of this "
                                  f"bundle (looked for {looked})", "serve it with 'splitc serve BUNDLE --tier NAME'")
            else:
                log.warning("bandwidth variant %s is not served by %s: not used", variant.folder.name,
                            ", ".join(t.url for t in self.transports))
                continue
            usable.append(variant)
        self.variants = usable

    def _check_model(self, transport: Transport, name: str, variant: _Variant, tier: int) -> None:
        config = transport.model_config(name)
        params = {k: (v or {}).get("string_value") for k, v in (config.get("parameters") or {}).items()}
        theirs, ours = params.get("splitc_tier_sha256"), fingerprint(variant.manifest, tier)
        if theirs != ours:
            raise SplitcError(f"the server at {transport.url} runs model {name} of another bundle (tier fingerprint "
                              f"{str(theirs)[:12]}..., local {ours[:12]}...)",
                              "deploy the same bundle folder on both sides")

    def _measure_rtt(self) -> None:
        """Round trip of a payload-free request: the least of three (waiting only ever adds to it)."""
        transport = self.transports[0]
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            transport.live()
            samples.append(time.perf_counter() - start)
        self.monitor.rtt_s = min(samples)
        self.monitor.rtt_measured_at = time.monotonic()

    # -- requests ----------------------------------------------------------------------------------
    def _choose(self) -> _Variant:
        with self._lock:
            self._requests += 1
            if len(self.variants) == 1:
                return self.variants[0]
            bandwidth = self.monitor.bandwidth_bps()
            if bandwidth is not None:
                ranges = [{"range_bps": v.range_bps} for v in self.variants]
                chosen = variant_for(ranges, bandwidth, self.current)
                if chosen != self.current:
                    self.switches.append({"request": self._requests - 1, "from": self.variants[self.current].index,
                                          "to": self.variants[chosen].index, "bandwidth_bps": bandwidth})
                    log.info("link %.3g Mbit/s: variant %s -> %s", bandwidth / 1e6,
                             self.variants[self.current].folder.name, self.variants[chosen].folder.name)
                    self.current = chosen
            variant = self.variants[self.current]
            local = variant.first_remote >= len(variant.manifest["tiers"])
            if local and time.monotonic() - self.monitor.last_observed > self.monitor.probe_interval_s:
                return self._probe_variant(variant)
            return variant

    def _probe_variant(self, current: _Variant) -> _Variant:
        """The variant that uses the link and whose range is nearest the current one's (runs this request)."""
        remote = [v for v in self.variants if v.first_remote < len(v.manifest["tiers"])]
        if not remote:
            return current
        middle = np.sqrt(current.range_bps[0] * current.range_bps[1])
        return min(remote, key=lambda v: abs(np.log(np.sqrt(v.range_bps[0] * v.range_bps[1]) / middle)))

    def infer(self, inputs: Mapping[str, np.ndarray]) -> Result:
        """Run one request; raises :class:`RemoteError` if a remote part failed."""
        if self.transports and time.monotonic() - self.monitor.rtt_measured_at > self.monitor.rtt_refresh_s:
            try:
                self._measure_rtt()
            except RemoteError:
                pass  # the request itself will say what is wrong
        variant = self._choose()
        start = time.perf_counter()
        request_id = os.urandom(8).hex()
        manifest, runner = variant.manifest, variant.runner
        held = {s["name"]: np.asarray(inputs[s["name"]]) for s in manifest["model"]["inputs"]}
        for tier in range(variant.first_remote):
            held, answer, payloads = runner.tier_step(tier, held)
            if answer is not None or payloads is None:
                outputs = answer if answer is not None else runner.outputs(held)
                exit_index = exit_fired(runner, tier, held) if answer is not None else -1
                return Result(dict(outputs), tier, time.perf_counter() - start, request_id, exit=exit_index,
                              variant=variant.index)
            if tier + 1 < variant.first_remote:
                held = runner.decode_transfer(tier, payloads)
                continue
            held = wire_arrays(payloads, tier_contract(manifest, tier + 1).inputs)
        if variant.first_remote >= len(manifest["tiers"]):
            return Result(runner.outputs(held), len(manifest["tiers"]) - 1, time.perf_counter() - start, request_id,
                          variant=variant.index)
        return self._remote(variant, variant.first_remote, held, start, request_id)

    def _remote(self, variant: _Variant, tier: int, tensors: dict[str, np.ndarray], start: float,
                request_id: str) -> Result:
        sent, attempts = 0, 0
        while True:
            transport = variant.served.get(tier)
            if transport is None:
                raise RemoteError(", ".join(t.url for t in self.transports), "not_found",
                                  f"tier {tier} ({model_name(tier, variant.model_index)}) is served by none of the "
                                  f"--remote servers", None, request_id)
            name = model_name(tier, variant.model_index)
            nbytes = sum(np.asarray(v).nbytes for v in tensors.values())
            call_start = time.perf_counter()
            outputs, received, tries = self._with_retries(transport, name, tensors, request_id)
            seconds = time.perf_counter() - call_start
            sent, attempts = sent + nbytes, attempts + tries
            server_s = float(outputs["splitc_server_us"].reshape(-1)[0]) / 1e6 if "splitc_server_us" in outputs else 0.0
            self.monitor.observe(nbytes + received, seconds, server_s)
            next_tier, exit_index, answered = self._control(transport, name, variant, tier, outputs, request_id)
            if next_tier < 0:
                return Result(self._final(transport, name, variant.manifest, outputs, request_id), answered,
                              time.perf_counter() - start, request_id, sent, attempts, exit_index, variant.index)
            if next_tier <= tier:
                raise RemoteError(transport.url, "bad_answer", f"{name} sent the request back to tier {next_tier}",
                                  None, request_id)
            contract = tier_contract(variant.manifest, next_tier)
            tensors = self._checked(transport, name, outputs, contract.inputs, request_id)
            tier = next_tier

    def _with_retries(self, transport: Transport, name: str, tensors: Mapping[str, np.ndarray], request_id: str
                      ) -> tuple[dict[str, np.ndarray], int, int]:
        attempt, pause = 0, self.backoff_s
        while True:
            attempt += 1
            try:
                outputs, received = transport.infer(name, tensors, request_id)
                return outputs, received, attempt
            except RemoteError as exc:
                retryable = exc.code in _RETRYABLE or (exc.code == "timeout" and self.retry_timeouts)
                if not retryable or attempt > self.retries:
                    if attempt > 1:
                        exc.args = (f"{exc.args[0]}; gave up after {attempt} attempts",)
                    raise
                time.sleep(pause)
                pause = min(2 * pause, _MAX_BACKOFF_S)

    def _control(self, transport: Transport, name: str, variant: _Variant, tier: int,
                 outputs: Mapping[str, np.ndarray], request_id: str) -> tuple[int, int, int]:
        """``(next tier, exit, answering tier)`` of an answer; an ensemble (no control tensors) is final."""
        if "splitc_next" not in outputs:
            return -1, -1, tier
        try:
            return (int(outputs["splitc_next"].reshape(-1)[0]), int(outputs["splitc_exit"].reshape(-1)[0]),
                    int(outputs["splitc_tier"].reshape(-1)[0]))
        except (KeyError, IndexError, ValueError):
            raise RemoteError(transport.url, "bad_answer", f"{name} answered broken control tensors", None,
                              request_id) from None

    def _checked(self, transport: Transport, name: str, outputs: Mapping[str, np.ndarray],
                 specs: Sequence[TensorSpec], request_id: str) -> dict[str, np.ndarray]:
        got = {}
        for spec in specs:
            value = outputs.get(spec.name)
            if value is None:
                raise RemoteError(transport.url, "bad_answer", f"{name} answered without tensor '{spec.name}' "
                                                               f"(got {sorted(outputs)})", None, request_id)
            if np.asarray(value).dtype != np.dtype(np.bool_ if spec.dtype == "bool" else spec.dtype) or \
                    tuple(np.shape(value)) != spec.shape:
                raise RemoteError(transport.url, "bad_answer", f"{name} answered '{spec.name}' as "
                                                               f"{np.asarray(value).dtype} {list(np.shape(value))}, "
                                                               f"the manifest says {spec.dtype} {list(spec.shape)}",
                                  None, request_id)
            got[spec.name] = value
        return got

    def _final(self, transport: Transport, name: str, manifest: Mapping[str, Any], outputs: Mapping[str, np.ndarray],
               request_id: str) -> dict[str, np.ndarray]:
        specs = [TensorSpec(o["name"], o["dtype"], tuple(o["shape"])) for o in manifest["model"]["outputs"]]
        return self._checked(transport, name, outputs, specs, request_id)

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

    def close(self) -> None:
        """Close every connection (before stopping a server: open keep-alives delay its shutdown)."""
        for transport in self.transports:
            transport.close()

    def __enter__(self) -> "SplitClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- request files and results
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
    """One line per request: outputs (shape, argmax), which tier (and exit) answered, latency; or the failure."""
    tiers, lines = manifest["tiers"], []
    for i, r in enumerate(results):
        if isinstance(r, Exception):
            lines.append(f"request {i}: FAILED: {r}")
            continue
        shown = ", ".join(f"{k} {list(v.shape)}" + (f" argmax {int(v.argmax())}" if v.size > 1 else f" = {v.item():g}")
                          for k, v in r.outputs.items())
        how = f"exit {r.exit}, " if r.exit >= 0 else ""
        variant = f", variant {r.variant}" if r.variant is not None else ""
        lines.append(f"request {i}: {shown} (answered by tier {r.answered_by} '{tiers[r.answered_by]['name']}', "
                     f"{how}{r.latency_s * 1e3:.1f} ms{variant})")
    return "\n".join(lines)


def save_outputs(path: str | Path, results: Sequence[Result | RemoteError]) -> None:
    """Write the outputs of the answered requests to ``.npz`` (concatenated on axis 0, request order)."""
    ok = [r for r in results if not isinstance(r, Exception)]
    if ok:
        np.savez(path, **{k: np.concatenate([r.outputs[k] for r in ok]) for k in ok[0].outputs})
