"""Triton Inference Server model repositories for server tiers (edge and cloud-vm) that carry the whole tier step.

For each server tier T with a partition, ``splitc compile`` writes (all serve the same KServe v2 model
``splitc_tier<T>``, contract in :mod:`splitc.runtime.v2`, so one client talks to any of them)::

    <tier>/triton/                  NVIDIA's container (GPU, TensorRT, KServe's Triton runtime): design (b)
        splitc_tier<T>/             python BLS model: the tier step, each partition a call to splitc_part<K>;
                                    needs only numpy
        splitc_part<K>/             backend "onnxruntime" (TensorRT execution accelerator on GPU tiers),
                                    the partition's exact input/output names, dims and dtypes
        README.md                   which repository to use where, measured overheads
    <tier>/triton-python/           any Triton whose python has onnxruntime and numpy < 2 (the PyPI wheel
        splitc_tier<T>/             nvidia-pytriton, what ``splitc serve --server triton`` runs): design (a),
                                    the tier step with ONNX Runtime in the model
    <tier>/triton-ensemble/         only for a last tier without exits whose encodings the partition
                                    decodes itself: design (c), an ensemble over splitc_part<K>
    <tier>/triton/batching.json     the batch-axis check of every partition (below)

The tier-step models run splitc's own runtime (the reference runner, the encodings,
:class:`~splitc.runtime.tier_model.TierModel`), copied into each model's version folder with the
bundle's manifest (``1/splitc/``, ``1/bundle/``), so the answers are those of ``splitc run``
in-process, exits and encodings included, and NVIDIA's container needs no splitc installation. The
copy is the runtime of the compile that wrote the bundle, like the partitions themselves.

Batching: each partition is re-saved with a symbolic batch axis (dim 0 of every input and output)
and run at every batch size 1..``MAX_BATCH`` on random inputs against batch-1 runs of the exported
file; only when all of them are bit-identical, and every tensor of the tier has the model's leading
batch dimension, do the configs say ``max_batch_size: MAX_BATCH`` with ``dynamic_batching { }`` (no
queue delay: it costs single-client latency and gave no throughput on CPU). Otherwise
``max_batch_size: 0`` with the exported static shapes (a graph with a folded ``Reshape [1, -1]`` fails
the check, as it should).

The choice between the designs was measured on the python-backend Triton of the wheel (2 CPU cores,
MNIST tiers, ``benchmarks/serving.py``): (a) costs ~0.5 ms per request over ONNX Runtime called
directly; (b) adds a second stub round trip (~0.45 ms) but is what runs the partition on the
container's ONNX Runtime/TensorRT backends; (c) saves ~0.05 ms over (a) and cannot express exits.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from splitc.runtime.v2 import TierContract, model_name, tier_contract

__all__ = ["TRITON_DTYPES", "SERVER_KINDS", "MAX_BATCH", "DESIGNS", "config_pbtxt", "tier_config", "onnx_io",
           "check_batch_axis", "vendor_runtime", "write_repository", "emit_triton", "serving_repository",
           "ensemble_possible", "serve_triton"]

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
#: Largest batch the dynamic batcher forms (and the check covers).
MAX_BATCH = 4
#: repository folder of each design
DESIGNS = {"bls": "triton", "python": "triton-python", "ensemble": "triton-ensemble"}


# --------------------------------------------------------------------------- configs
def onnx_io(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX file as ``{"name", "dtype", "shape"}`` (initializers excluded; -1 = symbolic)."""
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


def _tensor_block(key: str, tensors: Sequence[Mapping[str, Any]], batched: bool) -> str:
    items = []
    for t in tensors:
        shape = list(t["shape"])[1:] if batched else list(t["shape"])
        dims = ", ".join(str(d) for d in shape) if shape else "1"  # Triton needs >= 1 dim
        reshape = "\n    reshape: { shape: [ ] }" if not t["shape"] else ""
        items.append(f'  {{\n    name: "{t["name"]}"\n    data_type: {TRITON_DTYPES[t["dtype"]]}\n'
                     f'    dims: [ {dims} ]{reshape}\n  }}')
    return f"{key} [\n" + ",\n".join(items) + "\n]\n"


