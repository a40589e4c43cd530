"""``defend``: fine-tune the sending partition so what it sends keeps the task and loses the input.

``--privacy-defence dcor|adversarial|auto`` with ``--privacy-strength`` (survey section 3.2.2,
regularisation defences). Copies of the partitions of the chosen plan are fine-tuned on the
accuracy guard's training split of ``--calib`` (the held-out split judges the result), in eval
mode (BatchNorm = its fixed affine map), with, per batch of inputs ``x``, labels ``y`` and the
original model's logits ``t``:

    loss = CE(f(x), y) + KL(softmax(t) || softmax(f(x))) + alpha * privacy(x, wire(x))

* ``dcor`` (NoPeek, Vepakomma et al. 2020): privacy = the batch's bias-corrected squared distance
  correlation between the inputs and the wire tensors (:func:`distance_correlation_sq_torch`;
  written here because ``dcor`` is numpy-only and has no gradients; checked against
  :func:`splitc.privacy.leakage.distance_correlation` in the tests). The V-statistic NoPeek uses
  sits at ~0.99 for a 12,544-number wire whatever the dependence, so its gradient says little.
* ``adversarial`` (ResSFL-style): privacy = the PSNR of an inversion decoder co-trained on the
  current wire (the strong attacker's hybrid, :mod:`splitc.privacy.attacker`): its linear part is
  re-fitted in closed form on the whole training wire every epoch (a gradient-trained adversary
  lags behind the optimal linear inverse and is easy to fool), its conv correction takes one
  Adam step per batch, and it sees the wire standardised per channel with batch statistics (so
  shrinking the wire does not fool it). Measured on the MNIST example (FINDINGS.md, research
  for issue 19): the adversarial objective buys 2-3x more attacker PSNR loss per point of accuracy
  than dCor, which can fall a lot while the attacker barely notices.
* ``auto``: the adversarial defence at the strongest of :data:`LADDER` that meets the accuracy
  target. ``dcor`` / ``adversarial`` without ``--privacy-strength`` search their ladder the same way;
  with it, that strength is trained and a miss fails the compile with the verdict line.

Learning rates (measured on the MNIST example): the receiver fine-tunes at 3e-4 (1e-3 wrecks a
trained model in one step), a small sender (the 160-parameter stem) needs 1e-2 to move at all, a
larger one 1e-3. One epoch of linear warm-up, then a cosine. Everything runs inside
:func:`splitc.core.determinism.seeded` with one thread, so a compile reproduces on a machine.

The pass runs after ``cut`` (it needs the partitions) and after ``prune``, before the bottleneck,
wire quantization and noise, which then apply on top of the defended sender, in that order.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from splitc.core.accuracy import guard_of, predictions
from splitc.core.determinism import derive_seed, seeded
from splitc.core.pass_manager import Pass, PassResult
from splitc.core.passes.cut import CutPass
from splitc.core.progress import progress
from splitc.core.samples import WholeGraph, run_chain
from splitc.errors import SplitcError
from splitc.privacy.attacker import HybridDecoder, RidgeTooLarge, build_decoder, fit_ridge_decoder

__all__ = ["DefenceSettings", "DefencePass", "DefenceSetup", "Outcome", "defend_cut", "partitions_at", "proxy_cuts",
           "train_defence", "distance_correlation_sq_torch",
           "METHODS", "LADDER", "DEFENCE_EPOCHS"]

log = logging.getLogger("splitc")

#: ``--privacy-defence`` values.
METHODS = ("none", "dcor", "adversarial", "auto")
#: Strengths searched, strongest first, when none is forced (``auto`` uses the adversarial ladder).
#: Adversarial 0.1 at the MNIST stem: attacker -6.0 dB at -0.4 points (FINDINGS.md); dCor 3 at layer2: -2.4 dB.
LADDER = {"adversarial": (0.3, 0.1, 0.03, 0.01), "dcor": (10.0, 3.0, 1.0, 0.3)}
#: Fine-tuning epochs over the guard's training split (the research's setting).
DEFENCE_EPOCHS = 20
BATCH = 64
RECEIVER_LR = 3e-4
#: Senders with fewer parameters than this fine-tune at 1e-2, others at 1e-3 (see the module docstring).
SMALL_SENDER = 10_000


@dataclass(frozen=True)
class DefenceSettings:
    """``--privacy-defence`` / ``--privacy-strength``, checked.

    Attributes:
        method: ``dcor`` or ``adversarial`` (``auto`` is resolved to ``adversarial``).
        strength: the forced weight alpha of the privacy term; None = search :data:`LADDER`.
        requested: what the user asked for (``auto`` stays visible in the manifest).
        epochs: fine-tuning epochs (library callers and tests may shorten it).
    """

    method: str
    strength: float | None
    requested: str
    epochs: int = DEFENCE_EPOCHS

    @property
    def strengths(self) -> tuple[float, ...]:
        """The strengths to try, strongest first."""
        return (self.strength,) if self.strength is not None else LADDER[self.method]

    @classmethod
    def from_options(cls, options: Any, *, check_calibration: bool = True) -> "DefenceSettings | None":
        """The settings, or None without a defence.

        Raises:
            SplitcError: one line per bad input (unknown defence, strength not a positive finite number or
                given without a defence / with ``auto``, a single tier, no calibration data).
        """
        method = getattr(options, "privacy_defence", None)
        strength = getattr(options, "privacy_strength", None)
        if method is None or method == "none":
            if strength is not None:
                raise SplitcError("--privacy-strength does nothing without --privacy-defence",
                                  "add --privacy-defence adversarial (or dcor), or drop --privacy-strength")
            return None
        if method not in METHODS:
            raise SplitcError(f"--privacy-defence {method!r} is not one of {', '.join(METHODS)}",
                              "e.g. --privacy-defence auto")
        if strength is not None:
            if method == "auto":
                raise SplitcError("--privacy-defence auto picks the strength itself; --privacy-strength cannot be "
                                  "combined with it", "name the defence (adversarial or dcor) to force a strength")
            if not math.isfinite(strength) or strength <= 0:
                raise SplitcError(f"--privacy-strength {strength:g} is not a positive finite number",
                                  f"give the weight of the privacy term, e.g. {LADDER[method][1]:g}")
        if len(options.targets) < 2:
            raise SplitcError(f"--privacy-defence needs a link, but the target chain '{','.join(options.targets)}' "
                              f"has one tier", "give two or more tiers, e.g. --target jetson,cloud-gpu")
        if check_calibration and not getattr(options, "calib", None):
            raise SplitcError("--privacy-defence trains the sending partition and needs calibration data",
                              "pass --calib calib.npz (real inputs, with labels 'y' if you have them)")
        resolved = "adversarial" if method == "auto" else method
        return cls(resolved, None if strength is None else float(strength), method)


@dataclass
class DefenceSetup:
    """What ``defend`` did (``ctx.defence``), recorded on the transfer in the manifest.

    Attributes:
        method, strength, requested: the defence, the chosen strength and what was asked.
        link, partition, tensors: the defended link, its sending partition and wire tensors.
        trained_on: the data (file, split, samples, labels or not, seed).
        epochs, seconds: fine-tuning budget and its wall time (all tries).
        tried: per strength tried: its held-out accuracy, verdict line and training summary.
        accuracy: held-out accuracy of the chosen defence.
        dcor_before, dcor_after: bias-corrected distance correlation between the input and the wire on
            the held-out split, undefended and defended (``dcor`` may not fall under the adversarial
            defence: the attack, not dcor, measures it, see docs/privacy.md).
        reference: the defended graph (the whole model, fine-tuned): the bundle's verification reference.
    """

    method: str
    strength: float
    requested: str
    link: int
    partition: int
    tensors: list[str]
    trained_on: dict[str, Any]
    epochs: int
    seconds: float
    tried: list[dict[str, Any]]
    accuracy: float
    dcor_before: float | None = None
    dcor_after: float | None = None
    cut: int | None = None
    reference: Any = field(default=None, repr=False)

    def to_manifest(self) -> dict[str, Any]:
        """The transfer's ``defence`` object (see manifest.schema.json)."""
        return {"method": self.method, "strength": self.strength, "requested": self.requested,
                "partition": self.partition, "tensors": list(self.tensors), "trained_on": dict(self.trained_on),
                "epochs": self.epochs, "train_seconds": round(self.seconds, 2), "held_out_accuracy": float(self.accuracy),
                "tried": list(self.tried),
                **({"dcor_before": self.dcor_before} if self.dcor_before is not None else {}),
                **({"dcor_after": self.dcor_after} if self.dcor_after is not None else {})}


