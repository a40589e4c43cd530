"""The one accuracy rule every lossy knob answers to (``--accuracy-target``, ``--absolute-accuracy``).

A knob (an exit threshold, a bottleneck, a quantized partition, noise, a defence) is kept
only if the accuracy it leaves, measured on held-out calibration samples that nothing was
trained or calibrated on, meets the *required* accuracy with a margin to spare:

    accuracy - margin >= required,   required = A x reference   (relative, the default)
                                     required = A               (--absolute-accuracy)

The reference is the original model's accuracy on the same samples: top-1 against the
labels when ``calib.npz`` has ``y``, else agreement with the original model's own
predictions (so the original scores 1). The margin is one standard error: of the paired
difference from the original model (``sqrt(d (1 - d) / n)``, ``d`` = share of samples whose
prediction changed) for a knob judged on the held-out split, or of the binomial accuracy
for exit thresholds chosen on their calibrate split. Held-out sets of a few hundred samples
are small; without the margin, settings that just met the target there lost up to 1.4
points on 1,000 unseen digits. Every decision is a :class:`Verdict` whose line states the
rule and all its numbers, for the log, the report and ``splitc inspect``.

Example:
    >>> target = AccuracyTarget(0.99)
    >>> round(target.required(0.97), 4)
    0.9603
    >>> Verdict("--bottleneck 0.125", 0.9633, 0.9603, 0.0045, "one standard error on 300 samples").met
    False
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from splitc.core.samples import run_chain
from splitc.errors import SplitcError

__all__ = ["AccuracyTarget", "Accuracy", "Verdict", "AccuracyGuard", "guard_of", "predictions", "paired_margin",
           "binomial_margin", "DEFAULT_ACCURACY_TARGET", "HELD_OUT_SPLIT"]

log = logging.getLogger("splitc")

#: ``--accuracy-target`` when none is given: keep 99 % of the original accuracy.
DEFAULT_ACCURACY_TARGET = 0.99
#: The accuracy guard's own split of ``--calib``: knobs train on "train", are judged on "test".
HELD_OUT_SPLIT = {"train": 0.7, "test": 0.3}


@dataclass(frozen=True)
class AccuracyTarget:
    """``--accuracy-target A`` and how to read it, checked once.

    Attributes:
        value: ``A`` in (0, 1].
        absolute: read ``A`` as the accuracy itself instead of a fraction of the original's.
    """

    value: float = DEFAULT_ACCURACY_TARGET
    absolute: bool = False

    @classmethod
    def from_options(cls, options: Any) -> "AccuracyTarget":
        """The target of a :class:`~splitc.core.options.CompileOptions`; the one range check.

        Raises:
            SplitcError: ``A`` is not in (0, 1].
        """
        value = getattr(options, "accuracy_target", None)
        value = DEFAULT_ACCURACY_TARGET if value is None else float(value)
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise SplitcError(f"--accuracy-target {value:g} is out of range",
                              "give a fraction in (0, 1], e.g. 0.99 (relative to the original model's accuracy; "
                              "with --absolute-accuracy, the accuracy itself)")
        return cls(value, bool(getattr(options, "absolute_accuracy", False)))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "AccuracyTarget":
        data = data or {}
        return cls(float(data.get("accuracy_target", DEFAULT_ACCURACY_TARGET)),
                   data.get("target_kind", "relative") == "absolute")

    @property
    def kind(self) -> str:
        return "absolute" if self.absolute else "relative"

    def required(self, reference_accuracy: float) -> float:
        """The accuracy a knob must keep, given the original model's on the same samples."""
        return self.value if self.absolute else self.value * float(reference_accuracy)

    def describe(self) -> str:
        return f"{self.value:g} absolute" if self.absolute else f"{self.value:g} relative to the original model"

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy_target": self.value, "target_kind": self.kind}


class Accuracy(float):
    """A held-out accuracy that also carries ``margin`` (see the module docstring) and ``samples``."""

    margin: float = 0.0
    samples: int = 0

    def __new__(cls, value: float, margin: float = 0.0, samples: int = 0) -> "Accuracy":
        obj = super().__new__(cls, value)
        obj.margin = float(margin)
        obj.samples = int(samples)
        return obj


def predictions(logits: torch.Tensor) -> np.ndarray:
    """Class predictions from a ``[S, classes]`` (or ``[S, ..., classes]``) output."""
    return logits.reshape(len(logits), -1).argmax(dim=1).numpy() if logits.dim() <= 2 else \
        logits.argmax(dim=-1).reshape(len(logits), -1)[:, 0].numpy()


def paired_margin(preds: np.ndarray, reference: np.ndarray | None) -> float:
    """One standard error of the paired difference from the original model's predictions."""
    if reference is None or len(preds) != len(reference) or not len(preds):
        return 0.0
    changed = float((np.asarray(preds) != np.asarray(reference)).mean())
    return math.sqrt(changed * (1 - changed) / len(preds))


def binomial_margin(required: float, samples: int) -> float:
    """One binomial standard error of an accuracy of ``required`` on ``samples`` samples."""
    return math.sqrt(max(required * (1 - required), 0.0) / max(samples, 1))