def _parameters(params: Mapping[str, str]) -> str:
    return "".join(f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(str(v))} }} }}\n'
                   for k, v in params.items())


def _batching(max_batch: int) -> str:
    return "dynamic_batching { }\n" if max_batch > 0 else ""


def config_pbtxt(name: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], gpu: bool,
                 precision: str = "FP32", max_batch: int = 0, backend: str = "onnxruntime",
                 params: Mapping[str, str] | None = None) -> str:
    """``config.pbtxt`` of a partition model (``splitc_part<K>``): exact names/dtypes; dims without the batch
    axis when ``max_batch`` > 0. ``backend="python"`` is the ONNX Runtime stand-in (no accelerator)."""
    text = (f'name: "{name}"\nbackend: "{backend}"\nmax_batch_size: {max_batch}\n'
            + _tensor_block("input", inputs, max_batch > 0) + _tensor_block("output", outputs, max_batch > 0)
            + f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]\n"
            + _batching(max_batch) + _parameters(params or {}))
    if gpu:
        text += ("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
                 f'      name : "tensorrt"\n      parameters {{ key: "precision_mode" value: "{precision}" }}\n'
                 "    } ]\n  }\n}\n")
    return text


def _specs(specs) -> list[dict[str, Any]]:
    return [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in specs]


def tier_config(name: str, contract: TierContract, max_batch: int, params: Mapping[str, str]) -> str:
    """``config.pbtxt`` of a python tier-step model: the contract's inputs and every output it may answer."""
    outputs = _specs(contract.outputs())
    if max_batch > 0:  # control tensors are [1] per request: [batch, 1] under the batch axis
        outputs = [dict(o, shape=[1, 1]) if o["name"].startswith("splitc_") else o for o in outputs]
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
            + _tensor_block("input", _specs(contract.inputs), max_batch > 0)
            + _tensor_block("output", outputs, max_batch > 0)
            + "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
            + _batching(max_batch) + _parameters(params))


def _ensemble_config(name: str, contract: TierContract, part: Mapping[str, Any], part_model: str,
                     model_outputs: Sequence[Mapping[str, Any]], max_batch: int) -> str:
    """An ensemble ``name`` with one step, the partition model, its outputs renamed to the model outputs."""
    renames = {o["tensor"]: o["name"] for o in model_outputs}
    steps = (f'ensemble_scheduling {{\n  step [\n    {{\n      model_name: "{part_model}"\n      model_version: -1\n'
             + "".join(f'      input_map {{ key: "{i["name"]}" value: "{i["name"]}" }}\n' for i in part["inputs"])
             + "".join(f'      output_map {{ key: "{o["name"]}" value: "{renames[o["name"]]}" }}\n'
                       for o in part["outputs"] if o["name"] in renames)
             + "    }\n  ]\n}\n")
    return (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
            + _tensor_block("input", _specs(contract.inputs), max_batch > 0)
            + _tensor_block("output", _specs(contract.final_outputs), max_batch > 0) + steps
            + _parameters({"splitc_tier": str(contract.tier_index), "splitc_tier_sha256": contract.fingerprint}))


