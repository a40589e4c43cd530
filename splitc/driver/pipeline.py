"""The default pipeline, as one readable recipe, and the two jobs built on it.

Example:
    >>> from splitc.core.options import CompileOptions
    >>> from splitc.driver.pipeline import compile_model
    >>> result = compile_model("torchvision.models:resnet18",            # doctest: +SKIP
    ...                        CompileOptions(targets=("jetson", "cloud-gpu")), "bundle/",
    ...                        input_shapes=[(1, 3, 224, 224)])
    >>> result.manifest["plan"]["cuts"][0]["after"]                      # doctest: +SKIP
    'layer3_1_relu_1'
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from splitc.backends.emit import emit_backend_artifacts
from splitc.backends.onnx_export import export_partitions
from splitc.compression.quantize import quantize_partitions
from splitc.compression.insert_bottleneck import InsertBottleneckPass
from splitc.compression.prune import PrunePass
from splitc.compression.quantize_transfer import QuantizeTransferPass
from splitc.compression.settings import adjust_problem, quantized_partitions, verification_inputs, \
    verification_reference, verification_rtol
from splitc.core.calibration import calibration_input_shapes, load_calibration
from splitc.core.context import CompileContext
from splitc.core.loader import (LoadedModel, TracedModel, infer_input_specs, load_model, make_example_inputs,
                                sha256_file, trace_model)
from splitc.core.options import CompileOptions
from splitc.core.pass_manager import Pass, PassManager
from splitc.core.passes.candidates import CandidatesPass
from splitc.core.passes.cut import CutPass
from splitc.core.passes.eliminate_dead_code import EliminateDeadCodePass
from splitc.core.passes.fold_constants import FoldConstantsPass
from splitc.core.passes.fold_static_shapes import FoldStaticShapesPass
from splitc.core.passes.profile import ProfilePass
from splitc.core.samples import run_partitions
from splitc.driver.bundle import check_output_dir, staging_dir
from splitc.driver.manifest import build_manifest, tier_dir_names, validate_manifest
from splitc.driver.report import format_plan_report
from splitc.driver.validate import validate_options
from splitc.driver.verify import bundle_accuracy, verify_bundle
from splitc.errors import SplitcError
from splitc.exits.heads import plan_exits, verify_exits, write_exit_heads
from splitc.exits.insert_exits import InsertExitsPass
from splitc.exits.train_exits import TrainExitsPass
from splitc.planning.plan import PlanPass
from splitc.planning.reorder_for_cut import ReorderForCutPass
from splitc.privacy.add_noise import AddNoisePass, verify_noised_bundle
from splitc.privacy.defence import DefencePass
from splitc.privacy.privacy_profile import PrivacyProfilePass
from splitc.targets.target import TargetRegistry

__all__ = ["default_passes", "prepare", "plan_model", "compile_model", "CompileResult"]

log = logging.getLogger("splitc")


def default_passes() -> list[Pass]:
    """The compiler's steps, in order. Each comment says why it sits where it does."""
    return [
        EliminateDeadCodePass(), # first: a dead node would keep its inputs live across cuts
        FoldConstantsPass(),     # weight-only computations become buffers, never wire tensors
        ProfilePass(),           # every later step reads its shapes, FLOPs and bytes
        FoldStaticShapesPass(),  # needs the profiled constant values; leaves only tensor edges,
                                 # so no cut ever has to ship a Python int
        ReorderForCutPass(),     # DAG min cut: reorders so its placement is a prefix cut; before candidates
        CandidatesPass(),        # after folding: enumerates cuts of the final graph
        PrivacyProfilePass(),    # privacy requested: leakage proxy of every candidate; before plan, which weighs it
        TrainExitsPass(),        # --exits: heads trained at candidate nodes; before plan, which needs their exit rates
        PlanPass(adjusters=[     # reads profile + candidates; returns data, never edits the graph
            adjust_problem,      #   compression: wire bytes and coder time of the knobs
            plan_exits,          #   exits: thresholds chosen jointly with the cuts (the problem weighted by reach)
        ]),
        InsertExitsPass(),       # after plan (which exits stay), before cut (exit outputs join their partition)
        CutPass(),               # needs the plan; checks the partitions compose to the original
        PrunePass(),             # --prune: needs the sending partition (after cut); re-profiles and re-cuts
        DefencePass(),           # --privacy-defence: fine-tunes the (pruned) sender; the bottleneck, wire
                                 # quantization and noise then apply on top of the defended wire, in that order
        InsertBottleneckPass(),  # after cut: trains on the real boundary tensors (may re-cut: --bottleneck auto)
        AddNoisePass(),          # --privacy-epsilon: after the bottleneck (the code is what leaves the device, so
                                 # it is what gets clipped and noised), before wire quantization (which then
                                 # calibrates on and encodes the noised values)
        QuantizeTransferPass(),  # after the bottleneck, so the code is what gets quantized
    ]


