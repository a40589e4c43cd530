"""The bundle manifest: what each tier runs, what crosses each link and how.

``build_manifest`` turns the compile context into the JSON document described by
``manifest.schema.json`` (shipped next to this module and copied into every
bundle); ``validate_manifest`` checks a document against it.
"""

from __future__ import annotations

import datetime as _dt
import json
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema
import torch.fx

import splitc
from splitc.compression.settings import wire_entry
from splitc.core.loader import dtype_name
from splitc.core.passes.profile import FLOPS, OUT_BYTES

__all__ = ["SCHEMA_VERSION", "build_manifest", "validate_manifest", "manifest_schema", "tensor_entry",
           "tier_dir_names"]

SCHEMA_VERSION = "1.0"


@lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of manifest.json."""
    text = resources.files("splitc.driver").joinpath("manifest.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _validator() -> Any:
    """One validator for the schema, its own validity checked once (``jsonschema.validate`` re-checks the
    schema against the meta-schema on every call: most of a manifest validation's time)."""
    schema = manifest_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``manifest`` breaks the schema."""
    error = jsonschema.exceptions.best_match(_validator().iter_errors(manifest))
    if error is not None:
        raise error


def tier_dir_names(names: list[str]) -> list[str]:
    """Folder name per tier: the target name, suffixed -2, -3... when a target repeats."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def tensor_entry(node: torch.fx.Node, producer: int | str | None = None) -> dict[str, Any]:
    """Manifest description of the tensor a node produces."""
    meta = node.meta["tensor_meta"]
    entry = {"name": node.name, "shape": [int(d) for d in meta.shape], "dtype": dtype_name(meta.dtype),
             "bytes": int(node.meta.get(OUT_BYTES, 0))}
    if producer is not None:
        entry["producer"] = producer
        entry["encoding"] = {"kind": "raw"}
    return entry


def build_manifest(*, ctx, gm: torch.fx.GraphModule, loaded, traced, exported: list[dict[str, Any]],
                   tier_dirs: list[str]) -> dict[str, Any]:
    """Assemble manifest.json (see the schema for the meaning of every field).

    Args:
        ctx: the compile context after the cut pass.
        gm: the profiled graph module.
        loaded, traced: what the loader returned.
        exported: per partition, ``{"file", "sha256", "exporter", "simplified", "op_types", "warnings"}``.
        tier_dirs: folder name per tier.
    """
    nodes = {n.name: n for n in gm.graph.nodes}
    plan = ctx.plan_result
    producer = {name: p.index for p in ctx.partitions for name in p.outputs}
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": {"name": "splitc", "version": splitc.__version__,
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "model": _model_section(gm, nodes, loaded, traced, ctx),
        "tiers": [_tier_entry(i, t, ctx, tier_dirs[i]) for i, t in enumerate(ctx.tiers)],
        "partitions": [_partition_entry(p, e, nodes, ctx, tier_dirs) for p, e in zip(ctx.partitions, exported)],
        "transfers": _transfers(plan, ctx, nodes, producer),
        "exits": _exits(ctx),
        **({"exit_calibration": {k: v for k, v in ctx.exits.summary.items() if k != "tensor_names"}}
           if getattr(ctx, "exits", None) is not None and ctx.exits.chosen else {}),
        "plan": {**plan.to_dict(), **({"compression": ctx.compression.to_dict()} if ctx.compression is not None else {})},
        "alternatives": [alt.to_dict() for alt in plan.alternatives],
        "options": ctx.options.to_dict(),
        "verification": None,  # filled in by verification (None = compiled with --no-verify)
        "timings_s": ctx.timings_dict(),
    }


def _exits(ctx) -> list[dict[str, Any]]:
    """Early exits (issue 3): see splitc.exits.heads.exits_manifest (exits need a one-output classifier)."""
    setup = getattr(ctx, "exits", None)
    if setup is None or not setup.chosen:
        return []
    from splitc.exits.heads import exits_manifest

    return exits_manifest(setup, ctx.partitions, setup.summary["tensor_names"], "output_0")


