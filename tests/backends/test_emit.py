"""Which artifacts each tier gets (--emit), and the manifest record of them."""

from __future__ import annotations

import json

import pytest

from splitc.driver.manifest import validate_manifest
from splitc.errors import SplitcError
from splitc.backends.emit import emit_backend_artifacts, emitters_for, parse_emit


@pytest.mark.parametrize("target, emit, expected", [
    ({"kind": "device", "backend": "tensorrt"}, ("auto",), ["tensorrt"]),
    ({"kind": "device", "backend": "onnxruntime"}, ("auto",), []),
    ({"kind": "edge", "backend": "onnxruntime"}, ("auto",), ["triton"]),
    ({"kind": "cloud-vm", "backend": "tensorrt"}, ("auto",), ["triton", "tensorrt"]),
    ({"kind": "cloud-vm", "backend": "tensorrt"}, ("tensorrt",), ["tensorrt"]),
    ({"kind": "faas", "backend": "onnxruntime"}, ("auto",), ["faas"]),
    ({"kind": "faas", "backend": "onnxruntime"}, ("none",), []),
])
def test_emitters_by_tier(target, emit, expected):
    assert emitters_for(target, emit) == expected


def test_parse_emit():
    assert parse_emit(("triton,faas",)) == ("triton", "faas")
    assert parse_emit(()) == ("auto",)
    with pytest.raises(SplitcError, match="--emit onnx is not known; valid: auto, none, triton, tensorrt, faas"):
        parse_emit(("onnx",))
    with pytest.raises(SplitcError, match="cannot be combined"):
        parse_emit(("none,triton",))


def test_manifest_records_every_artifact_and_validates(bundle3):
    manifest = json.loads((bundle3 / "manifest.json").read_text())
    validate_manifest(manifest)
    kinds = sorted((a["kind"], a["tier_index"]) for a in manifest["artifacts"])
    assert kinds == [("faas", 2), ("tensorrt", 0), ("triton", 1)]
    for record in manifest["artifacts"]:
        assert all((bundle3 / f).is_file() for f in record["files"])


def test_emit_none_writes_nothing(bundle3, tmp_path):
    from splitc.core.options import CompileOptions

    manifest = json.loads((bundle3 / "manifest.json").read_text())
    assert emit_backend_artifacts(tmp_path, manifest, CompileOptions(targets=("a",), emit=("none",))) == []
    assert not any(tmp_path.iterdir())