@dataclass
class Prepared:
    loaded: LoadedModel
    traced: TracedModel
    ctx: CompileContext


def prepare(model: str, options: CompileOptions, input_shapes: list[tuple[int, ...]] | None = None,
            input_dtypes: list[str] | None = None, *, compile: bool = False) -> Prepared:
    """Check every flag, resolve targets, load and trace the model, build the compile context."""
    settings = validate_options(options, compile=compile)  # bad flags fail before any tracing or training
    tiers = TargetRegistry.with_builtins(options.targets_files).resolve_chain(options.targets)
    loaded = load_model(model, seed=options.seed)
    if not input_shapes and options.calib:  # the calibration data shows the real input shape
        input_shapes = calibration_input_shapes(options.calib)
    specs = infer_input_specs(loaded, list(input_shapes or []), list(input_dtypes or []))
    traced = trace_model(loaded.module, specs)
    placeholders = [n.name for n in traced.graph_module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(specs):
        raise SplitcError(f"the traced model has {len(placeholders)} inputs but {len(specs)} input shapes are known",
                          "pass one --input-shape per input")
    specs = [dataclasses.replace(s, name=name) for s, name in zip(specs, placeholders)]
    ctx = CompileContext(options, tiers, specs, make_example_inputs(specs, seed=options.seed))
    for parsed in settings:
        ctx.set_settings(parsed)
    if options.calib:
        ctx.calibration = load_calibration(options.calib, specs)
    log.info("[load] %s: traced with %s, inputs %s; tiers: %s", model, traced.method,
             ", ".join(f"{s.name} {list(s.shape)} {s.dtype}" for s in specs), " -> ".join(t.name for t in tiers))
    return Prepared(loaded, traced, ctx)


def plan_model(model: str, options: CompileOptions, input_shapes=None, input_dtypes=None) -> Prepared:
    """Run the analyses and the planner only (``splitc plan``)."""
    prepared = prepare(model, options, input_shapes, input_dtypes)
    passes = [p for p in default_passes() if not isinstance(p, CutPass) and "partitions" not in p.requires]
    prepared.traced.graph_module = PassManager(passes).run(prepared.traced.graph_module, prepared.ctx)
    return prepared


@dataclass
class CompileResult:
    out: Path
    manifest: dict[str, Any]
    prepared: Prepared


def compile_model(model: str, options: CompileOptions, out: str | Path, input_shapes=None, input_dtypes=None,
                  dump_dir: str | Path | None = None) -> CompileResult:
    """Compile ``model`` for the tier chain in ``options`` into the bundle folder ``out``.

    Raises:
        SplitcError: on any user error; nothing is left at ``out`` then.
    """
    out = Path(out)
    check_output_dir(out)  # before any work: an unwritable -o fails in a second, not a minute
    prepared = prepare(model, options, input_shapes, input_dtypes, compile=True)
    ctx = prepared.ctx
    gm = PassManager(default_passes(), dump_dir=dump_dir).run(prepared.traced.graph_module, ctx)
    with staging_dir(out) as stage:
        folders = tier_dir_names([t.name for t in ctx.tiers])
        exported = _export_all(ctx, stage, folders)
        write_exit_heads(stage, ctx)  # exits/exit<i>.npz: lets 'splitc verify' rebuild the PyTorch exits
        quantize_partitions(ctx, gm, stage, exported)  # --quantize: rewrites the ONNX files (QDQ int8 / fp16)
        manifest = build_manifest(ctx=ctx, gm=gm, loaded=prepared.loaded, traced=prepared.traced,
                                  exported=exported, tier_dirs=folders)
        # the manifest is assembled once; the runtime checks below read it from the staged bundle, and the
        # artifacts, verification and variants they produce are added before the final write
        _write_manifest(stage, manifest)
        manifest["artifacts"] = emit_backend_artifacts(stage, manifest, options)  # Triton/TensorRT/FaaS
        if options.verify:
            manifest["verification"] = _verify(stage, prepared, options)
        if ctx.accuracy is not None:  # every accuracy verdict of the compile, with its rule and numbers
            manifest["accuracy"] = ctx.accuracy.to_dict()
        if ctx.plan_result.variants:  # --bandwidth-range: one complete bundle per plan that wins somewhere
            _write_variants(stage, model, options, ctx, manifest, input_shapes, input_dtypes)
        _write_manifest(stage, manifest)
        (stage / "report.md").write_text(format_plan_report(manifest, ctx.plan_result), encoding="utf-8")
    log.info("[bundle] wrote %s (%d partition(s), %d transfer(s))", out, len(manifest["partitions"]),
             len(manifest["transfers"]))
    return CompileResult(out, manifest, prepared)


def _write_variants(stage: Path, model: str, options: CompileOptions, ctx: CompileContext, manifest: dict[str, Any],
                    input_shapes, input_dtypes) -> None:
    """Compile each bandwidth variant whose cuts differ from this bundle's into ``variants/v<i>/``.

    Each variant is a full compile with its cuts forced (``--split``) and the first link at
    the bandwidth the variant was evaluated at, so it is verified and self-describing like
    any bundle; the top manifest's ``plan.variants[i].bundle`` points at it ("." = this
    bundle). A runtime picks with :func:`splitc.runtime.runner.select_variant`.
    """
    chosen = [c["index"] for c in manifest["plan"]["cuts"]]
    links = ctx.plan_result.links
    for i, variant in enumerate(manifest["plan"]["variants"]):
        plan = variant["plan"]
        if plan is None:
            continue
        if [c["index"] for c in plan["cuts"]] == chosen:
            variant["bundle"] = "."
            continue
        folder = f"variants/v{i}"
        split = tuple(c["after"] or "input" for c in plan["cuts"])
        bandwidths = (f"{plan['evaluated_at_bps']:.6g}bps", *(f"{l.bandwidth_bps:.6g}bps" for l in links[1:]))
        rtts = tuple(l.rtt_s * 1e3 for l in links)
        sub = dataclasses.replace(options, split=split, bandwidths=bandwidths, rtts_ms=rtts, bandwidth_range=None)
        lo, hi = variant["range_bps"]
        log.info("[variants] %s: link 0 in [%.3g, %.3g] Mbps -> cut after %s", folder, lo / 1e6, hi / 1e6,
                 ", ".join(split))
        (stage / "variants").mkdir(exist_ok=True)
        compile_model(model, sub, stage / folder, input_shapes, input_dtypes)
        variant["bundle"] = folder
    ctx.plan_result.variants = [{**v, **({"bundle": m["bundle"]} if "bundle" in m else {})}
                                for v, m in zip(ctx.plan_result.variants, manifest["plan"]["variants"])]


def _export_all(ctx: CompileContext, stage: Path, folders: list[str]) -> list[dict[str, Any]]:
    """Every partition to ``<tier>/part<K>.onnx``: one export of the adapted chain, cut by wire names
    (backends/onnx_export.py says when and why it falls back to one export per partition)."""
    paths = []
    for part in ctx.partitions:
        folder = stage / folders[part.tier_index]
        folder.mkdir(exist_ok=True)
        paths.append(folder / f"part{part.index}.onnx")
    start = time.perf_counter()
    report = export_partitions(ctx.partitions, paths, opset=ctx.options.opset, simplify=ctx.options.simplify)
    ctx.pass_timings["export"] = time.perf_counter() - start
    ctx.pass_timings.update({f"export.{k}": v for k, v in report.seconds.items()})  # export, simplify, extract, ...
    steps = ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items())
    how = ("one stitched export cut into partitions" if report.method == "stitched"
           else f"one export per partition ({report.reason})")
    log.info("[export] %d partition(s): %s (%s; %.2fs)", len(paths), how, steps, ctx.pass_timings["export"])
    exported = []
    for part, path, result in zip(ctx.partitions, paths, report.partitions):
        log.info("[export] partition %d -> %s/%s (%d nodes, %.1f MiB, %s exporter%s)", part.index,
                 folders[part.tier_index], path.name, part.end - part.start, path.stat().st_size / 2**20,
                 result.exporter, ", simplified" if result.simplified else "")
        exported.append({"file": f"{folders[part.tier_index]}/{path.name}", "sha256": sha256_file(path),
                         "exporter": result.exporter, "simplified": result.simplified,
                         "op_types": result.op_types, "warnings": result.warnings})
    return exported


