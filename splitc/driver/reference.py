"""The compile-time reference of a bundle: what every partition must compute, written into the bundle.

Verification compares the ONNX partitions with a reference *partition by partition*, each
fed exactly the reference's own inputs (Polygraphy's layer-wise comparison, at partition
granularity), so an error is pinned to the partition that makes it and rounding at a lossy
wire cannot hide or fake one. The reference of each partition is:

* a float partition (also with a bottleneck, pruning, a wire encoding or exits inside):
  the compressed PyTorch partition itself (``ctx.partitions``);
* an int8 partition (``--quantize int8``): its fake-quantized reference
  (:func:`splitc.compression.quantize.fake_quant_reference`): the shipped QDQ graph, checked
  to be the float export plus Q/DQ pairs, with every weight from the float export
  (re-quantized by the same recipe) and run with float Q/DQ; the float export itself is
  first checked against PyTorch at the tight tolerance;
* a float16 partition (``--quantize fp16``): the PyTorch partition, at a tolerance of half a
  float16 ulp per compute layer (the float export is checked tightly first, too);
* the partition that adds noise (``--privacy-epsilon``): the same with the noise drawn as 0
  (its clean clipped output); the noised tensors are then checked statistically.

The reference chain is run on real held-out calibration inputs when ``--calib`` is given
(seeded random inputs otherwise) and every value it produces (model inputs, every
partition output, wire tensors in their wire dtype) is written to
``verification/reference.npz``, with each output's tolerance in the manifest. ``splitc
verify`` therefore repeats the compile's comparison without the compiler's state, and any
later change of a partition file (even with its sha256 updated) shows as a numeric error.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch

from splitc.compression.quantize import (ReferenceError, fake_quant_reference, fp16_rtol, neutralize_noise,
                                         quantization_steps, reference_session)
from splitc.core.compare import FAILED, PASSED, Check, Tolerance, TensorCheck
from splitc.core.loader import make_example_inputs

__all__ = ["REFERENCE_FILE", "MAX_REFERENCE_BYTES", "PartitionReference", "reference_cases", "build_reference",
           "INT8_STEPS_MEAN", "WIRE_FLIP_SHARE"]

log = logging.getLogger("splitc")

REFERENCE_FILE = "verification/reference.npz"
#: The reference file holds at most this many bytes of values (fewer cases for very large tensors; at least one).
MAX_REFERENCE_BYTES = 32 * 2 ** 20
#: int8 partitions: mean error bound in quantization steps. ONNX Runtime's integer kernels and the
#: fake-quantized reference round a few values differently (measured on the MNIST example: mean 0.06
#: step at the uint8 wire, 0.13 step at the logits); a wrong weight or scale moves most values by
#: many steps (a Gemm weight scale x1.5: 15.8 steps; a sender conv weight scale x1.5: 3.5 steps).
INT8_STEPS_MEAN = 0.5
#: float partitions: share of a uint8 wire tensor's elements that may differ by one step (a value
#: within float rounding of a .5 boundary; with identical inputs this is rare).
WIRE_FLIP_SHARE = 0.02


@dataclass
class PartitionReference:
    """How one partition's reference values are computed and judged.

    Attributes:
        index: the partition.
        kind: the reference in words (for the manifest and reports).
        run: reference inputs (by name) -> reference outputs (by name, in the wire dtypes).
        tolerances: per output, its tolerance (filled once the reference values are known).
        noised: outputs carrying add_noise's perturbation (checked statistically, not element-wise).
        unverified: why this partition's outputs cannot be checked (None: they can).
        float_check: for quantized partitions, the float export run on the same inputs (checked
            tightly against PyTorch before the reference is trusted).
    """

    index: int
    kind: str
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    noised: list[str] = field(default_factory=list)
    unverified: str | None = None
    float_check: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    steps: dict[str, float | None] = field(default_factory=dict)  # int8: each output's quantization step
    steps_max: int = 0  # int8: activation Q/DQ count (0: not an int8 partition)
    fp16_rtol: float | None = None  # float16 partitions

    def noise_slack(self) -> dict[str, float]:
        """What the partition's own tolerance adds to a noised residual: wire steps (int8) and a relative part."""
        steps = max((max(self.steps.get(n) or 1.0, 1.0) for n in self.noised), default=0.0) if self.steps_max else 0.0
        return {"steps": INT8_STEPS_MEAN * steps, "rtol": self.fp16_rtol or 0.0}

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reference": self.kind,
                "outputs": {name: t.to_dict() for name, t in self.tolerances.items()},
                **({"noised": list(self.noised), "noise_slack": self.noise_slack()} if self.noised else {}),
                **({"unverified": self.unverified} if self.unverified else {})}


