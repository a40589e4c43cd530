"""Load a model from the user's spec and trace it into a ``torch.fx.GraphModule``.

Three kinds of model spec are accepted:

* ``model.pt`` -- a pickled ``nn.Module`` written by ``torch.save(model, path)``;
* ``model.pt2`` -- an ``ExportedProgram`` written by ``torch.export.save`` (the pytree types its
  inputs and outputs use, e.g. a transformers ``ModelOutput``, are imported first);
* ``package.module:factory`` -- a callable returning an ``nn.Module``
  (e.g. ``torchvision.models:resnet50``), called after seeding torch's RNG so that
  randomly initialised weights are reproducible (``splitc verify`` reloads it).

Inputs come from ``--input NAME:SHAPE[:DTYPE]`` (any ``forward`` argument by name),
``--input-shape``/``--input-dtype`` (in ``forward`` order), the file (``.pt2``), or the model
itself (a transformers config, a timm patch embedding, a detector's transform, the first
layer). What had to be assumed (an image size, a sequence length) is recorded in
:attr:`InputSpec.assumed` and logged as a warning, which ``-q`` does not hide.

Tracing uses ``torch.fx.symbolic_trace``; when that fails, ``torch.export`` is tried (and the
fallback is logged); a transformers model goes to ``torch.export`` directly, a torchvision
detector through its family adapter (:mod:`splitc.core.detectors`). Torch's own output stays
off the terminal unless ``-v``; when both tracers fail, the error names the user's file and
line and gives a hint that fits the cause (:mod:`splitc.core.tracing`).

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
import json
import keyword
import logging
import os
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import nn

from splitc.core.call_adapter import (CallAdapter, forward_parameters, is_transformers_model, required_names,
                                      resolve_named_specs, unwrap)
from splitc.core.detectors import (OUTPUT_NAMES, SplitDetector, detector_input_shape, is_torchvision_detector,
                                   trace_split_detector)
from splitc.core.options import CompileOptions
from splitc.core.tracing import (copy_graph_module, describe_trace_failure, drop_specialized_placeholders,
                                 first_line, optional_defaults, quiet_torch, strip_export_bookkeeping, trace_hint)
from splitc.errors import SplitcError

__all__ = [
    "InputSpec",
    "InputSettings",
    "LoadedModel",
    "TracedModel",
    "load_model",
    "parse_input_shape",
    "parse_named_input",
    "infer_input_specs",
    "make_example_inputs",
    "trace_model",
    "parameter_fingerprint",
    "output_names_of",
    "flat_io",
    "pt2_pytree_types",
    "DTYPES",
    "MODULE_PATH",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SEQUENCE_LENGTH",
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
#: Sequence length assumed for token inputs when neither a flag nor the model gives one.
DEFAULT_SEQUENCE_LENGTH = 128

#: node.meta key written by :func:`trace_model`: the dotted path, in the user's module tree, of the
#: innermost module a node runs in (``bert.encoder.layer.0.attention``); cut candidates name blocks by it.
MODULE_PATH = "splitc.module_path"

#: forward() argument names that carry integer ids or masks in transformers and most text models
_INTEGER_INPUT_NAMES = ("input_ids", "decoder_input_ids", "attention_mask", "decoder_attention_mask",
                        "token_type_ids", "position_ids", "labels")


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, static shape and dtype name.

    Attributes:
        assumed: what about this input splitc had to assume (an image size, a sequence length)
            and how to change it; None when the user or the model gave it.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    assumed: str | None = field(default=None, compare=False)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.assumed:
            out["assumed"] = self.assumed
        return out


@dataclass
class LoadedModel:
    """A model ready to trace, and how to load it again (recorded in the manifest).

    ``source["call"]``, when set, says how the model is called (named inputs, fixed keyword
    arguments, a family adapter): see :func:`splitc.core.call_adapter.adapt_model`.
    """

    module: nn.Module
    source: dict[str, Any]
    input_specs: list[InputSpec] | None = None  # known from the file (e.g. .pt2)
    exported: Any = None  # the ExportedProgram for .pt2 files


@dataclass
class TracedModel:
    """The traced graph and how it was obtained.

    Attributes:
        output_names: the model's own names of its flat outputs (``logits``, ``boxes``, the keys
            of a returned dict) when it has them; None otherwise.
    """

    graph_module: torch.fx.GraphModule
    method: str  # "symbolic_trace" or "torch.export"
    notes: list[str] = field(default_factory=list)
    output_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.output_names is None:
            self.output_names = output_names_of(self.graph_module)


@dataclass(frozen=True)
class InputSettings:
    """``--input`` and ``--keep-cache``, parsed once (``splitc.driver.validate``).

    Attributes:
        named: one :class:`InputSpec` per ``--input NAME:SHAPE[:DTYPE]``, in the order given.
        keep_cache: keep ``use_cache`` at the model's default (the KV cache becomes named outputs).
    """

    named: tuple[InputSpec, ...] = ()
    keep_cache: bool = False

    @classmethod
    def from_options(cls, options: CompileOptions) -> "InputSettings":
        """Parse ``options.inputs``.

        Raises:
            SplitcError: malformed text, a bad name or dtype, or a name given twice.
        """
        named = tuple(parse_named_input(text) for text in options.inputs)
        names = [s.name for s in named]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SplitcError(f"--input {twice[0]} is given twice", "give each input once")
        return cls(named, bool(options.keep_cache))


def output_names_of(gm: torch.fx.GraphModule) -> list[str] | None:
    """Names of a graph's flat outputs when the model returns a dict (the call adapter's ``logits``,
    ``cache.0.key``) or names them in ``gm.meta`` (a .pt2, a detector); None when they have none."""
    if gm.meta.get(OUTPUT_NAMES):
        return list(gm.meta[OUTPUT_NAMES])
    pytree = torch.utils._pytree
    spec = getattr(getattr(gm.graph._codegen, "pytree_info", None), "out_spec", None)
    output = next((n for n in gm.graph.nodes if n.op == "output"), None)
    if spec is not None:
        tree = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
    elif output is not None and isinstance(output.args[0], dict):
        tree = output.args[0]
    else:
        return None
    if not isinstance(tree, dict):
        return None
    names = [".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
             for path, _ in pytree.tree_flatten_with_path(tree)[0]]
    return names if len(set(names)) == len(names) else None


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
    """sha256 over every parameter and buffer (names, shapes, bytes) of the user's model.

    Lets ``splitc verify`` prove it reloaded the very weights that were compiled. A call
    adapter or a split detector is looked through (:func:`~splitc.core.call_adapter.unwrap`).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap(module).state_dict().items()):
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
        raise _unpickling_error(path, exc) from None
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


