"""TensorRT build recipes for the partitions of tensorrt-backend tiers.

TensorRT cannot be installed on most machines that compile (its PyPI packages fetch
the libraries from NVIDIA's index at install time), so splitc emits, per partition,
what the deployment machine needs to build the engine itself:

``<tier>/tensorrt/part<K>.trtexec.sh``   a ``trtexec`` command with explicit shapes and precision flags
``<tier>/tensorrt/build_engine.py``     a small builder using the TensorRT Python API (same flags)
``<tier>/tensorrt/README.md``           the op-support check and how to build

Precision follows what the compiler verified, so the engine computes what the bundle
promises: fp32 partitions build without reduced-precision flags (TensorRT may still use
TF32 on Ampere and newer; ``--noTF32`` disables it), partitions with float16 tensors add
``--fp16``, and partitions with QuantizeLinear/DequantizeLinear nodes (explicit
quantization) add ``--int8`` (plus ``--fp16`` when the target supports it), which is how
TensorRT consumes QDQ ONNX. Engines are built in-process only when ``import tensorrt``
works (:func:`build_engine`); otherwise the recipe is all there is, and that is logged.

Every op of those partitions is checked against TensorRT's ONNX-parser support list
(``data/tensorrt_onnx_ops.json``, with its source); unsupported ops are listed in the
README, the manifest artifact notes and a warning.
"""

from __future__ import annotations

import functools
import json
import logging
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import onnx

__all__ = ["supported_ops", "check_ops", "partition_precision", "trtexec_command", "emit_tensorrt",
           "tensorrt_available", "build_engine"]

log = logging.getLogger("splitc")

_QDQ = {"QuantizeLinear", "DequantizeLinear"}


@functools.lru_cache(maxsize=1)
def supported_ops() -> dict[str, Any]:
    """The TensorRT ONNX-parser support list (``supported``, ``unsupported``, ``source``, ``restrictions``)."""
    text = resources.files("splitc.backends").joinpath("data/tensorrt_onnx_ops.json").read_text(encoding="utf-8")
    return json.loads(text)


def _graph_ops(model: onnx.ModelProto) -> set[tuple[str, str]]:
    ops: set[tuple[str, str]] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            ops.add((node.domain or "", node.op_type))
            for attr in node.attribute:  # If / Loop / Scan bodies
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)

    walk(model.graph)
    return ops


def check_ops(onnx_path: str | Path) -> dict[str, list[str]]:
    """Ops of an ONNX file split into ``supported`` and ``unsupported`` by TensorRT's ONNX parser."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    listed = set(supported_ops()["supported"])
    ok, bad = [], []
    for domain, op in sorted(_graph_ops(model)):
        (ok if domain in ("", "ai.onnx") and op in listed else bad).append(op if not domain else f"{domain}::{op}")
    return {"supported": ok, "unsupported": bad}


def partition_precision(onnx_path: str | Path, target_precisions: list[str]) -> str:
    """``int8`` (QDQ graph), ``fp16`` (float16 tensors) or ``fp32``: what the engine must compute in."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(op in _QDQ for _, op in _graph_ops(model)) and "int8" in target_precisions:
        return "int8"
    f16 = onnx.TensorProto.FLOAT16
    tensors = list(model.graph.input) + list(model.graph.output)
    if any(t.type.tensor_type.elem_type == f16 for t in tensors) or any(
            i.data_type == f16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def _precision_flags(precision: str, target_precisions: list[str]) -> list[str]:
    if precision == "int8":
        return ["--int8"] + (["--fp16"] if "fp16" in target_precisions else [])
    return ["--fp16"] if precision == "fp16" else []


def _shape_arg(inputs: list[dict[str, Any]]) -> str:
    return ",".join(f"{t['name']}:{'x'.join(str(d) for d in t['shape'])}" for t in inputs)


def trtexec_command(part: dict[str, Any], precision: str, target_precisions: list[str]) -> list[str]:
    """The ``trtexec`` argv (run from the tier's ``tensorrt/`` folder) for one manifest partition."""
    name = Path(part["file"]).name
    argv = ["trtexec", f"--onnx=../{name}", f"--saveEngine={Path(name).stem}.plan",
            *_precision_flags(precision, target_precisions), "--memPoolSize=workspace:1024M"]
    if part["inputs"]:
        # Static shapes are baked into the ONNX; --shapes restates them (trtexec only warns for static inputs).
        argv.append(f"--shapes={_shape_arg(part['inputs'])}")
    return argv


_BUILDER = '''"""Build TensorRT engines for this tier's partitions (written by splitc; needs `pip install tensorrt`).

    python build_engine.py            # every partition listed below, precision as recorded
    python build_engine.py --precision fp16

Supports TensorRT 8.x (explicit-batch flag) and 10.x (explicit batch is the only mode).
"""

import argparse
import sys
from pathlib import Path

import tensorrt as trt

HERE = Path(__file__).resolve().parent
PARTITIONS = {partitions!r}  # onnx file (relative to the tier folder) -> precision


def build(onnx_path, engine_path, precision, workspace=1 << 30):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        sys.exit(f"TensorRT could not parse {{onnx_path}}:\\n" + "\\n".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the Q/DQ nodes
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        sys.exit(f"TensorRT failed to build {{onnx_path}}")
    Path(engine_path).write_bytes(bytes(engine))
    print(f"wrote {{engine_path}} ({{precision}})")


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="override the recorded precision")
    args = cli.parse_args()
    for name, precision in PARTITIONS.items():
        onnx_path = HERE.parent / name
        build(onnx_path, HERE / (Path(name).stem + ".plan"), args.precision or precision)
'''


def tensorrt_available() -> bool:
    """True when the TensorRT Python package imports here."""
    try:
        import tensorrt  # noqa: F401
    except Exception:  # ImportError, or a broken install raising OSError on its libraries
        return False
    return True


def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str) -> None:  # pragma: no cover
    """Build one engine in-process (only called when :func:`tensorrt_available`)."""
    import runpy

    namespace = runpy.run_path(str(Path(engine_path).parent / "build_engine.py"), run_name="splitc_builder")
    namespace["build"](onnx_path, engine_path, precision)


