"""Deployment targets as data: the built-in catalog, user target files, name lookup.

A target is one tier a partition can run on (a Jetson, an edge server, a cloud
VM or GPU, a FaaS function). Its figures live in YAML files, one per target, in
``splitc/targets/catalog/`` (with the spec-sheet sources they came from); users
add or override targets with their own files (``--targets-file FILE``). This
module validates those files into frozen :class:`Target` objects holding plain
SI numbers, and resolves names and aliases (case-insensitive) to targets.

>>> registry = TargetRegistry.with_builtins()
>>> [t.name for t in registry.resolve_chain("jetson, cloud-gpu")]
['jetson-orin-nano', 'cloud-gpu-t4']
>>> t4 = registry.resolve("T4")
>>> t4.kind, t4.backend, t4.peak_flops["fp16"], t4.memory_bandwidth
('cloud-vm', 'tensorrt', 65000000000000.0, 320000000000.0)
>>> registry.resolve("jetson").uplink
Link(bandwidth_bps=20000000.0, rtt_s=0.03)
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import importlib.resources
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import yaml

from splitc.errors import SplitcError
from splitc.core.op_classes import EFFICIENCY_REFINEMENTS, OP_CLASSES
from splitc.units import (
    format_bandwidth,
    format_bytes,
    format_flops,
    format_seconds,
    parse_bandwidth,
    parse_link_bandwidth,
    parse_bytes,
    parse_duration,
    parse_flops,
)

__all__ = [
    "KINDS",
    "BACKENDS",
    "PRECISIONS",
    "PRICE_MODELS",
    "TARGET_KEYS",
    "FUSION_ROLES",
    "Link",
    "MeasuredNode",
    "ModelProfile",
    "Target",
    "TargetRegistry",
    "load_catalog",
    "load_targets_file",
    "write_targets_file",
    "format_targets_table",
]

log = logging.getLogger(__name__)

#: Kinds of tier, in the order a chain usually runs (used to sort listings).
KINDS: tuple[str, ...] = ("device", "edge", "cloud-vm", "faas")
#: Runtimes a target's figures model. ``onnxruntime`` and ``tensorrt`` choose export artifacts
#: (see backends/emit.py); ``torch`` is eager PyTorch (``splitc profile --device cuda``): its
#: partitions are still written as ONNX, it only says what the cost-model figures were measured with.
BACKENDS: tuple[str, ...] = ("onnxruntime", "tensorrt", "torch")
#: Numeric precisions a target may list (each needs a ``peak_flops`` entry).
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")
#: How a tier is paid for.
PRICE_MODELS: tuple[str, ...] = ("free", "energy", "vm", "faas")
#: Every key a target mapping may have; all but ``notes`` (and ``uplink`` for
#: cloud-vm/faas tiers) are required.
TARGET_KEYS: tuple[str, ...] = (
    "name", "aliases", "kind", "backend", "description", "precisions", "peak_flops",
    "memory_bandwidth", "memory", "usable_memory_fraction", "efficiency", "op_overhead",
    "fused_op_classes", "price", "uplink", "sources", "notes",
    "run_overhead", "fused_patterns", "layout_conversion", "model_profile",
)
_OPTIONAL_KEYS = frozenset({"notes", "uplink", "run_overhead", "fused_patterns", "layout_conversion", "model_profile"})
#: What a node is to the backend's kernel fusion (see :func:`splitc.targets.cost_model.fusion_role`):
#: ``act`` = element-wise with one tensor input (ReLU, GELU, Hardswish, scale), ``binary`` = element-wise
#: with two or more (residual add, SE multiply); the others are the op classes of the same name.
FUSION_ROLES: tuple[str, ...] = ("conv", "matmul", "attention", "norm", "pool", "act", "binary", "reduction",
                                 "data_movement", "other")
_UPLINK_OPTIONAL_KINDS = frozenset({"cloud-vm", "faas"})
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_TARGETS_FILE_HINT = "see splitc/targets/catalog/*.yaml for complete examples"


@dataclasses.dataclass(frozen=True)
class Link:
    """A network link from one tier to the next.

    Args:
        bandwidth_bps: sustained throughput in bits per second.
        rtt_s: round-trip time in seconds.
    """

    bandwidth_bps: float
    rtt_s: float


@dataclasses.dataclass(frozen=True)
class MeasuredNode:
    """One node of one model timed on this target (``splitc profile --model``).

    Attributes:
        seconds: its share of the measured model time (its kernels, fused kernels split by the cost
            model's proportions, layout conversions included).
        op: the node's op name when measured (``splitc.op_name``): a node only takes this figure
            when its name, op and output bytes all match.
        out_bytes: its output bytes when measured.
    """

    seconds: float
    op: str
    out_bytes: int


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    """Per-node times of one model measured on a target (``model_profile`` in the YAML).

    Attributes:
        model: the model as given to ``splitc profile --model``.
        input_shapes: the shapes it was measured with.
        command: the command that measured it.
        measured_s: the whole model's measured time (what the node times were scaled to).
        nodes: node name -> :class:`MeasuredNode`.
    """

    model: str
    input_shapes: tuple[tuple[int, ...], ...]
    command: str
    measured_s: float
    nodes: dict[str, MeasuredNode] = dataclasses.field(hash=False, compare=False)

    def to_spec(self) -> dict[str, Any]:
        """The YAML mapping (``nodes``: name -> [seconds, op, out_bytes])."""
        return {"model": self.model, "input_shapes": [list(s) for s in self.input_shapes], "command": self.command,
                "measured_s": self.measured_s,
                "nodes": {k: [float(v.seconds), v.op, int(v.out_bytes)] for k, v in self.nodes.items()}}


@dataclasses.dataclass(frozen=True)
class Target:
    """One deployment tier, validated, with every figure in SI base units.

    Attributes:
        name: canonical name (lower case), also the tier's folder in a bundle.
        aliases: other names that resolve to this target.
        kind: one of :data:`KINDS`.
        backend: one of :data:`BACKENDS`.
        description: one line for listings and reports.
        precisions: supported precisions (subset of :data:`PRECISIONS`).
        peak_flops: dense peak operations/s per precision.
        memory_bandwidth: bytes per second.
        memory_bytes: memory capacity in bytes.
        usable_memory_fraction: share of memory a partition may use.
        efficiency: fraction of peak reached per op class (every class in OP_CLASSES).
        op_overhead_s: fixed per-kernel overhead of the backend, seconds.
        fused_op_classes: op classes fused into the previous kernel (no overhead).
        price: ``{"model": ...}`` plus that model's fields as SI numbers
            (durations as ``*_s`` seconds, sizes as ``*_bytes``).
        uplink: default link to the next tier, or None (last-tier cloud kinds).
        sources: URLs the figures come from.
        notes: how estimated or derived figures were obtained.
        origin: ``"built-in"`` or the path of the user file it came from.
        run_overhead_s: fixed cost of one partition run (one ``session.run``), paid once by every
            tier that runs something (0 where not measured).
        fused_patterns: kernel fusions of the backend as role sequences, head first, e.g.
            ``("conv", "binary", "act")`` (see :data:`FUSION_ROLES`): a node continuing such a
            sequence from its single-use producer runs inside that producer's kernel.
        layout_conversion: cost of one layout conversion (ONNX Runtime's NCHWc reorders at the
            edges of a run of convolutions), in reads + writes of the tensor at memory bandwidth;
            0 = none.
        model_profile: measured per-node times of one model (``splitc profile --model``), or None.
    """

    name: str
    aliases: tuple[str, ...]
    kind: str
    backend: str
    description: str
    precisions: tuple[str, ...]
    peak_flops: dict[str, float] = dataclasses.field(hash=False)
    memory_bandwidth: float
    memory_bytes: int
    usable_memory_fraction: float
    efficiency: dict[str, float] = dataclasses.field(hash=False)
    op_overhead_s: float
    fused_op_classes: frozenset[str]
    price: dict[str, Any] = dataclasses.field(hash=False)
    uplink: Link | None
    sources: tuple[str, ...]
    notes: str = ""
    origin: str = "built-in"
    run_overhead_s: float = 0.0
    fused_patterns: tuple[tuple[str, ...], ...] = ()
    layout_conversion: float = 0.0
    model_profile: ModelProfile | None = dataclasses.field(default=None, hash=False, compare=False)

    @property
    def usable_memory_bytes(self) -> int:
        """Bytes a partition may occupy on this target."""
        return int(self.memory_bytes * self.usable_memory_fraction)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], origin: str = "<dict>", *, where: str | None = None) -> Target:
        """Validate one target mapping (the YAML schema) into a :class:`Target`.

        Args:
            d: the mapping, as loaded from YAML.
            origin: ``"built-in"`` or the file it came from (stored on the target).
            where: how errors name the source; defaults to ``origin``.

        Returns:
            The validated target.

        Raises:
            SplitcError: naming the file, the target and the key that is wrong.
        """
        where = where or origin
        name = _target_name(d, where)
        _check_keys(d, where, name)

        def field(key: str, parse: Callable[..., Any], *args: Any) -> Any:
            with _key_context(where, name, key):
                return parse(d.get(key), *args)

        kind = field("kind", _choice, KINDS)
        precisions = field("precisions", _precisions)
        return cls(
            name=name,
            aliases=field("aliases", _aliases, name),
            kind=kind,
            backend=field("backend", _choice, BACKENDS),
            description=field("description", _text),
            precisions=precisions,
            peak_flops=field("peak_flops", _peak_flops, precisions),
            memory_bandwidth=field("memory_bandwidth", parse_bandwidth) / 8.0,
            memory_bytes=field("memory", _memory),
            usable_memory_fraction=field("usable_memory_fraction", _fraction),
            efficiency=field("efficiency", _efficiency),
            op_overhead_s=field("op_overhead", parse_duration),
            fused_op_classes=field("fused_op_classes", _op_class_set),
            price=field("price", _price),
            uplink=field("uplink", _uplink, kind),
            sources=field("sources", _sources),
            notes=field("notes", _text) if d.get("notes") is not None else "",
            origin=origin,
            run_overhead_s=field("run_overhead", parse_duration) if d.get("run_overhead") is not None else 0.0,
            fused_patterns=field("fused_patterns", _patterns) if d.get("fused_patterns") is not None else (),
            layout_conversion=(field("layout_conversion", lambda v: _number(v, allow_zero=True))
                               if d.get("layout_conversion") is not None else 0.0),
            model_profile=field("model_profile", _model_profile) if d.get("model_profile") is not None else None,
        )

    def _identity(self) -> dict[str, Any]:
        """The fields written the same way by :meth:`to_dict` and :meth:`to_spec`."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "kind": self.kind,
            "backend": self.backend,
            "description": self.description,
            "precisions": list(self.precisions),
            "peak_flops": dict(self.peak_flops),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable SI numbers, for echoing into manifests.

        Returns:
            A dict whose unit-bearing keys say their unit (``memory_bandwidth_bytes_per_s``,
            ``op_overhead_s``, ``uplink.bandwidth_bps``, ...).
        """
        return {
            **self._identity(),
            "memory_bandwidth_bytes_per_s": self.memory_bandwidth,
            "memory_bytes": self.memory_bytes,
            "usable_memory_fraction": self.usable_memory_fraction,
            "efficiency": dict(self.efficiency),
            "op_overhead_s": self.op_overhead_s,
            "fused_op_classes": sorted(self.fused_op_classes),
            "price": dict(self.price),
            "uplink": dataclasses.asdict(self.uplink) if self.uplink else None,
            "sources": list(self.sources),
            "notes": self.notes,
            "origin": self.origin,
            "run_overhead_s": self.run_overhead_s,
            "fused_patterns": ["+".join(p) for p in self.fused_patterns],
            "layout_conversion": self.layout_conversion,
            # the per-node table can be thousands of entries: the manifest echoes what was measured, not the table
            "model_profile": None if self.model_profile is None else {
                "model": self.model_profile.model, "input_shapes": [list(s) for s in self.model_profile.input_shapes],
                "command": self.model_profile.command, "measured_s": self.model_profile.measured_s,
                "nodes": len(self.model_profile.nodes)},
        }

    def to_spec(self) -> dict[str, Any]:
        """The target in the YAML file schema, exact (``from_dict`` reads it back).

        Returns:
            A mapping suitable for ``yaml.safe_dump`` and :meth:`from_dict`.
        """
        spec: dict[str, Any] = {
            **self._identity(),
            "memory_bandwidth": f"{self.memory_bandwidth!r} B/s",
            "memory": self.memory_bytes,
            "usable_memory_fraction": self.usable_memory_fraction,
            "efficiency": dict(self.efficiency),
            "op_overhead": self.op_overhead_s,
            "fused_op_classes": sorted(self.fused_op_classes),
            "price": _price_spec(self.price),
            "sources": list(self.sources),
        }
        if self.uplink is not None:
            spec["uplink"] = {"bandwidth": self.uplink.bandwidth_bps, "rtt": self.uplink.rtt_s}
        if self.notes:
            spec["notes"] = self.notes
        if self.run_overhead_s:
            spec["run_overhead"] = self.run_overhead_s
        if self.fused_patterns:
            spec["fused_patterns"] = ["+".join(p) for p in self.fused_patterns]
        if self.layout_conversion:
            spec["layout_conversion"] = self.layout_conversion
        if self.model_profile is not None:
            spec["model_profile"] = self.model_profile.to_spec()
        return spec


# --------------------------------------------------------------------------- validation


@contextlib.contextmanager
def _key_context(where: str, name: str, key: str) -> Iterator[None]:
    """Re-raise a field's SplitcError prefixed with the file, target and key."""
    try:
        yield
    except SplitcError as err:
        raise SplitcError(f"{where}: target '{name}', key '{key}': {err.message}", hint=err.hint) from None


def _target_name(d: Any, where: str) -> str:
    if not isinstance(d, Mapping):
        raise SplitcError(
            f"{where}: a target must be a mapping of keys to values, got {type(d).__name__}",
            hint=_TARGETS_FILE_HINT,
        )
    raw = d.get("name")
    if not isinstance(raw, str) or not _NAME.match(raw.strip().lower()):
        raise SplitcError(
            f"{where}: key 'name': expected a name of letters, digits, '.', '_' or '-', got {raw!r}",
            hint="e.g. name: my-jetson",
        )
    return raw.strip().lower()


def _check_keys(d: Mapping[str, Any], where: str, name: str) -> None:
    unknown = [str(k) for k in d if k not in TARGET_KEYS]
    if unknown:
        raise SplitcError(
            f"{where}: target '{name}': unknown key(s) {', '.join(map(repr, unknown))}",
            hint=f"valid keys: {', '.join(TARGET_KEYS)}",
        )
    missing = [k for k in TARGET_KEYS if k not in d and k not in _OPTIONAL_KEYS]
    if missing:
        raise SplitcError(
            f"{where}: target '{name}': missing key(s) {', '.join(map(repr, missing))}",
            hint=_TARGETS_FILE_HINT,
        )


def _number(value: Any, *, allow_zero: bool = False) -> float:
    """A finite positive number (or a numeric string, as YAML reads '2e-7')."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise SplitcError(f"expected a positive number, got {value!r}")
    return number


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise SplitcError(f"expected a string, got {value!r}")
    return value.strip()


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SplitcError(f"expected a list of non-empty strings, got {value!r}")
    return [v.strip() for v in value]


def _choice(value: Any, valid: Sequence[str]) -> str:
    if value not in valid:
        raise SplitcError(f"invalid value {value!r}", hint=f"valid values: {', '.join(valid)}")
    return value


def _subset(values: list[str], valid: Sequence[str], what: str) -> None:
    unknown = [v for v in values if v not in valid]
    if unknown:
        raise SplitcError(f"unknown {what} {', '.join(map(repr, unknown))}", hint=f"valid: {', '.join(valid)}")


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SplitcError(f"expected a mapping, got {value!r}")
    return value


def _exact_keys(value: Mapping[str, Any], required: Sequence[str], optional: Sequence[str], what: str) -> None:
    """Unknown keys are errors listing the valid ones; missing required keys too."""
    valid = list(required) + list(optional)
    _subset([str(k) for k in value], valid, f"{what} key(s)")
    missing = [k for k in required if k not in value]
    if missing:
        raise SplitcError(f"missing {what} key(s) {', '.join(map(repr, missing))}", hint=f"valid: {', '.join(valid)}")


def _aliases(value: Any, name: str) -> tuple[str, ...]:
    aliases = [a.lower() for a in _string_list(value)]
    bad = [a for a in aliases if not _NAME.match(a)]
    if bad:
        raise SplitcError(f"invalid alias(es) {', '.join(map(repr, bad))}", hint="use letters, digits, '.', '_' or '-'")
    return tuple(dict.fromkeys(a for a in aliases if a != name))


def _precisions(value: Any) -> tuple[str, ...]:
    precisions = _string_list(value)
    if not precisions:
        raise SplitcError("expected at least one precision", hint=f"valid: {', '.join(PRECISIONS)}")
    _subset(precisions, PRECISIONS, "precision(s)")
    return tuple(dict.fromkeys(precisions))


def _peak_flops(value: Any, precisions: tuple[str, ...]) -> dict[str, float]:
    peaks = _mapping(value)
    _exact_keys(peaks, precisions, (), "peak_flops")
    result = {p: parse_flops(peaks[p]) for p in precisions}
    zero = [p for p, v in result.items() if v <= 0]
    if zero:
        raise SplitcError(f"peak for {', '.join(zero)} must be greater than zero")
    return result


def _memory(value: Any) -> int:
    size = int(round(parse_bytes(value)))
    if size <= 0:
        raise SplitcError(f"memory must be greater than zero, got {value!r}")
    return size


def _fraction(value: Any) -> float:
    fraction = _number(value)
    if fraction > 1:
        raise SplitcError(f"expected a fraction in (0, 1], got {value!r}")
    return fraction


def _efficiency(value: Any) -> dict[str, float]:
    table = _mapping(value)
    _exact_keys(table, OP_CLASSES, tuple(EFFICIENCY_REFINEMENTS), "efficiency")
    return {c: _fraction(table[c]) for c in (*OP_CLASSES, *EFFICIENCY_REFINEMENTS) if c in table}


def _op_class_set(value: Any) -> frozenset[str]:
    classes = _string_list(value)
    _subset(classes, OP_CLASSES, "op class(es)")
    return frozenset(classes)


def _patterns(value: Any) -> tuple[tuple[str, ...], ...]:
    """``["conv+act", "conv+binary+act"]`` -> role tuples; every role known, at least two per pattern."""
    patterns = []
    for text in _string_list(value):
        roles = tuple(r.strip() for r in text.split("+"))
        if len(roles) < 2 or "" in roles:
            raise SplitcError(f"fused pattern {text!r} needs two or more roles joined by '+'", hint="e.g. conv+act")
        _subset(list(roles), FUSION_ROLES, "fusion role(s)")
        patterns.append(roles)
    return tuple(dict.fromkeys(patterns))


def _model_profile(value: Any) -> ModelProfile:
    profile = _mapping(value)
    _exact_keys(profile, ("model", "input_shapes", "nodes", "measured_s"), ("command",), "model_profile")
    shapes = profile["input_shapes"]
    if not isinstance(shapes, list) or not all(isinstance(s, list) and all(isinstance(d, int) for d in s)
                                               for s in shapes):
        raise SplitcError(f"input_shapes must be a list of integer lists, got {shapes!r}")
    nodes = _mapping(profile["nodes"])
    table = {}
    for name, row in nodes.items():
        if (not isinstance(row, list) or len(row) != 3 or not isinstance(row[1], str)
                or not isinstance(row[2], int)):
            raise SplitcError(f"node '{name}': expected [seconds, op name, output bytes], got {row!r}")
        table[str(name)] = MeasuredNode(_number(row[0], allow_zero=True), row[1], int(row[2]))
    return ModelProfile(model=_text(profile["model"]), input_shapes=tuple(tuple(s) for s in shapes),
                        command=_text(profile.get("command") or ""), measured_s=_number(profile["measured_s"]),
                        nodes=table)


def _uplink(value: Any, kind: str) -> Link | None:
    if value is None:
        if kind in _UPLINK_OPTIONAL_KINDS:
            return None
        raise SplitcError(
            f"a '{kind}' target needs an uplink to the next tier",
            hint="e.g. uplink: {bandwidth: 20 Mbps, rtt: 30ms}",
        )
    link = _mapping(value)
    _exact_keys(link, ("bandwidth", "rtt"), (), "uplink")
    bandwidth = parse_link_bandwidth(link["bandwidth"], "uplink bandwidth", require_unit=False)  # bare number: bits/s
    return Link(bandwidth_bps=bandwidth, rtt_s=parse_duration(link["rtt"]))


def _sources(value: Any) -> tuple[str, ...]:
    return tuple(_string_list(value))


# --------------------------------------------------------------------------- price models

# yaml key -> (stored key, parser, required)
_PriceField = tuple[str, Callable[[Any], Any], bool]
_PRICE_FIELDS: dict[str, dict[str, _PriceField]] = {
    "free": {},
    "energy": {
        "watts": ("watts", _number, True),
        "usd_per_kwh": ("usd_per_kwh", _number, True),
    },
    "vm": {
        "usd_per_hour": ("usd_per_hour", _number, True),
        "instance": ("instance", _text, False),
        # provision whole instances up to this busy share (default in splitc/targets/pricing.py)
        "target_utilisation": ("target_utilisation", _fraction, False),
    },
    "faas": {
        "usd_per_gb_second": ("usd_per_gb_second", _number, True),
        "usd_per_request": ("usd_per_request", _number, True),
        "memory_mb": ("memory_mb", _number, True),
        "max_memory_mb": ("max_memory_mb", _number, True),
        "mb_per_vcpu": ("mb_per_vcpu", _number, True),
        "max_vcpus": ("max_vcpus", _number, True),
        "cold_start": ("cold_start_s", parse_duration, True),
        "max_payload": ("max_payload_bytes", parse_bytes, False),
        # idle time before a warm instance is reclaimed, and the billing step (defaults in pricing.py)
        "keep_alive": ("keep_alive_s", parse_duration, False),
        "billing_granularity": ("billing_granularity_s", parse_duration, False),
    },
}


def _price(value: Any) -> dict[str, Any]:
    """Validate a price mapping; values become SI numbers under their stored keys."""
    price = _mapping(value)
    model = price.get("model")
    if model not in _PRICE_FIELDS:
        raise SplitcError(f"invalid price model {model!r}", hint=f"valid models: {', '.join(PRICE_MODELS)}")
    fields = _PRICE_FIELDS[model]
    required = [k for k, (_, _, req) in fields.items() if req]
    optional = ["model"] + [k for k, (_, _, req) in fields.items() if not req]
    _exact_keys(price, required, optional, f"'{model}' price")
    result: dict[str, Any] = {"model": model}
    for key, (stored, parse, _) in fields.items():
        if key in price:
            result[stored] = parse(price[key])
    if model == "faas" and result["memory_mb"] > result["max_memory_mb"]:
        raise SplitcError(f"memory_mb {result['memory_mb']:g} exceeds max_memory_mb {result['max_memory_mb']:g}")
    return result


def _price_spec(price: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`_price`: stored keys back to YAML keys."""
    fields = _PRICE_FIELDS[price["model"]]
    stored_to_yaml = {stored: key for key, (stored, _, _) in fields.items()}
    return {stored_to_yaml.get(k, k): v for k, v in price.items()}


# --------------------------------------------------------------------------- loading


@functools.lru_cache(maxsize=1)
def _builtin_targets() -> tuple[Target, ...]:
    folder = importlib.resources.files("splitc") / "targets" / "catalog"
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".yaml")), key=lambda e: e.name)
    return tuple(
        Target.from_dict(
            yaml.safe_load(entry.read_text(encoding="utf-8")),
            origin="built-in",
            where=f"built-in catalog file {entry.name}",
        )
        for entry in entries
    )


