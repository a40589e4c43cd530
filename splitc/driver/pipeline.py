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

from splitc.backends.emit import emit_backend_artifacts
from splitc.backends.onnx_export import export_partitions
from splitc.compression.quantize import quantize_partitions
from splitc.compression.insert_bottleneck import InsertBottleneckPass
from splitc.compression.prune import PrunePass
from splitc.compression.quantize_transfer import QuantizeTransferPass
from splitc.compression.what_if import untried_knobs
from splitc.compression.settings import adjust_problem
from splitc.core.calibration import calibration_input_shapes, calibration_named_inputs, load_calibration
from splitc.core.call_adapter import adapt_model
from splitc.core.context import CompileContext
from splitc.core.loader import (InputSettings, InputSpec, LoadedModel, TracedModel, infer_input_specs, load_model,
                                make_example_inputs, sha256_file, trace_model)
from splitc.core.options import CompileOptions
from splitc.core.pass_manager import Pass, PassManager
from splitc.core.passes.candidates import CandidatesPass
from splitc.core.passes.cut import CutPass
from splitc.core.passes.eliminate_dead_code import EliminateDeadCodePass
from splitc.core.passes.fold_constants import FoldConstantsPass, RefoldConstantsPass
from splitc.core.passes.fold_static_shapes import FoldStaticShapesPass
from splitc.core.passes.profile import ProfilePass
from splitc.core.passes.recompute_masks import RecomputeMasksPass
from splitc.driver.bundle import check_output_dir, staging_dir, write_bundle_readme
from splitc.driver.manifest import build_manifest, tier_dir_names, validate_manifest
from splitc.driver.report import format_plan_report
from splitc.driver.validate import validate_options
from splitc.core.compare import FAILED, NOT_VERIFIED, PASSED, Check, VerifyReport
from splitc.driver.reference import build_reference
from splitc.driver.verify import bundle_accuracy, check_contract, check_files, check_reference, record_artifact_hashes
from splitc.errors import SplitcError
from splitc.units import format_bytes
from splitc.exits.heads import plan_exits
from splitc.exits.verify_exits import QUANTIZED_TOLERANCES, verify_exits, write_exit_heads
from splitc.exits.insert_exits import InsertExitsPass
from splitc.exits.train_exits import TrainExitsPass
from splitc.planning.plan import PlanPass
from splitc.planning.reorder_for_cut import ReorderForCutPass
from splitc.privacy.add_noise import AddNoisePass
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
        RefoldConstantsPass(),   # after static shapes: arange(x.size(1)) is arange(64) only now, so position ids
                                 # and constant masks become buffers instead of crossing every cut
        RecomputeMasksPass(),    # after the folds: masks derived from an input are recomputed on each tier and
                                 # the small input crosses instead; before candidates, which see the final graph
        ReorderForCutPass(),     # DAG min cut: reorders so its placement is a prefix cut; before candidates
        CandidatesPass(),        # after folding: enumerates cuts of the final graph
        PrivacyProfilePass(),    # privacy requested: leakage proxy of every candidate; before plan, which weighs it
        TrainExitsPass(),        # --exits: heads trained at candidate nodes; before plan, which needs their exit rates
        PlanPass(adjusters=[     # reads profile + candidates; returns data, never edits the graph
            adjust_problem,      #   compression: wire bytes and coder time of the knobs
            plan_exits,          #   exits: thresholds chosen jointly with the cuts (the problem weighted by reach)
        ], what_ifs=[untried_knobs]),  # the explanation: best plans with the compression flags not given
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
    inputs = next(s for s in settings if isinstance(s, InputSettings))
    specs = _input_specs(loaded, options, inputs, list(input_shapes or []), list(input_dtypes or []))
    # named/optional inputs, ModelOutput and cache outputs (call adapter); a detector split into body and tail
    loaded.module, call, notes = adapt_model(loaded.module, specs, keep_cache=inputs.keep_cache)
    if call is not None:  # recorded so that 'splitc verify' calls the reloaded model the same way
        loaded.source = {**loaded.source, "call": call}
    traced = trace_model(loaded.module, specs)
    traced.notes.extend(notes)
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


