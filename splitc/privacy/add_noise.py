"""``add_noise``: clip what crosses the first link and add Laplace noise (``--privacy-epsilon``).

The perturbation defence of the survey (section 2.2.2): before the sending tier puts
its activations on the wire, the tensors ``x_1 .. x_k`` crossing the first used link
are clipped *jointly* to an L2 norm ``C`` (one norm per request, over every element
of every tensor on the link),

    x_i <- x_i * min(1, C / ||(x_1, .., x_k)||_2),

and every element then gets independent Laplace noise of scale ``b = C / epsilon``.
The noise is drawn by the inverse CDF from one uniform per element,

    u ~ U(-1/2, 1/2),   n = -b * sign(u) * log(max(1 - 2|u|, 2^-24)),

(the clamp keeps ``log`` away from 0: a float32 uniform is a multiple of 2^-24, so
``|n| <= 16.6 b``). Both steps are ops *inside the sending ONNX partition*
(``RandomUniformLike``, which ONNX Runtime seeds per session from the clock, so every
run and every process draws fresh noise), so any serving stack that loads the bundle
perturbs the tensor; it is never sent clean.

``C`` defaults to the median of that joint norm over the training split of
``--calib`` (half the requests are clipped); ``--privacy-clip`` sets it. With
calibration labels the held-out accuracy *with noise* must meet
``--accuracy-target``, else the compile fails and says to raise epsilon.

What this is not: per-element Laplace noise of scale ``C / epsilon`` on an L2-clipped
``D``-element tensor is NOT an epsilon-differential-privacy guarantee on the input.
The Laplace mechanism needs ``b = Delta_1 / epsilon`` with the L1 sensitivity
``Delta_1``, and two L2-clipped tensors differ in L1 by up to ``2 C sqrt(D)``; the
formal guarantee is ``epsilon * 2 sqrt(D)`` (thousands for a feature map). It is a
knob; the measured attack (``splitc/privacy/leakage.py``) says what it buys.

Verification of a noised bundle (``splitc/driver/verify.py``, statistics in
:func:`noise_statistics`) cannot compare the noised wire tensors with a reference value by
value, so it checks the two halves apart:

* receiving tiers: fed the reference's clean clipped tensor (as every partition is fed its
  reference inputs), their outputs and later wire tensors must match element-wise;
* sending tier, statistically: the sender is run :data:`REPEATS` times per input and
  its wire values are compared with the reference's clean clipped tensor (the PyTorch
  partition with the noise off, stored in the bundle's reference file). The residual
  ``n`` must be Laplace(b): ``mean |n|`` within a few standard errors of ``b``
  (``|n|`` is exponential with mean and standard deviation ``b``), and averaged over
  the repeats it must shrink to zero (RMS close to ``sqrt(2 / R) b``: a wrong clip or a
  wrong partition leaves a bias); the repeats must differ (fresh noise), and the clean
  tensor must have norm ``<= C``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from splitc.core.accuracy import guard_of
from splitc.core.passes.cut import append_joint_transform, refresh_examples
from splitc.core.samples import run_chain
from splitc.core.pass_manager import Pass, PassResult
from splitc.errors import SplitcError

__all__ = ["AddNoisePass", "ClipLaplace", "NoiseSettings", "NoiseSetup", "joint_norms", "noise_statistics",
           "wire_to_float", "wire_step", "REPEATS", "SIGMAS"]

log = logging.getLogger("splitc")

#: Smallest value of ``1 - 2|u|`` fed to ``log``: a float32 uniform from ``rand_like`` is a multiple of 2^-24,
#: so this is the smallest non-zero value it can take and the clamp only replaces log(0).
LOG_FLOOR = 2.0 ** -24
#: Runs of the sending partition per verification input (statistics of the noise).
REPEATS = 16
#: Standard errors allowed by the statistical checks: with a handful of checks per compile,
#: 5 sigma keeps a false alarm below one in a million compiles.
SIGMAS = 5.0


@dataclass(frozen=True)
class NoiseSettings:
    """``--privacy-epsilon`` / ``--privacy-clip``, checked.

    Attributes:
        epsilon: the noise parameter; the Laplace scale is ``clip / epsilon``.
        clip: the clipping norm ``C``; None = the median norm on calibration data.
    """

    epsilon: float
    clip: float | None

    @classmethod
    def from_options(cls, options) -> "NoiseSettings | None":
        """The settings, or None when no noise is asked for.

        Raises:
            SplitcError: one line per bad input (epsilon or clip not a positive finite number,
                a single tier, neither calibration data nor a clip norm).
        """
        epsilon, clip = getattr(options, "privacy_epsilon", None), getattr(options, "privacy_clip", None)
        if epsilon is None:
            if clip is not None:
                raise SplitcError("--privacy-clip does nothing without --privacy-epsilon",
                                  "add --privacy-epsilon (e.g. 4) or drop --privacy-clip")
            return None
        if not math.isfinite(epsilon) or epsilon <= 0:
            raise SplitcError(f"--privacy-epsilon {epsilon:g} is not a positive finite number",
                              "give epsilon > 0 (smaller = more noise), e.g. 4")
        if clip is not None and (not math.isfinite(clip) or clip <= 0):
            raise SplitcError(f"--privacy-clip {clip:g} is not a positive finite number",
                              "give the clipping L2 norm C > 0, or leave it out to use the median norm on --calib")
        if len(options.targets) < 2:
            raise SplitcError(f"--privacy-epsilon needs a link, but the target chain '{','.join(options.targets)}' "
                              f"has one tier", "give two or more tiers, e.g. --target jetson,cloud-gpu")
        if clip is None and not getattr(options, "calib", None):
            raise SplitcError("--privacy-epsilon needs calibration data to choose the clipping norm",
                              "pass --calib calib.npz (real inputs), or set the norm with --privacy-clip")
        return cls(float(epsilon), None if clip is None else float(clip))


@dataclass
class NoiseSetup:
    """What ``add_noise`` did (``ctx.noise``), recorded on the transfer in the manifest.

    Attributes:
        epsilon, clip_norm: the parameters; ``scale`` = ``clip_norm / epsilon`` (Laplace ``b``).
        clip_source: how ``clip_norm`` was chosen.
        link: the link whose tensors are noised; ``partition``: the partition that adds the noise.
        tensors: the noised wire tensors (clipped jointly); ``elements``: their element count ``D``.
        attr: the noise module's attribute in the sending partition.
        calibration: norm statistics on calibration data (None without ``--calib``).
        accuracy: held-out accuracy with noise in PyTorch (None without calibration data).
        notes: tensors on the link left as they are, and why.
    """

    epsilon: float
    clip_norm: float
    clip_source: str
    link: int
    partition: int
    tensors: list[str]
    elements: int
    attr: str
    calibration: dict[str, Any] | None = None
    accuracy: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def scale(self) -> float:
        return self.clip_norm / self.epsilon

    def to_manifest(self) -> dict[str, Any]:
        """The transfer's ``noise`` object (see manifest.schema.json)."""
        return {"kind": "laplace", "epsilon": self.epsilon, "clip_norm": self.clip_norm, "scale": self.scale,
                "clip_source": self.clip_source, "clip": "joint_l2", "tensors": list(self.tensors),
                "elements": self.elements, "in_graph": True, "partition": self.partition,
                "formal_epsilon_bound": self.epsilon * 2 * math.sqrt(self.elements),
                **({"calibration_norms": self.calibration} if self.calibration else {}),
                **({"held_out_accuracy": float(self.accuracy)} if self.accuracy is not None else {}),
                **({"notes": list(self.notes)} if self.notes else {})}


