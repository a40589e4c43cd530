"""The ``splitc`` command line.

User errors (:class:`~splitc.errors.SplitcError` and bad flags) print one line and
exit with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from splitc.errors import USER_ERROR_EXIT_CODE, SplitcError

__all__ = ["cli", "main"]

log = logging.getLogger("splitc")


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if verbose else "%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _split_csv(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


def _options(target: str, targets_file, bandwidth, rtt_ms, split, **extra):
    """CompileOptions of a model command; ``--input``/``--keep-cache`` come from the click context
    (:func:`_remember_model_call`), so the commands' signatures need not list them."""
    from splitc.core.options import CompileOptions

    context = click.get_current_context(silent=True)
    if context is not None:
        extra.setdefault("inputs", tuple(context.meta.get("splitc.inputs", ())))
        extra.setdefault("keep_cache", bool(context.meta.get("splitc.keep_cache", False)))
    names = tuple(t.strip() for t in target.split(","))
    try:
        rtts = tuple(float(r) for r in _split_csv(rtt_ms))
    except ValueError:
        raise SplitcError(f"--rtt-ms expects numbers in milliseconds, got '{','.join(rtt_ms)}'") from None
    return CompileOptions(targets=names, targets_files=tuple(targets_file), bandwidths=_split_csv(bandwidth),
                          rtts_ms=rtts, split=_split_csv(split), **extra)


def _shapes(input_shape: tuple[str, ...]):
    from splitc.core.loader import parse_input_shape

    return [parse_input_shape(s) for s in input_shape]


def _remember_model_call(ctx: click.Context, param: click.Parameter, value):
    """Keep ``--input``/``--keep-cache`` for :func:`_options` (parsed once, in splitc.driver.validate)."""
    ctx.meta[f"splitc.{param.name}"] = value
    return value


