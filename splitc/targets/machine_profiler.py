"""``splitc profile``: measure this machine as a target, from ONNX Runtime timings.

Every figure of the target cost model (:mod:`splitc.targets.cost_model`)::

    node_time = max(flops / (peak * efficiency[op_class]), bytes_moved / memory_bandwidth) + op_overhead
    (a node inside another's kernel: its FLOPs only; plus layout conversions; plus run_overhead per partition)

is fitted from *microbenchmarks*: tiny PyTorch modules (runs of convolutions, one linear layer,
one attention block, fusion candidates, ...) that go through the compiler's own front end
(``torch.fx`` trace + :class:`~splitc.core.passes.profile.ProfilePass`, so FLOPs, bytes and op
classes are counted exactly as for a real model) and the same TorchScript ONNX exporter, then
run in ONNX Runtime with the user's thread count, timed by the one method of
:mod:`splitc.targets.timing` (warm-up, 10th percentile). Each benchmark is predicted as a whole
session run (:func:`~splitc.targets.cost_model.subgraph_time`) and compared with its timing. The
fit, in order:

1. **Per-run and per-node overhead.** A chain of ``N`` alternating multiply / ReLU
   ops on a small feature map (1x64x14x14: large enough for ONNX Runtime to hand
   each kernel to its thread pool, as in real layers) is timed for several ``N``;
   a least-squares line ``t = run_overhead + N * slope`` gives the fixed cost of
   one ``session.run`` call (the intercept: the target's ``run_overhead``, paid once by
   every partition) and, once the bandwidth is known, the fixed cost of one kernel:
   ``op_overhead = slope - node_bytes / memory_bandwidth``.
2. **Memory bandwidth.** ``y = 1.5 * x`` on flat tensors reads and writes every
   byte once: ``bandwidth = (in_bytes + out_bytes) / t_net`` (``t_net = t - run_overhead``).
   Sizes of a batch-1 activation (0.5-4 MiB per tensor) stay in the last-level cache, a
   64 MiB one does not; the model's ``memory_bandwidth`` is the median over activation sizes
   because those are the tensors the cost model is applied to; the DRAM figure is recorded
   in the notes.
3. **Peak FP32 rate.** ``peak = max(flops / t_net)`` over the compute-bound
   benchmarks (convolutions, matmuls, attention and one large GEMM): the best rate
   this runtime reaches here, so every efficiency is in (0, 1].
4. **Efficiency per op class.** With peak, bandwidth and overheads fixed, the efficiency
   ``e`` of class ``c`` minimises the time-weighted squared log error of the cost model over
   that class's benchmarks (log grid over [1e-3, 1], refined; where memory time dominates the
   objective is flat and the largest minimiser is taken). Convolutions are timed as **runs of
   three** (conv + BatchNorm each), the way a network holds them, not one by one: ONNX Runtime
   converts a run's input into its blocked (NCHWc) layout and its output back once, so a
   single-convolution benchmark pays two conversions a network's consecutive convolutions share.
   ``other`` takes the element-wise figure, ``view`` is 1 (free), ``data_movement`` has no FLOPs.
5. **Layout conversions.** The factor ``layout_conversion`` (conversions cost ``factor * bytes /
   bandwidth``) is chosen on a grid, with the convolution efficiencies refitted for each value,
   to best predict the runs of three and single convolutions together (role ``layout``); 0 when
   the backend converts nothing.
6. **Fused kernels.** Candidate node sequences (:data:`CANDIDATE_PATTERNS`: conv+act,
   conv+binary(+act), matmul+act, matmul+binary(+norm), binary+act, binary+norm, norm+act) are
   timed on shapes where the follower would cost a large share as a kernel of its own. Each is
   declared (``fused_patterns``) only if, with the efficiencies of the classes involved refitted
   on both sides, it lowers the mean squared log error of the benchmarks it changes by 20 % and
   by 1e-3: a measured decision, not a guess. Steps 5 and 6 run twice.

Predictions of the microbenchmarks after the fit (and their errors) are kept in
:class:`ProfileResult` and written to the target's notes. LitePred (NSDI 2024) adapts a predictor
to a new device from few measurements; here every figure is refitted per machine from ~50 short
benchmarks (~1-3 min), and ``splitc profile --model`` (:mod:`splitc.targets.model_profiler`) adds
one model's own node times for the planner to use as measured figures.

**On a GPU** (``--device cuda``) the same modules, after the same trace and profile
pass, run as the traced ``torch.fx.GraphModule`` (what the compiler's cut machinery
hands each partition) in eager PyTorch on CUDA: fp32 with PyTorch's default math
settings (recorded in the notes), batch 1, under ``torch.inference_mode``. One timed
run is ``perf_counter`` around the call and a ``torch.cuda.synchronize()`` (the time a
caller waits; eager at batch 1 is mostly bound by the host launching kernels, which
CUDA events between two kernels would not see whole). The fit is unchanged; the
"per-run" overhead is then one Python call of the module plus the synchronisation,
and ``op_overhead`` is the eager dispatch + launch cost of one kernel. The peak GEMM
is 4096^3 (a 1024^3 GEMM lasts about as long as its launch on such a GPU). The target's
``backend`` is ``torch`` and its memory is the GPU's (``torch.cuda.get_device_properties``).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import logging
import math
import os
import platform
import re
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from splitc.errors import SplitcError
from splitc.core.op_classes import OP_CLASSES
from splitc.core.progress import progress as progress_bar
from splitc.targets.cost_model import kernel_roles, subgraph_time
from splitc.targets.target import KINDS, Target, write_targets_file
from splitc.targets.timing import TIMING_PERCENTILE, make_session, time_session
from splitc.units import format_bandwidth, format_bytes, format_flops, format_seconds, parse_duration, \
    parse_link_bandwidth
from splitc.core.passes.profile import FLOPS, IN_BYTES, OUT_BYTES, PARAM_BYTES

__all__ = ["ProfileConfig", "Measurement", "ProfileResult", "profile_machine", "check_output_path",
           "machine_memory_bytes", "microbenchmarks", "DEVICES", "check_device", "time_torch", "make_session",
           "time_session", "fit", "CANDIDATE_PATTERNS", "write_profile"]

log = logging.getLogger("splitc")

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
#: Classes whose efficiency is fitted from their own benchmarks.
_FITTED = ("conv", "conv_depthwise", "matmul", "attention", "norm", "pool", "elementwise", "reduction")
_COMPUTE_ROLES = ("conv", "matmul", "attention", "peak")
#: Overhead chains run on a late-CNN-stage feature map (50 KiB): big enough that ONNX Runtime
#: hands each kernel to its thread pool, as it does in real layers (16 floats would not).
_CHAIN_SHAPE = (1, 64, 14, 14)
#: A pattern is declared fused only if that cuts its benchmarks' squared log error by 20 %.
_FUSION_GAIN = 0.8
#: ... and by at least this much of the time-weighted mean squared log error (~3 % rms).
_FUSION_MIN_GAIN = 1e-3
#: Where the microbenchmarks run: ``cpu`` = ONNX Runtime's CPU provider, ``cuda`` = eager torch on a GPU.
DEVICES = ("cpu", "cuda")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ProfileConfig:
    """What ``splitc profile`` was asked to do.

    Attributes:
        name: the target's name (also how ``--target`` will refer to it).
        kind: one of :data:`~splitc.targets.target.KINDS`.
        threads: ONNX Runtime intra-op threads (0 = ONNX Runtime's default); unused on ``cuda``.
        quick: fewer shapes and repeats (< 30 s), for tests and smoke runs.
        uplink_bandwidth: default uplink to the next tier (an assumption, not measured).
        uplink_rtt: round-trip time of that uplink.
        usable_memory_fraction: share of the machine's memory a partition may use.
        watts: with ``usd_per_kwh``: an ``energy`` price model instead of ``free``.
        usd_per_kwh: electricity price for the energy model.
        command: the command line, recorded in the notes.
        device: one of :data:`DEVICES`: ONNX Runtime on the CPU, or eager torch on the current CUDA GPU.
    """

    name: str
    kind: str = "edge"
    threads: int = 0
    quick: bool = False
    uplink_bandwidth: str = "100mbps"
    uplink_rtt: str = "20ms"
    usable_memory_fraction: float = 0.7
    watts: float | None = None
    usd_per_kwh: float | None = None
    command: str = ""
    device: str = "cpu"

    def validate(self) -> None:
        """Check every field before any timing starts.

        Raises:
            SplitcError: naming the flag that is wrong.
        """
        if not isinstance(self.name, str) or not _NAME.match(self.name.strip().lower()):
            raise SplitcError(f"--name {self.name!r} is not a valid target name",
                              "use lower-case letters, digits, '.', '_' or '-', e.g. --name my-laptop")
        if self.kind not in KINDS:
            raise SplitcError(f"--kind {self.kind!r} is not a tier kind", f"valid: {', '.join(KINDS)}")
        if self.threads < 0 or self.threads > 4096:
            raise SplitcError(f"--threads must be 0 (ONNX Runtime's default) or a positive count, got {self.threads}",
                              f"this machine has {os.cpu_count()} logical CPUs")
        if not 0 < self.usable_memory_fraction <= 1:
            raise SplitcError(f"--usable-memory-fraction must be in (0, 1], got {self.usable_memory_fraction:g}")
        parse_link_bandwidth(self.uplink_bandwidth, "--uplink-bandwidth")  # SplitcError with the accepted units
        if parse_duration(self.uplink_rtt) < 0:
            raise SplitcError(f"--uplink-rtt must not be negative, got {self.uplink_rtt!r}")
        if (self.watts is None) != (self.usd_per_kwh is None):
            raise SplitcError("--watts and --usd-per-kwh go together (an energy price model)",
                              "give both, or neither for a free device")
        for flag, value in (("--watts", self.watts), ("--usd-per-kwh", self.usd_per_kwh)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise SplitcError(f"{flag} must be a positive number, got {value:g}")
        check_device(self.device)


def check_device(device: str) -> None:
    """Refuse an unknown ``--device``, or ``cuda`` where torch sees no GPU, before any timing.

    Raises:
        SplitcError: one line saying what is missing and what to do instead.
    """
    if device not in DEVICES:
        raise SplitcError(f"--device {device!r} is not known", f"valid: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        raise SplitcError(f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, {build})",
                          "profile the CPU with ONNX Runtime (--device cpu, the default), or run on a machine "
                          "with an NVIDIA GPU and a CUDA build of torch")


def check_output_path(path: str | Path, force: bool) -> Path:
    """Refuse an output that exists (without ``force``) or cannot be written, in a second.

    Args:
        path: the YAML file to write.
        force: overwrite an existing file.

    Returns:
        The path.

    Raises:
        SplitcError: the path is a folder, exists without ``force``, or its folder is
            missing or not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise SplitcError(f"-o {path} is a folder", "give the path of the YAML file to write, e.g. -o my-laptop.yaml")
    if path.exists() and not force:
        raise SplitcError(f"-o {path} already exists", "pass --force to overwrite it, or choose another path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SplitcError(f"cannot write -o {path}: folder {parent} does not exist", "create the folder first")
    try:  # the only reliable writability test is writing (ACLs, read-only mounts, root)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".splitc-profile-", delete=True):
            pass
    except OSError as err:
        raise SplitcError(f"cannot write -o {path}: {err.strerror or err}", "choose a writable folder") from None
    return path


# --------------------------------------------------------------------------- microbenchmarks


@dataclass(frozen=True)
class Microbenchmark:
    """One tiny model to time.

    Attributes:
        name: what it is, e.g. ``"conv 3x3 64->64 @56"``.
        role: the op class whose efficiency it informs, or ``overhead`` / ``bandwidth`` /
            ``peak`` / ``fusion`` / ``layout`` / ``data_movement`` (information only).
        build: returns the module and its input shapes.
        quick: also run in ``--quick`` mode.
        param: the chain length (``overhead``) or a label used by the fit.
    """

    name: str
    role: str
    build: Callable[[], tuple[nn.Module, list[tuple[int, ...]]]]
    quick: bool = False
    param: int = 0


class _Chain(nn.Module):
    """``n`` alternating multiply / ReLU nodes on a tiny tensor: pure per-kernel overhead."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n):  # alternate so no two neighbours are the same op (nothing to merge)
            x = torch.relu(x) if i % 2 else x * 1.5
        return x


class _Leaf(nn.Module):
    """Hold a torch.nn layer so fx keeps it one ``call_module`` node, as inside a real model."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class _Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.5


class _Fn(nn.Module):
    """Wrap a function of one input (traced as call_function / call_method nodes)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class _Fn2(_Fn):
    """Wrap a function of two inputs (fx cannot trace ``*args`` forwards)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.fn(a, b)


class _SelfAttention(nn.Module):
    """``nn.MultiheadAttention(x, x, x)`` as torchvision's ViT encoder block calls it."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, need_weights=False)
        return out


class _Sdpa(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class _ConvChain(nn.Module):
    """Convolutions in a row, each followed by BatchNorm: a run of a real CNN.

    ONNX Runtime converts the input into its blocked layout once and the output back once and
    folds each BatchNorm into its convolution: what one convolution costs inside a network, which
    a single-convolution benchmark (two conversions per convolution) over-states. No activations,
    so the run says nothing about fusion (the ``fusion`` benchmarks do).
    """

    def __init__(self, channels: list[int], k: int, stride: int = 1, depthwise: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
            layers += [nn.Conv2d(cin, cout, k, stride if i == 0 else 1, k // 2, groups=cin if depthwise else 1,
                                 bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _ConvAct(nn.Module):
    """conv -> activation (ReLU, Hardswish): ONNX Runtime may run both in one kernel."""

    def __init__(self, cin: int, cout: int, k: int, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class _ResidualTail(nn.Module):
    """ResNet block tail inside a network: y = relu(conv1x1(x)); relu(conv1x1(y) + y) (conv + add + relu).

    The skip tensor ``y`` comes from a convolution, as inside a network (a model input in the
    other operand of the add would not be in the blocked layout, and ONNX Runtime would not fuse).
    """

    def __init__(self, cin: int, c: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(cin, c, 1, bias=False)
        self.conv_b = nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv_a(x))
        return torch.relu(self.conv_b(y) + y)


class _AddRelu(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.relu(a + b)


class _NormAct(nn.Module):
    """BatchNorm not after a convolution (pre-activation blocks) -> ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(x * 1.5))


class _LinearGelu(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.fc, self.act = nn.Linear(cin, cout), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class _LinearAdd(nn.Module):
    """Linear -> + residual (the output projection of a transformer block)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x)


class _LinearAddNorm(nn.Module):
    """ViT block boundary: linear -> + residual -> LayerNorm (ONNX Runtime: SkipLayerNorm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc, self.norm = nn.Linear(dim, dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.fc(x))


class _AddNorm(nn.Module):
    """+ residual -> LayerNorm on two plain tensors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.norm(a + b)


def _conv(cin: int, cout: int, k: int, hw: int, stride: int = 1, groups: int = 1) -> Callable:
    return lambda: (nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), [(1, cin, hw, hw)])


def _chain(channels: list[int], k: int, hw: int, stride: int = 1, depthwise: bool = False) -> Callable:
    return lambda: (_ConvChain(channels, k, stride, depthwise), [(1, channels[0], hw, hw)])


def _linear(tokens: int, cin: int, cout: int) -> Callable:
    return lambda: (nn.Linear(cin, cout), [(1, tokens, cin)] if tokens > 1 else [(1, cin)])


def _unary(fn: Callable, shape: tuple[int, ...]) -> Callable:
    return lambda: (_Fn(fn), [shape])


def microbenchmarks(quick: bool = False, device: str = "cpu") -> list[Microbenchmark]:
    """The benchmark set: shapes of ResNet / MobileNet / ViT layers at batch 1.

    Convolutions are timed in runs of three (conv + BatchNorm each), the way a network holds
    them; single convolutions (role ``layout``) show what a run's two layout conversions cost;
    pairs and triples (role ``fusion``) show which node sequences the backend fuses.

    Args:
        quick: only the reduced set (a few shapes per class).
        device: ``cuda`` only changes the peak GEMM's size (4096^3, quick 2048^3): a GPU runs a
            1024^3 GEMM in about one kernel launch, so it would not show the peak rate.

    Returns:
        The benchmarks, in the order they run.
    """
    mb = Microbenchmark
    chains = (1, 64) if quick else (1, 16, 64, 128)
    sizes_mib = (1, 4) if quick else (0.5, 1, 2, 4)
    if device == "cuda":  # up to 16 MiB in + 16 MiB out: still in a data-centre GPU's L2, like batch-1 activations
        sizes_mib = (1, 16) if quick else (0.5, 1, 2, 4, 8, 16)
    benches = [mb(f"chain of {n} small ops", "overhead", (lambda n=n: (_Chain(n), [_CHAIN_SHAPE])), True, n)
               for n in chains]
    benches += [mb(f"scale {s:g} MiB", "bandwidth", (lambda s=s: (_Scale(), [(int(s * 2**18),)])), True)
                for s in sizes_mib]
    benches += [mb(f"scale {32 if quick else 64} MiB (DRAM)", "dram",
                   lambda: (_Scale(), [((32 if quick else 64) * 2**18,)]), True)]
    big = (2048 if quick else 4096) if device == "cuda" else (512 if quick else 1024)
    benches += [mb(f"gemm {big}^3", "peak", lambda: (nn.Linear(big, big, bias=False), [(big, big)]), True)]
    benches += [
        mb("conv 7x7/2 3->64 @224 + bn", "conv", _chain([3, 64], 7, 224, 2)),
        mb("3 x conv 3x3 64 @56 + bn", "conv", _chain([64] * 4, 3, 56), True),
        mb("3 x conv 3x3 128 @28 + bn", "conv", _chain([128] * 4, 3, 28)),
        mb("3 x conv 3x3 256 @14 + bn", "conv", _chain([256] * 4, 3, 14), True),
        mb("3 x conv 3x3 512 @7 + bn", "conv", _chain([512] * 4, 3, 7)),
        mb("3 x conv 1x1 64<->256 @56 + bn", "conv", _chain([64, 256, 64, 256], 1, 56)),
        mb("3 x conv 1x1 512<->128 @28 + bn", "conv", _chain([512, 128, 512, 128], 1, 28), True),
        mb("3 x conv 1x1 1024<->256 @14 + bn", "conv", _chain([1024, 256, 1024, 256], 1, 14)),
        mb("3 x conv 1x1 16<->64 @112 + bn", "conv", _chain([16, 64, 16, 64], 1, 112)),
        mb("3 x conv 1x1 40<->240 @28 + bn", "conv", _chain([40, 240, 40, 240], 1, 28)),
        mb("conv 16x16/16 3->768 @224 (patchify)", "conv", lambda: (nn.Conv2d(3, 768, 16, 16), [(1, 3, 224, 224)])),
        mb("3 x conv dw3x3 72 @56 + bn", "conv_depthwise", _chain([72] * 4, 3, 56, depthwise=True), True),
        mb("3 x conv dw5x5 120 @28 + bn", "conv_depthwise", _chain([120] * 4, 5, 28, depthwise=True)),
        mb("3 x conv dw3x3 480 @14 + bn", "conv_depthwise", _chain([480] * 4, 3, 14, depthwise=True)),
        mb("2 x conv dw7x7 96 @56 + bn", "conv_depthwise", _chain([96] * 3, 7, 56, depthwise=True)),
        # single convolutions: a layout conversion in and one out around each (what the runs above share)
        mb("conv 1x1 16->64 @112", "layout", _conv(16, 64, 1, 112), True),
        mb("conv 3x3 64->64 @56", "layout", _conv(64, 64, 3, 56)),
        mb("conv 1x1 512->128 @28", "layout", _conv(512, 128, 1, 28), True),
        mb("conv dw3x3 72 @56", "layout", _conv(72, 72, 3, 56, groups=72), True),
        mb("linear 197x768->3072", "matmul", _linear(197, 768, 3072), True),
        mb("linear 197x3072->768", "matmul", _linear(197, 3072, 768)),
        mb("linear 197x768->768", "matmul", _linear(197, 768, 768)),
        mb("linear 1x2048->1000", "matmul", _linear(1, 2048, 1000), True),
        mb("linear 1x960->1280", "matmul", _linear(1, 960, 1280)),
        mb("mha 197x768, 12 heads", "attention", lambda: (_SelfAttention(768, 12), [(1, 197, 768)]), True),
        mb("mha 197x384, 6 heads", "attention", lambda: (_SelfAttention(384, 6), [(1, 197, 384)])),
        mb("sdpa 12x197x64", "attention", lambda: (_Sdpa(), [(1, 12, 197, 64)] * 3)),
        mb("layernorm 197x768", "norm", lambda: (nn.LayerNorm(768), [(1, 197, 768)]), True),
        mb("batchnorm 256 @28", "norm", lambda: (nn.BatchNorm2d(256).eval(), [(1, 256, 28, 28)])),
        mb("maxpool 3x3/2 64 @112", "pool", lambda: (nn.MaxPool2d(3, 2, 1), [(1, 64, 112, 112)]), True),
        mb("global avgpool 2048 @7", "pool", lambda: (nn.AdaptiveAvgPool2d(1), [(1, 2048, 7, 7)])),
        mb("global avgpool 960 @14", "pool", lambda: (nn.AdaptiveAvgPool2d(1), [(1, 960, 14, 14)])),
        mb("relu 64 @112", "elementwise", _unary(torch.relu, (1, 64, 112, 112)), True),
        mb("add 256 @56", "elementwise", lambda: (_Fn2(torch.add), [(1, 256, 56, 56)] * 2)),
        mb("hardswish 16 @112", "elementwise", lambda: (nn.Hardswish(), [(1, 16, 112, 112)])),
        mb("gelu 197x3072", "elementwise", lambda: (nn.GELU(), [(1, 197, 3072)])),
        mb("softmax 12x197x197", "reduction", _unary(lambda x: x.softmax(-1), (1, 12, 197, 197)), True),
        mb("mean 960 @7 (keepdim)", "reduction", _unary(lambda x: x.mean((2, 3), keepdim=True), (1, 960, 7, 7))),
        mb("cat 2x128 @28", "data_movement", lambda: (_Fn2(lambda a, b: torch.cat([a, b], 1)), [(1, 128, 28, 28)] * 2)),
        mb("transpose 768x197", "data_movement",
           _unary(lambda x: x.transpose(1, 2).contiguous(), (1, 768, 197)), True),
        # fusion candidates: shapes where the follower costs a large share when it is a kernel of its own
        mb("conv 1x1 16->64 @112 + relu", "fusion", lambda: (_ConvAct(16, 64, 1, nn.ReLU()), [(1, 16, 112, 112)]),
           True),
        mb("conv 1x1 40->240 @28 + hardswish", "fusion",
           lambda: (_ConvAct(40, 240, 1, nn.Hardswish()), [(1, 40, 28, 28)])),
        mb("residual tail 64 @112: conv + add + relu", "fusion", lambda: (_ResidualTail(16, 64), [(1, 16, 112, 112)]),
           True),
        mb("add + relu 256 @28", "fusion", lambda: (_AddRelu(), [(1, 256, 28, 28)] * 2)),
        mb("batchnorm + relu 256 @28", "fusion", lambda: (_NormAct(256), [(1, 256, 28, 28)])),
        mb("linear 197x96->1536 + gelu", "fusion", lambda: (_LinearGelu(96, 1536), [(1, 197, 96)])),
        mb("linear 197x192 + add", "fusion", lambda: (_LinearAdd(192), [(1, 197, 192)])),
        mb("linear 197x192 + add + layernorm", "fusion", lambda: (_LinearAddNorm(192), [(1, 197, 192)]), True),
        mb("add + layernorm 197x768", "fusion", lambda: (_AddNorm(768), [(1, 197, 768)] * 2), True),
    ]
    return [b for b in benches if b.quick or not quick]



# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    """One timed microbenchmark.

    Attributes:
        name, role: from the :class:`Microbenchmark`.
        seconds: typical wall time of one ``session.run`` (:func:`splitc.targets.timing.time_session`).
        runs: timed runs behind it.
        spread: (p90 - p10) / p10 of those runs (a noise indicator).
        flops, bytes_moved: summed over the benchmark's nodes, as the profile pass counts them.
        nodes: compute nodes of the traced graph; ``onnx_nodes``: nodes of the exported ONNX graph.
        predicted: cost-model seconds of one run after the fit (run overhead included).
        param: chain length for ``overhead`` benchmarks.
        graph_nodes: the profiled fx nodes (not serialised), re-costed during the fit.
    """

    name: str
    role: str
    seconds: float
    runs: int
    spread: float
    flops: int
    bytes_moved: int
    nodes: int
    onnx_nodes: int
    param: int = 0
    predicted: float | None = None
    graph_nodes: list[torch.fx.Node] = field(default_factory=list, repr=False)

    def module(self) -> torch.fx.GraphModule:
        """The profiled graph the nodes belong to."""
        return self.graph_nodes[0].graph.owning_module

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "graph_nodes"}
        return out


def _traced(module: nn.Module, shapes: list[tuple[int, ...]]) -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    """Trace and profile ``module`` exactly as the compiler does (same trace, same profile pass)."""
    from splitc.core.context import CompileContext
    from splitc.core.options import CompileOptions
    from splitc.core.loader import InputSpec, trace_model
    from splitc.core.passes.profile import ProfilePass

    if type(module).__module__.startswith("torch.nn"):
        module = _Leaf(module)  # a model's layers are call_module leaves (their parameter bytes count)
    specs = [InputSpec(f"x{i}", tuple(s)) for i, s in enumerate(shapes)]
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*s, generator=gen) for s in shapes]
    gm = trace_model(module.eval(), specs).graph_module
    ctx = CompileContext(CompileOptions(targets=()), [], specs, inputs)
    ProfilePass().run(gm, ctx)
    return gm, inputs


def _onnx_bytes(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> bytes:
    """The TorchScript ONNX export splitc uses for partitions (opset 17, constants folded)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(gm, tuple(inputs), buffer, input_names=[f"x{i}" for i in range(len(inputs))],
                          opset_version=17, do_constant_folding=True, dynamo=False)
    return buffer.getvalue()


def time_torch(module: Callable[..., Any], inputs: list[torch.Tensor], *, min_runs: int, min_seconds: float,
               max_runs: int = 2000) -> tuple[float, int, float]:
    """Median seconds of ``module(*inputs)`` on CUDA, synchronised, after a warm-up.

    (Tensors on the CPU are timed the same way without the synchronisation: that is how
    the tests exercise this path on a machine without a GPU.) Each timed run is ``perf_counter``
    around the call and a ``torch.cuda.synchronize()``: what a caller waits for. Eager PyTorch at
    batch 1 is mostly bound by the host dispatching and launching kernels, so GPU-side CUDA events
    would miss part of it. Warm-up: 3 runs and at least ``min_seconds / 5`` (cuDNN/cuBLAS handles
    and algorithm choice, the caching allocator, lazy module loading). Then at least ``min_runs``
    runs and ``min_seconds``, at most ``max_runs``; the median resists host-side hiccups.

    Returns:
        (median seconds, runs, (max - min) / median).
    """
    sync = torch.cuda.synchronize if any(x.is_cuda for x in inputs) else (lambda: None)
    with torch.inference_mode():
        start = time.perf_counter()
        runs = 0
        while runs < 3 or time.perf_counter() - start < min_seconds / 5:
            module(*inputs)
            runs += 1
        sync()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_seconds):
            t0 = time.perf_counter()
            module(*inputs)
            sync()
            times.append(time.perf_counter() - t0)
    arr = np.array(times)
    median = float(np.median(arr))
    return median, len(times), float((arr.max() - arr.min()) / median)


def _graph_figures(gm: torch.fx.GraphModule) -> tuple[list[torch.fx.Node], int, int]:
    """Compute nodes, their FLOPs and bytes moved, as the profile pass counted them."""
    from splitc.core.graph import COMPUTE_OPS

    nodes = [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]
    moved = sum(n.meta.get(IN_BYTES, 0) + n.meta.get(OUT_BYTES, 0)
                + n.meta.get(PARAM_BYTES, 0) for n in nodes)
    return nodes, int(sum(n.meta.get(FLOPS, 0) for n in nodes)), int(moved)


def _measure_torch(bench: Microbenchmark, quick: bool, device: str = "cuda") -> Measurement:
    """Time the traced GraphModule itself in eager torch on ``device`` (no export: no ONNX nodes)."""
    torch.manual_seed(0)
    module, shapes = bench.build()
    gm, inputs = _traced(module, shapes)
    nodes, flops, moved = _graph_figures(gm)  # the fx nodes keep their meta when the weights move
    gm = gm.to(device)
    seconds, runs, spread = time_torch(gm, [x.to(device) for x in inputs], min_runs=10 if quick else 30,
                                       min_seconds=0.05 if quick else 0.3)
    return Measurement(bench.name, bench.role, seconds, runs, spread, flops=flops, bytes_moved=moved,
                       nodes=len(nodes), onnx_nodes=0, param=bench.param, graph_nodes=nodes)


def _measure(bench: Microbenchmark, threads: int, quick: bool) -> Measurement:
    import onnx

    torch.manual_seed(0)
    module, shapes = bench.build()
    gm, inputs = _traced(module, shapes)
    model = _onnx_bytes(gm, inputs)
    session = make_session(model, threads)
    feeds = {f"x{i}": x.numpy() for i, x in enumerate(inputs)}
    seconds, runs, spread = time_session(session, feeds, min_runs=3 if quick else 7,
                                         min_seconds=0.04 if quick else 0.25)
    nodes, flops, moved = _graph_figures(gm)
    return Measurement(bench.name, bench.role, seconds, runs, spread, flops=flops, bytes_moved=moved,
                       nodes=len(nodes), onnx_nodes=len(onnx.load_from_string(model).graph.node),
                       param=bench.param, graph_nodes=nodes)



# --------------------------------------------------------------------------- fitting

#: Fusion patterns tested, in order (a triple only after its leading pair was declared).
CANDIDATE_PATTERNS: tuple[tuple[str, ...], ...] = (
    ("conv", "act"), ("conv", "binary"), ("conv", "binary", "act"), ("matmul", "act"), ("matmul", "binary"),
    ("binary", "act"), ("binary", "norm"), ("matmul", "binary", "norm"), ("norm", "act"),
)
#: Layout-conversion factors tried (reads + writes of the tensor at memory bandwidth per conversion).
_LAYOUT_GRID = np.round(np.arange(0.0, 4.01, 0.25), 2)
#: Roles whose benchmarks judge the kernel structure (fusion patterns, layout conversions).
_STRUCTURE_ROLES = ("conv", "conv_depthwise", "layout", "fusion", "matmul", "norm", "elementwise")
_FIT_ROUNDS = 2


@dataclass
class Fit:
    """The fitted figures and the evidence behind each.

    Attributes:
        run_overhead_s: intercept of the overhead line (one ``session.run``): the target's ``run_overhead``.
        op_overhead_s: slope of the overhead line (one kernel).
        memory_bandwidth: bytes/s at activation sizes (what the model uses).
        dram_bandwidth: bytes/s of the large copy (information).
        peak_fp32: best FLOP/s reached.
        peak_from: the benchmark that reached it.
        efficiency: per op class.
        fused: classes declared fused as a whole (older targets; the fit now declares patterns).
        fusion_evidence: per candidate pattern, the error with and without it and the decision.
        patterns: the fused patterns declared.
        layout_conversion: the fitted conversion factor.
        layout_evidence: error per factor tried.
    """

    run_overhead_s: float
    op_overhead_s: float
    memory_bandwidth: float
    dram_bandwidth: float
    peak_fp32: float
    peak_from: str
    efficiency: dict[str, float]
    fused: frozenset[str]
    fusion_evidence: dict[str, dict[str, float]]
    patterns: tuple[tuple[str, ...], ...] = ()
    layout_conversion: float = 0.0
    layout_evidence: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fused"] = sorted(self.fused)
        out["patterns"] = ["+".join(p) for p in self.patterns]
        return out


def _net(m: Measurement, run_overhead: float) -> float:
    """Seconds of the graph itself: the timing minus one ``session.run``'s fixed cost (floored)."""
    return max(m.seconds - run_overhead, 0.1 * m.seconds)


def _predict(m: Measurement, target: Target) -> float:
    """The cost model's seconds for one run of the benchmark's graph (run overhead included)."""
    return subgraph_time(m.module(), target)


def _log_error(ms: list[Measurement], target: Target, weighted: bool = False) -> float:
    """Sum of squared log errors of whole runs; ``weighted``: each term times the benchmark's share of the time."""
    total = sum(m.seconds for m in ms)
    return float(sum((m.seconds / total if weighted else 1.0)
                     * math.log(max(_predict(m, target), 1e-12) / m.seconds) ** 2 for m in ms))


def _fit_overhead(ms: list[Measurement]) -> tuple[float, float]:
    """Least-squares line through (chain length, seconds): intercept = per run, slope = per node."""
    n = np.array([m.param for m in ms], dtype=np.float64)
    t = np.array([m.seconds for m in ms])
    slope, intercept = np.polyfit(n, t, 1)
    # a negative intercept or slope is noise on a busy machine; keep both physical
    slope = max(float(slope), 1e-7)
    intercept = min(max(float(intercept), 0.0), float(t.min()))
    return intercept, slope


def _fit_bandwidth_slope(ms: list[Measurement], run_overhead: float) -> float | None:
    """Bandwidth as the inverse slope of ``t_net = c + bytes / bandwidth`` (None if not increasing).

    On a GPU in eager torch one copy's kernel (microseconds) is shorter than its launch,
    so ``bytes / t_net`` would charge the launch to the memory; the slope over sizes
    separates the two (the intercept ``c`` is the per-kernel cost, fitted from the chains).
    """
    if len(ms) < 2:
        return None
    slope, _ = np.polyfit([m.bytes_moved for m in ms], [_net(m, run_overhead) for m in ms], 1)
    return float(1.0 / slope) if slope > 0 else None


def _best_on(grid: np.ndarray, error: Callable[[float], float]) -> tuple[float, int]:
    """Largest grid value within a hair of the minimum error (flat objectives: efficiency then has no effect)."""
    errors = np.array([error(float(e)) for e in grid])
    best = errors.min()
    i = int(np.nonzero(errors <= best + 1e-9 * max(best, 1.0))[0][-1])
    return float(grid[i]), i


def _fit_efficiency(ms: list[Measurement], target: Target, op_class: str) -> float:
    """Largest efficiency that minimises the time-weighted squared log error of the class's benchmarks.

    Weighted by each benchmark's measured time: a partition's latency is a sum of node times, so
    the kernels that take long must be predicted well; an unweighted fit let small, slow-per-FLOP
    shapes (1x1 convs on few channels, tiny linears) drag the class's efficiency down and
    over-predicted the big kernels by ~25 % (resnet50, vit_b_16 partitions). Searched on a log
    grid over [1e-3, 1] (49 points), then refined between the best point's neighbours (25 points).
    """
    def error(e: float) -> float:
        return _log_error(ms, dataclasses.replace(target, efficiency={**target.efficiency, op_class: e}), weighted=True)

    coarse = np.geomspace(1e-3, 1.0, 49)
    _, i = _best_on(coarse, error)
    fine = np.geomspace(coarse[max(i - 1, 0)], coarse[min(i + 1, len(coarse) - 1)], 25)
    return _best_on(fine, error)[0]


def _fit_efficiencies(by_role: dict[str, list[Measurement]], target: Target,
                      classes: tuple[str, ...] = _FITTED) -> Target:
    """Refit the efficiencies of ``classes`` (in :data:`_FITTED` order), each on its own benchmarks."""
    efficiency = dict(target.efficiency)
    for op_class in _FITTED:
        if op_class in classes and by_role.get(op_class):
            efficiency[op_class] = _fit_efficiency(by_role[op_class], target, op_class)
            target = dataclasses.replace(target, efficiency=dict(efficiency))
    efficiency["other"] = efficiency["elementwise"]  # the cost model treats unknown ops as element-wise
    efficiency["data_movement"] = 1.0  # no FLOPs: only bandwidth and overhead matter (see docstring)
    return dataclasses.replace(target, efficiency=efficiency)


#: Op classes whose efficiency a fused role's benchmarks inform.
_ROLE_CLASSES = {"conv": ("conv", "conv_depthwise"), "act": ("elementwise",), "binary": ("elementwise",)}


def _pattern_classes(pattern: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c for role in pattern for c in _ROLE_CLASSES.get(role, (role,)) if c in _FITTED))


def _fit_patterns(by_role: dict[str, list[Measurement]], structure: list[Measurement],
                  target: Target) -> tuple[Target, dict[str, dict[str, float]]]:
    """Declare each candidate pattern only where it explains the timings clearly better (greedy, in order).

    Each side of the comparison refits the efficiencies of the classes the pattern involves (a
    class fitted with its fused neighbours unfused absorbs their cost), then the mean squared log
    error over the benchmarks the pattern changes is compared.
    """
    declared = list(target.fused_patterns)
    evidence: dict[str, dict[str, float]] = {}
    for pattern in CANDIDATE_PATTERNS:
        if pattern in declared or (len(pattern) > 2 and pattern[:-1] not in declared):
            continue
        without = dataclasses.replace(target, fused_patterns=tuple(declared))
        with_ = dataclasses.replace(target, fused_patterns=tuple(declared) + (pattern,))
        relevant = [m for m in structure if kernel_roles(m.graph_nodes, with_) != kernel_roles(m.graph_nodes, without)]
        if not relevant:
            continue
        classes = _pattern_classes(pattern)
        without, with_ = _fit_efficiencies(by_role, without, classes), _fit_efficiencies(by_role, with_, classes)
        err_without = _log_error(relevant, without) / len(relevant)
        err_with = _log_error(relevant, with_) / len(relevant)
        # a clear gain only (relative, and absolute: ~3 % rms log error per benchmark); ties are noise, and
        # unfused is the safe side (it never hides a kernel's fixed cost)
        fused = err_with < _FUSION_GAIN * err_without and err_without - err_with > _FUSION_MIN_GAIN
        evidence["+".join(pattern)] = {"mean_squared_log_error_unfused": err_without,
                                       "mean_squared_log_error_fused": err_with,
                                       "benchmarks": len(relevant), "fused": float(fused)}
        if fused:
            declared.append(pattern)
            target = with_
        else:
            target = without
    return dataclasses.replace(target, fused_patterns=tuple(declared)), evidence


def _fit_layout(by_role: dict[str, list[Measurement]], ms: list[Measurement],
                target: Target) -> tuple[Target, dict[str, float]]:
    """The conversion factor (convolution efficiencies refitted for each) that best predicts the
    convolution runs and single convolutions; the smallest on ties (0 = no conversions)."""
    fits = {float(f): _fit_efficiencies(by_role, dataclasses.replace(target, layout_conversion=float(f)),
                                        ("conv", "conv_depthwise")) for f in _LAYOUT_GRID}
    errors = {f: _log_error(ms, t, weighted=True) for f, t in fits.items()}
    best = min(errors.values())
    factor = min(f for f, e in errors.items() if e <= best * (1 + 1e-6) + 1e-12)
    return fits[factor], {f"{f:g}": e for f, e in errors.items()}


def fit(measurements: list[Measurement], base: Target) -> tuple[Fit, Target]:
    """Fit every cost-model figure from the measurements (see the module docstring).

    Args:
        measurements: the timed microbenchmarks.
        base: a target carrying the non-measured fields (name, kind, memory, price, ...).

    Returns:
        The fit and the target with the fitted figures.
    """
    by_role: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_role.setdefault(m.role, []).append(m)
    run_overhead, slope = _fit_overhead(by_role["overhead"])
    bandwidth = float(np.median([m.bytes_moved / _net(m, run_overhead) for m in by_role["bandwidth"]]))
    if base.backend == "torch":
        bandwidth = _fit_bandwidth_slope(by_role["bandwidth"], run_overhead) or bandwidth
    chain = max(by_role["overhead"], key=lambda m: m.nodes)  # the slope = overhead + one node's memory time
    op_overhead = max(slope - chain.bytes_moved / chain.nodes / bandwidth, 0.05 * slope)
    dram = float(np.median([m.bytes_moved / _net(m, run_overhead) for m in by_role.get("dram", by_role["bandwidth"])]))
    rates = [(m.flops / _net(m, run_overhead), m.name) for r in _COMPUTE_ROLES for m in by_role.get(r, []) if m.flops]
    peak, peak_from = max(rates)
    target = dataclasses.replace(base, peak_flops={"fp32": peak}, memory_bandwidth=bandwidth,
                                 op_overhead_s=op_overhead, run_overhead_s=run_overhead, fused_op_classes=frozenset(),
                                 fused_patterns=(), layout_conversion=0.0, efficiency={c: 1.0 for c in OP_CLASSES})
    structure = [m for r in _STRUCTURE_ROLES for m in by_role.get(r, [])]
    layout_ms = [m for r in ("conv", "conv_depthwise", "layout") for m in by_role.get(r, [])]
    evidence: dict = {}
    layout_evidence: dict = {}
    target = _fit_efficiencies(by_role, target)
    for _ in range(_FIT_ROUNDS):  # layout conversions (convolutions alone), fusions given them, again given both
        if layout_ms:
            target, layout_evidence = _fit_layout(by_role, layout_ms, target)
        target, round_evidence = _fit_patterns(by_role, structure, target)
        evidence.update(round_evidence)
    target = _fit_efficiencies(by_role, target)
    for m in measurements:
        m.predicted = _predict(m, target)
    fitted = Fit(run_overhead, op_overhead, bandwidth, dram, peak, peak_from, dict(target.efficiency), frozenset(),
                 evidence, target.fused_patterns, target.layout_conversion, layout_evidence)
    return fitted, target



# --------------------------------------------------------------------------- the machine


def machine_memory_bytes() -> int:
    """Physical memory: psutil when installed, else /proc/meminfo, else sysconf."""
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _torch_math() -> str:
    """PyTorch's fp32 math settings in force (cuDNN convolutions run TF32 by default)."""
    return (f"cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, matmul TF32 "
            f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}, cudnn.benchmark "
            f"{'on' if torch.backends.cudnn.benchmark else 'off'}")


