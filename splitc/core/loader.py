"""Load a model from the user's spec and trace it into a ``torch.fx.GraphModule``.

Three kinds of model spec are accepted:

* ``model.pt`` -- a pickled ``nn.Module`` written by ``torch.save(model, path)``;
* ``model.pt2`` -- an ``ExportedProgram`` written by ``torch.export.save``;
* ``package.module:factory`` -- a callable returning an ``nn.Module``
  (e.g. ``torchvision.models:resnet50``), called after seeding torch's RNG so that
  randomly initialised weights are reproducible (``splitc verify`` reloads it).

Tracing uses ``torch.fx.symbolic_trace``; when that fails, ``torch.export`` is
tried (and the fallback is logged). When both fail, the error names the line of
user code that stopped each tracer.

Example:
    >>> from splitc.core.loader import load_model, trace_model, InputSpec
    >>> loaded = load_model("torchvision.models:resnet18")
    >>> traced = trace_model(loaded.module, [InputSpec("x", (1, 3, 64, 64), "float32")])
    >>> traced.method
    'symbolic_trace'
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import sys
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import nn

from splitc.errors import SplitcError

__all__ = [
    "InputSpec",
    "LoadedModel",
    "TracedModel",
    "load_model",
    "parse_input_shape",
    "infer_input_specs",
    "make_example_inputs",
    "trace_model",
    "parameter_fingerprint",
    "DTYPES",
]

log = logging.getLogger("splitc")

#: dtype names accepted by ``--input-dtype`` and written into manifests.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

#: Spatial size assumed for image models when the input shape cannot be read
#: from the model (torchvision classification models are trained at 224x224).
DEFAULT_IMAGE_SIZE = 224


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, static shape and dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class LoadedModel:
    """A model ready to trace, and how to load it again (recorded in the manifest)."""

    module: nn.Module
    source: dict[str, Any]
    input_specs: list[InputSpec] | None = None  # known from the file (e.g. .pt2)
    exported: Any = None  # the ExportedProgram for .pt2 files


@dataclass
class TracedModel:
    """The traced graph and how it was obtained."""

    graph_module: torch.fx.GraphModule
    method: str  # "symbolic_trace" or "torch.export"
    notes: list[str] = field(default_factory=list)


def dtype_name(dtype: torch.dtype) -> str:
    """The manifest name of a torch dtype (``torch.float32`` -> ``"float32"``)."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise SplitcError(f"unsupported tensor dtype {dtype}",
                          f"supported: {', '.join(DTYPES)}") from None


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parameter_fingerprint(module: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, bytes) of ``module``.

    Lets ``splitc verify`` prove it reloaded the very weights that were compiled.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        data = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(data.shape)).encode())
        digest.update(str(data.dtype).encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


# --------------------------------------------------------------------------- loading


def load_model(spec: str, seed: int = 0) -> LoadedModel:
    """Load the model named by ``spec`` (a .pt / .pt2 path or ``pkg.module:factory``).

    Args:
        spec: the model argument as the user typed it.
        seed: torch RNG seed set before calling a factory (reproducible random init).

    Returns:
        A :class:`LoadedModel` in eval mode, with a ``source`` record for the manifest.

    Raises:
        SplitcError: the file is missing, corrupt, or holds something other than a model.
    """
    path = Path(spec)
    if path.suffix in (".pt", ".pth", ".pt2") or path.exists():
        if not path.exists():
            raise SplitcError(f"model file '{spec}' does not exist",
                              "check the path (or pass package.module:factory)")
        if path.is_dir():
            raise SplitcError(f"model path '{spec}' is a directory, not a model file")
        if path.suffix == ".pt2":
            return _load_exported_program(path)
        return _load_pickled_module(path)
    if ":" in spec:
        return _load_factory(spec, seed)
    raise SplitcError(
        f"cannot interpret model '{spec}'",
        "pass a .pt file (torch.save(model)), a .pt2 file (torch.export.save) "
        "or package.module:factory, e.g. torchvision.models:resnet50",
    )


def _current_dir_importable() -> None:
    """Like uvicorn's --app-dir: code in the current folder (a factory, or the class of a
    pickled module) is importable even when splitc runs as a console script, which does
    not put the current folder on sys.path."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _load_pickled_module(path: Path) -> LoadedModel:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            raise SplitcError(
                f"'{path}' is a TorchScript archive (torch.jit.save), which torch.fx cannot trace",
                "save the eager module with torch.save(model, path) or export it with "
                "torch.export.save(...) to a .pt2 file",
            )
    _current_dir_importable()
    try:
        # weights_only=False is required to unpickle a whole nn.Module; this runs
        # code from the file, as any pickled model does. Load only files you trust.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise SplitcError(f"cannot read model file '{path}': {_first_line(exc)}",
                          "is it a file written by torch.save(model, path)?") from None
    if isinstance(obj, torch.export.ExportedProgram):
        return _from_exported(obj, path)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SplitcError(
            f"'{path}' holds a state_dict (only weights), not a model",
            "save the module itself with torch.save(model, path), or pass "
            "package.module:factory and load the weights inside the factory",
        )
    if not isinstance(obj, nn.Module):
        raise SplitcError(f"'{path}' holds a {type(obj).__name__}, not an nn.Module",
                          "save the model with torch.save(model, path)")
    source = {"kind": "file", "path": str(path.resolve()), "sha256": sha256_file(path)}
    return LoadedModel(module=obj.eval(), source=source)


def _load_exported_program(path: Path) -> LoadedModel:
    try:
        exported = torch.export.load(str(path))
    except Exception as exc:
        raise SplitcError(f"cannot read exported program '{path}': {_first_line(exc)}",
                          "is it a file written by torch.export.save?") from None
    return _from_exported(exported, path)


def _from_exported(exported: Any, path: Path) -> LoadedModel:
    specs = []
    user_inputs = exported.graph_signature.user_inputs
    for node in exported.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                shape = tuple(int(d) for d in val.shape)
                specs.append(InputSpec(node.name, shape, dtype_name(val.dtype)))
    source = {"kind": "file", "path": str(path.resolve()), "sha256": sha256_file(path)}
    module = exported.module()
    return LoadedModel(module=module, source=source, input_specs=specs or None, exported=exported)


def _load_factory(spec: str, seed: int) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SplitcError(f"model spec '{spec}' must look like package.module:factory")
    _current_dir_importable()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SplitcError(f"cannot import '{module_name}' for model '{spec}': {_first_line(exc)}",
                          "is the package installed in this environment?") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise SplitcError(f"'{module_name}' has no attribute '{attr}'",
                              "check the factory name after the colon")
    torch.manual_seed(seed)
    try:
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    except Exception as exc:
        raise SplitcError(f"calling factory '{spec}' failed: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise SplitcError(f"factory '{spec}' returned a {type(model).__name__}, not an nn.Module")
    source = {"kind": "factory", "spec": spec, "seed": seed}
    return LoadedModel(module=model.eval(), source=source)


# --------------------------------------------------------------------------- inputs


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,224,224"`` (or ``1x3x224x224``) into a shape tuple."""
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise SplitcError(f"invalid --input-shape '{text}'",
                          "give positive integers separated by commas, e.g. 1,3,224,224")
    return shape


def infer_input_specs(loaded: LoadedModel, shapes: list[tuple[int, ...]],
                      dtypes: list[str]) -> list[InputSpec]:
    """Decide the model's input specs from flags, the file, or the first layer.

    Args:
        loaded: the loaded model.
        shapes: one shape per ``--input-shape`` flag (may be empty).
        dtypes: one dtype per ``--input-dtype`` flag, or a single one for all inputs.

    Returns:
        One :class:`InputSpec` per ``forward`` argument.
    """
    names = _forward_arg_names(loaded)
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise SplitcError(f"unknown --input-dtype '{dtype}'", f"choose one of {', '.join(DTYPES)}")
    if shapes:
        if len(shapes) != len(names):
            raise SplitcError(
                f"the model takes {len(names)} input(s) ({', '.join(names)}) "
                f"but {len(shapes)} --input-shape flag(s) were given",
                "pass one --input-shape per input, in forward() order",
            )
        if len(dtypes) not in (0, 1, len(shapes)):
            raise SplitcError("give one --input-dtype for all inputs or one per input")
        per_input = dtypes * len(shapes) if len(dtypes) == 1 else dtypes or ["float32"] * len(shapes)
        return [InputSpec(n, s, d) for n, s, d in zip(names, shapes, per_input)]
    if loaded.input_specs:
        return loaded.input_specs
    shape = _shape_from_first_layer(loaded.module)
    if shape is None or len(names) != 1:
        raise SplitcError("cannot infer the model's input shape",
                          "pass it with --input-shape, e.g. --input-shape 1,3,224,224")
    return [InputSpec(names[0], shape, dtypes[0] if dtypes else "float32")]


def _forward_arg_names(loaded: LoadedModel) -> list[str]:
    if loaded.input_specs:
        return [s.name for s in loaded.input_specs]
    import inspect

    try:
        params = inspect.signature(loaded.module.forward).parameters.values()
    except (TypeError, ValueError):
        return ["x"]
    names = [p.name for p in params
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return names or ["x"]


def _shape_from_first_layer(module: nn.Module) -> tuple[int, ...] | None:
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Conv2d):
            shape = (1, layer.in_channels, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
            log.info("input shape inferred as %s from first layer '%s' (Conv2d, in_channels=%d; "
                     "%dx%d is assumed — pass --input-shape to change it)",
                     "x".join(map(str, shape)), name, layer.in_channels,
                     DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
            return shape
        if isinstance(layer, nn.Linear):
            shape = (1, layer.in_features)
            log.info("input shape inferred as %s from first layer '%s' (Linear)",
                     "x".join(map(str, shape)), name)
            return shape
        if isinstance(layer, (nn.Conv1d, nn.Conv3d, nn.Embedding, nn.RNNBase)):
            return None
    return None


def make_example_inputs(specs: list[InputSpec], seed: int = 0) -> list[torch.Tensor]:
    """Deterministic example inputs: standard normal for floats, small ints otherwise."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        if spec.torch_dtype.is_floating_point:
            tensors.append(torch.randn(spec.shape, generator=generator).to(spec.torch_dtype))
        elif spec.torch_dtype == torch.bool:
            tensors.append(torch.randint(0, 2, spec.shape, generator=generator).bool())
        else:
            tensors.append(torch.randint(0, 10, spec.shape, generator=generator).to(spec.torch_dtype))
    return tensors


# --------------------------------------------------------------------------- tracing


def trace_model(module: nn.Module, specs: list[InputSpec]) -> TracedModel:
    """Trace ``module`` with torch.fx, falling back to torch.export.

    Raises:
        SplitcError: neither tracer can capture the model; names the offending code.
    """
    try:
        gm = torch.fx.symbolic_trace(module)
        return TracedModel(gm, "symbolic_trace")
    except Exception as fx_exc:  # any tracer failure is a reason to fall back
        fx_reason = _describe_trace_failure(fx_exc)
    log.warning("torch.fx.symbolic_trace failed (%s); falling back to torch.export", fx_reason)
    try:
        exported = torch.export.export(module, tuple(make_example_inputs(specs)), strict=False)
        gm = exported.module()
        return TracedModel(gm, "torch.export", notes=[f"symbolic_trace failed: {fx_reason}"])
    except Exception as export_exc:
        export_reason = _describe_trace_failure(export_exc)
    raise SplitcError(
        f"cannot trace the model: torch.fx.symbolic_trace failed ({fx_reason}) and "
        f"torch.export failed ({export_reason})",
        "remove data-dependent Python control flow from forward() (use torch.where / "
        "torch.cond), or mark the construct as a leaf module",
    )


def _describe_trace_failure(exc: BaseException) -> str:
    """First line of the error plus the deepest frame of user (non-torch) code."""
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not _is_library_file(frame.filename):
            where = f" at {Path(frame.filename).name}:{frame.lineno} `{(frame.line or '').strip()}`"
            break
    return f"{_first_line(exc)}{where}"


_LIBRARY_DIRS = tuple(str(Path(m.__file__).resolve().parent) for m in (torch, importlib.import_module("splitc")))


def _is_library_file(filename: str) -> bool:
    """torch's and splitc's own frames, and fx-generated code (``<eval_with_key>``)."""
    return filename.startswith("<") or str(Path(filename).resolve()).startswith(_LIBRARY_DIRS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line[:300]