def _input_specs(loaded: LoadedModel, options: CompileOptions, inputs: InputSettings, shapes: list[tuple[int, ...]],
                 dtypes: list[str]) -> list[InputSpec]:
    """The model's inputs: the flags, else what ``--calib`` holds, else the file or the model itself."""
    named = list(inputs.named)
    if not shapes and not named and options.calib:  # the calibration data shows the real inputs
        named = [] if dtypes or loaded.input_specs else calibration_named_inputs(options.calib)  # one per argument
        if not named:
            shapes = calibration_input_shapes(options.calib) or []  # 'x'
    return infer_input_specs(loaded, shapes, dtypes, named)


def plan_model(model: str, options: CompileOptions, input_shapes=None, input_dtypes=None,
               skip: tuple[str, ...] = ()) -> Prepared:
    """Run the analyses and the planner only (``splitc plan``); ``skip`` names passes the caller does itself
    (``splitc privacy`` measures leakage on its own, so the planner's privacy profile is not run or logged)."""
    prepared = prepare(model, options, input_shapes, input_dtypes)
    passes = [p for p in default_passes()
              if not isinstance(p, CutPass) and "partitions" not in p.requires and p.name not in skip]
    prepared.traced.graph_module = PassManager(passes).run(prepared.traced.graph_module, prepared.ctx)
    prepared.ctx.plan_result.inputs = [s.to_dict() for s in prepared.ctx.input_specs]  # plan.json says what is assumed
    return prepared


@dataclass
class CompileResult:
    out: Path
    manifest: dict[str, Any]
    prepared: Prepared


def compile_model(model: str, options: CompileOptions, out: str | Path, input_shapes=None, input_dtypes=None,
                  dump_dir: str | Path | None = None, shown_as: str | None = None) -> CompileResult:
    """Compile ``model`` for the tier chain in ``options`` into the bundle folder ``out``.

    ``shown_as`` names ``out`` in the log when it is inside a hidden staging folder (a bandwidth
    variant is compiled into its parent's staging folder; the log names where it will be).

    Raises:
        SplitcError: on any user error; nothing is left at ``out`` then.
    """
    out = Path(out)
    check_output_dir(out)  # before any work: an unwritable -o fails in a second, not a minute
    prepared = prepare(model, options, input_shapes, input_dtypes, compile=True)
    ctx = prepared.ctx
    gm = PassManager(default_passes(), dump_dir=dump_dir).run(prepared.traced.graph_module, ctx)
    ctx.plan_result.inputs = [s.to_dict() for s in ctx.input_specs]  # the manifest's plan says what is assumed
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
        record_artifact_hashes(stage, manifest)  # 'splitc verify' checks every listed file
        if options.verify:
            manifest["verification"] = _verify(stage, prepared, options, manifest, exported)
        if ctx.accuracy is not None:  # every accuracy verdict of the compile, with its rule and numbers
            manifest["accuracy"] = ctx.accuracy.to_dict()
        if ctx.plan_result.variants:  # --bandwidth-range: one complete bundle per plan that wins somewhere
            _write_variants(stage, model, options, ctx, manifest, input_shapes, input_dtypes, out)
        _write_manifest(stage, manifest)
        (stage / "report.md").write_text(format_plan_report(manifest, ctx.plan_result), encoding="utf-8")
        write_bundle_readme(stage, manifest)  # per tier: what to install and the command that runs it
    log.info("[bundle] wrote %s (%d partition(s), %d transfer(s))", shown_as or out, len(manifest["partitions"]),
             len(manifest["transfers"]))
    return CompileResult(out, manifest, prepared)


