"""Wire encodings of boundary tensors, exactly as the manifest names them.

Every encoding turns an array into bytes and back given the tensor's manifest
entry (``name``, ``shape``, ``dtype``, ``encoding``). ``raw``: the tensor's own
dtype, C order, little-endian.

Lossy encodings (issue 4) carry a float tensor in a smaller dtype; the entry's
``shape``/``dtype``/``bytes`` are what is on the wire, ``encoding.source_dtype``
what it stands for:

* ``float16``: IEEE half precision.
* ``affine_uint8``: ``q = clip(round_half_even(x / scale) + zero_point, 0, 255)``,
  ``x ~= (q - zero_point) * scale``; ``axis`` null = one scale for the tensor, else
  one ``scale``/``zero_point`` per index along ``axis``.

When ``encoding.in_graph`` is true (what splitc emits), the sending partition already
ends with the quantization and the receiving partition starts with the
dequantization, so the runtime moves the small dtype's bytes as they are and hands
the receiver the small dtype. A tensor given in float is quantized here (any
runtime can produce the wire format), and with ``in_graph`` false decoding returns
floats. An optional ``encoding.bottleneck`` says the tensor is a learned code that
the receiving partition decodes (nothing for the runtime to do).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["encode", "decode", "ENCODINGS", "numpy_dtype", "quantize_affine_uint8", "dequantize_affine_uint8"]

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


def _affine_params(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    enc = spec["encoding"]
    scale = np.asarray(enc["scale"], dtype=np.float32)
    zero = np.asarray(enc["zero_point"], dtype=np.float32)
    axis = enc.get("axis")
    if axis is not None:  # broadcast along axis
        shape = [1] * len(spec["shape"])
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return scale, zero


def quantize_affine_uint8(array: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The uint8 wire values of a float ``array`` (round half to even, like ONNX QuantizeLinear)."""
    scale, zero = _affine_params(spec)
    q = np.rint(np.asarray(array, dtype=np.float32) / scale) + zero
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize_affine_uint8(q: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The float values the uint8 wire values ``q`` stand for."""
    scale, zero = _affine_params(spec)
    return ((q.astype(np.float32) - zero) * scale).astype(np.float32)


def _to_wire(array: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """``array`` in the wire dtype: as is when the sending graph already encoded it."""
    array = np.asarray(array)
    if array.dtype == numpy_dtype(spec["dtype"]).newbyteorder("="):
        return array
    kind = spec["encoding"]["kind"]
    if kind == "affine_uint8":
        return quantize_affine_uint8(array, spec)
    return array.astype(np.float16)


def _from_wire(array: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    enc = spec["encoding"]
    if enc.get("in_graph", False):
        return array  # the receiving partition decodes
    if enc["kind"] == "affine_uint8":
        return dequantize_affine_uint8(array, spec)
    return array.astype(numpy_dtype(enc.get("source_dtype", "float32")).newbyteorder("="))


def _encode_lossy(array: np.ndarray, spec: dict[str, Any]) -> bytes:
    return _encode_raw(_to_wire(array, spec), spec)


def _decode_lossy(payload: bytes, spec: dict[str, Any]) -> np.ndarray:
    return _from_wire(_decode_raw(payload, spec), spec)


ENCODINGS: dict[str, tuple[Callable[[np.ndarray, dict], bytes], Callable[[bytes, dict], np.ndarray]]] = {
    "raw": (_encode_raw, _decode_raw),
    "float16": (_encode_lossy, _decode_lossy),
    "affine_uint8": (_encode_lossy, _decode_lossy),
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