def load_catalog() -> dict[str, Target]:
    """The built-in targets shipped in ``splitc/targets/catalog/`` (parsed once).

    Returns:
        A new dict from canonical name to target.
    """
    return {t.name: t for t in _builtin_targets()}


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SplitcError(f"targets file not found: {path}", hint="check the path given to --targets-file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SplitcError(f"cannot read targets file {path}: {err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SplitcError(f"{path}: invalid YAML{at}: {problem}", hint=_TARGETS_FILE_HINT) from None


def _target_entries(data: Any, path: Path) -> list[Any]:
    """One mapping, a list of mappings, or ``{targets: [...]}`` -> list of entries."""
    if isinstance(data, Mapping) and "targets" in data:
        extra = [str(k) for k in data if k != "targets"]
        if extra:
            raise SplitcError(f"{path}: unknown top-level key(s) {', '.join(map(repr, extra))}", hint="valid: targets")
        data = data["targets"]
    entries = [data] if isinstance(data, Mapping) else data
    if not isinstance(entries, list) or not entries:
        raise SplitcError(
            f"{path}: expected a target mapping, a list of them, or 'targets: [...]'",
            hint=_TARGETS_FILE_HINT,
        )
    return entries


def load_targets_file(path: str | Path) -> list[Target]:
    """Load user targets from a YAML file.

    The file holds one target mapping, a list of them, or ``targets: [...]``.

    Args:
        path: the YAML file.

    Returns:
        The validated targets, in file order; their ``origin`` is the path.

    Raises:
        SplitcError: missing/unreadable file, invalid YAML, an invalid target, or a
            name defined twice in the file.
    """
    path = Path(path)
    targets = [Target.from_dict(e, origin=str(path)) for e in _target_entries(_read_yaml(path), path)]
    seen: set[str] = set()
    for target in targets:
        if target.name in seen:
            raise SplitcError(f"{path}: target '{target.name}' is defined twice", hint="give each target its own name")
        seen.add(target.name)
    return targets


def write_targets_file(targets: Iterable[Target], path: str | Path) -> None:
    """Write targets as a YAML targets file (``targets: [...]``) that loads back exactly.

    Args:
        targets: the targets to write (e.g. one measured by ``splitc profile``).
        path: destination file; overwritten.
    """
    document = {"targets": [t.to_spec() for t in targets]}
    Path(path).write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")


# --------------------------------------------------------------------------- registry


class TargetRegistry:
    """Targets by canonical name and alias; later additions override earlier ones.

    Args:
        targets: targets to add, in order (see :meth:`add`).
    """

    def __init__(self, targets: Iterable[Target] = ()) -> None:
        self._by_name: dict[str, Target] = {}
        self._alias_owner: dict[str, str] = {}
        for target in targets:
            self.add(target)

    @classmethod
    def with_builtins(cls, targets_files: Iterable[str | Path] = ()) -> TargetRegistry:
        """The built-in catalog plus user files, which override same-named targets.

        Args:
            targets_files: YAML files (``--targets-file``), applied in order.

        Returns:
            The registry.
        """
        registry = cls(_builtin_targets())
        for path in targets_files:
            for target in load_targets_file(path):
                registry.add(target)
        return registry

    def add(self, target: Target) -> None:
        """Add a target; a same-named one is replaced with a logged warning.

        Args:
            target: the target to add.

        Raises:
            SplitcError: an alias of ``target`` is the canonical name of another target.
        """
        for alias in target.aliases:
            if alias in self._by_name and alias != target.name:
                raise SplitcError(
                    f"{target.origin}: alias '{alias}' of target '{target.name}' is the name of another target",
                    hint="choose a different alias",
                )
        old = self._by_name.get(target.name)
        if old is not None:
            log.warning("target '%s' from %s overrides the one from %s", target.name, target.origin, old.origin)
            self._alias_owner = {a: n for a, n in self._alias_owner.items() if n != target.name}
        shadowed = self._alias_owner.pop(target.name, None)
        if shadowed is not None:
            log.warning("target '%s' from %s hides the alias of '%s' with that name", target.name, target.origin, shadowed)
        for alias in target.aliases:
            owner = self._alias_owner.get(alias)
            if owner is not None and owner != target.name:
                log.warning("alias '%s' now means '%s' (from %s), not '%s'", alias, target.name, target.origin, owner)
            self._alias_owner[alias] = target.name
        self._by_name[target.name] = target

    def resolve(self, name: str) -> Target:
        """The target called ``name`` (canonical name or alias, any case).

        Args:
            name: e.g. ``"jetson"``, ``"cloud-gpu-t4"``, ``"T4"``.

        Returns:
            The target.

        Raises:
            SplitcError: unknown name; the hint lists the known names and aliases.
        """
        key = name.strip().lower()
        if key in self._by_name:
            return self._by_name[key]
        if key in self._alias_owner:
            return self._by_name[self._alias_owner[key]]
        raise SplitcError(f"unknown target '{name}'", hint=self._unknown_hint(key))

    def _unknown_hint(self, key: str) -> str:
        close = difflib.get_close_matches(key, [*self._by_name, *self._alias_owner], n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        return (
            f"{guess}known targets: {', '.join(sorted(self._by_name))} "
            f"(aliases: {', '.join(sorted(self._alias_owner))}); add your own with --targets-file FILE"
        )

    def resolve_chain(self, spec: str | Sequence[str]) -> list[Target]:
        """Resolve a tier chain such as ``"jetson,cloud-gpu"``, first tier first.

        Args:
            spec: comma-separated names, or a sequence of names.

        A target may appear more than once (the bundle suffixes its folder), and
        a tier without a default uplink is allowed anywhere: the links can come
        from flags, so that check belongs to the planner.

        Returns:
            One target per tier.

        Raises:
            SplitcError: an empty chain, an empty entry, or an unknown target.
        """
        names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)]
        example = "e.g. --targets jetson,cloud-gpu"
        if not any(names):
            raise SplitcError("the target chain is empty; give at least one tier", hint=example)
        if "" in names:
            raise SplitcError(f"empty entry in target chain {','.join(names)!r}", hint=example)
        return [self.resolve(n) for n in names]

    def targets(self) -> list[Target]:
        """All targets, ordered by kind (device, edge, cloud-vm, faas) then name."""
        return sorted(self._by_name.values(), key=lambda t: (KINDS.index(t.kind), t.name))

    def names(self) -> list[str]:
        """Canonical names, sorted."""
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        key = str(name).strip().lower()
        return key in self._by_name or key in self._alias_owner

    def __iter__(self) -> Iterator[Target]:
        return iter(self.targets())

    def __len__(self) -> int:
        return len(self._by_name)


# --------------------------------------------------------------------------- listing


def _price_summary(price: Mapping[str, Any]) -> str:
    model = price["model"]
    if model == "energy":
        return f"{price['watts']:g} W @ ${price['usd_per_kwh']:g}/kWh"
    if model == "vm":
        return f"${price['usd_per_hour']:.4g}/h"
    if model == "faas":
        return f"${price['usd_per_gb_second'] * 1e6:.3g}/M GB-s + ${price['usd_per_request'] * 1e6:.3g}/M req"
    return model


def _row(t: Target) -> list[str]:
    fp32 = t.peak_flops.get("fp32")
    uplink = f"{format_bandwidth(t.uplink.bandwidth_bps)} / {format_seconds(t.uplink.rtt_s)}" if t.uplink else "-"
    return [
        t.name,
        ", ".join(t.aliases) or "-",
        t.kind,
        t.backend,
        format_flops(fp32) if fp32 else "-",
        format_bytes(t.memory_bytes),
        format_bandwidth(t.memory_bandwidth * 8, as_bytes=True),
        uplink,
        _price_summary(t.price),
    ]


def format_targets_table(targets: Iterable[Target]) -> str:
    """A fixed-width table of targets, as printed by ``splitc targets``.

    Args:
        targets: the targets, in display order (e.g. ``TargetRegistry.targets()``).

    Returns:
        The table, one line per target under a header, without a trailing newline.
    """
    header = ["NAME", "ALIASES", "KIND", "BACKEND", "FP32 PEAK", "MEMORY", "MEM BW", "UPLINK", "PRICE"]
    rows = [header] + [_row(t) for t in targets]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
