"""Comparing what ONNX Runtime computed with a reference, tensor by tensor, and the report of a verification.

A tensor matches its reference when both bounds of its :class:`Tolerance` hold:

    max |got - want|  <=  atol + rtol * max|want| + steps_max * step
    mean |got - want| <=  steps_mean * step                       (when steps_mean is set)

``rtol`` is relative to the tensor's largest magnitude (randomly initialised deep networks
produce logits of very different scales); ``step`` is the tensor's quantization step in its
own units (1 for a uint8 wire tensor, the activation scale of an int8 QDQ output), so a
quantized tensor is judged in steps of its own grid. The mean bound is what catches a
systematic error: rounding differences between ONNX Runtime's integer kernels and the
fake-quantized reference move a few elements by a step or two, a wrong scale or weight
moves most elements by many. Which tolerance each kind of partition gets, and why, is in
``docs/verification.md``.

A verification is a list of :class:`Check` results, each ``passed``, ``failed`` or ``not
verified`` (a check that could not be made: never reported as passed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Tolerance", "TensorCheck", "Check", "VerifyReport", "compare_tensor", "compare_arrays",
           "PASSED", "FAILED", "NOT_VERIFIED", "SKIPPED"]

PASSED, FAILED, NOT_VERIFIED, SKIPPED = "passed", "failed", "not verified", "skipped"


@dataclass(frozen=True)
class Tolerance:
    """How far a tensor may be from its reference (see the module docstring).

    Attributes:
        rtol: relative to the reference's largest magnitude.
        atol: absolute.
        step: the tensor's quantization step in its own units (0: not quantized).
        steps_max: quantization steps allowed on top of ``atol + rtol * max|want|``.
        steps_mean: bound on the mean absolute error, in steps (None: no mean bound).
        rule: the rule in words, for reports.
    """

    rtol: float
    atol: float
    step: float = 0.0
    steps_max: float = 0.0
    steps_mean: float | None = None
    rule: str = ""

    def allowed_max(self, want: np.ndarray) -> float:
        scale = float(np.abs(want.astype(np.float64)).max()) if want.size else 0.0
        return self.atol + self.rtol * scale + self.steps_max * self.step

    def allowed_mean(self) -> float | None:
        return None if self.steps_mean is None else self.steps_mean * self.step

    def to_dict(self) -> dict[str, Any]:
        return {"rtol": self.rtol, "atol": self.atol, "step": self.step, "steps_max": self.steps_max,
                "steps_mean": self.steps_mean, "rule": self.rule}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Tolerance":
        return cls(float(data["rtol"]), float(data["atol"]), float(data.get("step", 0.0)),
                   float(data.get("steps_max", 0.0)),
                   None if data.get("steps_mean") is None else float(data["steps_mean"]), data.get("rule", ""))


@dataclass
class TensorCheck:
    """One tensor against its reference over every case checked (errors are the worst / the mean over cases)."""

    name: str
    max_error: float = 0.0
    rel_error: float = 0.0  # max error / max|want|
    mean_error: float = 0.0
    allowed_max: float = math.inf
    allowed_mean: float | None = None
    passed: bool = True
    note: str = ""
    _sum: float = field(default=0.0, repr=False)
    _count: int = field(default=0, repr=False)
    _worst: float = field(default=-1.0, repr=False)

    def add(self, got: np.ndarray, want: np.ndarray, tolerance: Tolerance) -> None:
        """Fold one case into the check."""
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            self.passed, self.max_error, self.rel_error = False, math.inf, math.inf
            self.note = f"shape {list(got.shape)} instead of {list(want.shape)}"
            return
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        if diff.size and not np.isfinite(diff).all():
            self.passed, self.max_error, self.rel_error = False, math.inf, math.inf
            self.note = "non-finite values"
            return
        err = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(want.astype(np.float64)).max()) if want.size else 0.0
        allowed = tolerance.allowed_max(want)
        self._sum += float(diff.sum())
        self._count += int(diff.size)
        self.mean_error = self._sum / max(self._count, 1)
        ratio = err / allowed if allowed > 0 else (math.inf if err > 0 else 0.0)
        if ratio >= self._worst:  # report the case closest to (or furthest past) its bound
            self._worst, self.max_error, self.allowed_max = ratio, err, allowed
        self.rel_error = max(self.rel_error, err / max(scale, 1e-12))
        self.allowed_mean = tolerance.allowed_mean()
        if err > allowed:
            self.passed = False
        if self.allowed_mean is not None and self.mean_error > self.allowed_mean:
            self.passed = False

    def line(self) -> str:
        if self.note:
            return f"'{self.name}': {self.note}"
        mean = (f", mean {self.mean_error:.3g} {'<=' if self.mean_error <= self.allowed_mean else '>'} "
                f"{self.allowed_mean:.3g}" if self.allowed_mean is not None else "")
        return (f"'{self.name}': max error {self.max_error:.3g} {'<=' if self.max_error <= self.allowed_max else '>'} "
                f"{self.allowed_max:.3g}{mean}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "max_error": _finite(self.max_error), "rel_error": _finite(self.rel_error),
                "mean_error": self.mean_error, "allowed_max": _finite(self.allowed_max),
                "allowed_mean": self.allowed_mean, "passed": self.passed, **({"note": self.note} if self.note else {})}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def compare_tensor(name: str, got: np.ndarray, want: np.ndarray, tolerance: Tolerance) -> TensorCheck:
    """A :class:`TensorCheck` of one case."""
    check = TensorCheck(name)
    check.add(got, want, tolerance)
    return check


def compare_arrays(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> tuple[float, float, bool]:
    """``(max abs error, max error relative to max|want|, within tolerance)``; a shape mismatch never passes.

    Integer (uint8/int8 wire) tensors may differ by one quantization step where ONNX Runtime and
    PyTorch round a value on a boundary differently.
    """
    integer = np.asarray(want).dtype in (np.uint8, np.int8)
    check = compare_tensor("", got, want, Tolerance(rtol, atol, 1.0 if integer else 0.0, 1.0 if integer else 0.0))
    return check.max_error, check.rel_error, check.passed


@dataclass
class Check:
    """One verification check: what was checked, its status, and the numbers in one line.

    Attributes:
        name: e.g. ``files``, ``contract``, ``reference``, ``end to end``, ``original model``,
            ``accuracy``, ``noise``, ``exits``.
        status: :data:`PASSED`, :data:`FAILED`, :data:`NOT_VERIFIED` or :data:`SKIPPED`
            (covered by another check; does not change the verdict).
        detail: the line a user reads.
        data: figures for the manifest.
    """

    name: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.name}: {self.status.upper() if self.status != PASSED else self.status}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, **self.data}


@dataclass
class VerifyReport:
    """Outcome of a verification: every check, and the headline figures of the numeric comparison.

    ``status`` is ``failed`` if any check failed, else ``not verified`` if any check could not be
    made, else ``passed``; ``passed`` is True only for ``passed``.
    """

    checks: list[Check] = field(default_factory=list)
    samples: int = 0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    rtol: float = 1e-3
    atol: float = 1e-4
    worst_output: str = ""
    exits: dict[str, Any] | None = None  # exit semantics vs PyTorch (bundles with early exits)
    extra: dict[str, Any] = field(default_factory=dict)  # more manifest fields (reference record, accuracy, ...)

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.checks}
        return FAILED if FAILED in statuses else NOT_VERIFIED if NOT_VERIFIED in statuses or not self.checks \
            else PASSED

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if c.status == FAILED]

    @property
    def not_verified(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if c.status == NOT_VERIFIED]

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def note_worst(self, check: TensorCheck) -> None:
        """Keep the headline figures of the worst tensor (by error relative to its reference's scale)."""
        if check.rel_error >= self.max_rel_error and math.isfinite(check.max_error):
            self.max_abs_error, self.max_rel_error, self.worst_output = check.max_error, check.rel_error, check.name

    def headline(self) -> str:
        """The verdict in one line, e.g. ``PASSED: 8 sample(s), ...`` or ``NOT VERIFIED: ...``."""
        head = {PASSED: "PASSED", FAILED: "FAILED", NOT_VERIFIED: "NOT VERIFIED"}[self.status]
        text = (f"{head}: {self.samples} sample(s), max abs error {self.max_abs_error:.3g}, max relative error "
                f"{self.max_rel_error:.3g} (worst: {self.worst_output or '-'})")
        if self.status == FAILED:
            text += f"; {self.failures[0]}"
        elif self.status == NOT_VERIFIED:
            text += f"; not verified: {'; '.join(self.not_verified)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "status": self.status, "samples": max(self.samples, 1),
                "max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error, "rtol": self.rtol,
                "atol": self.atol, "worst_output": self.worst_output, "checks": [c.to_dict() for c in self.checks],
                **({"not_verified": self.not_verified} if self.not_verified else {}),
                **({"exit_semantics": self.exits} if self.exits else {}), **self.extra}
