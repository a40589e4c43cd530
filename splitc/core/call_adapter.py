"""Models as users call them: named inputs, optional arguments at their defaults, structured outputs.

A Hugging Face model is called ``model(input_ids=..., attention_mask=...)``: every ``forward``
argument is optional, the output is a ``ModelOutput`` (and, for a decoder, a cache object).
Tracers want tensors in, tensors out. :class:`CallAdapter` is that bridge: its generated
``forward`` takes exactly the named inputs, positionally, calls
``model(**inputs, **fixed_kwargs)`` and returns a flat ``dict`` of named tensors
(:func:`flatten_outputs`: ``logits``, ``cache.0.key``, ...). Neither tracer then needs a pytree
registration, and the names become the bundle's output names.

:func:`adapt_model` decides, for a loaded model and its inputs, whether it is called through an
adapter (a transformers model, or inputs that are not exactly its required positional
parameters), split by a family adapter (a torchvision detector: :mod:`splitc.core.detectors`),
or traced as it is; it returns the record the manifest keeps (``model.source.call``) so that
``splitc verify`` calls the reloaded model the same way (:func:`apply_call_record`).

No ``transformers`` import anywhere: a model is recognised by its classes' module names, so
transformers stays a test dependency.

Example:
    >>> import torch
    >>> class Scaled(torch.nn.Module):
    ...     def forward(self, x, scale=None):
    ...         return {"y": x * (1 if scale is None else scale)}
    >>> adapter, _ = adapt_call(Scaled(), ["x", "scale"])
    >>> sorted(adapter(torch.ones(1), torch.full((1,), 2.0)))
    ['y']
"""

from __future__ import annotations

import difflib
import inspect
import keyword
import logging
from collections.abc import Mapping
from typing import Any, Sequence

import torch
import torch.fx
from torch import nn

from splitc.core.detectors import SplitDetector, is_torchvision_detector, split_detector
from splitc.errors import SplitcError

__all__ = ["forward_parameters", "resolve_named_specs", "is_transformers_model", "flatten_outputs", "CallAdapter",
           "adapt_call", "needs_adapter", "adapt_model", "apply_call_record", "unwrap", "CACHE_ARGUMENTS",
           "DETECTION_ADAPTER"]

log = logging.getLogger("splitc")

#: ``forward`` parameters that mark a decoder with a KV cache (transformers' names)
CACHE_ARGUMENTS = frozenset({"use_cache", "past_key_values", "cache"})
#: ``model.source.call.adapter`` of a torchvision detector split into body and post-processing
DETECTION_ADAPTER = "torchvision_detection"


def forward_parameters(module: nn.Module) -> tuple[list[inspect.Parameter], bool]:
    """``forward``'s named parameters (positional or keyword) and whether it also takes ``**kwargs``."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return [], True
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def required_names(module: nn.Module) -> list[str]:
    """Names of ``forward``'s required positional parameters."""
    params, _ = forward_parameters(module)
    return [p.name for p in params if p.default is p.empty and p.kind != p.KEYWORD_ONLY]


def resolve_named_specs(module: nn.Module, specs: Sequence[Any]) -> list[Any]:
    """Check named input specs (objects with ``name``) against ``forward``; order them as its signature does.

    Every required parameter must be given; optional ones not given keep their defaults.

    Raises:
        SplitcError: an unknown name (with the close matches), a duplicate, or a missing required input.
    """
    params, var_kw = forward_parameters(module)
    names = [p.name for p in params]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise SplitcError(f"input '{spec.name}' is given twice", "give each --input name once")
        seen.add(spec.name)
        if spec.name not in names and not var_kw:
            close = difflib.get_close_matches(spec.name, names, n=1)
            raise SplitcError(f"{type(module).__name__}.forward() has no argument '{spec.name}'",
                              f"its arguments: {', '.join(names)}" + (f" (did you mean {close[0]}?)" if close else ""))
    missing = [n for n in required_names(module) if n not in seen]
    if missing:
        raise SplitcError(f"{type(module).__name__}.forward() needs {', '.join(missing)} but no --input gives it",
                          f"add --input {missing[0]}:SHAPE:DTYPE")
    order = {n: i for i, n in enumerate(names)}
    return sorted(specs, key=lambda s: order.get(s.name, len(order)))


def is_transformers_model(module: nn.Module) -> bool:
    """A Hugging Face ``transformers`` model (decided without importing transformers)."""
    return any(c.__module__.startswith("transformers.") for c in type(module).__mro__)


