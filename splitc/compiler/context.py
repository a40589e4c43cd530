"""Compile options (frozen, resolved in one place) and the mutable compile context.

:class:`CompileOptions` is everything the user chose; its :meth:`~CompileOptions.to_dict`
is echoed into the manifest so one file reproduces the run. :class:`CompileContext`
carries what passes produce for later passes (candidates, plan, partitions).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch

from splitc.compiler.loader import InputSpec

if TYPE_CHECKING:
    from splitc.compiler.calibration import CalibrationData
    from splitc.compiler.exits import ExitSetup
    from splitc.compiler.plan import PlanResult
    from splitc.passes.candidates import Candidates
    from splitc.passes.cut import Partition
    from splitc.targets.target import Target

__all__ = ["CompileOptions", "CompileContext"]


@dataclass(frozen=True)
class CompileOptions:
    """Every user choice of a compile, with its default.

    Attributes:
        targets: the tier chain as given, e.g. ``("jetson", "cloud-gpu")``.
        targets_files: extra target YAML files (``--targets-file``).
        bandwidths: link bandwidths as given (``--bandwidth``); empty = each tier's default
            uplink; one value = every link; else one per link.
        rtts_ms: link round-trip times in ms (``--rtt-ms``), same rule as ``bandwidths``.
        split: forced cut points, one node name per tier boundary (``--split``).
        opset: ONNX opset of every partition (>= 17).
        simplify: run onnxsim on each partition.
        verify: run the bundle in ONNX Runtime and compare with PyTorch before writing it.
        verify_samples: random inputs used by verification.
        rtol, atol: tolerance of verification (relative to the output's scale; see verify.py).
        seed: RNG seed for factories' random init and example inputs.
        alternatives: how many next-best plans to record.
        exits: early exits: ``("none",)`` (default), ``("auto",)`` (candidates chosen jointly with
            the plan) or node names (``--exits a,b``); needs ``calib``.
        calib: calibration data ``.npz`` (``--calib``): ``x`` inputs, optional ``y`` labels.
        accuracy_target: exit-enabled accuracy >= this x the full model's (relative, default
            0.99), or >= this (``absolute_accuracy``), on held-out calibration samples.
        absolute_accuracy: read ``accuracy_target`` as an absolute accuracy.
        transfer_dtype: dtype on the wire for float boundary tensors (``--transfer-dtype``:
            float32, float16 or uint8; see passes/quantize_transfer.py).
        bottleneck: learned bottleneck at each cut (``--bottleneck``: None, "auto" or a channel
            ratio such as "0.25"; see passes/insert_bottleneck.py).
        quantize: post-training quantization of the partitions (``--quantize``: none, int8, fp16).
        prune: fraction of channels pruned from the sending partition (``--prune``; 0 = off).
        emit: backend artifacts (``--emit``): ``("auto",)`` = Triton repository for edge/cloud-vm
            tiers, TensorRT recipe for tensorrt tiers, Lambda handler for faas tiers; ``("none",)``;
            or a subset of ``triton``, ``tensorrt``, ``faas`` (see targets/emit.py).
    """

    targets: tuple[str, ...]
    targets_files: tuple[str, ...] = ()
    bandwidths: tuple[str, ...] = ()
    rtts_ms: tuple[float, ...] = ()
    split: tuple[str, ...] = ()
    opset: int = 17
    simplify: bool = True
    verify: bool = True
    verify_samples: int = 2
    rtol: float = 1e-3
    atol: float = 1e-4
    seed: int = 0
    alternatives: int = 5
    exits: tuple[str, ...] = ("none",)
    calib: str | None = None
    accuracy_target: float = 0.99
    absolute_accuracy: bool = False
    # compression at the cut (issue 4)
    transfer_dtype: str = "float32"
    bottleneck: str | None = None
    quantize: str = "none"
    prune: float = 0.0
    # serving artifacts (issue 7): "auto" = by tier kind/backend, "none", or kinds (see targets/emit.py)
    emit: tuple[str, ...] = ("auto",)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompileOptions":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class CompileContext:
    """State shared by the passes of one compile."""

    options: CompileOptions
    tiers: list["Target"]
    input_specs: list[InputSpec]
    example_inputs: list[torch.Tensor]
    candidates: "Candidates | None" = None
    plan_result: "PlanResult | None" = None
    partitions: list["Partition"] = field(default_factory=list)
    calibration: "CalibrationData | None" = None  # --calib, loaded and checked
    exits: "ExitSetup | None" = None  # early-exit candidates, heads and chosen thresholds
    compression: Any = None  # splitc.compiler.compression.CompressionState (compression passes)
    pass_timings: dict[str, float] = field(default_factory=dict)

    def timings_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.pass_timings.items()}