# --------------------------------------------------------------------------- batch axis
def _random_feeds(session, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for i in session.get_inputs():
        shape = [batch] + [d if isinstance(d, int) else 1 for d in i.shape[1:]]
        kind = i.type
        if "uint8" in kind:
            feeds[i.name] = rng.integers(0, 256, shape).astype(np.uint8)
        elif "int8" in kind:
            feeds[i.name] = rng.integers(-128, 128, shape).astype(np.int8)
        elif "int" in kind:
            feeds[i.name] = rng.integers(0, 2, shape).astype(np.int64 if "int64" in kind else np.int32)
        elif "bool" in kind:
            feeds[i.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float16 if "float16" in kind else
                                                              np.float64 if "double" in kind else np.float32)
    return feeds


def check_batch_axis(src: Path, dst: Path, max_batch: int = MAX_BATCH) -> dict[str, Any]:
    """Write ``src`` with a symbolic batch axis to ``dst`` if every batch size 1..max_batch is bit-identical
    to batch-1 runs of ``src`` on the same random rows; returns ``{"dynamic", "checked", "reason"}``.
    ``dst`` is written only when the check passes."""
    import onnxruntime as ort

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    for value in [v for v in graph.input if v.name not in initializers] + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value != 1:
            return {"dynamic": False, "checked": [], "reason": f"'{value.name}' has no leading batch dimension of 1"}
        dims[0].ClearField("dim_value")
        dims[0].dim_param = "batch"
    del graph.value_info[:]  # inferred shapes of the static graph would contradict the symbolic axis
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(model, str(tmp))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        static = ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        dynamic = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in static.get_outputs()]
        feeds = _random_feeds(static, max_batch, np.random.default_rng(0))
        alone = [static.run(names, {k: v[r:r + 1] for k, v in feeds.items()}) for r in range(max_batch)]
        for batch in range(1, max_batch + 1):  # every size: a kernel may change with it (GEMV at 1, GEMM above)
            together = dynamic.run(names, {k: v[:batch] for k, v in feeds.items()})
            for j, name in enumerate(names):
                expected = np.concatenate([row[j] for row in alone[:batch]])
                if together[j].shape != expected.shape or not np.array_equal(together[j], expected, equal_nan=True):
                    tmp.unlink()
                    return {"dynamic": False, "checked": list(range(1, batch)),
                            "reason": f"batch {batch}: output '{name}' differs from {batch} batch-1 runs"}
    except Exception as exc:  # ONNX Runtime refuses the symbolic axis (e.g. a folded Reshape to [1, -1])
        tmp.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return {"dynamic": False, "checked": [], "reason": f"ONNX Runtime with a symbolic batch axis: {first}"}
    os.replace(tmp, dst)
    return {"dynamic": True, "checked": list(range(1, max_batch + 1)), "reason": "bit-identical to batch-1 runs"}


# --------------------------------------------------------------------------- the runtime copy
def _runtime_closure(root_module: str = "splitc.runtime.tier_model") -> list[Path]:
    """Source files of ``root_module`` and every splitc module it imports (package ``__init__`` files included)."""
    package_root = Path(__file__).resolve().parents[1]  # .../splitc

    def path_of(module: str) -> Path | None:
        if module == "splitc":
            return package_root / "__init__.py"
        rel = Path(*module.split(".")[1:])
        for candidate in (package_root / rel.with_suffix(".py"), package_root / rel / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    seen: dict[str, Path] = {}
    todo = [root_module]
    while todo:
        module = todo.pop()
        path = path_of(module)
        if module in seen or path is None:
            continue
        seen[module] = path
        if module == "splitc":  # its lazy compile_model would pull the compiler in: vendor_runtime writes a stub
            continue
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages above it
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "splitc":
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] == "splitc"]
    return sorted(set(seen.values()))