# ----------------------------------------------------------------------------------------- dCor in torch


def distance_correlation_sq_torch(x: torch.Tensor, z: torch.Tensor, bias_corrected: bool = True,
                                  eps: float = 1e-9) -> torch.Tensor:
    """Differentiable squared distance correlation of the rows of ``x`` and ``z`` (one batch, ``n >= 4``).

    Euclidean distance matrices, U-centred (``bias_corrected``, Székely & Rizzo 2014: unbiased, may be
    slightly negative, which a loss wants) or double-centred (V-statistic), then
    ``<A, B> / sqrt(<A, A> <B, B>)``; the formulas are :mod:`splitc.privacy.leakage`'s. ``eps`` inside
    the square roots keeps the gradient finite at zero distance (the diagonal).
    """
    n = x.shape[0]
    A = _centre(_pairwise(x.reshape(n, -1).float(), eps), bias_corrected)
    B = _centre(_pairwise(z.reshape(n, -1).float(), eps), bias_corrected)
    return (A * B).sum() / torch.sqrt((A * A).sum() * (B * B).sum() + eps)


def _pairwise(v: torch.Tensor, eps: float) -> torch.Tensor:
    sq = (v * v).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * v @ v.T).clamp_min(0.0)
    return torch.sqrt(d2 + eps) * (1 - torch.eye(len(v), dtype=v.dtype))