def flatten_outputs(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a model's outputs to ``{path: tensor}``.

    Tensors (and fx Proxies) are leaves; mappings (``dict``, a transformers ``ModelOutput``) go by
    key, sequences by index, a transformers cache (``layers`` holding ``keys``/``values``) as
    ``<path>.<layer>.key`` / ``.value``, other objects by their public attributes. ``None`` and
    Python scalars are dropped: they are not per-request data.
    """
    out: dict[str, Any] = {}
    if isinstance(value, (torch.Tensor, torch.fx.Proxy)):
        out[prefix or "output"] = value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            out.update(flatten_outputs(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            out.update(flatten_outputs(item, f"{prefix}.{i}" if prefix else f"output_{i}"))
    elif value is None or isinstance(value, (bool, int, float, str)):
        pass
    elif isinstance(getattr(value, "layers", None), (list, tuple)):  # transformers >= 4.56 Cache
        for i, layer in enumerate(value.layers):
            for attr, short in (("keys", "key"), ("values", "value")):
                tensor = getattr(layer, attr, None)
                if tensor is not None:
                    out[f"{prefix}.{i}.{short}"] = tensor
    elif hasattr(value, "__dict__"):
        for key, item in vars(value).items():
            if not key.startswith("_"):
                out.update(flatten_outputs(item, f"{prefix}.{key}" if prefix else key))
    return out


class CallAdapter(nn.Module):
    """``forward(<named inputs, positionally>) -> {path: tensor}`` around any model.

    Made by :func:`adapter_class`, whose generated ``forward`` has one explicit parameter per
    input (torch.fx names placeholders after real parameters). ``state_dict`` keys get the
    ``model.`` prefix; :func:`unwrap` returns the user's model (fingerprints use it).

    Attributes:
        model: the user's model.
        input_names: the inputs, in ``forward`` order.
        fixed_kwargs: keyword arguments every call gets (``use_cache=False``, ``return_dict=True``).
    """

    def __init__(self, model: nn.Module, input_names: Sequence[str], fixed_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.fixed_kwargs = dict(fixed_kwargs or {})

    def _call(self, *inputs: torch.Tensor) -> dict[str, Any]:
        return flatten_outputs(self.model(**dict(zip(self.input_names, inputs)), **self.fixed_kwargs))


def adapter_class(names: Sequence[str]) -> type[CallAdapter]:
    """A :class:`CallAdapter` subclass whose ``forward`` takes exactly ``names``.

    Generated code because both tracers read parameter names from the signature and a
    ``*args`` forward would give them none. Only identifiers are accepted, so the code is
    exactly ``def forward(self, a, b): return self._call(a, b)``.

    Raises:
        SplitcError: a name is not a Python identifier.
    """
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise SplitcError(f"input name '{name}' is not a Python identifier", "use the forward() argument name")
    args = ", ".join(names)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {args}):\n    return self._call({args})\n", namespace)  # noqa: S102 - identifiers only
    return type("CallAdapter", (CallAdapter,), {"forward": namespace["forward"]})


def adapt_call(module: nn.Module, names: Sequence[str], keep_cache: bool = False) -> tuple[CallAdapter, list[str]]:
    """Wrap ``module`` in a :class:`CallAdapter` for the inputs ``names`` (in ``forward`` order).

    Args:
        module: the user's model.
        names: the inputs, in signature order (:func:`resolve_named_specs`).
        keep_cache: keep ``use_cache`` at the model's default (the KV cache becomes named
            outputs). By default a decoder (its ``forward`` takes ``use_cache``) is called with
            ``use_cache=False``: one forward pass is compiled, and the cache would only be extra
            outputs (megabytes per request at real sizes) that nothing downstream reads.

    Returns:
        The adapter and the notes for the manifest (also logged).
    """
    params, var_kw = forward_parameters(module)
    accepted = {p.name for p in params}
    fixed: dict[str, Any] = {}
    notes: list[str] = []
    if CACHE_ARGUMENTS & accepted and "use_cache" not in names and not keep_cache \
            and getattr(getattr(module, "config", None), "use_cache", None) is not False:
        fixed["use_cache"] = False
        notes.append("called with use_cache=False: one forward pass is compiled and the KV cache is not an output "
                     "(--keep-cache returns it as named tensors)")
    if is_transformers_model(module) and ("return_dict" in accepted or var_kw):
        fixed["return_dict"] = True  # a ModelOutput, flattened by name (a tuple would lose the names)
    for note in notes:
        log.info("[load] %s", note)
    return adapter_class(names)(module, names, fixed), notes


def needs_adapter(module: nn.Module, names: Sequence[str]) -> bool:
    """Whether ``module`` must be called through a :class:`CallAdapter`.

    True for a transformers model (structured outputs, every argument optional) and for inputs
    that are not exactly its required positional parameters (an optional argument given by name).
    """
    if isinstance(module, torch.fx.GraphModule):
        return False
    return is_transformers_model(module) or list(names) != required_names(module)


def adapt_model(module: nn.Module, specs: Sequence[Any], keep_cache: bool = False
                ) -> tuple[nn.Module, dict[str, Any] | None, list[str]]:
    """How ``module`` is traced for the inputs ``specs`` (objects with ``name`` and ``shape``).

    Returns:
        ``(module to trace, call record or None, notes)``. The record goes into the manifest
        (``model.source.call``: ``inputs``, ``kwargs`` and, for a family adapter, ``adapter``).
    """
    names = [s.name for s in specs]
    if is_torchvision_detector(module):  # data-dependent post-processing: the body is cut, the tail kept whole
        split = split_detector(module, tuple(specs[0].shape))
        return split, {"inputs": names, "kwargs": {}, "adapter": DETECTION_ADAPTER}, []  # tracing notes it
    if needs_adapter(module, names):
        adapter, notes = adapt_call(module, names, keep_cache)
        return adapter, {"inputs": list(adapter.input_names), "kwargs": dict(adapter.fixed_kwargs)}, notes
    return module, None, []


def apply_call_record(module: nn.Module, record: dict[str, Any] | None,
                      input_shapes: Sequence[Sequence[int]] = ()) -> nn.Module:
    """Wrap a reloaded model as its manifest's ``model.source.call`` says (the model itself without a record)."""
    if not record:
        return module
    if record.get("adapter") == DETECTION_ADAPTER:
        return split_detector(module, tuple(input_shapes[0]))
    return adapter_class(record["inputs"])(module, record["inputs"], record.get("kwargs", {}))


def unwrap(module: nn.Module) -> nn.Module:
    """The user's model inside a :class:`CallAdapter` or a :class:`~splitc.core.detectors.SplitDetector`."""
    return module.model if isinstance(module, (CallAdapter, SplitDetector)) else module