def vendor_runtime(dest: Path) -> list[Path]:
    """Copy splitc's tier-step runtime (numpy / ONNX Runtime only) under ``dest/splitc/``; returns the files."""
    package_root = Path(__file__).resolve().parents[1]
    written = []
    for src in _runtime_closure():
        target = dest / "splitc" / src.relative_to(package_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src == package_root / "__init__.py":
            target.write_text('"""splitc\'s runtime, copied by splitc into this model (no compiler here)."""\n',
                              encoding="utf-8")
        else:
            shutil.copyfile(src, target)
        written.append(target)
    return written


def _template(name: str) -> str:
    return resources.files("splitc.backends").joinpath(f"triton_templates/{name}").read_text(encoding="utf-8")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same file system: no second copy of the weights
    except OSError:
        shutil.copyfile(src, dst)


# --------------------------------------------------------------------------- repositories
def ensemble_possible(manifest: Mapping[str, Any], tier_index: int) -> str | None:
    """None if an ensemble can serve the tier (last tier, one partition, no exit, every incoming encoding done
    by the partition itself), else why not."""
    parts = [p for p in manifest["partitions"] if p["tier_index"] == tier_index]
    contract = tier_contract(manifest, tier_index)
    if contract.forward_outputs:
        return "the tier forwards to a later tier (an ensemble cannot say where the request goes next)"
    if len(parts) != 1:
        return f"the tier runs {len(parts)} partitions"
    if any(e["partition"] == parts[0]["index"] for e in manifest.get("exits", [])):
        return "the tier has an exit (an ensemble has no conditional step)"
    link = next((t for t in manifest["transfers"] if t["to_tier"] == tier_index), None)
    if link and any(not t.get("encoding", {}).get("in_graph", True) and t.get("encoding", {}).get("kind", "raw") != "raw"
                    for t in link["tensors"]):
        return "an incoming encoding is decoded outside the partition"
    wire = {(s.name, s.dtype, s.shape) for s in contract.inputs}
    if wire != {(i["name"], i["dtype"], tuple(i["shape"])) for i in parts[0]["inputs"]}:
        return "the partition's inputs are not the wire tensors"
    return None


def write_repository(bundle: Path, manifest: Mapping[str, Any], tier_index: int, out: Path, design: str, *,
                     partition_files: Mapping[int, Path], max_batch: int, batch_partitions: Sequence[int],
                     variant: int | None = None, stand_in: bool = False, threads: int = 0) -> list[Path]:
    """Write one design's models for ``tier_index`` into the repository folder ``out``; returns the files.

    Args:
        bundle: the bundle folder (partition files are read from ``partition_files``).
        design: ``python`` (a), ``bls`` (b) or ``ensemble`` (c).
        partition_files: partition index -> the ONNX file to serve (the checked batch-axis copy or the export).
        max_batch: ``max_batch_size`` of every model (0 = no batch axis).
        batch_partitions: partitions that take stacked requests.
        variant: bandwidth variant number for the model names (None: ``splitc_tier<T>``).
        stand_in: partition models as python models running ONNX Runtime (for a server without the backend).
        threads: ONNX Runtime intra-op threads (0 = its default).
    """
    parts = [p for p in manifest["partitions"] if p["tier_index"] == tier_index]
    contract = tier_contract(manifest, tier_index)
    name = model_name(tier_index, variant)
    tier = manifest["tiers"][tier_index]
    gpu = tier["target"].get("backend") in ("tensorrt", "torch")  # torch: a GPU measured by splitc profile --device cuda
    files: list[Path] = []
    prefix = "splitc_" if variant is None else f"splitc_v{variant}_"

    def part_model(part: Mapping[str, Any]) -> str:
        folder = out / f"{prefix}part{part['index']}"
        version = folder / "1"
        _link_or_copy(partition_files[part["index"]], version / "model.onnx")
        inputs, outputs = _specs_of(part)
        backend = "python" if stand_in else "onnxruntime"
        (folder / "config.pbtxt").write_text(config_pbtxt(
            folder.name, inputs, outputs, gpu and not stand_in, max_batch=max_batch if part["index"] in batch_partitions
            else 0, backend=backend, params={"splitc_ort_threads": str(threads)} if stand_in else None), encoding="utf-8")
        files.extend([folder / "config.pbtxt", version / "model.onnx"])
        if stand_in:
            (version / "model.py").write_text(_template("partition.py"), encoding="utf-8")
            files.append(version / "model.py")
        return folder.name

    if design == "ensemble":
        reason = ensemble_possible(manifest, tier_index)
        if reason:
            raise ValueError(f"no ensemble for tier '{tier['name']}': {reason}")
        part = parts[0]
        target = part_model(part)
        (out / name / "1").mkdir(parents=True, exist_ok=True)
        batch = max_batch if part["index"] in batch_partitions else 0
        (out / name / "config.pbtxt").write_text(_ensemble_config(name, contract, part, target,
                                                                  manifest["model"]["outputs"], batch),
                                                 encoding="utf-8")
        return files + [out / name / "config.pbtxt"]
    version = out / name / "1"
    params = {"splitc_tier": str(tier_index), "splitc_tier_sha256": contract.fingerprint,
              "splitc_batch_partitions": json.dumps(sorted(batch_partitions)), "splitc_ort_threads": str(threads)}
    if design == "bls":
        params.update(splitc_partitions="bls", splitc_bls_models=json.dumps({str(p["index"]): part_model(p)
                                                                            for p in parts}))
    elif design == "python":
        params.update(splitc_partitions="onnxruntime")
        for part in parts:
            _link_or_copy(partition_files[part["index"]], version / "bundle" / part["file"])
            files.append(version / "bundle" / part["file"])
    else:
        raise ValueError(f"unknown Triton design '{design}' (known: {', '.join(DESIGNS)})")
    (version / "bundle").mkdir(parents=True, exist_ok=True)
    (version / "bundle" / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    (version / "model.py").write_text(_template("tier_step.py"), encoding="utf-8")
    (out / name / "config.pbtxt").write_text(tier_config(name, contract, max_batch, params), encoding="utf-8")
    files += [version / "bundle" / "manifest.json", version / "model.py", out / name / "config.pbtxt"]
    files += vendor_runtime(version)
    return files


def _specs_of(part: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return ([{"name": t["name"], "dtype": t["dtype"], "shape": list(t["shape"])} for t in part["inputs"]],
            [{"name": t["name"], "dtype": t["dtype"], "shape": list(t["shape"])} for t in part["outputs"]])


def _checked_io(path: Path, part: Mapping[str, Any], notes: list[str]) -> None:
    """Note where the ONNX file's I/O differs from the manifest (the configs follow the manifest = the file)."""
    inputs, outputs = onnx_io(path)
    for kind, got, want in (("input", inputs, part["inputs"]), ("output", outputs, part["outputs"])):
        expect = [{"name": t["name"], "dtype": t["dtype"], "shape": list(t["shape"])} for t in want]
        if sorted(got, key=lambda t: t["name"]) != sorted(expect, key=lambda t: t["name"]):
            notes.append(f"{path.name}: ONNX {kind}s {got} differ from the manifest's {expect}")
            log.warning("[triton] %s", notes[-1])


def _batch_plan(stage: Path, manifest: Mapping[str, Any], tier_index: int, folder: Path
                ) -> tuple[dict[int, Path], dict[str, Any]]:
    """Check each partition's batch axis; returns the files to serve and the batching record."""
    parts = [p for p in manifest["partitions"] if p["tier_index"] == tier_index]
    folder.mkdir(parents=True, exist_ok=True)
    files, checks = {}, {}
    for part in parts:
        src = stage / part["file"]
        dst = folder / f"part{part['index']}.batch.onnx"
        checks[str(part["index"])] = check_batch_axis(src, dst)
        files[part["index"]] = dst if checks[str(part["index"])]["dynamic"] else src
    contract = tier_contract(manifest, tier_index)
    dynamic = [int(k) for k, c in checks.items() if c["dynamic"]]
    batched = contract.batchable() and len(dynamic) == len(parts)
    if not batched:  # serve the exported static files: the configs keep their exact dims
        files = {p["index"]: stage / p["file"] for p in parts}
    record = {"max_batch_size": MAX_BATCH if batched else 0, "batch_partitions": sorted(dynamic) if batched else [],
              "partitions": checks,
              "reason": "every partition and tensor has a checked batch axis" if batched else
              "not every partition/tensor has a checked batch axis: max_batch_size 0"}
    return files, record


def emit_triton(stage: Path, manifest: dict[str, Any], tier: dict[str, Any]) -> dict[str, Any] | None:
    """Write the repositories of one server tier (and its KServe InferenceService); returns the artifact record."""
    parts = [p for p in manifest["partitions"] if p["tier_index"] == tier["index"]]
    if not parts:
        return None
    notes: list[str] = []
    for part in parts:
        _checked_io(stage / part["file"], part, notes)
    base = stage / tier["name"]
    scratch = base / ".triton-batch"
    files_by_part, batching = _batch_plan(stage, manifest, tier["index"], scratch)
    if batching["max_batch_size"] == 0:
        notes.append(f"max_batch_size 0: {batching['reason']} "
                     + "; ".join(f"part{k}: {c['reason']}" for k, c in batching["partitions"].items()))
    files: list[Path] = []
    repositories = {}
    options = dict(partition_files=files_by_part, max_batch=batching["max_batch_size"],
                   batch_partitions=batching["batch_partitions"])
    for design, folder in DESIGNS.items():
        if design == "ensemble":
            reason = ensemble_possible(manifest, tier["index"])
            if reason:
                repositories[design] = {"path": None, "why_not": reason}
                continue
        files += write_repository(stage, manifest, tier["index"], base / folder, design, **options)
        repositories[design] = {"path": f"{tier['name']}/{folder}"}
    shutil.rmtree(scratch, ignore_errors=True)  # the checked files are hard-linked (or copied) into the models
    (base / "triton" / "batching.json").write_text(json.dumps(batching, indent=1) + "\n", encoding="utf-8")
    (base / "triton" / "README.md").write_text(_readme(manifest, tier, parts, batching, repositories), encoding="utf-8")
    files += [base / "triton" / "batching.json", base / "triton" / "README.md"]
    record = {"kind": "triton", "tier_index": tier["index"], "path": f"{tier['name']}/triton",
              "model": model_name(tier["index"]), "repositories": repositories,
              "max_batch_size": batching["max_batch_size"], "notes": notes}
    from splitc.backends.kserve import emit_kserve

    kserve = emit_kserve(stage, manifest, tier)
    if kserve["files"]:
        record["kserve"] = kserve["path"]
        files += [stage / f for f in kserve["files"]]
    notes += kserve["notes"]
    record["files"] = sorted(str(f.relative_to(stage)) for f in files)
    return record


def serving_repository(bundle: str | Path, tier_index: int, out: str | Path, design: str = "python",
                       batching: bool = True, threads: int = 0, variants: bool = True) -> list[str]:
    """Assemble a model repository a local tritonserver (the python-backend wheel) can serve for one tier.

    The bundle's models and, with ``variants``, those of every bandwidth variant whose plan sends something
    to the tier (``splitc_v<i>_tier<T>``). Designs ``bls``/``ensemble`` get python stand-ins for the ONNX
    Runtime backend the wheel lacks. ``batching=False`` forces ``max_batch_size: 0``.

    Returns:
        The model names written.
    """
    from splitc.runtime.runner import load_manifest
    from splitc.runtime.v2 import served_tiers

    bundle, out = Path(bundle), Path(out)
    top = load_manifest(bundle)
    entries = [(None, bundle, top)]
    if variants:
        for i, entry in enumerate(top.get("plan", {}).get("variants", [])):
            if entry.get("bundle") and entry["bundle"] not in (".", ""):
                entries.append((i, bundle / entry["bundle"], load_manifest(bundle / entry["bundle"])))
    names = []
    for variant, folder, manifest in entries:
        if tier_index not in served_tiers(manifest) or not any(p["tier_index"] == tier_index
                                                              for p in manifest["partitions"]):
            continue
        tier = manifest["tiers"][tier_index]
        emitted = folder / tier["name"] / "triton"
        record_path = emitted / "batching.json"
        scratch = out / f".batch-{variant}"
        if record_path.is_file():  # the compile checked the batch axis: serve the files it wrote
            record = json.loads(record_path.read_text(encoding="utf-8"))
            files = {}
            for p in manifest["partitions"]:
                if p["tier_index"] == tier_index:
                    checked = emitted / f"splitc_part{p['index']}" / "1" / "model.onnx"
                    files[p["index"]] = checked if checked.is_file() else folder / p["file"]
        else:
            files, record = _batch_plan(folder, manifest, tier_index, scratch)
        write_repository(folder, manifest, tier_index, out, design, partition_files=files,
                         max_batch=record["max_batch_size"] if batching else 0,
                         batch_partitions=record["batch_partitions"] if batching else [], variant=variant,
                         stand_in=design in ("bls", "ensemble"), threads=threads)
        shutil.rmtree(scratch, ignore_errors=True)
        names.append(model_name(tier_index, variant))
    return names


def _readme(manifest: Mapping[str, Any], tier: Mapping[str, Any], parts: Sequence[Mapping[str, Any]],
            batching: Mapping[str, Any], repositories: Mapping[str, Any]) -> str:
    t = tier["index"]
    name = model_name(t)
    contract = tier_contract(manifest, t)
    ins = ", ".join(f"`{s.name}` {s.datatype} {list(s.shape)}" for s in contract.inputs)
    final = ", ".join(f"`{s.name}`" for s in contract.final_outputs)
    fwd = ", ".join(f"`{s.name}` {s.datatype} {list(s.shape)}" for s in contract.forward_outputs) or "none (last tier)"
    parts_text = ", ".join(f"`splitc_part{p['index']}`" for p in parts)
    ens = repositories.get("ensemble", {})
    ens_text = (f"`../triton-ensemble/`: an ensemble `{name}` over {parts_text} (no Python at all)."
                if ens.get("path") else f"none for this tier: {ens.get('why_not')}.")
    return f"""# Triton model repositories for tier `{tier['name']}` (tier {t})

Every repository below serves the KServe v2 model **`{name}`**: the whole tier step of the bundle
(partition, exit rule, wire encodings), so a client sends the tensors of the incoming link exactly
as they travel and gets either the final answer or the next link's tensors.

* inputs: {ins}
* outputs: the model outputs ({final}) **or** the next link's tensors ({fwd}), plus
  `splitc_next` (INT32: tier to call next, -1 = final), `splitc_exit` (INT32: exit that answered,
  -1 = none), `splitc_tier` (INT32: tier that answered), `splitc_server_us` (INT64)
* config parameter `splitc_tier_sha256`: the fingerprint `splitc run --remote` checks against its bundle

## Which repository to use where

| repository | design | runs on | use it for |
|---|---|---|---|
| `triton/` (this folder) | (b) python BLS tier step `{name}` + {parts_text} on the ONNX Runtime backend (TensorRT accelerator on GPU tiers) | NVIDIA's container (`nvcr.io/nvidia/tritonserver:<yy.mm>-py3`), KServe's Triton runtime | GPU tiers, Kubernetes/KServe (`../kserve/inferenceservice.yaml` points here) |
| `../triton-python/` | (a) python tier step with ONNX Runtime inside | any Triton whose python has `onnxruntime` and numpy < 2, e.g. the PyPI wheel `nvidia-pytriton` (`splitc serve --server triton`) | CPU tiers: the fastest here (one model, one stub round trip) |
| ensemble | (c) | NVIDIA's container | {ens_text} |

    tritonserver --model-repository=$(pwd)                     # NVIDIA's container, design (b)
    splitc serve <bundle> --tier {tier['name']} --server triton --port 8000   # the wheel, design (a)

Measured on a 2-core CPU (python-backend Triton 2.51, MNIST tier, one client): design (a) costs
about 0.5 ms per request over ONNX Runtime called directly; (b) about 0.45 ms more (a second stub
round trip through the server core; users report up to 32 ms vs 6.3 ms for BLS vs ensembles on
heavier setups); (c) saves about 0.05 ms over (a) but cannot express exits or say where a request
goes next. `python benchmarks/serving.py` measures all three against `splitc serve`.

## Batching

`max_batch_size: {batching['max_batch_size']}` ({batching['reason']}). Per partition
(`batching.json`): {', '.join(f"part{k}: {c['reason']}" for k, c in batching['partitions'].items())}.
With batching, `dynamic_batching {{ }}` groups concurrent requests without a queue delay; each
request keeps its own exit decision. A request that exits leaves its batch: later partitions run on
the smaller batch, and its answer is returned with the batch's other answers.

## Chains

The client calls tier after tier following `splitc_next` (the device uplink carries a middle
tier's forwarded tensors twice; `splitc serve --next URL` forwards server-side instead).
"""


def serve_triton(bundle: str | Path, tier: str | int, host: str = "127.0.0.1", port: int = 8000,
                 design: str = "python", batching: bool = True, single_tier: bool = False, threads: int = 0,
                 venv: str | Path | None = None, variants: bool = True) -> None:
    """``splitc serve --server triton``: a real tritonserver on a copy of the tier's models until SIGINT/SIGTERM.

    Serves ``splitc_tier<T>`` (and its variants') and, unless ``single_tier``, the later server tiers' models
    too, which the client calls next. Prints one ready line; stops the server cleanly (shm files removed).

    Raises:
        SplitcError: unknown tier, a tier without a partition, no usable tritonserver, or a failed start.
    """
    import signal
    import tempfile
    import threading

    from splitc.errors import SplitcError
    from splitc.runtime.runner import load_manifest
    from splitc.runtime.server import resolve_tier
    from splitc.runtime.triton_server import TritonServer, find_triton

    if design not in DESIGNS:
        raise SplitcError(f"--design {design} is not known", f"valid: {', '.join(DESIGNS)}")
    manifest = load_manifest(bundle)
    first = resolve_tier(manifest, tier)
    tiers = [first] if single_tier else [t["index"] for t in manifest["tiers"][first:]]
    tiers = [t for t in tiers if any(p["tier_index"] == t for p in manifest["partitions"])]
    if first not in tiers:
        raise SplitcError(f"tier '{manifest['tiers'][first]['name']}' runs no partition in this bundle",
                          "serve a tier that runs a partition")
    install = find_triton(venv)
    if design == "python" and install.onnxruntime is None:
        raise SplitcError(f"design 'python' runs ONNX Runtime inside Triton, but {install.python} has no onnxruntime",
                          "pip install onnxruntime into that environment")
    with tempfile.TemporaryDirectory(prefix="splitc-repo-") as work:
        repo = Path(work)
        names, used = [], []
        for t in tiers:  # an ensemble only where one can serve the tier (a last tier without exits); (a) elsewhere
            chosen = "python" if design == "ensemble" and ensemble_possible(manifest, t) else design
            used.append(chosen)
            names += serving_repository(bundle, t, repo, design=chosen, batching=batching, threads=threads,
                                        variants=variants)
        if design == "ensemble" and "ensemble" not in used:
            raise SplitcError(f"--design ensemble: {ensemble_possible(manifest, tiers[-1])} (tier "
                              f"'{manifest['tiers'][tiers[-1]]['name']}')", "use --design python or bls")
        server = TritonServer(repo, port=port, host=host, venv=venv, die_with_parent=True)
        try:
            server.start()
        except RuntimeError as exc:
            raise SplitcError(f"tritonserver did not start: {str(exc).splitlines()[0]}",
                              "see the log above; check --port and --triton-venv") from None
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"serving tier '{manifest['tiers'][first]['name']}' (index {first}) of {bundle} on {server.http_url} "
              f"and {server.grpc_url} (Triton; design {'/'.join(dict.fromkeys(used))}, ready in {server.ready_s:.1f} s; models: "
              f"{', '.join(names)})", flush=True)
        try:
            while not stop.wait(0.5):
                if not server.running():
                    print(f"tritonserver exited with code {server.proc.returncode}:\n{server.log_text()}",
                          file=sys.stderr, flush=True)
                    raise SystemExit(1)
        finally:
            info = server.stop()
            log.info("tritonserver stopped in %.1f s (exit code %s)", info["stop_s"], info["returncode"])
