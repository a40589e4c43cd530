"""Triton Inference Server model repositories for server tiers (edge and cloud-vm).

For each server tier with a partition, ``<tier>/triton/`` is a model repository::

    <tier>/triton/splitc_part<K>/config.pbtxt      backend "onnxruntime", exact names, dims, dtypes
    <tier>/triton/splitc_part<K>/1/model.onnx       the partition (a hard link to <tier>/part<K>.onnx)
    <tier>/triton/README.md                        how a client chains the tiers

Names, dims and dtypes are read from the ONNX file itself and checked against the
manifest, so the config cannot drift from the model. Shapes are static and include the
batch dimension, so ``max_batch_size: 0`` (Triton does not add a batch dimension).
tensorrt-backend tiers get the ONNX Runtime backend with the TensorRT execution
accelerator (ONNX Runtime's TensorRT EP, in the precision the compiler verified).

Exits and encodings are client-side logic (documented in the README): Triton receives
decoded tensors; the client applies the exit rule of the manifest to the partition's
exit outputs (which are ordinary outputs of the model) and decodes each transfer before
sending it. A Python BLS model doing this server-side is left for later.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import onnx

__all__ = ["TRITON_DTYPES", "SERVER_KINDS", "config_pbtxt", "emit_triton", "onnx_io"]

log = logging.getLogger("splitc")

#: manifest dtype -> Triton model-config DataType
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
                 "int64": "TYPE_INT64", "int32": "TYPE_INT32", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8",
                 "bool": "TYPE_BOOL"}
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.DOUBLE: "float64",
                onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32", onnx.TensorProto.UINT8: "uint8",
                onnx.TensorProto.INT8: "int8", onnx.TensorProto.BOOL: "bool"}
#: Tier kinds that run a server (devices run the client; FaaS tiers get a handler instead).
SERVER_KINDS = ("edge", "cloud-vm")


def onnx_io(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX file as ``{"name", "dtype", "shape"}`` (initializers excluded)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def describe(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            out.append({"name": v.name, "dtype": _ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}"),
                        "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]})
        return out

    return describe(graph.input), describe(graph.output)


def _tensor_block(key: str, tensors: list[dict[str, Any]]) -> str:
    items = []
    for t in tensors:
        dims = ", ".join(str(d) for d in t["shape"]) if t["shape"] else "1"  # Triton needs >= 1 dim
        reshape = "\n    reshape: { shape: [ ] }" if not t["shape"] else ""
        items.append(f'  {{\n    name: "{t["name"]}"\n    data_type: {TRITON_DTYPES[t["dtype"]]}\n'
                     f'    dims: [ {dims} ]{reshape}\n  }}')
    return f"{key} [\n" + ",\n".join(items) + "\n]\n"


def config_pbtxt(name: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], gpu: bool,
                 precision: str = "FP32") -> str:
    """The text of ``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``)."""
    text = (f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
            + _tensor_block("input", inputs) + _tensor_block("output", outputs)
            + f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]\n")
    if gpu:
        text += ("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
                 f'      name : "tensorrt"\n      parameters {{ key: "precision_mode" value: "{precision}" }}\n'
                 "    } ]\n  }\n}\n")
    return text


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system (the staging folder): no second copy of the weights
    except OSError:
        shutil.copyfile(src, dst)


def _checked_io(path: Path, part: dict[str, Any], notes: list[str]
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ONNX file's I/O (what Triton will load), with a note where it differs from the manifest."""
    inputs, outputs = onnx_io(path)
    for kind, got, want in (("input", inputs, part["inputs"]), ("output", outputs, part["outputs"])):
        expect = [{"name": t["name"], "dtype": t["dtype"], "shape": list(t["shape"])} for t in want]
        if sorted(got, key=lambda t: t["name"]) != sorted(expect, key=lambda t: t["name"]):
            notes.append(f"{path.name}: ONNX {kind}s {got} differ from the manifest's {expect}; "
                         f"config.pbtxt follows the ONNX file")
            log.warning("[triton] %s", notes[-1])
    return inputs, outputs


def emit_triton(stage: Path, manifest: dict[str, Any], tier: dict[str, Any]) -> dict[str, Any] | None:
    """Write the model repository of one server tier; returns its artifact record (None: no partition)."""
    parts = [p for p in manifest["partitions"] if p["tier_index"] == tier["index"]]
    if not parts:
        return None
    repo = stage / tier["name"] / "triton"
    gpu = tier["target"].get("backend") in ("tensorrt", "torch")  # torch: a GPU measured by splitc profile --device cuda
    files, notes = [], []
    for part in parts:
        model = f"splitc_part{part['index']}"
        version = repo / model / "1"
        version.mkdir(parents=True, exist_ok=True)
        inputs, outputs = _checked_io(stage / part["file"], part, notes)
        _link_or_copy(stage / part["file"], version / "model.onnx")
        (repo / model / "config.pbtxt").write_text(config_pbtxt(model, inputs, outputs, gpu), encoding="utf-8")
        files += [repo / model / "config.pbtxt", version / "model.onnx"]
    (repo / "README.md").write_text(_readme(manifest, tier, parts), encoding="utf-8")
    files.append(repo / "README.md")
    return {"kind": "triton", "tier_index": tier["index"], "path": f"{tier['name']}/triton",
            "files": sorted(str(f.relative_to(stage)) for f in files), "notes": notes}


def _readme(manifest: dict[str, Any], tier: dict[str, Any], parts: list[dict[str, Any]]) -> str:
    models = ", ".join(f"`splitc_part{p['index']}`" for p in parts)
    return f"""# Triton model repository for tier `{tier['name']}`

    tritonserver --model-repository=$(pwd)

Models: {models} (ONNX Runtime backend, static shapes, `max_batch_size: 0`).

## Client logic (what a Triton client must do to follow manifest.json)

1. Run the earlier tiers' partitions. After each, apply the manifest's `exits`: when a
   partition has an exit output whose max softmax is >= its threshold, that exit's
   prediction is the answer and nothing is sent.
2. Otherwise take the tensors of the transfer on the link into this tier (manifest
   `transfers[link].tensors`), encode and decode them exactly as their `encoding` says
   (raw, float16, affine uint8 ...) -- Triton receives the *decoded* tensors, named
   and shaped as in `config.pbtxt` -- and call `splitc_part<K>` with them.
3. Apply step 1 to this partition's outputs, then continue with the next tier, or read
   the model outputs by tensor name (manifest `model.outputs[].tensor`).

`splitc.runtime.client` implements exactly this against `splitc serve`, whose
binary wire format also carries the *encoded* tensors (so compression saves bandwidth);
with Triton, put the decoding next to the server (or in a Python BLS model) to keep
that saving.
"""