class ClipLaplace(nn.Module):
    """Joint L2 clipping to ``clip_norm`` of all its inputs, then Laplace noise of scale ``scale``.

    ``forward(*tensors) -> tuple`` with the same shapes. Dim 0 is the batch (one norm per
    sample) for tensors of rank >= 2. ``noise_enabled = False`` gives the clean clipped
    tensors (verification's reference); it is read when the module runs, so it must be
    True when the partition is exported.
    """

    def __init__(self, clip_norm: float, scale: float) -> None:
        super().__init__()
        self.register_buffer("clip_norm", torch.tensor(float(clip_norm)))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.noise_enabled = True

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        norm = torch.sqrt(sum(_per_sample_sq(t) for t in tensors))
        factor = torch.clamp(self.clip_norm / torch.clamp(norm, min=1e-12), max=1.0)
        out = []
        for t in tensors:
            clipped = t * factor.reshape([-1] + [1] * (t.dim() - 1)) if t.dim() >= 2 else t * factor
            out.append(clipped + self.laplace_like(clipped) if self.noise_enabled else clipped)
        return tuple(out)

    def laplace_like(self, t: torch.Tensor) -> torch.Tensor:
        """Laplace(0, scale) noise shaped like ``t``, by the inverse CDF (exports as RandomUniformLike)."""
        u = torch.rand_like(t) - 0.5
        return -self.scale * torch.sign(u) * torch.log(torch.clamp(1.0 - 2.0 * torch.abs(u), min=LOG_FLOOR))

    @contextlib.contextmanager
    def clean(self) -> Iterator[None]:
        """Within the block the module clips but adds no noise."""
        self.noise_enabled = False
        try:
            yield
        finally:
            self.noise_enabled = True


