"""The wire format: exact round trips and strict rejection of every malformed shape of message."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from splitc.runtime import wire

DIGEST, RID = bytes(range(32)), b"0123456789abcdef"


def _message(*tensors: wire.Tensor, kind: int = wire.KIND_TRANSFER, index: int = 3) -> wire.Message:
    return wire.Message(kind, DIGEST, index, RID, list(tensors))


def _tensor(name="relu", shape=(1, 2, 3), dtype="float32") -> wire.Tensor:
    array = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    return wire.Tensor(name, dtype, tuple(shape), array.tobytes())


def test_round_trip_keeps_everything():
    msg = _message(_tensor(), _tensor("ünïcode", (4,), "int64"), _tensor("scalar", (), "uint8"))
    back = wire.parse(wire.serialize(msg))
    assert back == msg
    assert back.payloads()["ünïcode"] == np.arange(4, dtype="int64").tobytes()


def test_layout_is_the_documented_one():
    body = wire.serialize(_message(_tensor("t", (2,), "float16")))
    assert body[:4] == b"SPLW" and struct.unpack_from("<H", body, 4)[0] == 1
    assert body[6] == wire.KIND_TRANSFER and body[8:40] == DIGEST
    assert struct.unpack_from("<I", body, 40)[0] == 3 and body[44:60] == RID
    assert struct.unpack_from("<I", body, 60)[0] == 1
    # name length 1, "t", dtype float16 (code 1), rank 1, dim 2, 4 payload bytes, then the payload
    assert body[64:] == struct.pack("<H", 1) + b"t" + bytes([1, 1]) + struct.pack("<QQ", 2, 4) + body[-4:]


def _corrupt(offset: int, data: bytes) -> bytes:
    body = bytearray(wire.serialize(_message(_tensor())))
    body[offset:offset + len(data)] = data
    return bytes(body)


@pytest.mark.parametrize("body, code", [
    (b"", "truncated"),
    (b"SPLW" + b"\0" * 10, "truncated"),
    (_corrupt(0, b"JSON"), "bad_magic"),
    (_corrupt(4, struct.pack("<H", 2)), "bad_version"),
    (_corrupt(6, bytes([9])), "bad_kind"),
    (_corrupt(60, struct.pack("<I", 10**6)), "bad_table"),   # absurd tensor count
    (_corrupt(60, struct.pack("<I", 2)), "bad_table"),       # a second table entry would start in the payload
    (_corrupt(64, struct.pack("<H", 0)), "bad_table"),       # empty name
    (_corrupt(66, b"\xff\xfe\xfd\xfc"), "bad_table"),        # name not UTF-8
    (_corrupt(70, bytes([77])), "bad_table"),                # unknown dtype code
    (_corrupt(71, bytes([200])), "bad_table"),               # rank over the limit
    (wire.serialize(_message(_tensor()))[:-1], "truncated"),
    (wire.serialize(_message(_tensor())) + b"x", "trailing_bytes"),
    (wire.serialize(_message(_tensor(), _tensor())), "bad_table"),  # duplicate names
])
def test_malformed_messages_are_rejected_with_a_code(body, code):
    with pytest.raises(wire.WireError) as info:
        wire.parse(body)
    assert info.value.code == code, str(info.value)


def test_size_limit():
    body = wire.serialize(_message(_tensor(shape=(100,))))
    assert wire.parse(body, max_bytes=len(body)).tensors[0].shape == (100,)
    with pytest.raises(wire.WireError, match="exceeds the limit") as info:
        wire.parse(body, max_bytes=len(body) - 1)
    assert info.value.code == "too_large"


def test_huge_announced_payload_does_not_allocate():
    body = bytearray(wire.serialize(_message(_tensor())))
    length_at = 64 + 2 + 4 + 2 + 3 * 8  # after name, dtype/rank and three dims
    body[length_at:length_at + 8] = struct.pack("<Q", 2**62)
    with pytest.raises(wire.WireError, match="announces") as info:
        wire.parse(bytes(body))
    assert info.value.code == "truncated"


def test_bundle_hash_is_the_manifest_sha256(tmp_path):
    import hashlib

    (tmp_path / "manifest.json").write_text("{}")
    assert wire.bundle_hash(tmp_path) == hashlib.sha256(b"{}").digest()