def _centre(d: torch.Tensor, bias_corrected: bool) -> torch.Tensor:
    n = d.shape[0]
    if not bias_corrected:
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()
    out = d - d.sum(1, keepdim=True) / (n - 2) - d.sum(0, keepdim=True) / (n - 2) + d.sum() / ((n - 1) * (n - 2))
    return out * (1 - torch.eye(n, dtype=d.dtype))


# ----------------------------------------------------------------------------------------- training


def _as_list(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _chain(partitions: list[Any], input_names: list[str], inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The partitions run in order, with gradients (``run_partitions`` without its clones and no_grad)."""
    values = dict(zip(input_names, inputs))
    for part in partitions:
        values.update(zip(part.outputs, _as_list(part.graph_module(*[values[n] for n in part.inputs]))))
    return values


def _standardise(z: torch.Tensor) -> torch.Tensor:
    """Per channel (``[B, C, h, w]``) or per feature, with the batch's statistics."""
    axes = (0, 2, 3) if z.ndim == 4 else (0,)
    return (z - z.mean(axes, keepdim=True)) / (z.std(axes, keepdim=True) + 1e-5)


def _wire(values: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    """The wire as one tensor: the single tensor (batch first), or every tensor flattened and concatenated."""
    if len(names) == 1:
        return values[names[0]]
    return torch.cat([values[n].flatten(1) for n in names], 1)


class _Adversary:
    """The co-trained inversion decoder of the adversarial defence (module docstring)."""

    def __init__(self, z: torch.Tensor, x: torch.Tensor, seed: int) -> None:
        self.x, self.seed = x, seed
        lo, hi = float(x.min()), float(x.max())
        zn = _standardise(z)
        try:
            linear, _ = fit_ridge_decoder(zn, x, ridges=(1e-5,), max_rows=50_000, seed=seed)
            net = build_decoder("conv", tuple(zn.shape[1:]), tuple(x.shape[1:]), None, lo, hi)
            self.decoder: nn.Module = HybridDecoder(linear, net, lo, hi, clamp_train=False)
            self.refit = True
        except RidgeTooLarge:  # too wide for the closed form: a gradient-trained decoder alone
            self.decoder = build_decoder("conv", tuple(zn.shape[1:]), tuple(x.shape[1:]), x.mean(0), lo, hi)
            self.refit = False
        self.optimizer = torch.optim.Adam(self.decoder.parameters(), lr=2e-3)

    def refit_linear(self, z: torch.Tensor, epoch: int) -> None:
        """The linear part, re-fitted in closed form on the whole (current) wire."""
        if self.refit:
            linear, _ = fit_ridge_decoder(_standardise(z), self.x, ridges=(1e-5,), max_rows=50_000,
                                          seed=self.seed + epoch)
            self.decoder.linear.load_state_dict(linear.state_dict())

    def step(self, z: torch.Tensor, x: torch.Tensor) -> None:
        """One Adam step of the decoder on a detached batch."""
        self.optimizer.zero_grad()
        F.mse_loss(self.decoder(_standardise(z.detach())), x).backward()
        self.optimizer.step()

    def psnr(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The decoder's PSNR on the batch, differentiable in ``z`` (the privacy term)."""
        return -10 * torch.log10(F.mse_loss(self.decoder(_standardise(z)), x) + 1e-12)


def train_defence(partitions: list[Any], input_names: list[str], wire_names: list[str], output_name: str,
                  inputs: list[np.ndarray], labels: np.ndarray | None, teacher: torch.Tensor, *, method: str,
                  strength: float, epochs: int = DEFENCE_EPOCHS, seed: int = 0, desc: str = "[defence]",
                  log_line: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Fine-tune ``partitions`` in place (the first is the sender) against the privacy term; see the module docstring.

    Args:
        partitions: the chain (sender first); their parameters are trained in place.
        input_names: the model's inputs (the first is what the privacy term protects).
        wire_names: the tensors the sender puts on the link.
        output_name: the model output holding the class scores.
        inputs, labels: training data (labels None: KL to the original model only).
        teacher: the original model's logits on ``inputs``.
        method, strength: ``dcor`` / ``adversarial`` and alpha.

    Returns:
        A summary: last epoch's mean losses and the parameters trained.
    """
    tensors = [torch.as_tensor(np.asarray(a)) for a in inputs]
    x = tensors[0].float()
    y = None if labels is None else torch.as_tensor(labels).long()
    sender = list(partitions[0].graph_module.parameters())
    seen = {id(p) for p in sender}
    receiver = [p for part in partitions[1:] for p in part.graph_module.parameters() if id(p) not in seen]
    receiver = list({id(p): p for p in receiver}.values())
    for module in (part.graph_module for part in partitions):
        module.eval()  # BatchNorm as its fixed affine map; dropout off
    for p in sender + receiver:
        p.requires_grad_(True)
    sender_count = sum(p.numel() for p in sender)
    groups = [{"params": sender, "lr": 1e-2 if sender_count < SMALL_SENDER else 1e-3}]
    if receiver:
        groups.append({"params": receiver, "lr": RECEIVER_LR})
    optimizer = torch.optim.Adam(groups)
    per_epoch = math.ceil(len(x) / BATCH)
    total = max(1, epochs * per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: (i + 1) / per_epoch if i < per_epoch else
        0.5 * (1 + math.cos(math.pi * min(i - per_epoch, total) / max(1, total - per_epoch))))
    gen = torch.Generator().manual_seed(seed)

    def wire_of(batch: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        values = _chain(partitions, input_names, batch)
        return values, _wire(values, wire_names)

    try:
        with torch.no_grad():
            wire_of([t[:2] for t in tensors])
    except Exception as error:  # e.g. batch-1 shapes folded into the traced graph
        raise SplitcError(f"--privacy-defence trains on batches, but the partitions fail on a batch of 2 "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:160]})",
                          "trace the model with a dynamic batch dimension, or compile without --privacy-defence") \
            from None
    adversary = None
    if method == "adversarial":
        with torch.no_grad():
            adversary = _Adversary(torch.cat([wire_of([t[i:i + 256] for t in tensors])[1]
                                              for i in range(0, len(x), 256)]), x, seed)
    sums = np.zeros(4)
    for epoch in progress(range(epochs + (adversary is not None)), desc, unit="epoch"):
        warmup = adversary is not None and epoch == 0  # the adversary trains alone first
        if adversary is not None and epoch > 0:
            with torch.no_grad():
                adversary.refit_linear(torch.cat([wire_of([t[i:i + 256] for t in tensors])[1]
                                                  for i in range(0, len(x), 256)]), epoch)
        sums[:] = 0
        for index in torch.randperm(len(x), generator=gen).split(BATCH):
            if len(index) < 4:
                continue  # dCor needs 4 samples; a tiny last batch adds nothing
            batch = [t[index] for t in tensors]
            values, z = wire_of(batch)
            if adversary is not None:
                adversary.step(z, x[index])
                if warmup:
                    continue
            logits = values[output_name]
            kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(teacher[index], 1), log_target=True,
                          reduction="batchmean")
            ce = F.cross_entropy(logits, y[index]) if y is not None else torch.zeros(())
            privacy = (adversary.psnr(z, x[index]) if adversary is not None
                       else distance_correlation_sq_torch(x[index], z))
            loss = ce + kl + strength * privacy
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            sums += [loss.item(), ce.item(), kl.item(), privacy.item()]
        if not warmup:
            mean = sums / per_epoch
            log_line(f"{desc} epoch {epoch + (adversary is None)}/{epochs}: loss {mean[0]:.3f}, CE {mean[1]:.3f}, "
                     f"KL {mean[2]:.3f}, {'adversary PSNR dB' if adversary is not None else 'batch dCor^2'} "
                     f"{mean[3]:.3f}")
    for p in sender + receiver:
        p.requires_grad_(False)
    mean = sums / per_epoch
    return {"loss": round(float(mean[0]), 4), "ce": round(float(mean[1]), 4), "kl": round(float(mean[2]), 4),
            ("adversary_psnr_db" if adversary is not None else "batch_dcor_sq"): round(float(mean[3]), 4),
            "sender_parameters": int(sender_count), "receiver_parameters": int(sum(p.numel() for p in receiver))}


# ----------------------------------------------------------------------------------------- the pass


@dataclass
class Outcome:
    """One cut's strength search: the chosen strength and defended graph (None when none passed), every try."""

    cut: int
    strength: float | None
    graph: Any
    accuracy: float | None
    tried: list[dict[str, Any]]
    seconds: float
    wire: list[str]
    dcor_before: float | None = None
    dcor_after: float | None = None


def partitions_at(gm, ctx, cut: int) -> list[Any]:
    """Two partitions of ``gm`` at candidate ``cut`` (sender = nodes before it, receiver = the rest)."""
    from splitc.core.graph import model_output_names
    from splitc.core.passes.cut import cut_graph

    n = len(ctx.candidates.nodes)
    outputs = set(model_output_names(gm))
    return cut_graph(gm, [(0, cut), (cut, n)], [set(ctx.candidates.cuts[cut].crossing), outputs])


def defend_cut(gm, ctx, settings: DefenceSettings, cut: int, *, plan_partitions: bool) -> Outcome:
    """The strength search at ``cut``: each strength of ``settings`` trains a copy of ``gm``, strongest first,
    until one meets the accuracy target (``guard.judge``).

    Args:
        plan_partitions: cut the copies with the plan (``CutPass``, sets ``ctx.partitions``); otherwise a
            two-way split at ``cut`` (:func:`partitions_at`; the planner's leakage proxy, before any plan).
    """
    guard = guard_of(ctx, gm)
    if guard is None:  # validate_options requires --calib for compile; a library caller may not have it
        raise SplitcError("--privacy-defence needs calibration data", "pass --calib calib.npz")
    guard.ensure_reference(gm)
    names = [s.name for s in ctx.input_specs]
    train_inputs = guard.calib.batch(guard.train)
    labels = None if guard.calib.labels is None else guard.calib.labels[guard.train]
    teacher = run_chain([WholeGraph(gm, names)], names, train_inputs)[guard.model_outputs[0]].float()
    start, tried = time.perf_counter(), []

    def split(graph) -> list[Any]:
        if plan_partitions:
            CutPass().run(graph, ctx)
            return ctx.partitions
        return partitions_at(graph, ctx, cut)

    parts = split(gm)
    wire = [n for n in parts[0].outputs if any(n in p.inputs for p in parts[1:])]
    raw = sorted({n for p in parts[1:] for n in p.inputs} & set(names))
    if raw:
        log.warning("--privacy-defence: the model input(s) %s cross the link unchanged: the defence cannot hide "
                    "them", ", ".join(raw))
    outcome = Outcome(cut, None, None, None, tried, 0.0, wire, dcor_before=_wire_dcor(parts, guard, names, wire))
    for strength in settings.strengths:
        graph = copy.deepcopy(gm)  # the traced graph shares its modules with the loaded model: keep that intact
        parts = split(graph)
        with seeded(derive_seed(ctx.options.seed, "defence", settings.method, strength, cut), threads=1):
            summary = train_defence(parts, names, wire, guard.model_outputs[0], train_inputs, labels, teacher,
                                    method=settings.method, strength=strength, epochs=settings.epochs,
                                    seed=derive_seed(ctx.options.seed, "defence-batches"),
                                    desc=f"[defence] cut {cut} {settings.method} {strength:g}")
        values = run_chain([WholeGraph(graph, names)], names, guard.calib.batch(guard.test))
        acc = guard.measure(predictions(values[guard.model_outputs[0]]))
        verdict = guard.judge(f"--privacy-defence {settings.method} --privacy-strength {strength:g}"
                              + (f" at cut {cut}" if not plan_partitions else ""), acc)
        tried.append({"strength": strength, "held_out_accuracy": float(acc), "met": verdict.met,
                      "verdict": verdict.line(), "training": summary})
        if verdict.met:
            outcome.strength, outcome.graph, outcome.accuracy = strength, graph, float(acc)
            outcome.dcor_after = _wire_dcor(parts, guard, names, wire)
            break
    outcome.seconds = time.perf_counter() - start
    return outcome


def _wire_dcor(partitions, guard, names, wire) -> float | None:
    """dcor (bias-corrected, numpy) between the input and the wire of ``partitions`` on up to 256 held-out samples."""
    from splitc.privacy.leakage import distance_correlation

    index = guard.test[:256]
    if len(index) < 4 or not wire:
        return None
    x = guard.calib.batch(index)
    values = run_chain(partitions, names, x)
    z = np.concatenate([values[n].reshape(len(index), -1).numpy() for n in wire], 1)
    return round(distance_correlation(x[0], z), 6)


def proxy_cuts(ctx, count: int = 2) -> list[int]:
    """Cuts the planner's defended proxy trains at: the forced first cut, else the ``count`` shallowest legal cuts
    that send a computed tensor (the cheap ones for a device, where a defence matters most)."""
    if ctx.options.split:
        name = ctx.options.split[0]
        return [] if name in ("input", "") else [ctx.candidates.index_of(name)]
    placeholders = {s.name for s in ctx.input_specs}
    cuts = [c.index for c in ctx.candidates.cuts
            if c.legal and 0 < c.index < len(ctx.candidates.nodes) and not set(c.crossing) & placeholders]
    return cuts[:count]


class DefencePass(Pass):
    """Fine-tune the first link's sender (and the receivers) against an inversion of what it sends."""

    name = "defend"
    requires = ("partitions",)
    provides = ("defence",)

    def run(self, gm, ctx) -> PassResult:
        settings = ctx.settings_for(DefenceSettings)
        if settings is None:
            return PassResult(gm, modified=False, summary="off")
        if len(ctx.partitions) < 2:
            log.warning("--privacy-defence: the plan keeps the whole model on one tier, so nothing crosses a link; "
                        "no defence is trained")
            return PassResult(gm, modified=False, summary="nothing crosses a link: no defence")
        cut = int(ctx.plan_result.best.cuts[0])
        cached = getattr(ctx, "defended_cuts", {}).get(cut)  # trained for the planner's proxy (privacy_profile)
        exits = getattr(ctx, "exits", None)
        if exits is not None and getattr(exits, "chosen", None):
            cached = None  # exit heads were inserted since: train again on the current graph
        if cached is not None and cached.graph is not None:
            outcome = cached
            CutPass().run(outcome.graph, ctx)
        else:
            outcome = defend_cut(gm, ctx, settings, cut, plan_partitions=True)
        if outcome.graph is None:
            CutPass().run(gm, ctx)  # the undefended partitions again
            if settings.strength is not None:
                raise SplitcError(f"the defence misses the accuracy target: {outcome.tried[-1]['verdict']}",
                                  "lower --privacy-strength or --accuracy-target, or use --privacy-defence auto")
            raise SplitcError(f"no --privacy-defence {settings.requested} strength meets the accuracy target "
                              f"(weakest tried: {outcome.tried[-1]['verdict']})",
                              "lower --accuracy-target, or compile without --privacy-defence")
        CutPass().run(outcome.graph, ctx)  # the defended partitions are what every later pass adapts
        guard = guard_of(ctx, gm)
        link = ctx.partitions[0].tier_index
        trained_on = {"source": str(guard.calib.source), "split": "accuracy guard 'train' split",
                      "samples": int(len(guard.train)), "labels": guard.calib.labels is not None,
                      "judged_on": f"accuracy guard 'test' split ({len(guard.test)} samples)",
                      "seed": int(ctx.options.seed)}
        ctx.defence = DefenceSetup(settings.method, outcome.strength, settings.requested, link, 0, outcome.wire,
                                   trained_on, settings.epochs, outcome.seconds, outcome.tried, outcome.accuracy,
                                   outcome.dcor_before, outcome.dcor_after, cut, reference=outcome.graph)
        tries = len(outcome.tried)
        return PassResult(outcome.graph, True,
                          f"{settings.method} strength {outcome.strength:g} on link {link} ({', '.join(outcome.wire)}): "
                          f"held-out accuracy {outcome.accuracy:.4f} (original {guard.reference_accuracy:.4f}); "
                          f"{tries} tr{'y' if tries == 1 else 'ies'}, {outcome.seconds:.1f}s"
                          + (" (trained for the planner's proxy)" if cached is not None else ""))
