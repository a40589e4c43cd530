"""Every user choice of a compile, frozen and echoed into the manifest.

:class:`CompileOptions` is what the user chose (flags, or :meth:`CompileOptions.from_dict`);
each capability turns its own fields into a validated ``Settings`` object once, in the
driver's validation step (``splitc.driver.validate``), before anything is traced.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["CompileOptions"]


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
        verify_samples: verification cases: held-out calibration samples with --calib, else seeded random inputs.
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
            float32, float16 or uint8; see compression/quantize_transfer.py).
        bottleneck: learned bottleneck at each cut (``--bottleneck``: None, "auto" or a channel
            ratio such as "0.25"; see compression/insert_bottleneck.py).
        quantize: post-training quantization of the partitions (``--quantize``: none, int8, fp16).
        prune: fraction of channels pruned from the sending partition (``--prune``; 0 = off).
        emit: backend artifacts (``--emit``): ``("auto",)`` = Triton repository for edge/cloud-vm
            tiers, TensorRT recipe for tensorrt tiers, Lambda handler for faas tiers; ``("none",)``;
            or a subset of ``triton``, ``tensorrt``, ``faas`` (see backends/emit.py).
        privacy_epsilon: Laplace noise on the first link (``--privacy-epsilon``): the sent tensor is
            clipped to L2 norm ``privacy_clip`` and gets Laplace noise of scale clip/epsilon inside
            the sending partition ((privacy/add_noise.py)); None = no noise.
        privacy_clip: clipping norm C; None = median norm of the sent tensor on calibration data.
        privacy_defence: trained defence of the first link's sender (``--privacy-defence``: None/"none",
            "dcor", "adversarial", "auto"; see privacy/defence.py).
        privacy_strength: weight of the defence's privacy term (``--privacy-strength``); None = the
            strongest of a ladder that meets the accuracy target.
        objective: what the planner minimises (``--objective``): latency, cost, privacy, or
            weighted (``weights``); see planning/objectives.py.
        weights: ``name=value`` pairs of the weighted objective (``--weights latency=1,cost=0.5``).
        slo_ms: latency SLO on the predicted quantile ``slo_quantile`` (``--slo-ms``); None = no SLO.
        slo_quantile: which predicted latency quantile ``slo_ms`` bounds (``--slo-quantile``): ``p50``
            (default) or ``p99`` (early exits and FaaS cold starts make the distribution multimodal).
        rps: request rate the monetary cost assumes (``--rps``): VM utilisation and FaaS volume.
        max_dcor: privacy constraint (``--max-dcor``): distance correlation between the input and
            what crosses the first used link must not exceed this; None = no constraint.
        bandwidth_range: ``LO:HI`` of the first link (``--bandwidth-range``): emit the plans optimal
            across the range and the bandwidths where the optimum switches.
        workload: ``inference`` or ``training`` (split learning: backward pass and gradients back).
        inputs: named model inputs as given (``--input input_ids:1x64:int64``): any ``forward``
            argument by name, shape and dtype; optional arguments not given keep their defaults.
        keep_cache: keep ``use_cache`` at the model's default (``--keep-cache``): a decoder's KV
            cache becomes named outputs; by default one forward pass with ``use_cache=False``.
    """

    targets: tuple[str, ...]
    targets_files: tuple[str, ...] = ()
    bandwidths: tuple[str, ...] = ()
    rtts_ms: tuple[float, ...] = ()
    split: tuple[str, ...] = ()
    opset: int = 17
    simplify: bool = True
    verify: bool = True
    verify_samples: int = 8
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
    # serving artifacts (issue 7): "auto" = by tier kind/backend, "none", or kinds (see backends/emit.py)
    emit: tuple[str, ...] = ("auto",)
    # privacy (issue 5)
    privacy_epsilon: float | None = None
    privacy_clip: float | None = None
    # trained defence (issue 19)
    privacy_defence: str | None = None
    privacy_strength: float | None = None
    # planner objectives and variants (issues 5 and 6)
    objective: str = "latency"
    weights: tuple[str, ...] = ()
    slo_ms: float | None = None
    slo_quantile: str = "p50"
    rps: float = 10.0
    max_dcor: float | None = None
    bandwidth_range: str | None = None
    workload: str = "inference"
    # models as users have them (issue 18): named inputs, the KV cache of a decoder
    inputs: tuple[str, ...] = ()
    keep_cache: bool = False

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
