"""The strong inversion attacker: a closed-form linear inverse of the wire plus a trained correction.

Why a linear part: at a shallow cut (a ``relu(BN(conv3x3(x)))`` stem) most of the wire is
*linear* in a small patch of the input, so the input is almost linearly recoverable. A
gradient-trained conv decoder crawls towards that precise inverse (the channels are strongly
correlated linear functions of the same pixels: an ill-conditioned least-squares problem)
and plateaus far below it: on the MNIST example's stem a 3-layer conv decoder stops at
~28 dB while the closed-form ridge inverse gets ~42 dB with no training at all
(/work/scratch/privacy/FINDINGS.md, section 0). So the attacker here:

1. **standardises the wire, layout-aware** (:class:`WireNormalizer`): ``[C, h, w]`` tensors per
   channel (statistics over samples and positions), vectors per feature, with the attacker's
   training statistics; several tensors are standardised apart, spatial ones resized (nearest)
   to the largest grid and concatenated on channels, otherwise flattened and concatenated;
2. **fits a ridge regression in closed form** (:func:`fit_ridge_decoder`): each wire position
   predicts the ``f x f`` block of input pixels above it (``f = H / h``) from its ``k x k`` wire
   patch (k = 5 at full resolution, 3 below), i.e. ``Conv2d(C, c f^2, k)`` + ``pixel_shuffle(f)``;
   a ``Linear`` for a vector wire. Normal equations in float64 on at most ``max_rows`` seeded
   rows; the ridge ``lambda * mean(diag(A^T A))`` is picked on the validation split;
3. **adds a non-linear correction** (:class:`HybridDecoder`): a :class:`ConvDecoder` body (or an
   MLP for a vector wire) whose last layer starts at zero, so training starts exactly at the
   ridge solution; output ``clamp(linear + net, lo, hi)``, and the loss is taken on the clamped
   output (a background pixel pushed below 0 costs nothing, as a sigmoid saturates);
4. **trains** with Adam, one epoch of linear warm-up then a cosine to 0, a seeded validation
   split scored every epoch, and keeps the best-validation decoder (early stopping on
   ``patience``; with the cosine schedule the best epoch is usually the last).

The other family, :class:`ConvDecoder` / :class:`MLPDecoder` with a sigmoid output starting at
the mean input, is what wins on weakly informative (deep, pooled) wires; ``splitc privacy``
runs both and reports the best (:func:`best_attack`).

Written by hand rather than taken from a library: no maintained package implements model-
inversion attackers on arbitrary split-inference wires; the pieces (Adam, conv layers, the
normal equations) are torch's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WireNormalizer", "ConvDecoder", "MLPDecoder", "HybridDecoder", "fit_ridge_decoder", "build_decoder",
           "Attacker", "AttackBudget", "RidgeTooLarge", "BUDGETS", "train_attacker", "best_attack", "psnr_db"]

class RidgeTooLarge(ValueError):
    """The wire is too wide for the closed-form fit (see :func:`fit_ridge_decoder`)."""


#: Ridges tried (x the mean diagonal of the normal matrix), picked on the validation split.
RIDGES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclass(frozen=True)
class AttackBudget:
    """How hard the attacker tries: decoder families and their training budgets.

    Attributes:
        families: decoder families to train; the best on validation data is reported.
            ``hybrid`` (ridge + conv/MLP correction) and ``conv`` (conv/MLP decoder, sigmoid output).
        hybrid_epochs, hybrid_width, hybrid_blocks: the hybrid's budget (residual blocks at the
            wire's resolution).
        conv_epochs, conv_width, conv_blocks: the sigmoid decoder's budget.
        lr: Adam's peak learning rate (hybrid); the conv family uses ``conv_lr``.
        ridge_rows: rows of the closed-form fit (subsampled, seeded).
        patience: stop a family after this many epochs without a better validation PSNR (None: never).
    """

    families: tuple[str, ...] = ("hybrid", "conv")
    hybrid_epochs: int = 10
    hybrid_width: int = 32
    hybrid_blocks: int = 0
    conv_epochs: int = 30
    conv_width: int = 32
    conv_blocks: int = 0
    lr: float = 1e-3
    conv_lr: float = 2e-3
    ridge_rows: int = 200_000
    patience: int | None = None

    @classmethod
    def from_epochs(cls, epochs: int) -> "AttackBudget":
        """The default families for a ``--epochs`` budget: the conv family gets ``epochs``, the hybrid a
        third of them (it starts from the closed-form solution; 10 for the default 30)."""
        return cls(hybrid_epochs=max(1, math.ceil(epochs / 3)), conv_epochs=max(1, int(epochs)))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


#: Named budgets: ``default`` is what ``splitc privacy`` runs (research: 46.6 dB at the MNIST stem against
#: 27.8 dB for the old conv decoder); ``strong`` is the benchmark's; ``quick`` is for tests only.
BUDGETS = {
    "default": AttackBudget(),
    "strong": AttackBudget(hybrid_epochs=30, hybrid_blocks=1, conv_epochs=40, conv_blocks=1, conv_lr=3e-3),
    "quick": AttackBudget(hybrid_epochs=2, hybrid_width=16, conv_epochs=3, conv_width=16, ridge_rows=20_000),
}


def psnr_db(recon: np.ndarray, x: np.ndarray, data_range: float = 1.0) -> float:
    """``10 log10(R^2 / MSE)`` over all elements (inf when identical)."""
    mse = float(np.mean((np.asarray(recon, np.float64) - np.asarray(x, np.float64)) ** 2))
    return 10 * math.log10(data_range ** 2 / mse) if mse > 0 else float("inf")


# ----------------------------------------------------------------------------------------- wire layout


@dataclass
class WireNormalizer:
    """Layout-aware standardisation of wire tensors with the attacker's statistics (module docstring, 1)."""

    means: list[torch.Tensor] = field(default_factory=list)
    stds: list[torch.Tensor] = field(default_factory=list)

    def fit(self, wires: Sequence[torch.Tensor]) -> "WireNormalizer":
        """Statistics of ``wires`` (``[S, ...]`` each): per channel for ``[S, C, h, w]``, per feature otherwise."""
        self.means, self.stds = [], []
        for t in wires:
            t = t.float()
            axes = (0, 2, 3) if t.ndim == 4 else (0,)
            mean, std = t.mean(axes, keepdim=True), t.std(axes, keepdim=True)
            self.means.append(mean)
            self.stds.append(torch.where(std > 1e-6, std, torch.ones_like(std)))  # constant: carries nothing
        return self

    def __call__(self, wires: Sequence[torch.Tensor]) -> torch.Tensor:
        parts = [(t.float() - m) / s for t, m, s in zip(wires, self.means, self.stds)]
        if len(parts) == 1:
            return parts[0] if parts[0].ndim in (2, 4) else parts[0].flatten(1)
        if all(p.ndim == 4 for p in parts):
            grid = (max(p.shape[2] for p in parts), max(p.shape[3] for p in parts))
            return torch.cat([p if tuple(p.shape[2:]) == grid else F.interpolate(p, size=grid, mode="nearest")
                              for p in parts], 1)
        return torch.cat([p.flatten(1) for p in parts], 1)


