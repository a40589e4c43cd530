"""Comparing what ONNX Runtime computed with what PyTorch computed, and the report of a comparison.

Outputs match when ``max|got - want| <= atol + rtol * max|want|``: a tolerance relative to
the output's scale, because randomly initialised deep networks produce logits of very
different magnitudes. Quantized wire tensors (uint8/int8) may differ by one step where
ONNX Runtime and PyTorch round a value on a boundary differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["VerifyReport", "compare_arrays"]


@dataclass
class VerifyReport:
    """Outcome of a verification."""

    passed: bool
    samples: int
    max_abs_error: float
    max_rel_error: float
    rtol: float
    atol: float
    worst_output: str
    exits: dict[str, Any] | None = None  # exit semantics vs PyTorch (bundles with early exits)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "samples": self.samples, "max_abs_error": self.max_abs_error,
                "max_rel_error": self.max_rel_error, "rtol": self.rtol, "atol": self.atol,
                "worst_output": self.worst_output, **({"exit_semantics": self.exits} if self.exits else {})}


def compare_arrays(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> tuple[float, float, bool]:
    """``(max abs error, max error relative to max|want|, within tolerance)``; a shape mismatch never passes."""
    if got.shape != want.shape:
        return float("inf"), float("inf"), False
    if want.dtype in (np.uint8, np.int8):  # a quantized wire tensor: float rounding may differ by one step
        atol = max(atol, 1.0)               # between ONNX Runtime and PyTorch at a rounding boundary
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    err = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(want).max()) if want.size else 0.0
    return err, err / max(scale, 1e-12), bool(err <= atol + rtol * scale)
