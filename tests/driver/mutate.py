"""Bundle mutations for fault-injection tests: change a bundle the way a compiler bug would, then update
every sha256 in the manifest so that only a numeric (or contract) check can catch it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["copy_bundle", "rehash", "edit_partition", "scale_initializer", "scale_constant", "initializers"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_bundle(src: Path, dst: Path) -> Path:
    """A copy with its own files (no hard links shared with ``src``)."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    return dst


def rehash(bundle: Path) -> dict:
    """Recompute every sha256 the manifest lists (partitions, exit heads, artifacts, reference); returns the manifest."""
    path = Path(bundle) / "manifest.json"
    manifest = json.loads(path.read_text())
    for part in manifest["partitions"]:
        part["sha256"] = _sha(Path(bundle) / part["file"])
    for exit_ in manifest.get("exits", []):
        weights = exit_.get("head", {}).get("weights")
        if weights:
            weights["sha256"] = _sha(Path(bundle) / weights["file"])
    for artifact in manifest.get("artifacts") or []:
        artifact["sha256"] = {f: _sha(Path(bundle) / f) for f in artifact["files"]}
    reference = (manifest.get("verification") or {}).get("reference")
    if reference:
        reference["sha256"] = _sha(Path(bundle) / reference["file"])
    path.write_text(json.dumps(manifest, indent=2))
    return manifest


def edit_partition(bundle: Path, index: int, edit: Callable[[onnx.ModelProto], None]) -> None:
    """Apply ``edit`` to partition ``index``'s ONNX file in place (a fresh file: no hard link keeps the old bytes)."""
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    file = Path(bundle) / manifest["partitions"][index]["file"]
    model = onnx.load(str(file))
    edit(model)
    os.unlink(file)
    onnx.save(model, str(file))


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def scale_initializer(model: onnx.ModelProto, name: str, factor: float) -> None:
    """Multiply initializer ``name`` by ``factor`` (keeping its dtype)."""
    for init in model.graph.initializer:
        if init.name == name:
            value = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((value * factor).astype(value.dtype), name))
            return
    raise KeyError(f"no initializer '{name}' (has {sorted(initializers(model))})")


def scale_constant(model: onnx.ModelProto, pick: Callable[[str, np.ndarray], bool], factor: float) -> int:
    """Multiply every float initializer or Constant value that ``pick(name, value)`` selects; returns how many."""
    changed = 0
    tensors = list(model.graph.initializer) + [a.t for node in model.graph.node if node.op_type == "Constant"
                                               for a in node.attribute if a.name == "value"]
    for tensor in tensors:
        value = numpy_helper.to_array(tensor)
        if value.dtype == np.float32 and pick(tensor.name, value):
            tensor.CopyFrom(numpy_helper.from_array((value * factor).astype(np.float32), tensor.name))
            changed += 1
    return changed