# ----------------------------------------------------------------------------------------- decoders


class _Res(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(width, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.c2(F.relu(self.c1(x))))


class _Sigmoid(nn.Module):
    """``lo + (hi - lo) * sigmoid(logits + prior)``, prior = the logit of the attacker's mean input: a decoder on a
    weakly informative wire then starts at the mean image instead of the all-background minimum (no gradient)."""

    def __init__(self, mean_x: torch.Tensor, lo: float, hi: float) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi
        p = ((mean_x - lo) / ((hi - lo) or 1.0)).clamp(1e-3, 1 - 1e-3)
        self.register_buffer("prior", torch.log(p / (1 - p)))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.lo + (self.hi - self.lo) * torch.sigmoid(logits.reshape(-1, *self.prior.shape) + self.prior)


class ConvDecoder(nn.Module):
    """Spatial wire ``[C, h, w]`` -> image ``[c, H, W]``.

    3x3 conv to ``width`` + ``blocks`` residual blocks at the wire's resolution; x2 stages of
    bilinear upsampling + 3x3 conv, halving the width down to >= 16, until ``H x W`` (a bilinear
    resize for odd sizes); one full-resolution 3x3 conv, then a 3x3 conv to ``c``; ``sigmoid``
    output (``mean_x`` given) or raw values (``mean_x=None``, the hybrid's correction).
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], mean_x: torch.Tensor | None,
                 lo: float = 0.0, hi: float = 1.0, width: int = 32, blocks: int = 0) -> None:
        super().__init__()
        cin, h, w = in_shape
        c, H, W = out_shape
        self.out_hw = (H, W)
        layers: list[nn.Module] = [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
        layers += [_Res(width) for _ in range(blocks)]
        ch, size = width, max(h, w)
        while size < max(H, W):
            nxt = max(16, ch // 2)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(ch, nxt, 3, padding=1), nn.ReLU()]
            ch, size = nxt, size * 2
        self.body = nn.Sequential(*layers)
        self.tail = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, c, 3, padding=1))
        self.out = _Sigmoid(mean_x, lo, hi) if mean_x is not None else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.body(z)
        if tuple(y.shape[2:]) != self.out_hw:
            y = F.interpolate(y, size=self.out_hw, mode="bilinear", align_corners=False)
        return self.out(self.tail(y))


class MLPDecoder(nn.Module):
    """Any wire, flattened -> input: ``depth`` hidden layers of ``width`` (ReLU), linear to the input size;
    sigmoid output (``mean_x`` given) or raw values (the hybrid's correction)."""

    def __init__(self, in_dim: int, out_shape: tuple[int, ...], mean_x: torch.Tensor | None, lo: float = 0.0,
                 hi: float = 1.0, width: int = 512, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, int(np.prod(out_shape))))
        self.net = nn.Sequential(*layers)
        self.out_shape = tuple(out_shape)
        self.out = _Sigmoid(mean_x, lo, hi) if mean_x is not None else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.net(z.flatten(1))
        return self.out(y) if self.out is not None else y.view(-1, *self.out_shape)


class _PatchLinear(nn.Module):
    """``Conv2d(C, c f^2, k)`` + ``pixel_shuffle(f)``, cropped to ``H x W`` (see :func:`fit_ridge_decoder`)."""

    def __init__(self, C: int, c: int, kernel: int, f: int, out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, c * f * f, kernel, padding=kernel // 2)
        self.f, self.out_hw = f, out_hw

    def set(self, weight: torch.Tensor, bias: torch.Tensor) -> None:  # weight [C*k*k, c*f*f] (unfold order)
        with torch.no_grad():
            self.conv.weight.copy_(weight.T.reshape(self.conv.weight.shape))
            self.conv.bias.copy_(bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = F.pixel_shuffle(self.conv(z), self.f) if self.f > 1 else self.conv(z)
        return y[:, :, :self.out_hw[0], :self.out_hw[1]]


class _VecLinear(nn.Module):
    def __init__(self, d: int, out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.lin = nn.Linear(d, int(np.prod(out_shape)))
        self.out_shape = tuple(out_shape)

    def set(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        with torch.no_grad():
            self.lin.weight.copy_(weight.T)
            self.lin.bias.copy_(bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.lin(z.flatten(1)).view(-1, *self.out_shape)


def _image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3


def fit_ridge_decoder(z: torch.Tensor, x: torch.Tensor, z_val: torch.Tensor | None = None,
                      x_val: torch.Tensor | None = None, *, kernel: int | None = None,
                      ridges: Sequence[float] = RIDGES, max_rows: int = 200_000, max_features: int = 4096,
                      seed: int = 0) -> tuple[nn.Module, dict]:
    """Closed-form linear inverse ``z -> x`` (ridge regression; module docstring, step 2).

    Args:
        z: standardised wire ``[S, C, h, w]`` (patch-wise fit) or ``[S, d]`` (a ``Linear``).
        x: inputs ``[S, c, H, W]`` (or ``[S, ...]`` for a vector wire).
        z_val, x_val: the validation pair that picks the ridge (else the first ridge is used).
        kernel: wire patch size (default 5 on a full-resolution wire, 3 below).
        max_rows: rows of the normal equations, subsampled with ``seed``.
        max_features: larger designs raise :class:`RidgeTooLarge` (the normal matrix is features^2 float64).

    Returns:
        ``(module, info)``: the fitted module (unclamped output) and ``{"ridge", "val_psnr", "features"}``.
    """
    gen = torch.Generator().manual_seed(seed)
    if z.ndim == 4 and x.ndim == 4:
        C, h, w = z.shape[1:]
        c, H, W = x.shape[1:]
        f = max(1, math.ceil(H / h), math.ceil(W / w))
        kernel = kernel or (5 if f == 1 else 3)
        module: nn.Module = _PatchLinear(C, c, kernel, f, (H, W))

        def design(zz: torch.Tensor) -> torch.Tensor:  # [N*h*w, C*k*k]
            u = F.unfold(zz, kernel, padding=kernel // 2)
            return u.permute(0, 2, 1).reshape(-1, u.shape[1])

        def target(xx: torch.Tensor) -> torch.Tensor:  # [N*h*w, c*f*f]
            t = F.pixel_unshuffle(F.pad(xx, (0, w * f - W, 0, h * f - H)), f)
            return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    else:
        module = _VecLinear(int(np.prod(z.shape[1:])), tuple(x.shape[1:]))

        def design(zz: torch.Tensor) -> torch.Tensor:
            return zz.reshape(len(zz), -1)

        def target(xx: torch.Tensor) -> torch.Tensor:
            return xx.reshape(len(xx), -1)
    A, B = design(z.float()), target(x.float())
    if A.shape[1] + 1 > max_features:
        raise RidgeTooLarge(f"the closed-form inverse would have {A.shape[1] + 1} features per row "
                            f"(more than {max_features}): the hybrid attacker is skipped for this wire")
    if len(A) > max_rows:
        keep = torch.randperm(len(A), generator=gen)[:max_rows]
        A, B = A[keep], B[keep]
    A = torch.cat([A, torch.ones(len(A), 1)], 1).double()
    gram, rhs = A.T @ A, A.T @ B.double()
    scale = float(torch.diagonal(gram).mean()) or 1.0
    lo, hi = float(x.min()), float(x.max())
    best = None
    for lam in ridges:
        reg = lam * scale * torch.eye(len(gram), dtype=torch.float64)
        reg[-1, -1] = 0.0  # no penalty on the bias
        sol = torch.linalg.solve(gram + reg, rhs)
        if z_val is None or len(ridges) == 1:
            best = (float("nan"), lam, sol)
            break
        module.set(sol[:-1].float(), sol[-1].float())
        with torch.no_grad():
            score = psnr_db(module(z_val).clamp(lo, hi).numpy(), x_val.numpy(), (hi - lo) or 1.0)
        if best is None or score > best[0]:
            best = (score, lam, sol)
    module.set(best[2][:-1].float(), best[2][-1].float())
    return module, {"ridge": best[1], "val_psnr": best[0], "features": int(A.shape[1])}


class HybridDecoder(nn.Module):
    """``clamp(linear(z) + net(z), lo, hi)``: the ridge inverse plus a correction whose last layer starts at zero.

    ``clamp_train``: the clamp applies in training too (the loss ignores pixels pushed past the range on
    the right side); without it training sees the raw sum (the defence's adversary uses that: smoother).
    """

    def __init__(self, linear: nn.Module, net: nn.Module, lo: float, hi: float, clamp_train: bool = True) -> None:
        super().__init__()
        self.linear, self.net, self.lo, self.hi, self.clamp_train = linear, net, lo, hi, clamp_train
        last = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.linear(z) + self.net(z)
        return y if self.training and not self.clamp_train else y.clamp(self.lo, self.hi)


def build_decoder(arch: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...], mean_x: torch.Tensor | None,
                  lo: float, hi: float, width: int = 32, blocks: int = 0) -> nn.Module:
    """``conv`` (:class:`ConvDecoder`, needs a spatial wire and an image input) else :class:`MLPDecoder`."""
    if arch == "conv" and _image(tuple(in_shape)) and _image(tuple(out_shape)):
        return ConvDecoder(in_shape, out_shape, mean_x, lo, hi, width=width, blocks=blocks)
    return MLPDecoder(int(np.prod(in_shape)), out_shape, mean_x, lo, hi, width=max(64, 16 * width))


# ----------------------------------------------------------------------------------------- the attack


@dataclass
class Attacker:
    """A trained inversion attacker: normaliser + decoder, and how its training went.

    Attributes:
        family: ``hybrid`` or ``conv``; ``epochs_run``, ``best_epoch``, ``best_val_psnr``: early stopping;
        history: validation PSNR per epoch; ``ridge``: the closed-form fit's info (hybrid).
    """

    normalizer: WireNormalizer
    decoder: nn.Module
    family: str
    epochs_run: int
    best_epoch: int
    best_val_psnr: float
    seconds: float
    history: list[float]
    ridge: dict = field(default_factory=dict)

    @torch.no_grad()
    def reconstruct(self, wires: Sequence[np.ndarray | torch.Tensor], batch: int = 250) -> np.ndarray:
        """The decoder's estimate of the inputs behind ``wires`` (one ``[S, ...]`` array per tensor)."""
        self.decoder.eval()
        z = self.normalizer([torch.as_tensor(np.asarray(w, np.float32)) for w in wires])
        return torch.cat([self.decoder(z[i:i + batch]) for i in range(0, len(z), batch)]).numpy()

    def summary(self) -> dict:
        return {"family": self.family, "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
                "best_val_psnr_db": round(float(self.best_val_psnr), 3), "seconds": round(self.seconds, 2),
                **({"ridge": self.ridge["ridge"]} if self.ridge else {})}


def train_attacker(wires: Sequence[np.ndarray | torch.Tensor], x: np.ndarray, *, family: str = "hybrid",
                   epochs: int = 10, width: int = 32, blocks: int = 0, lr: float = 1e-3, batch_size: int = 32,
                   val_fraction: float = 0.1, patience: int | None = None, ridge_rows: int = 200_000,
                   seed: int = 0, log: Callable[[str], None] | None = None) -> Attacker:
    """Train one inversion decoder ``wire -> x`` (MSE, Adam, warm-up + cosine, best validation epoch kept).

    Args:
        wires: one ``[S, ...]`` array per tensor on the wire (per-sample shapes after the sample axis).
        x: the inputs ``[S, ...]`` they came from (``[S, c, H, W]`` for images).
        family: ``hybrid`` (ridge inverse + correction, module docstring) or ``conv`` (sigmoid decoder).
        epochs: maximum passes over the training part; ``width``/``blocks``: decoder size.
        val_fraction: held out (seeded) for model selection and early stopping.
        patience: stop after this many epochs without improvement (None: run all ``epochs``).
        seed: validation split, initialisation and batch order (a private generator; module
            initialisation draws from torch's global RNG, seeded here).

    Returns:
        :class:`Attacker` with the best-validation decoder in eval mode.
    """
    start = time.perf_counter()
    raw = [torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in wires]
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(len(xt), generator=gen)
    n_val = max(1, int(round(val_fraction * len(xt)))) if val_fraction > 0 and len(xt) >= 10 else 0
    val_idx, tr_idx = order[:n_val], order[n_val:]
    normalizer = WireNormalizer().fit([w[tr_idx] for w in raw])
    z = normalizer(raw)
    z_tr, x_tr, z_val, x_val = z[tr_idx], xt[tr_idx], z[val_idx], xt[val_idx]
    lo, hi = float(xt.min()), float(xt.max())
    data_range = (hi - lo) or 1.0
    in_shape, out_shape = tuple(z.shape[1:]), tuple(xt.shape[1:])
    info: dict = {}
    if family == "hybrid":
        linear, info = fit_ridge_decoder(z_tr, x_tr, z_val if n_val else None, x_val if n_val else None,
                                         max_rows=ridge_rows, seed=seed)
        net = build_decoder("conv", in_shape, out_shape, None, lo, hi, width=width, blocks=blocks)
        decoder: nn.Module = HybridDecoder(linear, net, lo, hi)
    elif family == "conv":
        decoder = build_decoder("conv", in_shape, out_shape, x_tr.mean(0), lo, hi, width=width, blocks=blocks)
    else:
        raise ValueError(f"unknown attacker family {family!r}")
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    per_epoch = max(1, math.ceil(len(tr_idx) / batch_size))
    total = epochs * per_epoch

    def lr_at(step: int) -> float:  # one epoch of linear warm-up, then a cosine to 0
        if step < per_epoch:
            return lr * (step + 1) / per_epoch
        return 0.5 * lr * (1 + math.cos(math.pi * (step - per_epoch) / max(1, total - per_epoch)))

    def score() -> float:
        decoder.eval()
        with torch.no_grad():
            pz, px = (z_val, x_val) if n_val else (z_tr, x_tr)
            return psnr_db(torch.cat([decoder(pz[i:i + 250]) for i in range(0, len(pz), 250)]).numpy(), px.numpy(),
                           data_range)

    best = score()  # the starting point (the ridge solution, for the hybrid) competes too
    best_state = {k: v.clone() for k, v in decoder.state_dict().items()}
    best_epoch, since, step, history, epoch = 0, 0, 0, [], 0
    for epoch in range(1, epochs + 1):
        decoder.train()
        for index in torch.randperm(len(tr_idx), generator=gen).split(batch_size):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.zero_grad()
            F.mse_loss(decoder(z_tr[index]), x_tr[index]).backward()
            optimizer.step()
            step += 1
        val = score()
        history.append(val)
        if val > best:
            best, best_epoch, since = val, epoch, 0
            best_state = {k: v.clone() for k, v in decoder.state_dict().items()}
        else:
            since += 1
        if log is not None:
            log(f"{family} epoch {epoch}/{epochs}: validation PSNR {val:.2f} dB (best {best:.2f} @ {best_epoch})")
        if patience is not None and since >= patience:
            break
    decoder.load_state_dict(best_state)
    decoder.eval()
    return Attacker(normalizer, decoder, family, epoch, best_epoch, best, time.perf_counter() - start, history, info)


def best_attack(wires: Sequence[np.ndarray | torch.Tensor], x: np.ndarray, budget: AttackBudget | None = None, *,
                seed: int = 0, log: Callable[[str], None] | None = None) -> tuple[Attacker, list[dict]]:
    """Every family of ``budget`` trained on ``(wires, x)``; the best by validation PSNR, and all families' summaries.

    The choice uses the attacker's own validation split only (never the held-out samples it is scored on).
    """
    budget = budget or BUDGETS["default"]
    trained, skipped = [], []
    for family in budget.families:
        if family == "hybrid":
            kw = dict(epochs=budget.hybrid_epochs, width=budget.hybrid_width, blocks=budget.hybrid_blocks,
                      lr=budget.lr, ridge_rows=budget.ridge_rows)
        else:
            kw = dict(epochs=budget.conv_epochs, width=budget.conv_width, blocks=budget.conv_blocks, lr=budget.conv_lr)
        try:
            trained.append(train_attacker(wires, x, family=family, patience=budget.patience, seed=seed, log=log, **kw))
        except RidgeTooLarge as error:
            skipped.append({"family": family, "skipped": str(error)})
    if not trained:
        trained.append(train_attacker(wires, x, family="conv", epochs=budget.conv_epochs, width=budget.conv_width,
                                      blocks=budget.conv_blocks, lr=budget.conv_lr, patience=budget.patience,
                                      seed=seed, log=log))
    best = max(trained, key=lambda a: a.best_val_psnr)
    return best, [a.summary() for a in trained] + skipped