def reference_cases(ctx, samples: int, seed: int) -> tuple[list[list[np.ndarray]], str]:
    """The verification inputs: held-out calibration samples when there are some, else seeded random ones.

    Returns:
        one list of arrays (in input order, batch-1 shapes) per case, and where they come from in words.
    """
    guard = getattr(ctx, "accuracy", None)
    calib = ctx.calibration
    if calib is not None:
        if guard is not None:
            index, where = np.asarray(guard.test[:samples]), "held-out calibration samples (the accuracy guard's test split)"
        else:
            pick = np.random.default_rng(seed).permutation(calib.samples)[:samples]
            index, where = np.sort(pick), f"calibration samples (seeded choice, seed {seed})"
        return [[np.ascontiguousarray(a[i:i + 1].reshape(s.shape)) for s, a in zip(ctx.input_specs, calib.inputs)]
                for i in index], where
    return ([[t.numpy() for t in make_example_inputs(ctx.input_specs, seed=seed + i)] for i in range(samples)],
            f"seeded random inputs (seed {seed}; no --calib)")


def _pytorch_runner(part, noise=None) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """A PyTorch partition as a reference function; a noised sender runs with its noise off (clean clipped output)."""
    import contextlib

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.array(values[name])) for name in part.inputs]
        quiet = noise.clean() if noise is not None else contextlib.nullcontext()
        with torch.no_grad(), quiet:
            out = part.graph_module(*args)
        out = list(out) if isinstance(out, (tuple, list)) else [out]
        return {name: value.detach().numpy() for name, value in zip(part.outputs, out)}

    return run


def _onnx_runner(session, part) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    names = [i.name for i in session.get_inputs()]

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(part.outputs, session.run(list(part.outputs), {n: values[n] for n in names})))

    return run


def _partition_references(ctx, stage: Path, exported: list[str]) -> list[PartitionReference]:
    state = getattr(ctx, "compression", None)
    quantized = getattr(state, "quantized", None) if state is not None else None
    floats = getattr(state, "float_partitions", None) if state is not None else None
    setup = getattr(ctx, "noise", None)
    refs = []
    for part, file in zip(ctx.partitions, exported):
        noise = None
        noised: list[str] = []
        if setup is not None and setup.partition == part.index:
            noise = part.graph_module.get_submodule(setup.attr)
            noised = list(setup.tensors)
        torch_ref = _pytorch_runner(part, noise)
        if quantized is None or floats is None:
            refs.append(PartitionReference(part.index, "the compressed PyTorch partition" if state is not None
                                           else "the PyTorch partition", torch_ref, noised=noised))
            continue
        float_model = onnx.load_from_string(floats[part.index])
        float_check = _onnx_runner(reference_session(neutralize_noise(float_model)), part)
        shipped = onnx.load(str(stage / file))
        if quantized == "fp16":
            refs.append(PartitionReference(part.index, "the PyTorch partition at float16 tolerance", torch_ref,
                                           noised=noised, float_check=float_check, fp16_rtol=fp16_rtol(shipped, 0.0)))
            continue
        try:
            model = fake_quant_reference(shipped, float_model)
        except ReferenceError as exc:
            refs.append(PartitionReference(part.index, "the PyTorch partition (int8 reference not buildable)",
                                           torch_ref, noised=noised, float_check=float_check,
                                           unverified=f"no fake-quantized reference: {exc}"))
            continue
        steps, count = quantization_steps(shipped)
        ref = PartitionReference(part.index, "fake-quantized int8 reference (float export's weights re-quantized, "
                                 "float Q/DQ)", _onnx_runner(reference_session(neutralize_noise(model)), part),
                                 noised=noised, float_check=float_check)
        ref.steps, ref.steps_max = steps, max(count, 1)
        refs.append(ref)
    return refs