_MISSING_CLASS = re.compile(r"Can't get attribute '([^']+)' on <module '([^']+)'")


def _unpickling_error(path: Path, exc: BaseException) -> SplitcError:
    """Why a ``torch.save(model)`` file cannot be read here, and what to do.

    A pickled module stores its class by reference (module + name), so unpickling imports it:
    a class defined in the script that saved it (``__main__``) or in a module that is not
    importable where splitc runs cannot be found, although the file is fine.
    """
    fixes = ("move the class into a module (e.g. textnet.py, next to your script) and import it from there before "
             "torch.save; or pass that module's factory as package.module:factory; or save an exported program: "
             "torch.export.save(torch.export.export(model, example_inputs), 'model.pt2')")
    found = _MISSING_CLASS.search(str(exc))
    main = sys.modules.get("__main__")  # pickle looks the class up in the running program's __main__
    main_names = {"__main__", getattr(getattr(main, "__spec__", None), "name", None)}  # python -m x: 'x.__main__'
    if found and found.group(2) in main_names:
        return SplitcError(f"'{path}' holds a model whose class {found.group(1)} was defined in the script that saved "
                           "it (__main__), so it cannot be unpickled here: the class must be importable where splitc "
                           "runs", fixes)
    if found:
        return SplitcError(f"'{path}' holds a model of class {found.group(2)}.{found.group(1)}, which does not exist "
                           "in the module importable here: the class must be importable where splitc runs",
                           f"run splitc where that version of {found.group(2)} is importable (PYTHONPATH); or {fixes}")
    if isinstance(exc, ModuleNotFoundError):
        return SplitcError(f"'{path}' holds a model whose class lives in module '{exc.name}', which is not importable "
                           "here: the class must be importable where splitc runs",
                           f"install it or run splitc from the folder that has it (PYTHONPATH); or {fixes}")
    return SplitcError(f"cannot read model file '{path}': {first_line(exc)}",
                       "is it a file written by torch.save(model, path)?")