def _write_manifest(stage: Path, manifest: dict[str, Any]) -> None:
    validate_manifest(manifest)  # a manifest that breaks its own schema is a bug: fail here, not in serving
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(Path(__file__).with_name("manifest.schema.json"), stage / "manifest.schema.json")


def _verify(stage: Path, prepared: Prepared, options: CompileOptions) -> dict[str, Any]:
    start = time.perf_counter()
    ctx = prepared.ctx
    names = [s.name for s in ctx.input_specs]

    def boundary_reference(case: list) -> dict:
        with torch.no_grad():
            values = run_partitions(ctx.partitions, names, [torch.from_numpy(a) for a in case])
        return {k: v.numpy() for k, v in values.items()}

    if getattr(ctx, "noise", None) is not None:  # noise on the wire: no value-by-value reference exists, so the
        # receiving tiers are checked on the received tensor and the sender statistically ((privacy/add_noise.py))
        report = verify_noised_bundle(stage, ctx, samples=options.verify_samples,
                                      rtol=verification_rtol(ctx, options.rtol), atol=options.atol, seed=options.seed + 1)
        if not report.passed:
            raise SplitcError(f"verification of the noised bundle failed: {report.failures[0]}; no bundle was written",
                              "this is likely an exporter problem: report it, or pass --no-verify to keep the bundle")
    else:
        # lossy encodings on the wire: verify against the compressed chain in PyTorch; accuracy judges the rest
        defence = getattr(ctx, "defence", None)  # a defended bundle is verified against its fine-tuned graph
        reference = verification_reference(ctx, prepared.loaded.module if defence is None else defence.reference)
        report = verify_bundle(stage, module=reference, samples=options.verify_samples, inputs=verification_inputs(ctx),
                               rtol=verification_rtol(ctx, options.rtol), atol=options.atol, seed=options.seed + 1,
                               boundary_reference=None if quantized_partitions(ctx) else boundary_reference)
    prepared.ctx.pass_timings["verify"] = time.perf_counter() - start
    log.info("[verify] %s: %d sample(s), max abs error %.3g, max relative error %.3g (rtol %g, atol %g, %.2fs)",
             "passed" if report.passed else "FAILED", report.samples, report.max_abs_error, report.max_rel_error,
             report.rtol, report.atol, prepared.ctx.pass_timings["verify"])
    if not report.passed:
        raise SplitcError(
            f"verification failed: ONNX Runtime output '{report.worst_output}' differs from PyTorch by "
            f"{report.max_abs_error:.3g} (relative {report.max_rel_error:.3g}, allowed rtol {report.rtol:g} "
            f"atol {report.atol:g}); no bundle was written",
            "this is likely an exporter problem: report it, or pass --no-verify to keep the bundle anyway")
    result = report.to_dict()
    accuracy = bundle_accuracy(stage, ctx)  # compression knobs: held-out accuracy of the real bundle
    if accuracy is not None:
        result["accuracy"] = accuracy
    if getattr(ctx, "exits", None) is not None and ctx.exits.chosen:  # exit semantics on held-out samples
        result["exits"] = verify_exits(stage, ctx)
    return result

