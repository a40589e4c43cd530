"""Wire encodings of boundary tensors, exactly as the manifest names them.

Every encoding turns an array into bytes and back given the tensor's manifest
entry (``name``, ``shape``, ``dtype``, ``encoding``). ``raw``: the tensor's own
dtype, C order, little-endian.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["encode", "decode", "ENCODINGS", "numpy_dtype"]

_NUMPY = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64,
          "int32": np.int32, "uint8": np.uint8, "int8": np.int8, "bool": np.bool_}


def numpy_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype for a manifest dtype name."""
    return np.dtype(_NUMPY[name]).newbyteorder("<")


def _encode_raw(array: np.ndarray, spec: dict[str, Any]) -> bytes:
    want = numpy_dtype(spec["dtype"])
    if tuple(array.shape) != tuple(spec["shape"]):
        raise ValueError(f"tensor '{spec['name']}' has shape {list(array.shape)}, manifest says {spec['shape']}")
    return np.ascontiguousarray(array, dtype=want).tobytes()


def _decode_raw(payload: bytes, spec: dict[str, Any]) -> np.ndarray:
    dtype = numpy_dtype(spec["dtype"])
    expected = int(np.prod(spec["shape"], dtype=np.int64)) * dtype.itemsize
    if len(payload) != expected:
        raise ValueError(f"tensor '{spec['name']}': {len(payload)} bytes received, {expected} expected")
    return np.frombuffer(payload, dtype=dtype).reshape(spec["shape"]).astype(dtype.newbyteorder("="))


ENCODINGS: dict[str, tuple[Callable[[np.ndarray, dict], bytes], Callable[[bytes, dict], np.ndarray]]] = {
    "raw": (_encode_raw, _decode_raw),
}


def _codec(spec: dict[str, Any]):
    kind = spec.get("encoding", {}).get("kind", "raw")
    if kind not in ENCODINGS:
        raise ValueError(f"tensor '{spec['name']}' uses encoding '{kind}', which this runtime does not know "
                         f"(known: {', '.join(ENCODINGS)})")
    return ENCODINGS[kind]


def encode(array: np.ndarray, spec: dict[str, Any]) -> bytes:
    """Bytes on the wire for ``array`` as described by its manifest entry ``spec``."""
    return _codec(spec)[0](array, spec)


def decode(payload: bytes, spec: dict[str, Any]) -> np.ndarray:
    """The array a receiver reconstructs from ``payload``."""
    return _codec(spec)[1](payload, spec)