def _model_options(func):
    decorators = [
        click.argument("model"),
        click.option("--target", "-t", required=True,
                     help="Tier chain, first tier first, e.g. jetson,cloud-gpu (see 'splitc targets')."),
        click.option("--targets-file", multiple=True, type=click.Path(dir_okay=False),
                     help="YAML file with extra target definitions (repeatable)."),
        click.option("--input-shape", multiple=True,
                     help="Static input shape, e.g. 1,3,224,224 (one per model input; inferred when possible)."),
        click.option("--input-dtype", multiple=True, help="Input dtype (default float32; one for all or one per input)."),
        click.option("--input", "inputs", multiple=True, expose_value=False, callback=_remember_model_call,
                     help="A model input by name: NAME:SHAPE[:DTYPE], e.g. input_ids:1x64:int64 (repeatable; any "
                          "forward() argument; optional ones not given keep their defaults)."),
        click.option("--keep-cache", "keep_cache", is_flag=True, expose_value=False, callback=_remember_model_call,
                     help="Decoders: keep use_cache at the model's default, the KV cache becomes named outputs "
                          "(default: one forward pass with use_cache=False)."),
        click.option("--bandwidth", multiple=True,
                     help="Link bandwidth, e.g. 20mbps: one value for every link or one per link (comma-separated)."),
        click.option("--rtt-ms", multiple=True, help="Link round-trip time in ms: one for every link or one per link."),
        click.option("--split", multiple=True,
                     help="Force cut points: the last node of each tier but the last, e.g. layer2_3_relu_2 "
                          "('input' = ship the raw input)."),
        click.option("--seed", default=0, show_default=True, help="Seed for factories' random init and inputs."),
        click.option("-v", "--verbose", count=True, help="More log output."),
        click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _exit_flags(func):
    """--exits / --calib / --accuracy-target / --absolute-accuracy (early exits, issue 3)."""
    decorators = [
        click.option("--exits", "exits", default="none", show_default=True,
                     help="Early exits: auto (chosen with the plan), none, or node names node1,node2 (needs --calib)."),
        click.option("--calib", type=click.Path(dir_okay=False),
                     help="Calibration data .npz: x (inputs, sample axis first), optionally y (labels); "
                          "also gives the input shape when --input-shape is not set."),
        click.option("--accuracy-target", default=0.99, show_default=True, type=float,
                     help="Keep accuracy >= this x the full model's on held-out calibration samples "
                          "(labels if given, else agreement with the full model)."),
        click.option("--absolute-accuracy", is_flag=True, help="Read --accuracy-target as an absolute accuracy."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _exit_settings(exits: str, calib, accuracy_target: float, absolute_accuracy: bool) -> dict:
    return {"exits": _split_csv((exits,)) or ("none",), "calib": calib, "accuracy_target": accuracy_target,
            "absolute_accuracy": absolute_accuracy}


def _compression_flags(func):
    """--transfer-dtype / --bottleneck / --quantize / --prune (compression at the cut, issue 4)."""
    decorators = [
        click.option("--transfer-dtype", default="float32", show_default=True,
                     type=click.Choice(["float32", "float16", "uint8"]),
                     help="Dtype on the wire for float boundary tensors (uint8: affine, calibrated on --calib)."),
        click.option("--bottleneck", default=None,
                     help="Learned encoder/decoder at each cut: a channel ratio in (0, 1], e.g. 0.25, or auto "
                          "(ratio and cut chosen jointly under --accuracy-target; needs --calib)."),
        click.option("--quantize", default="none", show_default=True, type=click.Choice(["none", "int8", "fp16"]),
                     help="Post-training quantization of the partitions (int8: QDQ ONNX calibrated on --calib)."),
        click.option("--prune", default=0.0, show_default=True, type=float,
                     help="Fraction of channels pruned from the sending partition, in [0, 1) (needs --calib)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _objective_flags(func):
    """--objective / --weights / --slo-ms / --rps / --max-dcor / --bandwidth-range (planner objectives, issue 6)."""
    decorators = [
        click.option("--objective", default="latency", show_default=True,
                     type=click.Choice(["latency", "cost", "privacy", "weighted"]),
                     help="What the planner minimises (privacy needs --calib; weighted needs --weights)."),
        click.option("--weights", "weights", multiple=True,
                     help="Weighted objective, e.g. latency=1,cost=0.5,privacy=0 (each scaled to [0, 1] over the "
                          "feasible plans; see docs/planner.md)."),
        click.option("--slo-ms", type=float,
                     help="Latency SLO in ms on the predicted --slo-quantile (plans above it are dropped)."),
        click.option("--slo-quantile", default="p50", show_default=True,
                     help="Which predicted latency quantile --slo-ms bounds: p50 or p99 (early exits and FaaS cold "
                          "starts make the latency distribution multimodal; both are reported)."),
        click.option("--rps", default=10.0, show_default=True, type=float,
                     help="Request rate the monetary cost assumes (VM utilisation, FaaS volume)."),
        click.option("--max-dcor", type=float,
                     help="Privacy constraint: distance correlation between the input and what crosses the first used "
                          "link must stay <= this (0..1; needs --calib)."),
        click.option("--bandwidth-range",
                     help="LOW:HIGH of the first link, e.g. 1mbps:100mbps: list the plans optimal across the range and "
                          "the bandwidths where the optimum switches."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _objective_settings(flags: dict) -> dict:
    """Pop the objective flags out of ``flags`` (the CompileOptions fields)."""
    out = {key: flags.pop(key) for key in ("objective", "slo_ms", "slo_quantile", "rps", "max_dcor", "bandwidth_range")}
    out["weights"] = _split_csv(flags.pop("weights"))
    return out


def _compression_settings(flags: dict) -> dict:
    """Pop the compression flags out of ``flags`` (the CompileOptions fields)."""
    return {key: flags.pop(key) for key in ("transfer_dtype", "bottleneck", "quantize", "prune")}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="splitc")
def cli() -> None:
    """splitc: compile a PyTorch model into per-tier ONNX bundles for split inference."""


@cli.command()
@_model_options
@_exit_flags
@_compression_flags
@_objective_flags
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset of every partition (>= 17).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim.")
@click.option("--no-verify", is_flag=True, help="Skip running the bundle in ONNX Runtime against PyTorch.")
@click.option("--verify-samples", default=8, show_default=True,
              help="Verification cases: held-out --calib samples when given, else seeded random inputs.")
@click.option("--dump-dir", type=click.Path(file_okay=False), help="Write the graph after every pass here.")
@click.option("--emit", "emit", multiple=True, default=("auto",), show_default=True,
              help="Serving artifacts: auto (Triton repo for edge/cloud-vm tiers, TensorRT recipe for tensorrt "
                   "tiers, Lambda handler for faas tiers), none, or e.g. triton,tensorrt,faas.")
@click.option("--privacy-epsilon", type=float,
              help="Clip what crosses the first link to L2 norm C and add Laplace noise of scale C/epsilon inside "
                   "the sending partition (smaller = more noise; not a formal DP guarantee, see docs/privacy.md).")
@click.option("--privacy-clip", type=float,
              help="Clipping norm C for --privacy-epsilon (default: the median norm on --calib).")
@click.option("--privacy-defence", type=click.Choice(["none", "dcor", "adversarial", "auto"]),
              help="Fine-tune the sending partition on --calib so its wire hides the input: dcor (NoPeek), "
                   "adversarial (against a co-trained inversion decoder) or auto (adversarial, strongest strength "
                   "meeting --accuracy-target). See docs/privacy.md.")
@click.option("--privacy-strength", type=float,
              help="Weight of the defence's privacy term (default: the strongest that meets --accuracy-target).")
def compile(model, target, targets_file, input_shape, input_dtype, bandwidth, rtt_ms, split, seed, verbose, quiet,
            out, opset, no_simplify, no_verify, verify_samples, dump_dir, emit, **exit_flags) -> None:
    """Compile MODEL (.pt, .pt2 or package.module:factory) into a bundle for the tier chain."""
    _setup_logging(verbose, quiet)
    from splitc.driver.pipeline import compile_model
    from splitc.driver.report import format_bundle_summary
    from splitc.planning.report import format_explanation

    compression = _compression_settings(exit_flags)
    compression.update(_objective_settings(exit_flags))
    compression.update({key: exit_flags.pop(key) for key in ("privacy_epsilon", "privacy_clip")})  # add_noise
    compression.update({key: exit_flags.pop(key) for key in ("privacy_defence", "privacy_strength")})  # defence
    options = _options(target, targets_file, bandwidth, rtt_ms, split, **compression, opset=opset, simplify=not no_simplify,
                       verify=not no_verify, verify_samples=verify_samples, seed=seed, **_exit_settings(**exit_flags),
                       emit=_parse_emit(emit))
    result = compile_model(model, options, out, _shapes(input_shape), list(input_dtype), dump_dir=dump_dir)
    if not quiet:
        click.echo(format_bundle_summary(result.manifest))
        explanation = format_explanation(result.manifest["plan"])  # the best plan of each kind: why this one
        if explanation:
            click.echo("\n".join(["", *explanation, ""]))
        click.echo(f"bundle: {Path(out).resolve()}")


@cli.command()
@_model_options
@_exit_flags
@_compression_flags
@_objective_flags
@click.option("--workload", default="inference", show_default=True, type=click.Choice(["inference", "training"]),
              help="training: plan one split-learning step (forward + backward, gradients back over each link).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and every candidate as JSON.")
@click.option("--top", default=15, show_default=True, help="Rows per boundary in the table (0 = all).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Also write plan.md, plan.json and plots (Pareto front, bandwidth variants) to this folder.")
def plan(model, target, targets_file, input_shape, input_dtype, bandwidth, rtt_ms, split, seed, verbose, quiet,
         workload, as_json, top, report_dir, **exit_flags) -> None:
    """Rank the cut candidates of MODEL for the tier chain (no bundle is written)."""
    _setup_logging(verbose, quiet or as_json)
    from splitc.driver.pipeline import plan_model
    from splitc.planning.report import format_plan_table, write_plan_report

    compression = _compression_settings(exit_flags)
    compression.update(_objective_settings(exit_flags))
    options = _options(target, targets_file, bandwidth, rtt_ms, split, seed=seed, **compression,
                       workload=workload, **_exit_settings(**exit_flags))
    prepared = plan_model(model, options, _shapes(input_shape), list(input_dtype))
    result = prepared.ctx.plan_result
    if as_json:
        payload = result.to_dict(include_ranking=True)
        payload["alternatives"] = [a.to_dict() for a in result.alternatives]
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(format_plan_table(result, top=top or None))
    if report_dir:
        files = write_plan_report(result, report_dir)
        if not as_json:
            click.echo(f"report: {', '.join(str(f) for f in files)}")


@cli.command()
@click.option("--targets-file", multiple=True, type=click.Path(dir_okay=False), help="Extra target YAML files.")
@click.option("--json", "as_json", is_flag=True, help="Print every target as JSON.")
def targets(targets_file, as_json) -> None:
    """List the built-in targets (and those of --targets-file)."""
    _setup_logging(0, False)
    from splitc.targets.target import TargetRegistry, format_targets_table

    listed = TargetRegistry.with_builtins(targets_file).targets()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in listed], indent=2))
    else:
        click.echo(format_targets_table(listed))


@cli.command()
@click.option("--name", required=True, help="Name of the measured target, e.g. my-laptop (use it with --target).")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Target YAML file to write.")
@click.option("--kind", default="edge", show_default=True, help="Tier kind: device, edge, cloud-vm or faas.")
@click.option("--threads", default=0, show_default=True, type=int,
              help="ONNX Runtime intra-op threads to measure with (0 = ONNX Runtime's default).")
@click.option("--quick", is_flag=True, help="Fewer shapes and repeats (< 30 s): a rough profile for smoke tests.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu: ONNX Runtime on the CPU; cuda: eager PyTorch on this machine's GPU (backend torch).")
@click.option("--model", "model", default=None,
              help="Also measure this model's own nodes on this machine (.pt, .pt2 or pkg.module:factory); "
                   "plans of that model then use the measured figures.")
@click.option("--input-shape", multiple=True, help="With --model: its static input shape, e.g. 1,3,224,224.")
@click.option("--input-dtype", multiple=True, help="With --model: input dtype (default float32).")
@click.option("--seed", default=0, show_default=True, help="With --model: seed for factories and inputs.")
@click.option("--force", is_flag=True, help="Overwrite -o if it exists.")
@click.option("--uplink-bandwidth", default="100mbps", show_default=True,
              help="Default uplink to the next tier (an assumption written to the file, not measured).")
@click.option("--uplink-rtt", default="20ms", show_default=True, help="Round-trip time of that uplink.")
@click.option("--usable-memory-fraction", default=0.7, show_default=True, type=float,
              help="Share of this machine's memory a partition may use.")
@click.option("--watts", type=float, help="With --usd-per-kwh: an energy price model (default: free).")
@click.option("--usd-per-kwh", type=float, help="Electricity price for the energy price model.")
@click.option("--measurements", type=click.Path(dir_okay=False), help="Also write every timing and the fit as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def profile(name, out, kind, threads, quick, device, model, input_shape, input_dtype, seed, force, uplink_bandwidth,
            uplink_rtt, usable_memory_fraction, watts, usd_per_kwh, measurements, quiet) -> None:
    """Measure this machine (ONNX Runtime on the CPU, or torch on CUDA) and write a target file (--targets-file).

    With --model, also measure that model's own nodes (ONNX Runtime's profiler, mapped back to
    graph nodes): `splitc plan/compile MODEL --targets-file NAME.yaml --target NAME,...` then uses
    the measured figures for that model and says so in the plan.
    """
    _setup_logging(0, quiet)
    from splitc.targets.machine_profiler import ProfileConfig, check_output_path, profile_machine, write_profile

    config = ProfileConfig(name=name, kind=kind, threads=threads, quick=quick, uplink_bandwidth=uplink_bandwidth,
                           uplink_rtt=uplink_rtt, usable_memory_fraction=usable_memory_fraction, watts=watts,
                           usd_per_kwh=usd_per_kwh, command=_profile_command(click.get_current_context().params),
                           device=device)
    config.validate()  # bad flags and an unwritable -o fail before a minute of timing
    check_output_path(out, force)
    if measurements:
        check_output_path(measurements, True)
    if (input_shape or input_dtype) and not model:
        raise SplitcError("--input-shape and --input-dtype describe --model's inputs", "give --model MODEL too")
    if model and device != "cpu":
        raise SplitcError("--model measures the model in ONNX Runtime on the CPU", "drop --device cuda, or --model")
    analysed = _analysed_model(model, input_shape, input_dtype, seed) if model else None  # bad model: fail now
    result = profile_machine(config, progress=log.info)
    if analysed is not None:
        import dataclasses

        from splitc.targets.model_profiler import measure_model

        gm, ctx = analysed
        table = measure_model(gm, ctx.example_inputs, [s.name for s in ctx.input_specs], result.target,
                              threads=threads, model=model, command=config.command,
                              input_shapes=[s.shape for s in ctx.input_specs], quick=quick)
        result.target = dataclasses.replace(result.target, model_profile=table, notes=result.target.notes + (
            f" Model profile: {len(table.nodes)} nodes of {model} measured on this machine "
            f"({table.measured_s * 1e3:.3f} ms per run); plans of that model use them."))
    write_profile(result, out)
    if measurements:
        Path(measurements).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    log.info("[profile] wrote %s: use it with --targets-file %s --target %s", out, out, result.target.name)


def _analysed_model(model: str, input_shape: tuple[str, ...], input_dtype: tuple[str, ...], seed: int):
    """Load, trace and run the analyses ``splitc plan`` runs before planning (so node names match)."""
    from splitc.core.options import CompileOptions
    from splitc.core.pass_manager import PassManager
    from splitc.core.passes.eliminate_dead_code import EliminateDeadCodePass
    from splitc.core.passes.fold_constants import FoldConstantsPass
    from splitc.core.passes.fold_static_shapes import FoldStaticShapesPass
    from splitc.core.passes.profile import ProfilePass
    from splitc.driver.pipeline import prepare

    prepared = prepare(model, CompileOptions(targets=("edge-cpu",), seed=seed), _shapes(input_shape),
                       list(input_dtype))
    passes = [EliminateDeadCodePass(), FoldConstantsPass(), ProfilePass(), FoldStaticShapesPass()]
    gm = PassManager(passes).run(prepared.traced.graph_module, prepared.ctx)
    return gm, prepared.ctx


def _profile_command(params: dict) -> str:
    """The profile command line as given (argv is not it when main() is called with a list)."""
    words = ["splitc", "profile"]
    for key, value in params.items():
        flag = "-o" if key == "out" else "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, tuple):  # a repeatable option: once per value
            for item in value:
                words += [flag, str(item)]
        elif value not in (None, False) and not (key == "seed" and value == 0):
            words += [flag, str(value)]
    return " ".join(words)


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--inputs", type=click.Path(dir_okay=False),
              help=".npy (one input) or .npz (by input name; labels y optional) of real samples to run.")
@click.option("--samples", default=3, show_default=True, help="Random inputs when --inputs is not given.")
@click.option("--rtol", default=1e-3, show_default=True, help="Tolerance relative to each output's max magnitude.")
@click.option("--atol", default=1e-4, show_default=True, help="Absolute tolerance.")
@click.option("--seed", default=1, show_default=True, help="Seed of the random inputs.")
def verify(bundle, inputs, samples, rtol, atol, seed) -> None:
    """Check BUNDLE: file hashes, the ONNX/manifest contract, every partition against the compile-time
    reference, the chain against the original PyTorch model, and the exits.

    Exit code 0: passed; 1: a check failed; 3: NOT VERIFIED (a check could not be made, e.g. a
    compressed bundle without reference values and without --inputs); 2: bad input.
    """
    _setup_logging(0, False)
    from splitc.driver.verify import EXIT_NOT_VERIFIED, verify_bundle

    _require_bundle(bundle)
    report = verify_bundle(bundle, inputs=inputs, samples=samples, rtol=rtol, atol=atol, seed=seed)
    click.echo(report.headline())
    for check in report.checks:
        click.echo(f"  {check.line()}")
    if report.status == "failed":
        raise SystemExit(1)
    if report.status == "not verified":
        raise SystemExit(EXIT_NOT_VERIFIED)


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest.")
def inspect(bundle, as_json) -> None:
    """Summarise BUNDLE: tiers, partitions, what crosses each link, the plan, every accuracy verdict, verification."""
    from splitc.driver.report import format_bundle_summary

    manifest = _require_bundle(bundle)
    click.echo(json.dumps(manifest, indent=2) if as_json else format_bundle_summary(manifest))


def _parse_emit(emit: tuple[str, ...]) -> tuple[str, ...]:
    from splitc.backends.emit import parse_emit

    return parse_emit(emit)


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--tier", required=True, help="Tier to serve: folder name, target name/alias, or index.")
@click.option("--server", "server_kind", default="splitc", show_default=True, type=click.Choice(["splitc", "triton"]),
              help="splitc's own KServe v2 server, or a real tritonserver (nvidia-pytriton wheel) on the tier's "
                   "Triton repository.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True,
              help="HTTP port; gRPC listens on port+1 (Triton: metrics on port+2). 0 = free ports, printed at start.")
@click.option("--grpc-port", type=int, help="gRPC port of splitc's server (default: --port + 1; -1 = no gRPC).")
@click.option("--next", "next_url",
              help="splitc server: v2 URL (http:// or grpc://) of the next tier's server, which this tier forwards to.")
@click.option("--single-tier", is_flag=True,
              help="Serve this tier only: a request that continues is answered with the next link's tensors and the "
                   "client calls the next tier (default: later tiers run here too).")
@click.option("--design", default="python", show_default=True, type=click.Choice(["python", "bls", "ensemble"]),
              help="Triton: tier step with ONNX Runtime in the python model (python), python BLS model around the "
                   "partition models (bls), or an ensemble (last tier without exits only).")
@click.option("--no-batching", is_flag=True, help="Triton: max_batch_size 0 even where the batch axis was checked.")
@click.option("--triton-venv", type=click.Path(file_okay=False),
              help="Triton: venv with nvidia-pytriton, numpy<2 and onnxruntime the models run in (default: this one).")
@click.option("--max-inflight", default=4, show_default=True, help="splitc server: requests computing at once (then 503).")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True,
              help="splitc server: seconds before an idle/slow connection or the call to --next is dropped.")
@click.option("--threads", default=0, show_default=True, help="ONNX Runtime threads per session (0 = default).")
@click.option("-v", "--verbose", count=True, help="Log every request.")
def serve(bundle, tier, server_kind, host, port, grpc_port, next_url, single_tier, design, no_batching, triton_venv,
          max_inflight, timeout_s, threads, verbose) -> None:
    """Serve one tier of BUNDLE over KServe v2 (HTTP and gRPC), with splitc's server or Triton."""
    _setup_logging(verbose, False)
    _require_bundle(bundle)
    if server_kind == "triton":
        from splitc.backends.triton import serve_triton

        if next_url:
            raise SplitcError("--next works with splitc's server only: a Triton model does not call other servers",
                              "serve each tier with --single-tier and pass every URL to 'splitc run' with --remote")
        if grpc_port is not None:
            raise SplitcError("--grpc-port is for splitc's server; Triton listens for gRPC on --port + 1")
        serve_triton(bundle, tier, host=host, port=port, design=design, batching=not no_batching,
                     single_tier=single_tier, threads=threads, venv=triton_venv)
        return
    if design != "python" or no_batching or triton_venv:
        raise SplitcError("--design, --no-batching and --triton-venv apply to --server triton")
    from splitc.runtime.server import serve as serve_tier

    serve_tier(bundle, tier, host=host, port=port, grpc_port=grpc_port, next_url=next_url, single_tier=single_tier,
               max_inflight=max_inflight, read_timeout_s=timeout_s, forward_timeout_s=timeout_s, threads=threads)


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help=".npy (one input) or .npz (by input name); [N, ...] stacks run as N requests.")
@click.option("--remote", multiple=True,
              help="KServe v2 server of the remote tiers: http://host:port or grpc://host:port (splitc serve or "
                   "Triton); once per server. Default: every tier in-process.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False), help="Write the outputs here (.npz).")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True, help="Seconds per remote call.")
@click.option("--retries", default=2, show_default=True, help="Retries on connection failures and busy answers.")
@click.option("--concurrency", default=1, show_default=True, help="Requests in flight at once.")
@click.option("--no-adapt", is_flag=True,
              help="Stay on the bundle's own plan even when it has bandwidth variants the servers serve.")
def run(bundle, input_path, remote, output_path, timeout_s, retries, concurrency, no_adapt) -> None:
    """Run BUNDLE on --input: local tiers here, the rest at --remote (or everything here)."""
    _setup_logging(0, False)
    from splitc.runtime.client import SplitClient, format_results, load_request_arrays, save_outputs, split_batch

    manifest = _require_bundle(bundle)
    requests = split_batch(manifest, load_request_arrays(input_path, manifest))
    with SplitClient(bundle, remote=list(remote) or None, timeout_s=timeout_s, retries=retries,
                     adapt=not no_adapt) as client:
        results = client.infer_many(requests, concurrency=concurrency)
        click.echo(format_results(manifest, results))
        if len(client.variants) > 1:
            link = client.monitor.snapshot()
            bandwidth = f"{link['bandwidth_bps'] / 1e6:.3g} Mbit/s" if link["bandwidth_bps"] else "not measured"
            click.echo(f"link: round trip {link['rtt_ms']} ms, {bandwidth}; {len(client.switches)} variant switch(es)",
                       err=True)
    if output_path:
        save_outputs(output_path, results)
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    if failed:
        click.echo(f"{len(failed)} of {len(results)} request(s) failed: {failed[:20]}", err=True)
        raise SystemExit(1)


@cli.command()
@_model_options
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Calibration data .npz (x, optionally y): the attacker trains on one split, is scored on another.")
@click.option("--top", default=3, show_default=True,
              help="Attack this many cuts, fastest first by the planner's ranking (plus the shallowest cut).")
@click.option("--epochs", default=30, show_default=True, help="Training epochs of the attacker's inversion decoder.")
@click.option("--samples", default=128, show_default=True, help="Calibration samples the distance-correlation proxy uses.")
@click.option("--max-samples", type=int, help="Use at most this many calibration samples in each attack.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Write privacy.json, privacy.md and the reconstruction PNGs to this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def privacy(model, target, targets_file, input_shape, input_dtype, bandwidth, rtt_ms, split, seed, verbose, quiet,
            calib, top, epochs, samples, max_samples, report_dir, as_json) -> None:
    """How much of the input an attacker recovers from what crosses each cut of MODEL (or each link of a bundle).

    Distance correlation (cheap proxy) for every legal cut, then an inversion decoder trained on
    calibration data against the fastest cuts and the shallowest one: MSE, PSNR, SSIM on held-out
    samples. MODEL may be a bundle folder: then what its links really send is attacked.
    """
    _setup_logging(verbose, quiet or as_json)
    from splitc.privacy import leakage as priv

    if not calib:
        raise SplitcError("splitc privacy needs calibration data: the attacker learns from real inputs",
                          "pass --calib calib.npz (inputs 'x' of the kind the model will see)")
    if epochs < 1 or top < 0 or samples < 4 or (max_samples is not None and max_samples < 8):
        raise SplitcError("--epochs must be >= 1, --top >= 0, --samples >= 4 and --max-samples >= 8")
    png_dir = Path(report_dir) if report_dir else None
    if Path(model, "manifest.json").exists():
        _require_bundle(model)
        payload = priv.evaluate_bundle_privacy(model, calib, epochs=epochs, seed=seed, max_samples=max_samples,
                                               png_dir=png_dir)
    else:
        if not target:
            raise SplitcError(f"--target is needed for a model ('{model}' is not a bundle folder)",
                              "give the tier chain, e.g. --target jetson,cloud-gpu")
        from splitc.driver.pipeline import plan_model

        options = _options(target, targets_file, bandwidth, rtt_ms, split, seed=seed, calib=calib)
        prepared = plan_model(model, options, _shapes(input_shape), list(input_dtype), skip=("privacy_profile",))
        ctx = prepared.ctx
        payload = priv.evaluate_model_privacy(prepared.traced.graph_module, ctx.candidates, ctx.plan_result,
                                              ctx.calibration, top=top, epochs=epochs, samples=samples,
                                              max_samples=max_samples, seed=seed, png_dir=png_dir)
    files = priv.write_privacy_report(payload, report_dir) if report_dir else []
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(priv.format_privacy_report(payload))
        if files:
            click.echo(f"report: {', '.join(str(f) for f in files)}")


for _param in privacy.params:  # a bundle folder already fixes its tiers: --target only matters for a model
    if _param.name == "target":
        _param.required = False


def _require_bundle(bundle: str) -> dict:
    import jsonschema

    from splitc.driver.schema import validate_manifest  # no torch: 'splitc run/serve' work on a runtime-only install

    path = Path(bundle) / "manifest.json"
    if not path.exists():
        raise SplitcError(f"'{bundle}' is not a splitc bundle (no manifest.json)", "pass the folder given to -o")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        validate_manifest(manifest)
    except (ValueError, jsonschema.ValidationError) as exc:  # broken JSON or schema violation
        first = str(exc).strip().splitlines()[0][:200]
        raise SplitcError(f"'{path}' is not a valid splitc manifest: {first}", "recompile the bundle") from None
    return manifest


#: Top-level modules of the compiler's dependencies (the 'compiler' extra): missing on a runtime-only install.
COMPILER_MODULES = frozenset({"torch", "torchvision", "onnx", "onnxsim", "onnxscript", "yaml", "scipy", "matplotlib",
                              "tqdm"})


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        code = cli.main(args=argv, prog_name="splitc", standalone_mode=False)
    except ModuleNotFoundError as exc:  # a runtime-only install (pip install 'splitc[runtime]') has no compiler
        if (exc.name or "").split(".")[0] not in COMPILER_MODULES:
            raise
        click.echo(f"error: this command needs the compiler, and its dependency '{exc.name}' is not installed "
                   "(a runtime-only install runs bundles: 'splitc run', 'splitc serve'); "
                   "install the compiler with: pip install 'splitc[compiler]'", err=True)
        sys.exit(USER_ERROR_EXIT_CODE)
    except SplitcError as exc:
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(USER_ERROR_EXIT_CODE)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(USER_ERROR_EXIT_CODE if isinstance(exc, click.UsageError) else exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
