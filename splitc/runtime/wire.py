"""The splitc wire format (version 1): one binary message per HTTP body.

A message carries the tensors of one hop of one request: the model inputs sent to
tier 0, the encoded boundary tensors of one link, or the model outputs sent back.
Tensor payloads are exactly the bytes the manifest's encoding produced
(:meth:`BundleRunner.encode_transfer`); this module never looks inside them, so
new encodings need no wire change. Every integer is little-endian.

Layout::

    offset  size  field
    0       4     magic            b"SPLW"
    4       2     version          uint16, currently 1
    6       1     kind             uint8: 0 = INPUTS (model inputs, raw, to tier 0),
                                          1 = TRANSFER (tensors of link ``index``, encoded per manifest),
                                          2 = OUTPUTS (model outputs, raw, the answer)
    7       1     reserved         0
    8       32    bundle hash      sha256 of the bundle's manifest.json bytes (both ends must match)
    40      4     index            uint32: the link for TRANSFER, the tier that answered for OUTPUTS, 0 for INPUTS
    44      16    request id       opaque 16 bytes chosen by the client, echoed in the answer
    60      4     tensor count     uint32, at most MAX_TENSORS
    64      ...   tensor table     per tensor, in payload order:
                                     uint16 name length, name (UTF-8),
                                     uint8 dtype code (DTYPE_CODES), uint8 rank (<= MAX_RANK),
                                     rank x uint64 dims, uint64 payload byte length
    ...     ...   payloads         concatenated in table order; the body ends exactly after the last one

``dtype`` and ``shape`` in the table are the tensor's *logical* dtype and shape
(as in the manifest), not those of the encoded bytes: the receiver checks them
against the manifest before decoding. Parsing is strict: a wrong magic, an
unknown version or kind, a truncated or over-long body, a name that is not UTF-8,
duplicate names or sizes over the limits raise :class:`WireError`, whose ``code``
says which (the server maps it to a 4xx answer).

Example:
    >>> msg = Message(KIND_TRANSFER, b"\\0" * 32, 0, b"r" * 16, [Tensor("relu", "float32", (1, 2), b"\\0" * 8)])
    >>> parse(serialize(msg)).tensors[0].shape
    (1, 2)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MAGIC", "VERSION", "KIND_INPUTS", "KIND_TRANSFER", "KIND_OUTPUTS", "KIND_NAMES", "DTYPE_CODES",
           "MAX_TENSORS", "MAX_RANK", "MAX_NAME_BYTES", "WireError", "Tensor", "Message", "serialize", "parse",
           "bundle_hash"]

MAGIC = b"SPLW"
VERSION = 1
KIND_INPUTS, KIND_TRANSFER, KIND_OUTPUTS = 0, 1, 2
KIND_NAMES = {KIND_INPUTS: "inputs", KIND_TRANSFER: "transfer", KIND_OUTPUTS: "outputs"}
#: Fixed codes, never renumbered (append new dtypes at the end).
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2, "float64": 3, "int64": 4, "int32": 5, "uint8": 6,
               "int8": 7, "bool": 8}
_DTYPE_NAMES = {v: k for k, v in DTYPE_CODES.items()}
MAX_TENSORS = 1024
MAX_RANK = 8
MAX_NAME_BYTES = 1024

_HEADER = struct.Struct("<4sHBB32sI16sI")  # 64 bytes
_U16, _U8U8, _U64 = struct.Struct("<H"), struct.Struct("<BB"), struct.Struct("<Q")


class WireError(ValueError):
    """A message that breaks the wire format. ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Tensor:
    """One named tensor of a message: its logical dtype/shape and its encoded payload."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    payload: bytes


@dataclass
class Message:
    """A parsed (or to-be-sent) wire message."""

    kind: int
    bundle_hash: bytes
    index: int
    request_id: bytes
    tensors: list[Tensor] = field(default_factory=list)

    def payloads(self) -> dict[str, bytes]:
        """Payload bytes by tensor name (what ``BundleRunner.decode_transfer`` takes)."""
        return {t.name: t.payload for t in self.tensors}


def bundle_hash(bundle: str | Path) -> bytes:
    """The 32-byte sha256 of ``bundle/manifest.json``: both ends of a link must serve the same bundle."""
    return hashlib.sha256((Path(bundle) / "manifest.json").read_bytes()).digest()


def serialize(message: Message) -> bytes:
    """The bytes of ``message`` (see the module docstring for the layout)."""
    if len(message.bundle_hash) != 32 or len(message.request_id) != 16:
        raise ValueError("bundle_hash must be 32 bytes and request_id 16 bytes")
    if len(message.tensors) > MAX_TENSORS:
        raise ValueError(f"{len(message.tensors)} tensors, at most {MAX_TENSORS} allowed")
    parts = [_HEADER.pack(MAGIC, VERSION, message.kind, 0, message.bundle_hash, message.index, message.request_id,
                          len(message.tensors))]
    for t in message.tensors:
        name = t.name.encode("utf-8")
        if len(name) > MAX_NAME_BYTES or len(t.shape) > MAX_RANK or t.dtype not in DTYPE_CODES:
            raise ValueError(f"tensor '{t.name}' cannot be sent (name length, rank or dtype out of range)")
        parts += [_U16.pack(len(name)), name, _U8U8.pack(DTYPE_CODES[t.dtype], len(t.shape)),
                  b"".join(_U64.pack(int(d)) for d in t.shape), _U64.pack(len(t.payload))]
    parts += [bytes(t.payload) if not isinstance(t.payload, bytes) else t.payload for t in message.tensors]
    return b"".join(parts)


def parse(body: bytes, max_bytes: int | None = None) -> Message:
    """Parse and check one message.

    Args:
        body: the whole HTTP body.
        max_bytes: refuse bodies longer than this (None = no limit beyond the format's own).

    Raises:
        WireError: with ``code`` one of ``too_large``, ``truncated``, ``bad_magic``, ``bad_version``,
            ``bad_kind``, ``bad_table``, ``trailing_bytes``.
    """
    view = memoryview(body)
    if max_bytes is not None and len(view) > max_bytes:
        raise WireError("too_large", f"message of {len(view)} bytes exceeds the limit of {max_bytes}")
    if len(view) >= len(MAGIC) and bytes(view[:len(MAGIC)]) != MAGIC:  # say "not ours" before "too short"
        raise WireError("bad_magic", f"not a splitc wire message (starts with {bytes(view[:8])!r}, expected {MAGIC!r})")
    if len(view) < _HEADER.size:
        raise WireError("truncated", f"message of {len(view)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, kind, _reserved, digest, index, request_id, count = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise WireError("bad_magic", f"not a splitc wire message (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise WireError("bad_version", f"wire format version {version} is not supported (this runtime speaks {VERSION})")
    if kind not in KIND_NAMES:
        raise WireError("bad_kind", f"unknown message kind {kind}")
    if count > MAX_TENSORS:
        raise WireError("bad_table", f"{count} tensors announced, at most {MAX_TENSORS} allowed")
    offset, table = _HEADER.size, []
    for i in range(count):
        name_len = _read(_U16, view, offset, f"tensor {i} name length")[0]
        offset += _U16.size
        if name_len == 0 or name_len > MAX_NAME_BYTES:
            raise WireError("bad_table", f"tensor {i}: name length {name_len} out of range 1..{MAX_NAME_BYTES}")
        if offset + name_len > len(view):
            raise WireError("truncated", f"tensor {i}: name runs past the end of the message")
        try:
            name = bytes(view[offset:offset + name_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("bad_table", f"tensor {i}: name is not valid UTF-8") from None
        offset += name_len
        code, rank = _read(_U8U8, view, offset, f"tensor '{name}' dtype/rank")
        offset += _U8U8.size
        if code not in _DTYPE_NAMES:
            raise WireError("bad_table", f"tensor '{name}': unknown dtype code {code}")
        if rank > MAX_RANK:
            raise WireError("bad_table", f"tensor '{name}': rank {rank} exceeds {MAX_RANK}")
        dims = tuple(_read(_U64, view, offset + 8 * k, f"tensor '{name}' dims")[0] for k in range(rank))
        offset += 8 * rank
        length = _read(_U64, view, offset, f"tensor '{name}' byte length")[0]
        offset += _U64.size
        table.append((name, _DTYPE_NAMES[code], dims, length))
    names = [t[0] for t in table]
    if len(set(names)) != len(names):
        raise WireError("bad_table", f"duplicate tensor names in {names}")
    needed = sum(t[3] for t in table)
    if offset + needed > len(view):
        raise WireError("truncated", f"tensor table announces {needed} payload bytes but only "
                                     f"{len(view) - offset} follow")
    if offset + needed < len(view):
        raise WireError("trailing_bytes", f"{len(view) - offset - needed} bytes follow the last payload")
    tensors = []
    for name, dtype, dims, length in table:
        tensors.append(Tensor(name, dtype, dims, bytes(view[offset:offset + length])))
        offset += length
    return Message(kind, bytes(digest), index, bytes(request_id), tensors)


def _read(fmt: struct.Struct, view: memoryview, offset: int, what: str) -> tuple:
    if offset + fmt.size > len(view):
        raise WireError("truncated", f"message ends inside {what}")
    return fmt.unpack_from(view, offset)