def _per_sample_sq(t: torch.Tensor) -> torch.Tensor:
    """Sum of squares per sample (dim 0) for rank >= 2, of the whole tensor otherwise."""
    t = t.float()
    return t.pow(2).flatten(1).sum(dim=1) if t.dim() >= 2 else t.pow(2).sum().reshape(1)


def joint_norms(values: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample L2 norm over all tensors of ``values`` (each ``[S, ...]``): ``[S]``."""
    return torch.sqrt(sum(_per_sample_sq(v) for v in values))


class AddNoisePass(Pass):
    """Clip the first used link's tensors to norm C and add Laplace(C / epsilon) noise in the sender."""

    name = "add_noise"
    requires = ("partitions",)
    provides = ("noise",)

    def run(self, gm, ctx) -> PassResult:
        settings = ctx.settings_for(NoiseSettings)
        if settings is None:
            return PassResult(gm, modified=False, summary="off")
        found = _noised_link(gm, ctx)
        if found is None:
            log.warning("add_noise: the plan keeps the whole model on the first tier, so nothing crosses a link; "
                        "--privacy-epsilon adds no noise")
            return PassResult(gm, modified=False, summary="nothing crosses a link: no noise")
        link, sender, names, notes = found
        guard = guard_of(ctx, gm)
        clip, source, stats = self._clip_norm(ctx, guard, sender, names, settings)
        elements = _numel(ctx.partitions[sender], names)
        attr = "splitc_noise"
        # ~12 element-wise ops per element: norm, clip, uniform -> Laplace, add
        append_joint_transform(ctx.partitions[sender], names, ClipLaplace(clip, clip / settings.epsilon), attr,
                                12 * elements)
        refresh_examples(ctx)  # downstream partitions now see noised example inputs
        ctx.noise = NoiseSetup(settings.epsilon, clip, source, link, sender, list(names), elements, attr, stats,
                               notes=notes)
        summary = (f"link {link}: {len(names)} tensor(s), {elements} elements, clip C={clip:.4g} ({source}), "
                   f"Laplace b=C/eps={clip / settings.epsilon:.4g}")
        if guard is None:
            return PassResult(gm, True, summary + " (no --calib: accuracy not measured)")
        guard.ensure_reference(gm)
        acc = guard.chain_accuracy(ctx.partitions)
        ctx.noise.accuracy = float(acc)
        verdict = guard.judge(f"--privacy-epsilon {settings.epsilon:g}", acc)
        if not verdict.met:
            raise SplitcError(f"the noise misses the accuracy target: {verdict.line()}",
                              "raise --privacy-epsilon (less noise) or lower --accuracy-target")
        return PassResult(gm, True, f"{summary}; held-out accuracy with noise {acc:.4f} "
                                    f"(original {guard.reference_accuracy:.4f})")

    @staticmethod
    def _clip_norm(ctx, guard, sender: int, names: list[str],
                   settings: NoiseSettings) -> tuple[float, str, dict[str, Any] | None]:
        """C and how it was chosen, with the norms' statistics on calibration data when there is some."""
        stats = None
        if guard is not None:
            inputs = [s.name for s in ctx.input_specs]
            values = run_chain(ctx.partitions[:sender + 1], inputs, guard.calib.batch(guard.train))
            norms = joint_norms([values[n] for n in names]).numpy()
            stats = {"samples": int(len(norms)), "median": float(np.median(norms)),
                     "p10": float(np.percentile(norms, 10)), "p90": float(np.percentile(norms, 90))}
        if settings.clip is not None:
            if stats is not None:
                stats["clipped_share"] = float(np.mean(norms > settings.clip))
            return settings.clip, "--privacy-clip", stats
        if stats["median"] <= 0:
            raise SplitcError("the tensors on the noised link are all zero on the calibration data (median norm 0)",
                              "set the clipping norm with --privacy-clip, or choose another cut with --split")
        stats["clipped_share"] = float(np.mean(norms > stats["median"]))
        return stats["median"], f"median joint L2 norm of {stats['samples']} calibration samples", stats


def _noised_link(gm, ctx) -> tuple[int, int, list[str], list[str]] | None:
    """(link, sending partition, tensors to noise, notes) of the first used link; None if no link is used.

    Raises:
        SplitcError: the link ships a raw model input, or no float tensor a partition produced.
    """
    from splitc.core.graph import model_output_names

    n = len(ctx.candidates.nodes)
    cuts = ctx.plan_result.best.cuts
    if not cuts or cuts[0] >= n:
        return None
    link = 0  # the first used link: data leaves tier 0 here whenever anything leaves it
    by_name = {node.name: node for node in gm.graph.nodes}
    producer = {name: p.index for p in ctx.partitions for name in p.outputs}
    outputs = set(model_output_names(gm))
    crossing = ctx.candidates.cuts[cuts[link]].crossing
    raw = [name for name in crossing if name not in producer]
    if raw:
        raise SplitcError(f"link {link} ships the raw model input {', '.join(repr(r) for r in raw)}, which no "
                          f"partition runs before, so --privacy-epsilon cannot perturb it",
                          "force a later cut with --split so the first tier computes something before sending")
    names, notes = [], []
    for name in crossing:
        meta = by_name[name].meta.get("tensor_meta")
        if name in outputs:
            notes.append(f"'{name}' is a model output: sent without noise (the answer stays exact)")
        elif meta is None or getattr(meta, "dtype", None) not in (torch.float32, torch.float16, torch.float64):
            notes.append(f"'{name}' is not a float tensor: sent without noise")
        else:
            names.append(name)
    for note in notes:
        log.warning("add_noise: %s", note)
    if not names:
        raise SplitcError(f"link {link} carries no float tensor to perturb ({', '.join(crossing)})",
                          "choose another cut with --split")
    senders = {producer[name] for name in names}
    if len(senders) != 1:  # all crossings of link 0 come from tier 0's partition; more would be a bug
        raise AssertionError(f"noised tensors of link {link} come from partitions {sorted(senders)}")
    return link, senders.pop(), names, notes


def _numel(part, names: list[str]) -> int:
    """Elements of ``part``'s outputs ``names`` on its example inputs (``D`` of the noised tensors)."""
    with torch.no_grad():
        out = part.graph_module(*[t.clone() for t in part.example_inputs])
    out = list(out) if isinstance(out, (tuple, list)) else [out]
    return int(sum(out[part.outputs.index(name)].numel() for name in names))


# ---------------------------------------------------------------------------------------------
# verification of a noised bundle: the sender's statistics (the driver runs the partitions)


def wire_to_float(value: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The float a wire value stands for (uint8 / float16 wire encodings decoded); ``spec`` is the manifest tensor."""
    from splitc.runtime.encoding import dequantize_affine_uint8

    if spec.get("encoding", {}).get("kind") == "affine_uint8":
        return dequantize_affine_uint8(np.asarray(value), spec).astype(np.float64)
    return np.asarray(value, dtype=np.float64)


def wire_step(spec: dict[str, Any], scale: float) -> float:
    """Largest rounding step of a tensor's wire encoding, in float units (``scale``: the tensor's max magnitude)."""
    kind = spec.get("encoding", {}).get("kind")
    if kind == "affine_uint8":
        return float(np.max(spec["encoding"]["scale"]))
    if kind == "float16":
        return scale * 2.0 ** -10
    return 0.0


def noise_statistics(noise: dict[str, Any], link: int, residual: np.ndarray, averaged: np.ndarray, repeats: int,
                     slack: float, clean_norm: float, norm_slack: float, differing: float) -> dict[str, Any]:
    """The sending tier's checks (see the module docstring); ``failures`` lists those that did not hold.

    Args:
        noise: the transfer's manifest ``noise`` object (``scale`` b, ``clip_norm`` C, ``tensors``).
        link: the noised link.
        residual: every (decoded wire value - clean clipped reference value) of every run.
        averaged: the residual averaged over the ``repeats`` runs of each input.
        slack: bound on what is not noise in one residual element (wire rounding of both sides and
            the partition's own tolerance).
        clean_norm: the largest joint L2 norm of the clean clipped reference; ``norm_slack`` what the
            wire rounding may add to it.
        differing: share of elements that differ between two runs on the same input.
    """
    b = float(noise["scale"])
    clip = float(noise["clip_norm"])
    n_all, d = residual.size, averaged.size
    mean_abs = float(np.abs(residual).mean())
    tol_abs = SIGMAS * b / math.sqrt(n_all) + slack  # |n| ~ Exponential(b): standard deviation b
    expected_rms = math.sqrt(2.0 / repeats) * b  # Laplace variance 2 b^2, averaged over R runs
    # mean of D squared ~normal values: relative sd sqrt(2 / D) of the mean square, ~sqrt(1 / 2D) of the RMS
    rms_limit = expected_rms * (1 + SIGMAS * math.sqrt(1.0 / (2 * d)) + 0.05) + slack
    rms = float(np.sqrt(np.mean(averaged ** 2)))
    failures = []
    if abs(mean_abs - b) > tol_abs:
        failures.append(f"sending tier: mean |noise| {mean_abs:.4g} is not the Laplace scale b={b:.4g} "
                        f"(allowed +-{tol_abs:.3g} over {n_all} elements)")
    if rms > rms_limit:
        failures.append(f"sending tier: averaged over {repeats} runs the wire tensor is {rms:.4g} (RMS) away from "
                        f"the clean clipped reference, more than noise explains ({rms_limit:.4g})")
    fresh = differing > 0 or b <= slack  # noise below the wire's rounding step need not show
    if not fresh:
        failures.append("sending tier: two runs on the same input gave the same wire tensor (the noise is not fresh)")
    if clean_norm > clip * (1 + 1e-5) + 1e-6 + norm_slack:
        failures.append(f"sending tier: the clipped reference's norm {clean_norm:.4g} exceeds C={clip:.4g}")
    return {"link": link, "tensors": list(noise["tensors"]), "repeats": repeats, "elements": int(n_all),
            "scale_b": b, "mean_abs_noise": mean_abs, "mean_abs_tolerance": tol_abs,
            "mean_noise": float(residual.mean()), "averaged_residual_rms": rms, "expected_averaged_rms": expected_rms,
            "averaged_rms_limit": rms_limit, "differing_share": differing, "clean_norm_max": clean_norm,
            "clip_norm": clip,
            "checked": ("receiving tiers element-wise on the clean reference tensor; sender: mean |n| vs b, "
                        "bias of the repeat-averaged residual, fresh noise per run, clipped norm <= C"),
            "failures": failures}
