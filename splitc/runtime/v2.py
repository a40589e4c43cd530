"""The KServe v2 / Open Inference Protocol as splitc tiers speak it (``splitc serve``, Triton, the client).

A server tier of a bundle is one v2 model, ``splitc_tier<T>`` (``splitc_v<i>_tier<T>`` for bandwidth
variant ``i``). Its contract is read from the manifest alone, so any v2 client can call it:

* **inputs**: tier 0 takes the model inputs; tier T > 0 takes the tensors of the transfer on link T-1
  exactly as they travel: in the wire dtype and shape the manifest gives (``uint8`` for an affine
  encoding, ``float16`` for a half-precision one), never decoded.
* **outputs**: either the model outputs (the request ends here: an exit fired, or this was the last
  tier) or the tensors of the next link in their wire form, plus four control tensors:
  ``splitc_next`` (INT32 [1]: the tier to send the link tensors to, -1 = final answer),
  ``splitc_exit`` (INT32 [1]: the manifest index of the exit that answered, -1 = none),
  ``splitc_tier`` (INT32 [1]: the tier that produced this answer) and ``splitc_server_us`` (INT64 [1]:
  time the server spent on the request, which the client subtracts when it measures the link).
* **config parameters** (``GET /v2/models/<m>/config``, Triton's model-configuration extension, which
  ``splitc serve`` implements too): ``splitc_tier`` and ``splitc_tier_sha256``, the fingerprint of
  everything the answer depends on from this tier on (:func:`fingerprint`): a client whose bundle
  differs refuses to talk to the server instead of returning a wrong answer.

This module also holds the HTTP body codec of the v2 REST protocol with the binary tensor extension
(``Inference-Header-Content-Length``: a JSON header followed by the raw tensor bytes), which the
server side needs. It is written here, not taken from a library: kserve's codec
(``kserve.protocol.infer_type``) registers the protobuf package ``inference`` that
``tritonclient.grpc`` registers too, and the two cannot live in one process (``duplicate symbol
'inference.ServerLiveRequest'``), while our server uses tritonclient's gRPC definitions.

Only numpy and the standard library are imported: this module is copied into Triton model
repositories (see :mod:`splitc.backends.triton`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["V2_DATATYPES", "CONTROL_OUTPUTS", "V2Error", "TensorSpec", "TierContract", "model_name", "tier_contract",
           "fingerprint", "served_tiers", "parse_infer_request", "infer_response_body", "InferRequest",
           "HEADER_LENGTH"]

#: manifest dtype -> v2 datatype
V2_DATATYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64", "int32": "INT32",
                "uint8": "UINT8", "int8": "INT8", "bool": "BOOL"}
_FROM_V2 = {v: k for k, v in V2_DATATYPES.items()}
#: control outputs of every tier model: name -> manifest dtype (shape [1] per request)
CONTROL_OUTPUTS = {"splitc_next": "int32", "splitc_exit": "int32", "splitc_tier": "int32",
                   "splitc_server_us": "int64"}
HEADER_LENGTH = "Inference-Header-Content-Length"


class V2Error(Exception):
    """A request refused with a v2 status: ``status`` (HTTP code; 4xx = the client's fault) and a message."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _np(dtype: str) -> np.dtype:
    return np.dtype(np.bool_ if dtype == "bool" else dtype)


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor of a tier model: manifest dtype name and full shape (batch dimension included)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        """The v2 datatype (``FP32``, ``UINT8``...)."""
        return V2_DATATYPES[self.dtype]

    def check(self, array: np.ndarray, what: str) -> None:
        """Raise :class:`V2Error` (400) unless ``array`` has exactly this dtype and shape."""
        if array.dtype != _np(self.dtype) or tuple(array.shape) != self.shape:
            raise V2Error(400, f"{what} '{self.name}' is {V2_DATATYPES.get(_manifest_dtype(array.dtype), array.dtype)} "
                               f"{list(array.shape)}, expected {self.datatype} {list(self.shape)}")


def _manifest_dtype(dtype: np.dtype) -> str:
    return "bool" if dtype == np.bool_ else np.dtype(dtype).name


@dataclass(frozen=True)
class TierContract:
    """What ``splitc_tier<T>`` takes and answers (see the module docstring)."""

    tier_index: int
    tier_name: str
    inputs: tuple[TensorSpec, ...]
    final_outputs: tuple[TensorSpec, ...]
    forward_outputs: tuple[TensorSpec, ...]  # empty for the last tier that runs anything
    next_tier: int | None
    fingerprint: str
    control: tuple[TensorSpec, ...] = field(default_factory=lambda: tuple(
        TensorSpec(n, d, (1,)) for n, d in CONTROL_OUTPUTS.items()))

    def outputs(self) -> list[TensorSpec]:
        """Every output the model may answer (final, forward, control), each name once."""
        seen: dict[str, TensorSpec] = {}
        for spec in (*self.final_outputs, *self.forward_outputs, *self.control):
            seen.setdefault(spec.name, spec)
        return list(seen.values())

    def batchable(self) -> bool:
        """Whether every tensor has a leading batch dimension equal to the model's (a dynamic batcher may
        then stack requests on axis 0)."""
        tensors = (*self.inputs, *self.final_outputs, *self.forward_outputs)
        return bool(tensors) and all(len(t.shape) >= 1 for t in tensors) and \
            len({t.shape[0] for t in tensors}) == 1


def model_name(tier_index: int, variant: int | None = None) -> str:
    """The v2 model name of a tier: ``splitc_tier<T>``, or ``splitc_v<i>_tier<T>`` for bandwidth variant ``i``."""
    return f"splitc_tier{tier_index}" if variant is None else f"splitc_v{variant}_tier{tier_index}"


def _spec(entry: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(entry["name"], entry["dtype"], tuple(int(d) for d in entry["shape"]))


def _transfer(manifest: Mapping[str, Any], link: int) -> Mapping[str, Any] | None:
    return next((t for t in manifest["transfers"] if t["link"] == link), None)


def served_tiers(manifest: Mapping[str, Any]) -> list[int]:
    """Tiers a v2 model can serve: tier 0, and every tier that receives a transfer."""
    return [0] + sorted(t["to_tier"] for t in manifest["transfers"])


def fingerprint(manifest: Mapping[str, Any], tier_index: int) -> str:
    """sha256 of everything an answer of ``splitc_tier<T>`` depends on: its inputs (with their encodings)
    and, for this tier and every later one, the partitions (file sha256 and I/O), their exits, the
    outgoing transfers, and the model outputs. Both ends compute it from their own manifest."""
    parts = {p["index"]: p for p in manifest["partitions"]}
    tiers = []
    for tier in manifest["tiers"][tier_index:]:
        mine = [p for p in manifest["partitions"] if p["tier_index"] == tier["index"]]
        indices = {p["index"] for p in mine}
        tiers.append({
            "partitions": [{k: p.get(k) for k in ("index", "sha256", "inputs", "outputs")} for p in mine],
            "exits": [{k: e.get(k) for k in ("index", "partition", "outputs", "answers", "score", "threshold")}
                      for e in manifest.get("exits", []) if e["partition"] in indices and e["partition"] in parts],
            "transfer": _transfer(manifest, tier["index"]),
        })
    incoming = manifest["model"]["inputs"] if tier_index == 0 else (_transfer(manifest, tier_index - 1) or {}).get(
        "tensors", [])
    doc = {"tier": tier_index, "inputs": incoming, "tiers": tiers,
           "outputs": [{k: o.get(k) for k in ("name", "dtype", "shape", "tensor")} for o in manifest["model"]["outputs"]]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tier_contract(manifest: Mapping[str, Any], tier_index: int, last_tier: int | None = None) -> TierContract:
    """The contract of ``splitc_tier<T>`` when it runs tiers ``T..last_tier`` (default: T alone).

    Raises:
        ValueError: the tier receives nothing in this bundle (the plan finishes before it).
    """
    last = tier_index if last_tier is None else last_tier
    tier = manifest["tiers"][tier_index]
    if tier_index == 0:
        inputs = tuple(_spec(s) for s in manifest["model"]["inputs"])
    else:
        incoming = _transfer(manifest, tier_index - 1)
        if incoming is None:
            raise ValueError(f"tier '{tier['name']}' receives nothing in this bundle (no transfer on link "
                             f"{tier_index - 1}: the plan finishes before it)")
        inputs = tuple(_spec(s) for s in incoming["tensors"])
    outgoing = _transfer(manifest, last)
    final = tuple(TensorSpec(o["name"], o["dtype"], tuple(o["shape"])) for o in manifest["model"]["outputs"])
    forward = tuple(_spec(s) for s in outgoing["tensors"]) if outgoing else ()
    return TierContract(tier_index, tier["name"], inputs, final, forward,
                        outgoing["to_tier"] if outgoing else None, fingerprint(manifest, tier_index))


# --------------------------------------------------------------------------- HTTP body codec (server side)
@dataclass
class InferRequest:
    """A parsed v2 REST inference request."""

    id: str | None
    inputs: dict[str, np.ndarray]
    requested: list[str] | None          # output names asked for (None = all)
    binary: set[str] | bool              # outputs to send as binary data (True = all)


def _array(entry: Mapping[str, Any], raw: bytes | None) -> np.ndarray:
    name, datatype = entry.get("name"), entry.get("datatype")
    if not isinstance(name, str) or not name:
        raise V2Error(400, "an input has no 'name'")
    if datatype not in _FROM_V2:
        raise V2Error(400, f"input '{name}': datatype {datatype!r} is not supported (supported: "
                           f"{', '.join(_FROM_V2)})")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise V2Error(400, f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}")
    dtype = _np(_FROM_V2[datatype]).newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise V2Error(400, f"input '{name}': {len(raw)} bytes of binary data for {datatype} {shape} "
                               f"({count * dtype.itemsize} expected)")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    if "data" not in entry:
        raise V2Error(400, f"input '{name}' has neither 'data' nor binary data")
    try:
        array = np.asarray(entry["data"], dtype=dtype.newbyteorder("="))
    except (TypeError, ValueError) as exc:
        raise V2Error(400, f"input '{name}': 'data' is not a list of {datatype} values ({exc})") from None
    if array.size != count:
        raise V2Error(400, f"input '{name}': {array.size} values in 'data' for shape {shape}")
    return array.reshape(shape)


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse a v2 REST inference request body (JSON, or JSON + binary tensor data).

    Raises:
        V2Error: 400 with what is wrong.
    """
    if header_length is None:
        header_length = len(body)
    if not 0 < header_length <= len(body):
        raise V2Error(400, f"{HEADER_LENGTH} {header_length} does not fit a body of {len(body)} bytes")
    try:
        header = json.loads(bytes(body[:header_length]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise V2Error(400, f"the request header is not JSON ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise V2Error(400, "the request has no 'inputs' list")
    offset, inputs = header_length, {}
    for entry in header["inputs"]:
        if not isinstance(entry, dict):
            raise V2Error(400, "every input must be a JSON object")
        size = (entry.get("parameters") or {}).get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise V2Error(400, f"input '{entry.get('name')}': binary_data_size {size!r} runs past the end of "
                                   f"the body ({len(body) - offset} bytes left)")
            raw, offset = body[offset:offset + size], offset + size
        array = _array(entry, raw)
        if entry["name"] in inputs:
            raise V2Error(400, f"input '{entry['name']}' is given twice")
        inputs[entry["name"]] = array
    if offset != len(body):
        raise V2Error(400, f"{len(body) - offset} bytes of binary data follow the last input")
    params = header.get("parameters") or {}
    requested, binary = None, bool(params.get("binary_data_output", False))
    if isinstance(header.get("outputs"), list):
        requested, wanted = [], set()
        for out in header["outputs"]:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise V2Error(400, "every requested output must be an object with a 'name'")
            requested.append(out["name"])
            if (out.get("parameters") or {}).get("binary_data", binary):
                wanted.add(out["name"])
        binary = wanted
    request_id = header.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, inputs, requested, binary)


def infer_response_body(model: str, request_id: str | None, outputs: Mapping[str, np.ndarray],
                        binary: set[str] | bool) -> tuple[bytes, int | None]:
    """A v2 REST response body: ``(body, header_length)``; header_length is None when it is all JSON."""
    entries, chunks = [], []
    for name, value in outputs.items():
        array = np.ascontiguousarray(value)
        entry: dict[str, Any] = {"name": name, "datatype": V2_DATATYPES[_manifest_dtype(array.dtype)],
                                 "shape": list(array.shape)}
        if binary is True or (binary and name in binary):
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": entries}
    if request_id is not None:
        doc["id"] = request_id
    header = json.dumps(doc, separators=(",", ":")).encode()
    return (header + b"".join(chunks), len(header)) if chunks else (header, None)


def _check_names(got: Sequence[str], want: Sequence[str], what: str) -> None:
    if sorted(got) != sorted(want):
        raise V2Error(400, f"{what}: expected tensors {sorted(want)}, got {sorted(got)}")
