"""``splitc verify``: run a bundle in ONNX Runtime and compare with the original PyTorch model.

The partitions are chained exactly as the manifest says (through the reference
runner, which really encodes and decodes every transfer), on random inputs from a
fixed seed or on inputs the user gives (``.npy`` for a one-input model, ``.npz``
keyed by input name). Outputs match when, per output,
``max|onnx - torch| <= atol + rtol * max|torch|`` -- a tolerance relative to the
output's scale, because randomly initialised deep networks produce logits of very
different magnitudes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from splitc.core.calibration import as_samples
from splitc.core.compare import VerifyReport, compare_arrays
from splitc.compression.settings import agreement_ok, lossy_bundle
from splitc.core.call_adapter import apply_call_record
from splitc.core.detectors import check_detections, explain_runtime_failure
from splitc.core.loader import InputSpec, load_model, make_example_inputs, parameter_fingerprint, sha256_file
from splitc.errors import SplitcError
from splitc.runtime.runner import BundleRunner, load_manifest

__all__ = ["VerifyReport", "verify_bundle", "load_inputs", "reload_model", "bundle_accuracy"]

log = logging.getLogger("splitc")


def reload_model(manifest: dict[str, Any]) -> torch.nn.Module:
    """Load the compiled model again from the manifest's source record, checking it is unchanged."""
    source = manifest["model"]["source"]
    if source["kind"] == "file":
        path = Path(source["path"])
        if not path.exists():
            raise SplitcError(f"the compiled model file '{path}' no longer exists",
                              "restore it, or run verify from the machine that compiled the bundle")
        if sha256_file(path) != source["sha256"]:
            raise SplitcError(f"the model file '{path}' changed since the bundle was compiled (sha256 differs)",
                              "recompile the bundle")
        module = load_model(str(path)).module
    else:
        module = load_model(source["spec"], seed=source["seed"]).module
    # called as it was compiled: named inputs, fixed kwargs, flat named outputs; a detector split (core/call_adapter.py)
    module = apply_call_record(module, source.get("call"), [i["shape"] for i in manifest["model"]["inputs"]])
    if parameter_fingerprint(module) != manifest["model"]["parameters_sha256"]:
        raise SplitcError("the reloaded model's weights differ from the compiled ones",
                          "the factory's initialisation is not reproducible here (another torch version?); "
                          "save the model with torch.save and compile the file instead")
    return module