def _model_section(gm, nodes, loaded, traced, ctx) -> dict[str, Any]:
    from splitc.core.graph import model_output_names
    from splitc.core.loader import parameter_fingerprint

    outputs = [{"name": f"output_{i}", **{k: v for k, v in tensor_entry(nodes[t]).items() if k != "name"},
                "tensor": t} for i, t in enumerate(model_output_names(gm))]
    compute = [nodes[n] for n in ctx.candidates.nodes]
    return {
        "source": loaded.source,
        "parameters_sha256": parameter_fingerprint(loaded.module),
        "trace": {"method": traced.method, "notes": traced.notes},
        "inputs": [s.to_dict() for s in ctx.input_specs],
        "outputs": outputs,
        "nodes": len(compute),
        "flops": int(sum(n.meta.get(FLOPS, 0) for n in compute)),
        "parameter_bytes": int(sum(p.numel() * p.element_size() for p in gm.parameters())),
    }


def _tier_entry(index: int, target, ctx, folder: str) -> dict[str, Any]:
    part = next((p.index for p in ctx.partitions if p.tier_index == index), None)
    return {"index": index, "name": folder, "requested": ctx.options.targets[index], "target": target.to_dict(),
            "partition": part}


def _partition_entry(part, exported, nodes, ctx, tier_dirs) -> dict[str, Any]:
    members = ctx.candidates.nodes[part.start:part.end]
    return {
        "index": part.index,
        "tier": tier_dirs[part.tier_index],
        "tier_index": part.tier_index,
        "file": exported["file"],
        "sha256": exported["sha256"],
        "format": "onnx",
        "opset": ctx.options.opset,
        "exporter": exported["exporter"],
        "simplified": exported["simplified"],
        "op_types": exported["op_types"],
        "inputs": [wire_entry(tensor_entry(nodes[n]), ctx) for n in part.inputs],
        "outputs": [wire_entry(tensor_entry(nodes[n]), ctx) for n in part.outputs],
        "nodes": {"first": members[0], "last": members[-1], "count": len(members)},
        "flops": int(sum(nodes[n].meta.get(FLOPS, 0) for n in members)),
        "parameter_bytes": int(part.param_bytes),
        "predicted_compute_s": ctx.plan_result.best.compute_s[part.tier_index],
        "warnings": exported["warnings"],
    }


def _transfers(plan, ctx, nodes, producer) -> list[dict[str, Any]]:
    transfers = []
    n = len(ctx.candidates.nodes)
    for link, cut in enumerate(plan.best.cuts):
        if cut >= n:
            break  # nothing runs downstream: the link is not used
        candidate = ctx.candidates.cuts[cut]
        tensors = [wire_entry(tensor_entry(nodes[name], producer.get(name, "input")), ctx) for name in candidate.crossing]
        transfers.append({
            "link": link,
            "from_tier": link,
            "to_tier": link + 1,
            "cut": {"index": cut, "after": candidate.after},
            "tensors": tensors,
            "bytes": int(sum(t["bytes"] for t in tensors)),
            "predicted_s": plan.best.link_s[link],
            **_noise(ctx, link),
            **_defence(ctx, link),
        })
    return transfers


def _defence(ctx, link: int) -> dict[str, Any]:
    """``{"defence": ...}`` for the link whose sender ``defend`` fine-tuned (--privacy-defence), else nothing."""
    setup = getattr(ctx, "defence", None)
    return {"defence": setup.to_manifest()} if setup is not None and setup.link == link else {}


def _noise(ctx, link: int) -> dict[str, Any]:
    """``{"noise": ...}`` for the link ``add_noise`` perturbs (--privacy-epsilon), else nothing."""
    setup = getattr(ctx, "noise", None)
    return {"noise": setup.to_manifest()} if setup is not None and setup.link == link else {}
