"""The bundle manifest: what each tier runs, what crosses each link and how.

``build_manifest`` turns the compile context into the JSON document described by
``manifest.schema.json`` (shipped next to this module and copied into every
bundle); ``validate_manifest`` checks a document against it.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import torch.fx

import splitc
from splitc.compression.settings import wire_entry
from splitc.core.loader import dtype_name
from splitc.core.passes.profile import FLOPS, OUT_BYTES, weight_bytes
from splitc.driver.schema import manifest_schema, validate_manifest  # torch-free: the runtime CLI reads it too

__all__ = ["SCHEMA_VERSION", "build_manifest", "validate_manifest", "manifest_schema", "tensor_entry",
           "tier_dir_names"]

#: 1.1: ``tiers[i].partitions`` (a tier cut into segments around its early exits runs several partitions, in
#: order; ``tiers[i].partition`` stays the first, for 1.0 readers), ``partitions[].segment``, exits inside a tier.
SCHEMA_VERSION = "1.1"


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
    model = _model_section(gm, nodes, loaded, traced, ctx)
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": {"name": "splitc", "version": splitc.__version__,
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "model": model,
        "tiers": [_tier_entry(i, t, ctx, tier_dirs[i]) for i, t in enumerate(ctx.tiers)],
        "partitions": [_partition_entry(p, e, nodes, ctx, tier_dirs) for p, e in zip(ctx.partitions, exported)],
        "transfers": _transfers(plan, ctx, nodes, producer),
        "exits": _exits(ctx, model["outputs"][0]["name"]),
        **({"exit_calibration": dict(ctx.exits.summary)}
           if getattr(ctx, "exits", None) is not None and ctx.exits.chosen else {}),
        "plan": {**plan.to_dict(), **({"compression": ctx.compression.to_dict()} if ctx.compression is not None else {})},
        "alternatives": [alt.to_dict() for alt in plan.alternatives],
        "options": ctx.options.to_dict(),
        "verification": None,  # filled in by verification (None = compiled with --no-verify)
        "timings_s": ctx.timings_dict(),
    }


def _exits(ctx, output_name: str = "output_0") -> list[dict[str, Any]]:
    """Early exits (issue 3): see splitc.exits.heads.exits_manifest (exits need a one-output classifier)."""
    setup = getattr(ctx, "exits", None)
    if setup is None or not setup.chosen:
        return []
    from splitc.exits.heads import exits_manifest

    return exits_manifest(setup, ctx.partitions, setup.tensor_names, output_name)


def _model_section(gm, nodes, loaded, traced, ctx) -> dict[str, Any]:
    from splitc.core.graph import model_output_names
    from splitc.core.loader import parameter_fingerprint

    tensors = model_output_names(gm)
    names = traced.output_names if traced.output_names and len(traced.output_names) == len(tensors) else \
        [f"output_{i}" for i in range(len(tensors))]  # the model's own names (logits, boxes, ...) when it has them
    outputs = [{"name": name, **{k: v for k, v in tensor_entry(nodes[t]).items() if k != "name"}, "tensor": t}
               for name, t in zip(names, tensors)]
    compute = [nodes[n] for n in ctx.candidates.nodes]
    return {
        "source": loaded.source,
        "parameters_sha256": parameter_fingerprint(loaded.module),
        "trace": {"method": traced.method, "notes": traced.notes},
        "inputs": [s.to_dict() for s in ctx.input_specs],
        "outputs": outputs,
        "nodes": len(compute),
        "flops": int(sum(n.meta.get(FLOPS, 0) for n in compute)),
        "parameter_bytes": weight_bytes(gm),  # parameters and buffers, as each partition's parameter_bytes
    }


def _tier_entry(index: int, target, ctx, folder: str) -> dict[str, Any]:
    parts = [p.index for p in ctx.partitions if p.tier_index == index]
    return {"index": index, "name": folder, "requested": ctx.options.targets[index], "target": target.to_dict(),
            "partition": parts[0] if parts else None, "partitions": parts}


def _segment_compute(part, ctx, nodes) -> float:
    """Predicted compute of one partition, expected per request like the plan's per-tier figure.

    A tier that runs one partition gets the plan's figure for the tier. A tier cut into segments
    shares its figure among them in proportion to each segment's predicted node times weighted by
    the share of requests still running at each node (the exits before it).
    """
    tier_total = ctx.plan_result.best.compute_s[part.tier_index]
    siblings = [p for p in ctx.partitions if p.tier_index == part.tier_index]
    if len(siblings) == 1:
        return tier_total
    from splitc.exits.heads import node_reach
    from splitc.targets.cost_model import node_times

    target = ctx.tiers[part.tier_index]
    reach = node_reach(getattr(ctx, "exits", None), ctx.candidates)

    def weighted(p) -> float:
        members = [nodes[n] for n in ctx.candidates.nodes[p.start:p.end]]
        return float((node_times(members, target) * reach[p.start:p.end]).sum())

    total = sum(weighted(p) for p in siblings)
    return tier_total * weighted(part) / total if total > 0 else 0.0


def _partition_entry(part, exported, nodes, ctx, tier_dirs) -> dict[str, Any]:
    members = ctx.candidates.nodes[part.start:part.end]
    segment = sum(1 for p in ctx.partitions if p.tier_index == part.tier_index and p.index < part.index)
    return {
        "index": part.index,
        "tier": tier_dirs[part.tier_index],
        "tier_index": part.tier_index,
        "segment": segment,
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
        "predicted_compute_s": _segment_compute(part, ctx, nodes),
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