def load_inputs(path: str | Path, specs: list[InputSpec]) -> list[list[np.ndarray]]:
    """Read user inputs: ``.npy`` (one input) or ``.npz`` keyed by input name.

    A leading axis holds several samples, as in ``calib.npz`` (see
    :func:`~splitc.core.calibration.as_samples`). Returns one list of arrays (in input
    order, each of the input's exact shape) per sample.
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise SplitcError(f"cannot read inputs '{path}': {exc}", "give a .npy or .npz file") from None
    arrays = {specs[0].name: data} if isinstance(data, np.ndarray) else {k: data[k] for k in data.files}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise SplitcError(f"inputs file '{path}' lacks {', '.join(missing)} (has {', '.join(arrays) or 'nothing'})",
                          "save an .npz with one array per model input name")
    per_input = [as_samples(arrays[spec.name], spec, f"input '{spec.name}' in '{path}'") for spec in specs]
    counts = {len(a) for a in per_input}
    if len(counts) != 1:
        raise SplitcError(f"inputs in '{path}' have different sample counts: {sorted(counts)}")
    return [[a[i].reshape(spec.shape) for a, spec in zip(per_input, specs)] for i in range(counts.pop())]


def verify_bundle(bundle: str | Path, module: torch.nn.Module | None = None, inputs: str | Path | None = None,
                  samples: int = 2, rtol: float = 1e-3, atol: float = 1e-4, seed: int = 0,
                  boundary_reference: Callable[[list[np.ndarray]], dict[str, np.ndarray]] | None = None
                  ) -> VerifyReport:
    """Compare the bundle's chained ONNX partitions with the PyTorch model.

    Args:
        bundle: bundle folder.
        module: the original model; reloaded from the manifest when None.
        inputs: optional .npy/.npz file of inputs; random seeded inputs otherwise.
        samples: number of random inputs when ``inputs`` is None.
        rtol, atol: tolerance (see module docstring).
        seed: seed of the random inputs.
        boundary_reference: optional function giving PyTorch's value of every boundary tensor
            for an input case; then every tensor that crosses a link is compared too, which
            catches a wrong partition even when the model's outputs carry no signal.
    """
    manifest = load_manifest(bundle)
    _check_files(Path(bundle), manifest)
    specs = [InputSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in manifest["model"]["inputs"]]
    lossy = module is None and lossy_bundle(manifest, random_inputs=not inputs)  # compression: top-1 agreement
    module = module if module is not None else reload_model(manifest)
    cases = load_inputs(inputs, specs) if inputs else [
        [t.numpy() for t in make_example_inputs(specs, seed=seed + i)] for i in range(samples)]
    runner = BundleRunner(bundle)
    runner.use_exits = False  # numerics of the full model; exit semantics: splitc.exits.heads.verify_exits
    worst = (0.0, 0.0, "")
    passed = True
    agree: list[bool] = []
    for case in cases:
        with torch.no_grad():
            expected, _ = torch.utils._pytree.tree_flatten(module(*[torch.tensor(a) for a in case]))  # copies
        try:
            got = runner.run({s.name: a for s, a in zip(specs, case)})
        except Exception as exc:  # a detector left with no proposals: one line (splitc.core.detectors)
            raise explain_runtime_failure(manifest, exc) or exc from None
        pairs = [(o["name"], got[o["name"]], w.detach().numpy()) for o, w in zip(manifest["model"]["outputs"], expected)]
        if boundary_reference is not None:
            reference = boundary_reference(case)
            pairs += [(f"wire tensor {n}", v, reference[n]) for n, v in runner.received.items()]
        # a detector's boxes/scores/labels: compared as matched sets (splitc.core.detectors.check_detections)
        last = manifest["partitions"][-1]["index"]
        handled, results = check_detections(manifest, got, {n: w for n, _, w in pairs}, rtol, atol, None
                                            if boundary_reference is None else lambda: runner.run_partition(
                                                last, {**{s.name: a for s, a in zip(specs, case)}, **reference}))
        for name, err, rel, ok in results:
            passed &= ok
            worst = (err, rel, name) if rel >= worst[1] else worst
        pairs = [p for p in pairs if p[0] not in handled]
        for name, value, want in pairs:
            err, rel, ok = compare_arrays(value, want, rtol, atol)
            passed &= ok or lossy
            if rel >= worst[1]:
                worst = (err, rel, name)
        _warn_if_constant(pairs[: len(expected) - len(handled)])
        if pairs:
            agree.append(bool(np.argmax(pairs[0][1]) == np.argmax(pairs[0][2])))
    if lossy:
        passed &= agreement_ok(manifest, agree)
    exits = None
    if manifest.get("exits") and all("weights" in e.get("head", {}) for e in manifest["exits"]):
        from splitc.exits.heads import check_exit_semantics  # early exits: decisions vs PyTorch

        exits = check_exit_semantics(bundle, manifest, module, cases)
        passed &= exits["passed"]
    return VerifyReport(passed, len(cases), worst[0], worst[1], rtol, atol, worst[2], exits)


def _warn_if_constant(outputs: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    for name, _, want in outputs:
        if want.size > 1 and np.ptp(want) == 0:
            log.warning("verify: PyTorch output '%s' is constant (%g) for this input, so comparing it shows little; "
                        "are the weights initialised (e.g. a zero-initialised head)?", name, want.flat[0])


def _check_files(bundle: Path, manifest: dict[str, Any]) -> None:
    for part in manifest["partitions"]:
        path = bundle / part["file"]
        if not path.exists():
            raise SplitcError(f"bundle file '{path}' is missing", "recompile the bundle")
        if sha256_file(path) != part["sha256"]:
            raise SplitcError(f"bundle file '{path}' does not match its sha256 in the manifest", "recompile the bundle")


def bundle_accuracy(bundle, ctx) -> dict[str, Any] | None:
    """Held-out accuracy of the written bundle itself (ONNX Runtime, real encodings on the wire).

    Raises:
        SplitcError: the bundle misses the accuracy target.
    """
    compression = getattr(ctx, "compression", None)
    noise = getattr(ctx, "noise", None)  # --privacy-epsilon: the noise costs accuracy too (privacy/add_noise.py)
    guard = getattr(ctx, "accuracy", None)
    lossy = (compression is not None and compression.settings.active) or noise is not None
    if guard is None or not lossy:
        return None
    runner = BundleRunner(bundle)
    output = runner.manifest["model"]["outputs"][0]["name"]
    names = [s.name for s in ctx.input_specs]
    preds, wire = [], []
    for i in guard.test:
        sample = {n: a[i:i + 1] for n, a in zip(names, guard.calib.inputs)}
        out = runner.run(sample)[output]
        preds.append(int(np.asarray(out).reshape(-1).argmax()))
        wire.append(sum(runner.wire_bytes))
    acc = guard.measure(np.array(preds))
    result = {"held_out_samples": int(len(guard.test)), "accuracy": acc,
              "reference_accuracy": guard.reference_accuracy, "required_accuracy": guard.required_accuracy,
              "wire_bytes_per_request": int(np.mean(wire)) if wire else 0, "metric": guard.metric}
    log.info("[verify] bundle held-out accuracy %.4f (original %.4f, required %.4f, %d samples), %d bytes on the wire "
             "per request", acc, guard.reference_accuracy, guard.required_accuracy, len(guard.test),
             result["wire_bytes_per_request"])
    verdict = guard.judge("the written bundle (ONNX Runtime, real wire encodings)", acc)
    if not verdict.met:
        raise SplitcError(f"the compiled bundle misses the accuracy target: {verdict.line()}",
                          f"raise --privacy-epsilon (now {noise.epsilon:g}; less noise)" if noise is not None else
                          "use a milder setting (--transfer-dtype float16, a larger --bottleneck ratio, no --quantize)")
    return result