def _load_exported_program(path: Path) -> LoadedModel:
    missing = import_pytree_types(path)
    if missing:
        name, why = missing[0]
        raise SplitcError(f"cannot read exported program '{path}': its inputs/outputs use {name}, which is not "
                          f"registered with torch's pytree here ({why})",
                          f"install the package that defines it ({name.split('.')[0]}) in this environment")
    try:
        with quiet_torch():  # a failed load logs a deserialization traceback through torch.export's logger
            exported = torch.export.load(str(path))
    except Exception as exc:
        raise SplitcError(f"cannot read exported program '{path}': {first_line(exc)}",
                          "is it a file written by torch.export.save?") from None
    return _from_exported(exported, path)


def pt2_pytree_types(path: str | os.PathLike[str]) -> set[str]:
    """Serialized pytree type names in a .pt2 archive's input/output specs (e.g.
    ``transformers.modeling_outputs.SequenceClassifierOutput``); empty if the file cannot be read."""
    found: set[str] = set()

    def walk(spec: Any) -> None:
        if isinstance(spec, dict):
            if isinstance(spec.get("type"), str):
                found.add(spec["type"])
            for child in spec.get("children_spec") or []:
                walk(child)
        elif isinstance(spec, list):
            for item in spec:
                walk(item)

    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if "/models/" not in name or not name.endswith(".json"):
                    continue
                doc = json.loads(archive.read(name))
                for entry in doc.get("graph_module", {}).get("module_call_graph", []):
                    signature = entry.get("signature") or {}
                    for key in ("in_spec", "out_spec"):
                        if isinstance(signature.get(key), str):
                            walk(json.loads(signature[key]))
    except (OSError, ValueError, zipfile.BadZipFile, KeyError):
        return set()
    return found