def emit_tensorrt(stage: Path, manifest: dict[str, Any], tier: dict[str, Any]) -> dict[str, Any] | None:
    """Write the recipe for one tensorrt-backend tier; returns its artifact record (None: no partition)."""
    parts = [p for p in manifest["partitions"] if p["tier_index"] == tier["index"]]
    if not parts:
        return None
    folder = stage / tier["name"] / "tensorrt"
    folder.mkdir(parents=True, exist_ok=True)
    precisions = list(tier["target"].get("precisions", ["fp32"]))
    files, notes, recorded, readme = [], [], {}, [f"# TensorRT build recipe for tier `{tier['name']}`\n"]
    source = supported_ops()["source"]
    for part in parts:
        onnx_path = stage / part["file"]
        precision = partition_precision(onnx_path, precisions)
        recorded[Path(part["file"]).name] = precision
        ops = check_ops(onnx_path)
        argv = trtexec_command(part, precision, precisions)
        script = folder / f"{Path(part['file']).stem}.trtexec.sh"
        script.write_text("#!/bin/sh\n# Build the TensorRT engine of partition "
                          f"{part['index']} ({precision}); run from this folder.\nset -e\ncd \"$(dirname \"$0\")\"\n"
                          + " ".join(shlex.quote(a) for a in argv) + "\n", encoding="utf-8")
        script.chmod(0o755)
        files.append(script)
        readme.append(f"## partition {part['index']} (`{part['file']}`, {precision})\n\n```\n{' '.join(argv)}\n```\n\n"
                      f"ONNX ops ({len(ops['supported']) + len(ops['unsupported'])}): "
                      f"{', '.join(ops['supported'] + ops['unsupported'])}.\n\n")
        if ops["unsupported"]:
            note = (f"partition {part['index']}: ops not on TensorRT's ONNX-parser list: "
                    f"{', '.join(ops['unsupported'])} (needs a newer TensorRT, a plugin, or another cut)")
            notes.append(note)
            readme.append(f"**Not on the support list:** {', '.join(ops['unsupported'])}.\n\n")
            log.warning("[tensorrt] %s", note)
        else:
            readme.append("Every op is on TensorRT's ONNX-parser support list.\n\n")
    builder = folder / "build_engine.py"
    builder.write_text(_BUILDER.format(partitions=recorded), encoding="utf-8")
    files.append(builder)
    readme.append(f"Python API: `python build_engine.py` (same precisions).\n\nOp list source: {source}.\n")
    built = False
    if tensorrt_available():  # pragma: no cover - TensorRT is not installable on CI
        for part in parts:
            engine = folder / f"{Path(part['file']).stem}.plan"
            build_engine(stage / part["file"], engine, recorded[Path(part["file"]).name])
            files.append(engine)
        built = True
    else:
        notes.append("TensorRT is not importable here: recipe only, engines not built")
        log.info("[tensorrt] %s: recipe written (TensorRT not importable here, engines not built)", tier["name"])
    (folder / "README.md").write_text("".join(readme), encoding="utf-8")
    files.append(folder / "README.md")
    return {"kind": "tensorrt", "tier_index": tier["index"], "path": f"{tier['name']}/tensorrt",
            "files": sorted(str(f.relative_to(stage)) for f in files), "engine_built": built,
            "precision": recorded, "notes": notes}