def _cuda_description() -> str:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return (f"{props.name} ({props.multi_processor_count} SMs), eager PyTorch {torch.__version__} "
            f"(CUDA {torch.version.cuda}), fp32 batch 1 ({_torch_math()}); measured by splitc profile")


def _base_target(config: ProfileConfig, memory: int) -> Target:
    """A valid target with the non-measured fields; the fit fills in the rest."""
    if config.device == "cuda":
        backend, description = "torch", _cuda_description()
    else:
        import onnxruntime as ort

        threads = str(config.threads) if config.threads else "ONNX Runtime's default"
        backend = "onnxruntime"
        description = (f"{_cpu_model()} ({os.cpu_count()} logical CPUs), ONNX Runtime {ort.__version__} CPU, "
                       f"{threads} threads; measured by splitc profile")
    price: dict[str, Any] = {"model": "free"}
    if config.watts is not None:
        price = {"model": "energy", "watts": config.watts, "usd_per_kwh": config.usd_per_kwh}
    spec = {
        "name": config.name, "aliases": [], "kind": config.kind, "backend": backend, "description": description,
        "precisions": ["fp32"], "peak_flops": {"fp32": 1e9}, "memory_bandwidth": "1 GB/s", "memory": memory,
        "usable_memory_fraction": config.usable_memory_fraction,
        "efficiency": {c: 1.0 for c in OP_CLASSES}, "op_overhead": "1us", "fused_op_classes": [],
        "price": price, "uplink": {"bandwidth": config.uplink_bandwidth, "rtt": config.uplink_rtt},
        "sources": [f"measured by splitc profile on {socket.gethostname()}, "
                    f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"],
    }
    return Target.from_dict(spec, origin="splitc profile", where="splitc profile")


# --------------------------------------------------------------------------- the job


@dataclass
class ProfileResult:
    """What ``splitc profile`` measured and fitted.

    Attributes:
        target: the measured target (as written to the YAML file).
        fit: the fitted figures with their evidence.
        measurements: every timed microbenchmark, with its prediction after the fit.
        seconds: wall time of the whole profile.
    """

    target: Target
    fit: Fit
    measurements: list[Measurement]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.to_dict(), "fit": self.fit.to_dict(),
                "measurements": [m.to_dict() for m in self.measurements], "seconds": self.seconds}

    def errors(self) -> dict[str, float]:
        """|predicted / measured - 1| of one run, per benchmark that informs a class, fusion or layout."""
        return {m.name: abs(m.predicted / m.seconds - 1.0) for m in self.measurements
                if m.predicted is not None and m.role not in ("overhead", "bandwidth", "dram", "peak")}


