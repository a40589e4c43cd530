"""Verification of a bundle: the checks ``splitc compile`` and ``splitc verify`` make, and ``splitc verify`` itself.

A bundle is checked, in order (``docs/verification.md`` has the tolerances and why):

1. **files**: every file the manifest lists (partitions, exit heads, backend artifacts, the
   reference values) exists and matches its sha256;
2. **contract**: every partition's ONNX inputs and outputs are the manifest's (names, dtypes,
   static shapes), and every transfer tensor is what its producer outputs;
3. **reference**, partition by partition: each ONNX partition is fed the compile-time
   reference's inputs for it (``verification/reference.npz``, see :mod:`splitc.driver.reference`)
   and every output, wire tensors included, is compared with the reference's within its
   recorded tolerance; the partition that adds noise is checked statistically (its other
   outputs element-wise); then the whole chain end to end (tight for an exact bundle;
   informational where a lossy wire may round differently);
4. **original model**: the chain against the original PyTorch model on ``--inputs`` (or seeded
   random inputs): element-wise for an exact bundle; for a compressed or noised one the
   accuracy rule (:mod:`splitc.core.accuracy`) on real inputs (labels ``y`` when the file has
   them, else agreement with the original model's top-1);
5. **exits**: exit decisions and classes against the PyTorch exit-enabled model.

A check that cannot be made is reported as **not verified**, never as passed: the verdict is
then ``NOT VERIFIED`` (exit code 3 of ``splitc verify``; a warning and
``verification.status`` at compile time).
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitc.compression.settings import lossy_bundle
from splitc.core.accuracy import AccuracyTarget, Verdict, paired_margin
from splitc.core.calibration import as_samples
from splitc.core.call_adapter import apply_call_record
from splitc.core.detectors import check_detections, compare_detections, detection_groups, explain_runtime_failure
from splitc.core.compare import FAILED, NOT_VERIFIED, PASSED, SKIPPED, Check, TensorCheck, Tolerance, VerifyReport
from splitc.core.loader import InputSpec, load_model, make_example_inputs, parameter_fingerprint, sha256_file
from splitc.errors import SplitcError
from splitc.privacy.add_noise import REPEATS, joint_norms, noise_statistics, wire_step, wire_to_float
from splitc.runtime.runner import BundleRunner, load_manifest

__all__ = ["VerifyReport", "verify_bundle", "load_inputs", "load_labels", "reload_model", "bundle_accuracy",
           "listed_files", "check_files", "check_contract", "check_reference", "record_artifact_hashes",
           "EXIT_NOT_VERIFIED"]

log = logging.getLogger("splitc")

#: Exit code of ``splitc verify`` when a check could not be made (1 = failed, 2 = bad input).
EXIT_NOT_VERIFIED = 3


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


def _read(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise SplitcError(f"cannot read inputs '{path}': {exc}", "give a .npy or .npz file") from None


def load_inputs(path: str | Path, specs: list[InputSpec]) -> list[list[np.ndarray]]:
    """Read user inputs: ``.npy`` (one input) or ``.npz`` keyed by input name.

    A leading axis holds several samples, as in ``calib.npz`` (see
    :func:`~splitc.core.calibration.as_samples`). Returns one list of arrays (in input
    order, each of the input's exact shape) per sample.
    """
    path = Path(path)
    data = _read(path)
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


def load_labels(path: str | Path, count: int) -> np.ndarray | None:
    """Labels ``y`` of an ``.npz`` inputs file (as in ``calib.npz``), or None."""
    data = _read(Path(path))
    if isinstance(data, np.ndarray) or "y" not in data.files:
        return None
    labels = np.asarray(data["y"]).reshape(-1)
    if len(labels) != count:
        raise SplitcError(f"'{path}' has {len(labels)} labels y for {count} samples", "give one label per sample")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# files and contract


def listed_files(manifest: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """Every file the manifest lists: ``(path in the bundle, sha256 or None, what it is)``."""
    files: list[tuple[str, str | None, str]] = [(p["file"], p["sha256"], f"partition {p['index']}")
                                                for p in manifest["partitions"]]
    for e in manifest.get("exits", []):
        weights = e.get("head", {}).get("weights")
        if weights:
            files.append((weights["file"], weights.get("sha256"), f"exit {e['index']} head"))
    for artifact in manifest.get("artifacts") or []:
        hashes = artifact.get("sha256") or {}
        files += [(f, hashes.get(f), f"{artifact['kind']} artifact") for f in artifact["files"]]
    reference = (manifest.get("verification") or {}).get("reference")
    if reference:
        files.append((reference["file"], reference["sha256"], "reference values"))
    return files


def record_artifact_hashes(stage: Path, manifest: dict[str, Any]) -> None:
    """Add ``sha256`` (file -> digest) to every backend artifact of the manifest, so ``splitc verify`` checks them."""
    for artifact in manifest.get("artifacts") or []:
        artifact["sha256"] = {f: sha256_file(Path(stage) / f) for f in artifact["files"]}


def check_files(bundle: Path, manifest: dict[str, Any]) -> Check:
    """Every listed file exists and matches its sha256.

    Raises:
        SplitcError: a file is missing or differs (the bundle is damaged: recompile it).
    """
    unhashed = []
    files = listed_files(manifest)
    for name, digest, what in files:
        path = Path(bundle) / name
        if not path.is_file():
            raise SplitcError(f"bundle file '{path}' ({what}) is missing", "recompile the bundle")
        if digest is None:
            unhashed.append(name)
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise SplitcError(f"bundle file '{path}' ({what}) does not match its sha256 in the manifest",
                              "recompile the bundle")
    if unhashed:
        return Check("files", NOT_VERIFIED, f"{len(unhashed)} listed file(s) have no sha256 in the manifest "
                                            f"(e.g. '{unhashed[0]}'; compiled by an older splitc)")
    kinds: dict[str, int] = {}
    for _, _, what in files:
        kind = what.split(" ")[0] if what.startswith("partition") else what.split(" ", 2)[-1] \
            if what.startswith("exit") else what
        kinds[kind] = kinds.get(kind, 0) + 1
    return Check("files", PASSED, f"{len(files)} file(s) match their sha256 ("
                 + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")")


def check_contract(bundle: Path, manifest: dict[str, Any]) -> Check:
    """Every partition's ONNX graph inputs/outputs are the manifest's; every transfer tensor is its producer's output."""
    import onnx

    problems = []
    produced: dict[str, dict[str, Any]] = {}
    for part in manifest["partitions"]:
        graph = onnx.load(str(Path(bundle) / part["file"]), load_external_data=False).graph
        for side, values, specs in (("input", graph.input, part["inputs"]), ("output", graph.output, part["outputs"])):
            got = [(v.name, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                    [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim])
                   for v in values]
            # a dynamic ONNX dimension (a detector's number of boxes) holds whatever size the manifest recorded
            want = [(s["name"], s["dtype"], [None if g is not None and i < len(g[2]) and g[2][i] is None else d
                                             for i, d in enumerate(s["shape"])])
                    for s, g in zip(specs, [*got, *[None] * len(specs)])]
            if got != want:
                diff = next(((g, w) for g, w in zip(got, want) if g != w), (got[len(want):] or None, want[len(got):]))
                problems.append(f"partition {part['index']} ('{part['file']}') {side}s differ from the manifest: "
                                f"ONNX has {diff[0]}, the manifest {diff[1]}")
        produced.update({s["name"]: s for s in part["outputs"]})
    for transfer in manifest["transfers"]:
        for tensor in transfer["tensors"]:
            source = produced.get(tensor["name"])
            if tensor.get("producer", "input") != "input" and (
                    source is None or [source["dtype"], source["shape"]] != [tensor["dtype"], tensor["shape"]]):
                problems.append(f"transfer tensor '{tensor['name']}' on link {transfer['link']} is not an output of "
                                f"partition {tensor['producer']} with its dtype and shape")
    if problems:
        return Check("contract", FAILED, problems[0], {"problems": problems})
    return Check("contract", PASSED, f"the {len(manifest['partitions'])} partition(s)' ONNX inputs/outputs and the "
                                     f"{sum(len(t['tensors']) for t in manifest['transfers'])} transfer tensor(s) "
                                     "match the manifest")


# ---------------------------------------------------------------------------------------------
# the compile-time reference, partition by partition


def _reference_values(bundle: Path, record: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    with np.load(Path(bundle) / record["file"], allow_pickle=False) as data:
        cases: list[dict[str, np.ndarray]] = [{} for _ in range(record["cases"])]
        for key in data.files:
            case, name = key.split("/", 1)
            cases[int(case)][name] = data[key]
    return cases


def _transfer_specs(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Manifest entry of every wire tensor, by name (the first link it crosses)."""
    specs: dict[str, dict[str, Any]] = {}
    for transfer in manifest["transfers"]:
        for tensor in transfer["tensors"]:
            specs.setdefault(tensor["name"], tensor)
    return specs


def check_reference(bundle: Path, manifest: dict[str, Any], report: VerifyReport, repeats: int = REPEATS) -> bool:
    """Compare every partition with the bundle's compile-time reference (see the module docstring); add the checks.

    Returns:
        False when the bundle has no reference (compiled with ``--no-verify`` or by an older splitc).
    """
    record = (manifest.get("verification") or {}).get("reference")
    if not record:
        return False
    values = _reference_values(bundle, record)
    runner = BundleRunner(bundle, threads=1)
    runner.use_exits = False  # numerics of the full chain; exit decisions are the exits check
    specs = _transfer_specs(manifest)
    tolerances: dict[str, Tolerance] = {}
    for entry in record["partitions"]:
        part = manifest["partitions"][entry["index"]]
        outputs = {n: Tolerance.from_dict(t) for n, t in entry["outputs"].items()}
        tolerances.update(outputs)
        label = f"partition {part['index']} ({part['tier']})"
        if entry.get("unverified"):
            report.add(Check(label, NOT_VERIFIED, entry["unverified"], {"reference": entry["reference"]}))
            continue
        groups = [g for g in _detection_tensors(manifest) if set(g) <= set(outputs)]  # a detector's tail
        grouped = {n for g in groups for n in g}
        checks = {n: TensorCheck(n) for n in outputs if n not in grouped}
        matched: list[tuple[str, float, float, bool]] = []
        noised = entry.get("noised", [])
        runs: list[dict[str, Any]] = []
        try:
            for case in values:
                feeds = {s["name"]: case[s["name"]] for s in part["inputs"]}
                got = runner.run_partition(part["index"], feeds)
                for name, tolerance in outputs.items():
                    if name not in grouped:
                        checks[name].add(got[name], case[name], tolerance)
                for group in groups:  # detections are a ranking: compared as matched sets, not by position
                    matched.append((f"detections ({', '.join(group)})",
                                    *compare_detections([got[n] for n in group], [case[n] for n in group],
                                                        report.rtol, report.atol)))
                if noised:
                    runs.append(_noise_runs(runner, part["index"], feeds, got, case, noised, specs, repeats))
        except Exception as exc:  # ONNX Runtime refuses the reference inputs: a broken partition
            report.add(Check(label, FAILED, f"ONNX Runtime cannot run it on the reference inputs: "
                                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
            continue
        for check in checks.values():
            report.note_worst(check)
        failed = [c for c in checks.values() if not c.passed]
        worst = failed[0] if failed else max(checks.values(), key=lambda c: c.max_error / max(c.allowed_max, 1e-30),
                                             default=None)
        lines = [worst.line()] if worst is not None else []
        if matched:
            lines.append(_detections_line(matched))
        detail = (f"{len(values)} reference case(s) vs {entry['reference']}: "
                  + ("; ".join(lines) or "no element-wise output")
                  + (f" ({len(checks)} output(s))" if len(checks) > 1 else ""))
        failed = failed + [m for m in matched if not m[3]]
        report.add(Check(label, FAILED if failed else PASSED, detail,
                         {"reference": entry["reference"], "tensors": [c.to_dict() for c in checks.values()]}))
        if noised:
            report.add(_noise_check(manifest, entry, runs, specs, tolerances, repeats, report))
    _end_to_end(runner, manifest, values, tolerances, report)
    return True


def _noise_runs(runner: BundleRunner, index: int, feeds: dict[str, np.ndarray], first: dict[str, np.ndarray],
                case: dict[str, np.ndarray], noised: list[str], specs: dict[str, dict[str, Any]],
                repeats: int) -> dict[str, Any]:
    """Residuals (decoded wire - decoded clean reference) of ``repeats`` runs of the noised partition on one input."""
    clean = [wire_to_float(case[n], specs[n]) for n in noised]
    rows = []
    for r in range(repeats):
        out = first if r == 0 else runner.run_partition(index, feeds)
        rows.append(np.concatenate([(wire_to_float(out[n], specs[n]) - c).ravel() for n, c in zip(noised, clean)]))
    rows = np.stack(rows)
    return {"residual": rows.ravel(), "averaged": rows.mean(axis=0), "differing": float((rows[0] != rows[1]).mean()),
            "clean_norm": float(joint_norms([torch.from_numpy(c[None].astype(np.float32)) for c in clean]).max()),
            "scale": max(float(np.abs(c).max()) for c in clean)}


def _noise_check(manifest: dict[str, Any], entry: dict[str, Any], runs: list[dict[str, Any]],
                 specs: dict[str, dict[str, Any]], tolerances: dict[str, Tolerance], repeats: int,
                 report: VerifyReport) -> Check:
    transfer = next(t for t in manifest["transfers"] if "noise" in t)
    noise = transfer["noise"]
    scale = max(r["scale"] for r in runs)
    steps = [wire_step(specs[n], scale) for n in noise["tensors"]]
    # what is not noise in a residual: both sides' wire rounding, plus an int8 sender's own tolerance
    # (entry "noise_slack": steps of its wire encoding, and its relative tolerance) and float error
    own = entry.get("noise_slack", {})
    slack = max(steps) * (1.0 + float(own.get("steps", 0.0))) + report.atol + max(report.rtol,
                                                                                 float(own.get("rtol", 0.0))) * scale
    elements = sum(int(np.prod(specs[n]["shape"])) for n in noise["tensors"])
    stats = noise_statistics(noise, transfer["link"], np.concatenate([r["residual"] for r in runs]),
                             np.concatenate([r["averaged"] for r in runs]), repeats, slack,
                             max(r["clean_norm"] for r in runs), 0.5 * max(steps) * math.sqrt(elements),
                             float(np.mean([r["differing"] for r in runs])))
    failures = stats.pop("failures")
    report.extra["noise"] = stats
    report.extra["method"] = "tier_by_tier_with_noise_statistics"
    detail = (failures[0] if failures else
              f"{len(runs)} input(s) x {repeats} runs: mean |n| {stats['mean_abs_noise']:.4g} vs b "
              f"{stats['scale_b']:.4g} (+-{stats['mean_abs_tolerance']:.3g}), repeat-averaged residual RMS "
              f"{stats['averaged_residual_rms']:.4g} <= {stats['averaged_rms_limit']:.4g}, "
              f"{100 * stats['differing_share']:.0f} % of elements differ run to run, clean norm "
              f"{stats['clean_norm_max']:.4g} <= C {stats['clip_norm']:.4g}")
    return Check(f"noise (link {transfer['link']})", FAILED if failures else PASSED, detail,
                 {"failures": failures} if failures else {})


def _detection_tensors(manifest: dict[str, Any]) -> list[tuple[str, ...]]:
    """Each ``(boxes, scores, labels)`` group of a detection bundle, by the tensor names the reference uses."""
    tensor_of = {o["name"]: o["tensor"] for o in manifest["model"]["outputs"]}
    return [tuple(tensor_of[n] for n in group) for group in detection_groups(manifest)]


def _detections_line(matched: list[tuple[str, float, float, bool]]) -> str:
    bad = [m for m in matched if not m[3]]
    label, err, rel, _ = (bad or [max(matched, key=lambda m: m[2])])[0]
    return (f"{label}: {len(bad)} of {len(matched)} image(s) differ as sets" if bad else
            f"{label}: matched as sets in {len(matched)} image(s), max box error {err:.3g} (relative {rel:.3g})")


def _end_to_end(runner: BundleRunner, manifest: dict[str, Any], values: list[dict[str, np.ndarray]],
                tolerances: dict[str, Tolerance], report: VerifyReport) -> None:
    """The whole chain (the runner's transfers included) on the reference's model inputs vs its model outputs."""
    exact = not lossy_bundle(manifest)
    inputs = [s["name"] for s in manifest["model"]["inputs"]]
    outputs = manifest["model"]["outputs"]
    last = manifest["partitions"][-1]
    detections: list[tuple[str, float, float, bool]] = []
    handled: set[str] = set()
    checks = {o["name"]: TensorCheck(o["name"]) for o in outputs}
    agree = 0
    for case in values:
        got = runner.run({n: case[n] for n in inputs})

        def on_reference_inputs(case=case) -> dict[str, np.ndarray]:  # the last partition on the reference's inputs
            out = runner.run_partition(last["index"], {s["name"]: case[s["name"]] for s in last["inputs"]})
            return {o["name"]: out[o["tensor"]] for o in outputs if o["tensor"] in out}

        # a detector's boxes/scores/labels: matched sets; a two-stage detector's proposals may differ end to end
        # while every partition is right (splitc.core.detectors.check_detections)
        handled, results = check_detections(manifest, got, {o["name"]: case[o["tensor"]] for o in outputs},
                                            report.rtol, report.atol, on_reference_inputs)
        detections += results
        for o in outputs:
            if o["name"] not in handled:
                checks[o["name"]].add(got[o["name"]], case[o["tensor"]], tolerances.get(o["tensor"], Tolerance(0, 0)))
        first = next((o for o in outputs if o["name"] not in handled), None)
        if first is not None:
            agree += int(np.argmax(got[first["name"]]) == np.argmax(case[first["tensor"]]))
    checks = {n: c for n, c in checks.items() if n not in handled}
    worst = max(checks.values(), key=lambda c: c.rel_error, default=None)
    bad = [d for d in detections if not d[3]]
    if exact:
        failed = [c for c in checks.values() if not c.passed]
        for check in checks.values():
            report.note_worst(check)
        lines = [(failed or [worst])[0].line()] if worst is not None else []
        if detections:
            lines.append(_detections_line(detections))
        report.add(Check("end to end", FAILED if failed or bad else PASSED,
                         f"{len(values)} case(s), the chain with its transfers: {'; '.join(lines)}"))
    else:  # a uint8/int8 value rounded the other way at one partition moves later tensors a little
        report.add(Check("end to end", SKIPPED,
                         "informational (lossy wire or quantized partitions: each partition was checked on identical "
                         "inputs above): "
                         + (f"top-1 agrees on {agree} of {len(values)} case(s), max error {worst.max_error:.3g}"
                            if worst is not None else _detections_line(detections))))


# ---------------------------------------------------------------------------------------------
# splitc verify


def verify_bundle(bundle: str | Path, module: torch.nn.Module | None = None, inputs: str | Path | None = None,
                  samples: int = 3, rtol: float = 1e-3, atol: float = 1e-4, seed: int = 1,
                  repeats: int = REPEATS) -> VerifyReport:
    """``splitc verify``: every check of the module docstring on a written bundle.

    Args:
        bundle: bundle folder.
        module: the original model; reloaded from the manifest when None.
        inputs: optional .npy/.npz file of inputs (an .npz may hold labels ``y``); seeded random inputs otherwise.
        samples: number of random inputs when ``inputs`` is None.
        rtol, atol: element-wise tolerance against the original model (exact bundles).
        seed: seed of the random inputs.
        repeats: runs of a noised partition per reference case.

    Raises:
        SplitcError: a listed file is missing or differs from its sha256, the model cannot be
            reloaded, or the inputs file is unusable.
    """
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    report = VerifyReport(rtol=rtol, atol=atol)
    report.add(check_files(bundle, manifest))
    report.add(check_contract(bundle, manifest))
    if report.status == FAILED:
        return report
    lossy = lossy_bundle(manifest)
    referenced = check_reference(bundle, manifest, report, repeats)
    if not referenced:
        status = NOT_VERIFIED if lossy else SKIPPED  # an exact bundle is fully checked against the original model
        report.add(Check("reference", status, "the bundle holds no compile-time reference values (compiled with "
                                              "--no-verify or by an older splitc)"
                         + ("; a compressed or noised bundle's numerics cannot be checked without them" if lossy
                            else "")))
    specs = [InputSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in manifest["model"]["inputs"]]
    module = module if module is not None else reload_model(manifest)
    cases = load_inputs(inputs, specs) if inputs else [
        [t.numpy() for t in make_example_inputs(specs, seed=seed + i)] for i in range(samples)]
    labels = load_labels(inputs, len(cases)) if inputs else None
    report.samples = len(cases)
    report.add(_original_model_check(bundle, manifest, module, cases, labels, lossy, bool(inputs), referenced,
                                     report))
    if manifest.get("exits"):
        report.add(_exits_check(bundle, manifest, module, cases, report))
    return report


def _original_model_check(bundle: Path, manifest: dict[str, Any], module: torch.nn.Module,
                          cases: list[list[np.ndarray]], labels: np.ndarray | None, lossy: bool, given: bool,
                          referenced: bool, report: VerifyReport) -> Check:
    runner = BundleRunner(bundle, threads=1)
    runner.use_exits = False
    names = [s["name"] for s in manifest["model"]["inputs"]]
    outputs = manifest["model"]["outputs"]
    checks = {o["name"]: TensorCheck(o["name"]) for o in outputs}
    got_top, want_top = [], []
    detections: list[tuple[str, float, float, bool]] = []
    tolerance = Tolerance(report.rtol, report.atol, rule="float")
    for case in cases:
        with torch.no_grad():
            expected, _ = torch.utils._pytree.tree_flatten(module(*[torch.tensor(a) for a in case]))  # copies
        try:
            got = runner.run(dict(zip(names, case)))
        except Exception as exc:  # a detector left with no proposals: one line (splitc.core.detectors)
            raise explain_runtime_failure(manifest, exc) or exc from None
        wanted = {o["name"]: w.detach().numpy() for o, w in zip(outputs, expected)}
        # a detector's boxes/scores/labels: compared as matched sets (splitc.core.detectors.check_detections)
        handled, results = check_detections(manifest, got, wanted, report.rtol, report.atol)
        detections += results
        compared = [o["name"] for o in outputs if o["name"] not in handled]
        for name in compared:
            checks[name].add(got[name], wanted[name], tolerance)
        if compared:  # the first output's top-1 (a classifier's class)
            got_top.append(int(np.argmax(got[compared[0]])))
            want_top.append(int(np.argmax(wanted[compared[0]])))
        _warn_if_constant([(n, w) for n, w in wanted.items() if n not in handled])
    checks = {n: c for n, c in checks.items() if n not in handled}
    source = "--inputs" if given else "seeded random inputs"
    if detections and not checks:  # a detector: every output is a detection set
        bad = [d for d in detections if not d[3]]
        label, err, rel, _ = (bad or [max(detections, key=lambda d: d[2])])[0]
        return Check("original model", FAILED if bad else PASSED,
                     f"{len(cases)} sample(s) ({source}) against the reloaded PyTorch model: {label}: max error "
                     f"{err:.3g} (relative {rel:.3g}){'' if bad else ', matched'}")
    if not lossy:
        for check in checks.values():
            report.note_worst(check)
        failed = [c for c in checks.values() if not c.passed]
        bad = [d for d in detections if not d[3]]
        worst = (failed or [max(checks.values(), key=lambda c: c.rel_error)])[0]
        return Check("original model", FAILED if failed or bad else PASSED,
                     f"{len(cases)} sample(s) ({source}) against the reloaded PyTorch model: {worst.line()}"
                     + (f"; {bad[0][0]} differ (max error {bad[0][1]:.3g})" if bad else ""))
    recorded, met = _compile_verdict(manifest)
    if not given:  # the compile's held-out verdict stands only if there was one, and the numerics still match it
        status = SKIPPED if referenced and met else NOT_VERIFIED
        return Check("original model", status,
                     "a compressed or noised bundle is judged by accuracy on real inputs; random inputs say nothing "
                     "about it (pass --inputs with real samples, labels y optional)"
                     + (f"; at compile time: {recorded}" if recorded else
                        "; its accuracy was not measured at compile time either (no --calib)"))
    verdict = _accuracy_verdict(manifest, np.array(got_top), np.array(want_top), labels, source)
    return Check("original model", PASSED if verdict.met else FAILED, verdict.line(),
                 {"verdict": verdict.to_dict()})


def _accuracy_verdict(manifest: dict[str, Any], got: np.ndarray, want: np.ndarray, labels: np.ndarray | None,
                      source: str) -> Verdict:
    """The accuracy rule on the user's inputs: top-1 vs labels when given, else agreement with the original model."""
    target = AccuracyTarget.from_dict(manifest.get("accuracy") or (manifest.get("plan") or {}).get("compression"))
    if labels is not None:
        accuracy, reference, what = float((got == labels).mean()), float((want == labels).mean()), "top-1 vs labels y"
    else:
        accuracy, reference, what = float((got == want).mean()), 1.0, "agreement with the original model's top-1"
    return Verdict(f"the bundle on {len(got)} sample(s) of {source} ({what})", accuracy, target.required(reference),
                   paired_margin(got, want), f"one standard error of the paired difference on {len(got)} samples",
                   target, reference, len(got))


def _compile_verdict(manifest: dict[str, Any]) -> tuple[str | None, bool]:
    """The compile-time accuracy verdict of the written bundle as recorded, and whether it was met."""
    for verdict in reversed((manifest.get("accuracy") or {}).get("verdicts", [])):
        if verdict.get("step", "").startswith("the written bundle"):
            return (f"held-out accuracy {verdict['accuracy']:.4f} - margin {verdict['margin']:.4f} "
                    f"{'>=' if verdict['met'] else '<'} required {verdict['required']:.4f} "
                    f"({'met' if verdict['met'] else 'missed'})"), bool(verdict["met"])
    return None, False


def _exits_check(bundle: Path, manifest: dict[str, Any], module: torch.nn.Module, cases: list[list[np.ndarray]],
                 report: VerifyReport) -> Check:
    if not all("weights" in e.get("head", {}) for e in manifest["exits"]):
        return Check("exits", NOT_VERIFIED, "the bundle holds no exit head weights (exits/exit<i>.npz)")
    from splitc.exits.verify_exits import QUANTIZED_TOLERANCES, check_exit_semantics  # decisions vs PyTorch

    specs = [InputSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in manifest["model"]["inputs"]]
    loose = manifest.get("options", {}).get("quantize", "none") != "none"  # the reference is the float model
    exits = check_exit_semantics(bundle, manifest, module, cases,
                                 extra_cases=lambda: _calibration_cases(manifest, specs),
                                 **(QUANTIZED_TOLERANCES if loose else {}))
    report.exits = exits
    if not exits.get("checked", True):
        status = FAILED if not exits.get("passed", False) else NOT_VERIFIED
        return Check("exits", status, f"not checked: {exits.get('reason', 'unknown reason')}")
    detail = (f"{exits['exited']} of {exits['samples']} sample(s) exited early; {exits['mismatches']} decision(s) "
              f"differ from PyTorch ({exits['borderline']} borderline); confidences within "
              f"{exits.get('max_score_diff', 0):.2g}" + "".join(f"; {m}" for m in exits.get("threshold_mismatches", [])))
    missing = [f"exit {c['exit']} never {'taken' if not c['taken'] else 'passed on'}"
               for c in exits.get("coverage", []) if not (c["taken"] and c["continued"])]
    if exits["passed"] and missing:  # a decision never exercised is not verified
        return Check("exits", NOT_VERIFIED, f"{detail}; not fully exercised: {', '.join(missing)}")
    return Check("exits", PASSED if exits["passed"] else FAILED, detail)


#: calibration inputs ``splitc verify`` adds (from the compile's --calib, when the file is still there) when the
#: given inputs leave an exit's decision unexercised
CALIBRATION_CASES = 300


def _calibration_cases(manifest: dict[str, Any], specs: list[InputSpec]) -> list[list[np.ndarray]]:
    """The first :data:`CALIBRATION_CASES` inputs of the compile's ``--calib`` file, if it still exists."""
    path = manifest.get("options", {}).get("calib")
    if not path or not Path(path).is_file():
        return []
    try:
        cases = load_inputs(Path(path), specs)
    except SplitcError:
        return []
    return cases[:CALIBRATION_CASES]


def _warn_if_constant(outputs: list[tuple[str, np.ndarray]]) -> None:
    for name, want in outputs:
        if want.size > 1 and np.ptp(want) == 0:
            log.warning("verify: PyTorch output '%s' is constant (%g) for this input, so comparing it shows little; "
                        "are the weights initialised (e.g. a zero-initialised head)?", name, want.flat[0])


# ---------------------------------------------------------------------------------------------
# compile time: the written bundle's accuracy


def bundle_accuracy(bundle, ctx) -> tuple[dict[str, Any] | None, Check | None]:
    """Held-out accuracy of the written bundle itself (ONNX Runtime, real encodings on the wire).

    Returns:
        ``(result, check)``: the figures for the manifest and the accuracy check; ``(None, None)``
        for an exact bundle; ``(None, not verified)`` for a lossy one without ``--calib``.
    """
    compression = getattr(ctx, "compression", None)
    noise = getattr(ctx, "noise", None)  # --privacy-epsilon: the noise costs accuracy too (privacy/add_noise.py)
    guard = getattr(ctx, "accuracy", None)
    defence = getattr(ctx, "defence", None)  # --privacy-defence: fine-tuned partitions (privacy/defence.py)
    lossy = (compression is not None and compression.settings.active) or noise is not None or defence is not None
    if not lossy:
        return None, None
    if guard is None:
        knobs = ", ".join(k for k, on in (("--transfer-dtype", compression is not None and
                                           compression.settings.transfer_dtype != "float32"),
                                          ("--quantize", compression is not None and
                                           compression.settings.quantize != "none"),
                                          ("--privacy-epsilon", noise is not None)) if on) or "compression"
        return None, Check("accuracy", NOT_VERIFIED, f"no --calib: what {knobs} costs in accuracy was not measured "
                                                     "(pass --calib with real samples, labels y optional)")
    runner = BundleRunner(bundle)  # exits on: the bundle as it serves
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
    verdict = guard.judge("the written bundle (ONNX Runtime, real wire encodings)", acc)
    result["verdict"] = verdict.line()
    return result, Check("accuracy", PASSED if verdict.met else FAILED, verdict.line())