def _write_variants(stage: Path, model: str, options: CompileOptions, ctx: CompileContext, manifest: dict[str, Any],
                    input_shapes, input_dtypes, out: Path) -> None:
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
        compile_model(model, sub, stage / folder, input_shapes, input_dtypes, shown_as=str(out / folder))
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
        log.info("[export] partition %d -> %s/%s (%d nodes, file %s, %s exporter%s)", part.index,
                 folders[part.tier_index], path.name, part.end - part.start, format_bytes(path.stat().st_size),
                 result.exporter, ", simplified" if result.simplified else "")
        exported.append({"file": f"{folders[part.tier_index]}/{path.name}", "sha256": sha256_file(path),
                         "exporter": result.exporter, "simplified": result.simplified,
                         "op_types": result.op_types, "warnings": result.warnings})
    return exported


def _write_manifest(stage: Path, manifest: dict[str, Any]) -> None:
    validate_manifest(manifest)  # a manifest that breaks its own schema is a bug: fail here, not in serving
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(Path(__file__).with_name("manifest.schema.json"), stage / "manifest.schema.json")


def _verify(stage: Path, prepared: Prepared, options: CompileOptions, manifest: dict[str, Any],
            exported: list[dict[str, Any]]) -> dict[str, Any]:
    """Build the reference (``verification/reference.npz``), check the staged bundle against it (driver/verify.py).

    A failed check is a compile error (nothing is written); a check that cannot be made is a
    warning and ``verification.status: "not verified"``, never "passed".
    """
    start = time.perf_counter()
    ctx = prepared.ctx
    report = VerifyReport(rtol=options.rtol, atol=options.atol)
    record, float_checks = build_reference(stage, ctx, [e["file"] for e in exported], options.verify_samples,
                                           options.seed + 1, options.rtol, options.atol)
    manifest["verification"] = {"reference": record}  # what check_files and check_reference read
    for check in [*float_checks, check_files(stage, manifest), check_contract(stage, manifest)]:
        report.add(check)
    if report.status != FAILED:
        check_reference(stage, manifest, report)
    report.samples = record["cases"]
    accuracy = None
    if report.status != FAILED:  # lossy knobs: held-out accuracy of the real bundle
        accuracy, check = bundle_accuracy(stage, ctx)
        if check is not None:
            report.add(check)
    exits = None
    if report.status != FAILED and getattr(ctx, "exits", None) is not None and ctx.exits.chosen:
        loose = ctx.options.quantize not in (None, "none")  # int8/fp16 partitions: the reference is float
        exits = verify_exits(stage, ctx, **(QUANTIZED_TOLERANCES if loose else {}))  # raises on a mismatch
        report.add(Check("exits", PASSED if exits["passed"] else FAILED,
                         f"{exits['samples']} held-out sample(s): {exits['mismatches']} exit decision(s) or class(es) "
                         f"differ from PyTorch ({exits['borderline']} borderline)"))
    ctx.pass_timings["verify"] = time.perf_counter() - start
    for check in report.checks:
        (log.warning if check.status == NOT_VERIFIED else log.info)("[verify] %s", check.line())
    log.info("[verify] %s (%.2fs)", report.headline(), ctx.pass_timings["verify"])
    if report.status == FAILED:
        failed = next(c for c in report.checks if c.status == FAILED)
        raise SplitcError(f"verification failed: {failed.name}: {failed.detail}; no bundle was written",
                          _hint(failed, ctx))
    if report.status == NOT_VERIFIED:
        log.warning("[verify] NOT VERIFIED: %s", "; ".join(report.not_verified))
    result = {**report.to_dict(), "reference": record, "inputs": record["inputs"]}
    if accuracy is not None:
        result["accuracy"] = accuracy
    if exits is not None:
        result["exits"] = exits
    return result


def _hint(failed: Check, ctx: CompileContext) -> str:
    noise = getattr(ctx, "noise", None)
    if failed.name == "accuracy":
        return (f"raise --privacy-epsilon (now {noise.epsilon:g}; less noise)" if noise is not None else
                "use a milder setting (--transfer-dtype float16, a larger --bottleneck ratio, no --quantize)")
    return "this is likely an exporter problem: report it, or pass --no-verify to keep the bundle anyway"