def profile_machine(config: ProfileConfig, progress: Callable[[str], None] | None = None) -> ProfileResult:
    """Time the microbenchmarks on this machine and fit a target.

    Args:
        config: the validated configuration.
        progress: called with one line per stage (the CLI prints it to stderr).

    Returns:
        The result; ``result.target`` is ready for :func:`write_targets_file`.
    """
    config.validate()
    say = progress or (lambda line: None)
    start = time.perf_counter()
    cuda = config.device == "cuda"
    memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if cuda \
        else machine_memory_bytes()
    base = _base_target(config, int(memory))
    benches = microbenchmarks(config.quick, config.device)
    measurements = []
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tracing/export only; keep torch's pool from competing with ORT's
    try:
        for bench in progress_bar(benches, "[profile] microbenchmarks", unit="benchmark", every=10):
            m = _measure_torch(bench, config.quick) if cuda else _measure(bench, config.threads, config.quick)
            measurements.append(m)
            log.debug("[profile] %s: %s (%s of %d runs)", bench.name, format_seconds(m.seconds),
                      "median" if cuda else f"p{TIMING_PERCENTILE}", m.runs)
    finally:
        torch.set_num_threads(torch_threads)
    fitted, target = fit(measurements, base)
    seconds = time.perf_counter() - start
    result = ProfileResult(target, fitted, measurements, seconds)
    target = dataclasses.replace(target, notes=_notes(result, config))
    result.target = target
    say(f"[profile] peak {format_flops(fitted.peak_fp32)} ({fitted.peak_from}), memory "
        f"{format_bandwidth(fitted.memory_bandwidth * 8, as_bytes=True)}, op overhead "
        f"{format_seconds(fitted.op_overhead_s)}, run overhead {format_seconds(fitted.run_overhead_s)}, "
        f"fused: {', '.join('+'.join(p) for p in fitted.patterns) or 'none'}, layout conversion "
        f"{fitted.layout_conversion:g} ({seconds:.1f}s)")
    return result