@dataclass(frozen=True)
class Verdict:
    """One decision of the rule: what was judged, every number, and whether it passed.

    Attributes:
        step: what was judged, in the user's words (``--bottleneck 0.125 at 'relu_3'``).
        accuracy: its held-out accuracy.
        required: the required accuracy (:meth:`AccuracyTarget.required`).
        margin: the margin to spare.
        margin_rule: how the margin was computed, in words.
        target: the target as given.
        reference: the original model's accuracy on the same samples.
        samples: held-out samples behind ``accuracy``.
    """

    step: str
    accuracy: float
    required: float
    margin: float
    margin_rule: str
    target: AccuracyTarget = field(default_factory=AccuracyTarget)
    reference: float | None = None
    samples: int = 0

    @property
    def met(self) -> bool:
        return float(self.accuracy) - self.margin + 1e-12 >= self.required

    def line(self) -> str:
        """The rule with its numbers, e.g. ``0.9767 - margin 0.0045 = 0.9722 < required 0.9735 (...)``."""
        kept = float(self.accuracy) - self.margin
        reference = f" x original {self.reference:.4f}" if self.reference is not None and not self.target.absolute else ""
        return (f"{self.step}: held-out accuracy {float(self.accuracy):.4f} - margin {self.margin:.4f} = {kept:.4f} "
                f"{'>=' if self.met else '<'} required {self.required:.4f} ({self.target.value:g} "
                f"{self.target.kind}{reference}; margin: {self.margin_rule}): {'met' if self.met else 'missed'}")

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "accuracy": float(self.accuracy), "margin": self.margin,
                "margin_rule": self.margin_rule, "required": self.required, "met": self.met,
                "reference_accuracy": self.reference, "samples": self.samples, **self.target.to_dict()}


@dataclass
class AccuracyGuard:
    """The held-out data and reference every knob is judged against (``ctx.accuracy``, made by :func:`guard_of`).

    Attributes:
        target: the accuracy target.
        calib: the calibration data.
        train, test: the guard's disjoint index split of it (:data:`HELD_OUT_SPLIT`): knobs train on
            ``train`` and are judged on ``test``.
        input_names: the model's input names.
        model_outputs: the model's output names; the first is the class scores.
        reference_predictions, reference_accuracy: the original model on ``test`` (:meth:`ensure_reference`).
        verdicts: every decision taken during the compile, in order.
    """

    target: AccuracyTarget
    calib: Any
    train: np.ndarray
    test: np.ndarray
    input_names: list[str]
    model_outputs: list[str]
    reference_predictions: np.ndarray | None = None
    reference_accuracy: float | None = None
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return "top-1 vs labels" if self.calib.labels is not None else "agreement with the original model"

    @property
    def required_accuracy(self) -> float:
        return self.target.required(self.reference_accuracy or 0.0)

    def ensure_reference(self, gm: torch.fx.GraphModule) -> None:
        """The original model's held-out predictions and accuracy (computed once)."""
        if self.reference_accuracy is not None:
            return
        from splitc.core.samples import WholeGraph

        values = run_chain([WholeGraph(gm, self.input_names)], self.input_names, self.calib.batch(self.test))
        self.reference_predictions = predictions(values[self.model_outputs[0]])
        self.reference_accuracy = float(self.measure(self.reference_predictions))

    def measure(self, preds: np.ndarray, index: np.ndarray | None = None) -> Accuracy:
        """Top-1 accuracy of ``preds`` for samples ``index`` (default: the held-out split), with its paired margin."""
        index = self.test if index is None else index
        preds = np.asarray(preds)
        if self.calib.labels is not None:
            value = float((preds == self.calib.labels[index]).mean())
        else:
            value = float((preds == self.reference_predictions).mean())
        return Accuracy(value, paired_margin(preds, self.reference_predictions), len(preds))

    def chain_accuracy(self, partitions: Sequence[Any]) -> Accuracy:
        """Held-out accuracy of ``partitions`` chained in PyTorch."""
        values = run_chain(partitions, self.input_names, self.calib.batch(self.test))
        return self.measure(predictions(values[self.model_outputs[0]]))

    def judge(self, step: str, accuracy: float, *, margin: float | None = None, margin_rule: str | None = None,
              required: float | None = None, reference: float | None = None, samples: int | None = None) -> Verdict:
        """Apply the rule to ``accuracy``; records and logs the verdict (it does not raise)."""
        margin = getattr(accuracy, "margin", 0.0) if margin is None else margin
        samples = getattr(accuracy, "samples", 0) or len(self.test) if samples is None else samples
        verdict = Verdict(step, float(accuracy), self.required_accuracy if required is None else required, margin,
                          margin_rule or f"one standard error of the paired difference on {samples} samples",
                          self.target, self.reference_accuracy if reference is None else reference, samples)
        self.verdicts.append(verdict)
        (log.info if verdict.met else log.warning)("[accuracy] %s", verdict.line())
        return verdict

    def to_dict(self) -> dict[str, Any]:
        return {**self.target.to_dict(), "metric": self.metric, "held_out_samples": int(len(self.test)),
                "reference_accuracy": self.reference_accuracy, "required_accuracy": self.required_accuracy,
                "verdicts": [v.to_dict() for v in self.verdicts]}


def guard_of(ctx: Any, gm: torch.fx.GraphModule) -> AccuracyGuard | None:
    """The compile's :class:`AccuracyGuard` (``ctx.accuracy``), made on first use; None without ``--calib``."""
    if getattr(ctx, "accuracy", None) is not None:
        return ctx.accuracy
    calib = ctx.calibration
    if calib is None and getattr(ctx.options, "calib", None):
        from splitc.core.calibration import load_calibration

        calib = ctx.calibration = load_calibration(ctx.options.calib, ctx.input_specs)
    if calib is None:
        return None
    from splitc.core.graph import model_output_names

    outputs = model_output_names(gm)
    parts = calib.split(HELD_OUT_SPLIT, seed=ctx.options.seed + 4)
    ctx.accuracy = AccuracyGuard(ctx.settings_for(AccuracyTarget), calib, parts["train"], parts["test"],
                                 [s.name for s in ctx.input_specs], outputs)
    return ctx.accuracy