def _tolerance(ref: PartitionReference, name: str, wants: list[np.ndarray], rtol: float, atol: float) -> Tolerance:
    """The tolerance of one output, from its partition's kind and its reference values."""
    if wants[0].dtype.kind in "iub" and wants[0].dtype not in (np.uint8, np.int8):  # indices, masks: exact
        return Tolerance(0.0, 0.0, rule="integer (not a quantized wire tensor): exact")
    integer = wants[0].dtype.kind in "iu"
    scale = max(float(np.abs(w.astype(np.float64)).max()) if w.size else 0.0 for w in wants)
    if ref.fp16_rtol is not None:
        r = max(rtol, ref.fp16_rtol)
        if integer:
            return Tolerance(r, 0.0, 1.0, 1.0, 0.5, f"float16 partition: {r:.3g} x max|ref| + 1 step, mean <= 0.5 step")
        return Tolerance(r, atol, rule=f"float16 partition: half a float16 ulp per compute layer, rtol {r:.3g}")
    if ref.steps_max:  # int8 QDQ
        step = ref.steps.get(name)
        derived = "the last Q/DQ's scale"
        if step is None:
            step, derived = scale / 127.0, "max|ref| / 127 (no Q/DQ found on its path)"
        if integer:
            step = max(step, 1.0)
        return Tolerance(0.0 if integer else rtol, 0.0 if integer else atol, step, float(ref.steps_max),
                         INT8_STEPS_MEAN, f"int8 partition: step {step:.4g} ({derived}); max <= {ref.steps_max} steps "
                                          f"(one per activation Q/DQ), mean <= {INT8_STEPS_MEAN} step")
    if integer:
        return Tolerance(0.0, 0.0, 1.0, 1.0, WIRE_FLIP_SHARE,
                         f"integer wire tensor: max 1 step, at most {WIRE_FLIP_SHARE:.0%} of elements off by one")
    return Tolerance(rtol, atol, rule=f"float: atol {atol:g} + rtol {rtol:g} x max|ref|")


def build_reference(stage: Path, ctx, exported: list[str], samples: int, seed: int, rtol: float, atol: float
                    ) -> tuple[dict[str, Any], list[Check]]:
    """Run the reference chain, write ``verification/reference.npz`` into ``stage``, return its manifest record.

    Args:
        stage: the staged bundle folder.
        ctx: the compile context (partitions, compression state, noise, calibration data).
        exported: each partition's file, relative to ``stage``.
        samples: cases wanted; ``seed``: of random inputs / the calibration choice.
        rtol, atol: the float tolerance (``--rtol``/``--atol`` of the compile).

    Returns:
        The ``verification.reference`` record, and the checks made while building it (the float
        exports of quantized partitions against PyTorch).
    """
    cases, where = reference_cases(ctx, samples, seed)
    names = [s.name for s in ctx.input_specs]
    refs = _partition_references(ctx, stage, exported)
    values: list[dict[str, np.ndarray]] = []
    float_checks: dict[int, dict[str, TensorCheck]] = {}
    for case in cases:
        held = dict(zip(names, case))
        for part, ref in zip(ctx.partitions, refs):
            if ref.float_check is not None:  # chain of trust: float export == PyTorch, then the reference from it
                torch_out = _pytorch_runner(part, _noise_module(ctx, part))(held)
                onnx_out = ref.float_check(held)
                for name in part.outputs:  # (both clean: the export's noise drawn as 0, see neutralize_noise)
                    tol = _tolerance(PartitionReference(part.index, "float", ref.run), name, [torch_out[name]], rtol,
                                     atol)
                    float_checks.setdefault(part.index, {}).setdefault(name, TensorCheck(name)).add(
                        onnx_out[name], torch_out[name], tol)
            held.update({k: np.ascontiguousarray(v) for k, v in ref.run(held).items()})
        values.append(held)
    per_case = sum(v.nbytes for v in values[0].values()) if values else 0
    keep = max(1, min(len(values), MAX_REFERENCE_BYTES // max(per_case, 1)))
    if keep < len(values):
        log.info("[verify] reference values: %d of %d case(s) kept (%.1f MiB per case; at most %d MiB)", keep,
                 len(values), per_case / 2 ** 20, MAX_REFERENCE_BYTES // 2 ** 20)
    for part, ref in zip(ctx.partitions, refs):
        for name in part.outputs:
            if name not in ref.noised:
                ref.tolerances[name] = _tolerance(ref, name, [v[name] for v in values], rtol, atol)
    path = stage / REFERENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{i}/{name}": value for i, held in enumerate(values[:keep]) for name, value in held.items()})
    path.write_bytes(buffer.getvalue())
    record = {"file": REFERENCE_FILE, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "cases": keep,
              "inputs": where, "partitions": [r.to_dict() for r in refs]}
    return record, _float_export_checks(float_checks)


def _noise_module(ctx, part):
    setup = getattr(ctx, "noise", None)
    if setup is None or setup.partition != part.index:
        return None
    return part.graph_module.get_submodule(setup.attr)


def _float_export_checks(checks: dict[int, dict[str, TensorCheck]]) -> list[Check]:
    out = []
    for index, tensors in sorted(checks.items()):
        failed = [c for c in tensors.values() if not c.passed]
        worst = failed[0] if failed else max(tensors.values(), key=lambda c: c.rel_error)
        out.append(Check(f"float export of partition {index}", FAILED if failed else PASSED,
                         f"the float ONNX export before quantization vs the PyTorch partition, same inputs: "
                         f"{worst.line()}", {"tensors": [c.to_dict() for c in tensors.values()]}))
    return out