def _notes(result: ProfileResult, config: ProfileConfig) -> str:
    """Every measured figure and the command, for the YAML's ``notes``."""
    f = result.fit
    errors = result.errors()
    eff = ", ".join(f"{c} {f.efficiency[c]:.3g}" for c in OP_CLASSES)
    worst = max(errors, key=errors.get) if errors else None
    cuda = config.device == "cuda"
    runtime = (f"eager torch {torch.__version__} on CUDA, fp32 batch 1, {_torch_math()}" if cuda
               else f"ONNX Runtime threads: {config.threads or 'default'}")
    call = "call (module + torch.cuda.synchronize)" if cuda else "session.run"
    lines = [
        f"Measured by: {config.command or 'splitc profile --name ' + config.name} "
        f"({'quick' if config.quick else 'full'} profile, {len(result.measurements)} microbenchmarks in "
        f"{result.seconds:.0f} s; {runtime}).",
        f"Per {call} overhead (run_overhead, paid once per partition) {format_seconds(f.run_overhead_s)}; "
        f"per-kernel op_overhead {format_seconds(f.op_overhead_s)} (intercept and slope of a line through chains "
        f"of small ops, less their memory time).",
        f"Memory bandwidth {format_bandwidth(f.memory_bandwidth * 8, as_bytes=True)}: median of y = 1.5x over "
        f"activation-sized tensors ({'L2-resident' if cuda else 'cache-resident'} at batch 1); a large copy "
        f"reaches {format_bandwidth(f.dram_bandwidth * 8, as_bytes=True)} ({'HBM' if cuda else 'DRAM'}); "
        f"memory is the {'GPU' if cuda else 'machine'}'s.",
        f"Peak fp32 {format_flops(f.peak_fp32)}: best achieved, by '{f.peak_from}'"
        + ("; fp16/bf16/int8 not measured (precisions: fp32 only)." if cuda else "."),
        f"Efficiency (fitted per class; other = elementwise; data_movement has no FLOPs): {eff}.",
        "Fused patterns (each declared only where it predicts the benchmarks it changes clearly better): "
        + (", ".join("+".join(p) for p in f.patterns) or "none") + f"; tested: {', '.join(f.fusion_evidence) or 'none'}.",
        f"Layout conversion {f.layout_conversion:g} (reads + writes of a tensor at memory bandwidth per conversion "
        f"into or out of the blocked layout, fitted on runs of three convolutions and single ones).",
        f"Microbenchmark prediction error after the fit: median {np.median(list(errors.values())) * 100:.0f}%, "
        f"worst {errors[worst] * 100:.0f}% ({worst})." if errors else "",
        "Not measured (assumptions): price model "
        + ("energy from --watts/--usd-per-kwh" if config.watts else "free (a device you already own)")
        + f"; uplink {config.uplink_bandwidth} / {config.uplink_rtt} (flags or defaults); usable memory "
          f"{config.usable_memory_fraction:g} of {format_bytes(result.target.memory_bytes)}.",
    ]
    return " ".join(line for line in lines if line)


def write_profile(result: ProfileResult, path: str | Path) -> None:
    """Write the measured target as a targets file, atomically (no half-written YAML on failure)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_targets_file([result.target], tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SplitcError(f"cannot write -o {path}: {err.strerror or err}", "choose a writable folder") from None