def import_pytree_types(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Import the modules defining the pytree types a .pt2 file needs.

    Importing a transformers output class registers it with pytree, as it was in the process
    that saved the file (``ModelOutput.__init_subclass__``).

    Returns:
        ``(type name, reason)`` for every type that is still not registered.
    """
    import torch.utils._pytree as pytree

    missing = []
    for name in sorted(pt2_pytree_types(path)):
        if name in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE or "." not in name:
            continue
        module_name, _, attr = name.rpartition(".")
        try:
            getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            missing.append((name, first_line(exc)))
            continue
        if name not in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
            missing.append((name, f"importing {module_name} does not register it"))
    return missing


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
    return LoadedModel(module=flat_exported_module(exported), source=source, input_specs=specs or None,
                       exported=exported)


def flat_exported_module(exported: Any) -> torch.fx.GraphModule:
    """``exported.module()`` called with its user inputs positionally and returning a flat tuple of tensors.

    The unlifted module's pytree codegen needs the exact (args, kwargs) structure it was exported
    with and rebuilds the output type (a transformers ``ModelOutput``); both become plain, export's
    input check (a pre-hook that would refuse positional inputs of a kwargs export) is removed,
    and export's bookkeeping (``_guards_fn``, metadata asserts) dropped. The output names
    (``logits``) are kept in ``gm.meta``.
    """
    with quiet_torch():
        gm = exported.module()
    strip_export_bookkeeping(gm)
    return flat_io(gm)


def flat_io(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Make ``gm`` take its inputs positionally and return its outputs flat (in place; returns ``gm``).

    torch.export's unlifted module (and fx with ``concrete_args``) uses a pytree codegen that
    rebuilds the call's (args, kwargs) and the output structure (a dict, a ``ModelOutput``), and
    an input check that refuses any other batch size; every consumer of the graph (partitions,
    calibration runs, ONNX export) wants tensors in and a flat tuple out. The output names
    (``logits``; a dict's keys) are kept in ``gm.meta[OUTPUT_NAMES]`` first. A graph returning
    one tensor keeps returning it.
    """
    gm.meta[OUTPUT_NAMES] = output_names_of(gm)
    gm._forward_pre_hooks.clear()
    gm.graph._codegen = torch.fx.graph.CodeGen()
    output = next(n for n in gm.graph.nodes if n.op == "output")
    if isinstance(output.args[0], (dict, list, tuple)):
        flat, _ = torch.utils._pytree.tree_flatten(output.args[0])
        output.args = (tuple(flat),)
    gm.recompile()
    return gm


def _load_factory(spec: str, seed: int) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SplitcError(f"model spec '{spec}' must look like package.module:factory")
    _current_dir_importable()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SplitcError(f"cannot import '{module_name}' for model '{spec}': {first_line(exc)}",
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
        raise SplitcError(f"calling factory '{spec}' failed: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise SplitcError(f"factory '{spec}' returned a {type(model).__name__}, not an nn.Module")
    source = {"kind": "factory", "spec": spec, "seed": seed}
    return LoadedModel(module=model.eval(), source=source)


# --------------------------------------------------------------------------- inputs


def parse_input_shape(text: str, flag: str = "--input-shape") -> tuple[int, ...]:
    """Parse ``"1,3,224,224"`` (or ``1x3x224x224``) into a shape tuple."""
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise SplitcError(f"invalid {flag} '{text}'",
                          "give positive integers separated by commas or x, e.g. 1,3,224,224")
    return shape


def parse_named_input(text: str) -> InputSpec:
    """Parse ``--input name:shape[:dtype]`` (``input_ids:1x64:int64``, ``pixel_values:1,3,224,224``).

    Returns:
        An :class:`InputSpec` (dtype float32 when omitted).

    Raises:
        SplitcError: malformed text, a name that is not an identifier, or an unknown dtype.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0].strip():
        raise SplitcError(f"invalid --input '{text}'", "write NAME:SHAPE[:DTYPE], e.g. input_ids:1x64:int64")
    name, shape_text = parts[0].strip(), parts[1]
    dtype = parts[2].strip() if len(parts) == 3 else "float32"
    if not name.isidentifier() or keyword.iskeyword(name):
        raise SplitcError(f"invalid input name '{name}' in --input '{text}'", "use the forward() argument name")
    if dtype not in DTYPES:
        raise SplitcError(f"unknown dtype '{dtype}' in --input '{text}'", f"choose one of {', '.join(DTYPES)}")
    return InputSpec(name, parse_input_shape(shape_text, "--input shape"), dtype)


def infer_input_specs(loaded: LoadedModel, shapes: list[tuple[int, ...]], dtypes: list[str],
                      named: list[InputSpec] | tuple[InputSpec, ...] = ()) -> list[InputSpec]:
    """Decide the model's input specs from flags, the file, the model's own config or its first layer.

    Args:
        loaded: the loaded model.
        shapes: one shape per ``--input-shape`` flag (may be empty), mapped to ``forward``'s
            parameters in order, as a positional call would (optional ones included).
        dtypes: one dtype per ``--input-dtype`` flag, or a single one for all inputs.
        named: ``--input name:shape:dtype`` specs (any ``forward`` parameter by name).

    Returns:
        One :class:`InputSpec` per model input, in ``forward`` order. An assumed size is in
        :attr:`InputSpec.assumed` and logged as a warning.

    Raises:
        SplitcError: conflicting flags, the wrong number of shapes, or nothing to infer from.
    """
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise SplitcError(f"unknown --input-dtype '{dtype}'", f"choose one of {', '.join(DTYPES)}")
    if named:
        if shapes or dtypes:
            raise SplitcError("--input cannot be combined with --input-shape/--input-dtype",
                              "give every input as --input NAME:SHAPE:DTYPE")
        if loaded.input_specs:
            raise SplitcError("a .pt2 file fixes its inputs", "drop --input")
        return resolve_named_specs(loaded.module, list(named))
    names = _forward_arg_names(loaded)
    if shapes:
        return _positional_specs(loaded, names, shapes, dtypes)
    if loaded.input_specs:
        return loaded.input_specs
    inferred = _spec_from_config(loaded.module) or _spec_from_first_layer(loaded.module)
    if inferred is None or len(names) != 1:
        raise SplitcError("cannot infer the model's input shape",
                          "pass it with --input-shape, e.g. --input-shape 1,3,224,224, or name the inputs: "
                          "--input input_ids:1x128:int64")
    spec = InputSpec(names[0], inferred.shape, dtypes[0] if dtypes else inferred.dtype, inferred.assumed)
    if spec.assumed:  # a warning: -q shows it (issue 16: an assumed 224x224 was easy to miss)
        log.warning("input '%s' assumed %s %s: %s", spec.name, "x".join(map(str, spec.shape)), spec.dtype,
                    spec.assumed)
    return [spec]


def _positional_specs(loaded: LoadedModel, names: list[str], shapes: list[tuple[int, ...]],
                      dtypes: list[str]) -> list[InputSpec]:
    """``--input-shape`` flags in ``forward`` order; on a model whose every parameter is optional
    (a transformers model) they map to its first parameters, as a positional Python call would."""
    if len(shapes) != len(names):
        params = names if loaded.input_specs else [p.name for p in forward_parameters(loaded.module)[0]]
        if len(names) < len(shapes) <= len(params):
            names = params[:len(shapes)]
            log.info("inputs taken as forward()'s first %d parameters: %s (name them with --input NAME:SHAPE:DTYPE)",
                     len(shapes), ", ".join(names))
        else:
            raise SplitcError(f"the model takes {len(names)} input(s) ({', '.join(names)}) but {len(shapes)} "
                              "--input-shape flag(s) were given",
                              "pass one --input-shape per input, in forward() order, or name them: "
                              "--input NAME:SHAPE:DTYPE")
    if len(dtypes) not in (0, 1, len(shapes)):
        raise SplitcError("give one --input-dtype for all inputs or one per input")
    per_input = dtypes * len(shapes) if len(dtypes) == 1 else \
        dtypes or [_default_dtype(loaded.module, n, i) for i, n in enumerate(names)]
    return [InputSpec(n, s, d) for n, s, d in zip(names, shapes, per_input)]


def _default_dtype(module: nn.Module, name: str, index: int) -> str:
    """dtype of an input given by shape only: int64 for token ids and masks (by name, or the first input
    of a model whose first layer is an ``nn.Embedding``), float32 otherwise; said in the log."""
    first = next((m for m in module.modules() if not list(m.children())), None)
    if name in _INTEGER_INPUT_NAMES or (index == 0 and isinstance(first, nn.Embedding)):
        why = f"its name '{name}'" if name in _INTEGER_INPUT_NAMES else "the model's first layer (nn.Embedding)"
        log.info("input '%s' taken as int64 from %s (pass --input-dtype to change it)", name, why)
        return "int64"
    return "float32"


def _forward_arg_names(loaded: LoadedModel) -> list[str]:
    """Required positional ``forward`` parameters; a model whose every parameter is optional (a
    transformers model) takes its ``main_input_name`` (``input_ids``, ``pixel_values``)."""
    if loaded.input_specs:
        return [s.name for s in loaded.input_specs]
    names = required_names(loaded.module)
    main = getattr(loaded.module, "main_input_name", None)
    if not names and isinstance(main, str):
        return [main]
    return names or ["x"]


@dataclass(frozen=True)
class _Inferred:
    shape: tuple[int, ...]
    dtype: str = "float32"
    assumed: str | None = None


def _spec_from_config(module: nn.Module) -> _Inferred | None:
    """Input shape and dtype from the model's own description.

    * a torchvision detector: the size its transform resizes to;
    * a transformers model: ``config`` and ``main_input_name`` (token ids: int64, sequence length
      :data:`DEFAULT_SEQUENCE_LENGTH` capped at ``max_position_embeddings``, an assumption;
      images: ``num_channels`` x ``image_size``);
    * a timm model: the patch embedding's ``img_size`` (a model built for 256 says so), else
      ``pretrained_cfg["input_size"]``.
    """
    if is_torchvision_detector(module):
        shape = detector_input_shape(module)
        log.info("input shape %s taken from the detector's transform (the size it resizes to)", _x(shape))
        return _Inferred(shape)
    config, main = getattr(module, "config", None), getattr(module, "main_input_name", None)
    if config is not None and main == "input_ids":
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        length = min(DEFAULT_SEQUENCE_LENGTH, limit) if isinstance(limit, int) and limit > 0 else DEFAULT_SEQUENCE_LENGTH
        return _Inferred((1, length), "int64", f"sequence length {length} (the model's config does not fix one); "
                                               f"pass --input input_ids:1xN:int64 to change it")
    if config is not None and main == "pixel_values":
        size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", 3)
        if isinstance(size, int) or (isinstance(size, (tuple, list)) and len(size) == 2):
            h, w = (size, size) if isinstance(size, int) else size
            shape = (1, int(channels), int(h), int(w))
            log.info("input shape %s taken from the model's config (num_channels, image_size)", _x(shape))
            return _Inferred(shape)
    patch = getattr(module, "patch_embed", None)
    size, channels = getattr(patch, "img_size", None), getattr(getattr(patch, "proj", None), "in_channels", None)
    if isinstance(size, (tuple, list)) and len(size) == 2 and channels:
        shape = (1, int(channels), int(size[0]), int(size[1]))
        log.info("input shape %s taken from the model's patch embedding (img_size)", _x(shape))
        return _Inferred(shape)
    cfg = getattr(module, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("input_size"), (tuple, list)) and len(cfg["input_size"]) == 3:
        shape = (1, *map(int, cfg["input_size"]))
        log.info("input shape %s taken from the model's pretrained_cfg (input_size)", _x(shape))
        return _Inferred(shape)
    return None


def _spec_from_first_layer(module: nn.Module) -> _Inferred | None:
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Conv2d):
            shape = (1, layer.in_channels, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
            return _Inferred(shape, assumed=f"image size {DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE} (first layer "
                                            f"'{name}' is a Conv2d with {layer.in_channels} input channels; its "
                                            f"spatial size is not in the model); pass --input-shape to change it")
        if isinstance(layer, nn.Linear):
            shape = (1, layer.in_features)
            log.info("input shape %s taken from first layer '%s' (Linear)", _x(shape), name)
            return _Inferred(shape)
        if isinstance(layer, nn.Embedding):
            return _Inferred((1, DEFAULT_SEQUENCE_LENGTH), "int64",
                             f"token ids, sequence length {DEFAULT_SEQUENCE_LENGTH} (first layer '{name}' is an "
                             f"Embedding of {layer.num_embeddings} entries); pass --input-shape 1,N --input-dtype "
                             "int64 to change it")
        if isinstance(layer, (nn.Conv1d, nn.Conv3d, nn.RNNBase)):
            return None
    return None


def _x(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def make_example_inputs(specs: list[InputSpec], seed: int = 0) -> list[torch.Tensor]:
    """Deterministic example inputs: standard normal for floats, small ints otherwise.

    An integer input named ``*mask*`` is a padding mask (ones for a random-length prefix of at
    least one position, then zeros), so verification exercises padding and never a fully masked
    row; ``token_type*`` inputs are zeros (one segment).
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        if spec.torch_dtype.is_floating_point:
            tensors.append(torch.randn(spec.shape, generator=generator).to(spec.torch_dtype))
        elif "mask" in spec.name and spec.shape:
            valid = int(torch.randint(1, spec.shape[-1] + 1, (1,), generator=generator))
            mask = torch.zeros(spec.shape, dtype=torch.int64)
            mask[..., :valid] = 1
            tensors.append(mask.to(spec.torch_dtype))
        elif "token_type" in spec.name:
            tensors.append(torch.zeros(spec.shape, dtype=spec.torch_dtype))
        elif spec.torch_dtype == torch.bool:
            tensors.append(torch.randint(0, 2, spec.shape, generator=generator).bool())
        else:
            tensors.append(torch.randint(0, 10, spec.shape, generator=generator).to(spec.torch_dtype))
    return tensors


# --------------------------------------------------------------------------- tracing


def trace_model(module: nn.Module, specs: list[InputSpec]) -> TracedModel:
    """Trace ``module`` with torch.fx, falling back to torch.export.

    A split detector (:mod:`splitc.core.detectors`) has its body exported and its tail kept as
    a leaf; a .pt2's graph is used as it is (an fx re-trace would drop its module paths); a
    transformers model goes straight to ``torch.export(strict=False)``: transformers >= 5
    computes masks and positions from tensor shapes in Python, which ``symbolic_trace`` cannot
    follow, and no longer ships its own fx tracer. Every node gets :data:`MODULE_PATH`.

    Raises:
        SplitcError: neither tracer can capture the model; names the user's file and line and
            gives a hint that fits the cause.
    """
    traced = _trace(module, specs)
    _annotate_module_paths(traced.graph_module, "model." if isinstance(module, (CallAdapter, SplitDetector)) else "")
    return traced


def _trace(module: nn.Module, specs: list[InputSpec]) -> TracedModel:
    if isinstance(module, SplitDetector):
        return TracedModel(trace_split_detector(module, make_example_inputs(specs)[0]), "torch.export",
                           notes=[module.note])
    if isinstance(module, torch.fx.GraphModule) and any("nn_module_stack" in n.meta for n in module.graph.nodes):
        return TracedModel(copy_graph_module(module), "torch.export", notes=["graph of the exported program (.pt2)"])
    fx_exc: BaseException | None = None
    if is_transformers_model(unwrap(module)):
        notes = ["torch.export used directly (a transformers model computes shapes in Python)"]
    else:
        try:
            concrete = optional_defaults(module, [s.name for s in specs])  # optional args not given: their defaults
            with quiet_torch():
                gm = torch.fx.symbolic_trace(module, concrete_args=concrete or None)
            if concrete:
                drop_specialized_placeholders(gm, set(concrete))
            return TracedModel(flat_io(gm), "symbolic_trace")
        except Exception as exc:  # any tracer failure is a reason to fall back
            fx_exc = exc
        fx_reason = describe_trace_failure(fx_exc)
        log.warning("torch.fx.symbolic_trace failed (%s); falling back to torch.export", fx_reason)
        notes = [f"symbolic_trace failed: {fx_reason}"]
    try:
        with quiet_torch():  # a failed export prints the whole partial graph to stderr
            gm = torch.export.export(module, tuple(make_example_inputs(specs)), strict=False).module()
        strip_export_bookkeeping(gm)
        return TracedModel(flat_io(gm), "torch.export", notes=notes)
    except Exception as exc:
        export_exc = exc
    tried = f"torch.fx.symbolic_trace failed ({describe_trace_failure(fx_exc)}) and " if fx_exc is not None else ""
    hint = trace_hint([e for e in (fx_exc, export_exc) if e is not None], specs)
    inner = next(((p, m) for p, m in module.named_modules() if p and is_torchvision_detector(m)), None)
    if inner is not None:  # a detector inside the user's wrapper: the family adapter handles the detector itself
        hint = (f"'{inner[0]}' is a torchvision {type(inner[1]).__name__}, whose post-processing branches on tensor "
                "values: compile the detector itself (a factory or .pt of it), which splitc splits into a traced "
                "body and a post-processing tail, or make forward() return its raw head outputs")
    raise SplitcError(f"cannot trace the model: {tried}torch.export failed ({describe_trace_failure(export_exc)})",
                      hint)


def _annotate_module_paths(gm: torch.fx.GraphModule, strip_prefix: str) -> None:
    """``node.meta[MODULE_PATH]`` from the ``nn_module_stack`` both tracers record, a wrapper's
    attribute (``model.``) removed so paths are the user's (``bert.encoder.layer.0``)."""
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "placeholder" or node.op == "output" or not stack:
            continue
        path = list(stack.values())[-1][0]
        if strip_prefix and (path + ".").startswith(strip_prefix):
            path = path[len(strip_prefix):]
        if path:
            node.meta[MODULE_PATH] = path
