"""Privacy of a cut: how much of the input an attacker recovers from what crosses the wire.

Threat model (survey sections 2.1.2, 3.2): an honest-but-curious receiver (or an
eavesdropper on the link) sees every tensor the sending tier ships, exactly as it is
encoded, and owns public data of the same kind as the user's (here: a split of the
calibration data disjoint from the samples it is scored on). It trains an *inversion
decoder* ``g`` so that ``g(wire(x)) ~ x`` and we report how well that works on
held-out samples: MSE, PSNR and SSIM. Two tools, cheap to expensive:

**Proxy: distance correlation** (Székely, Rizzo & Bakirov 2007). For ``n`` paired
samples ``(x_i, z_i)`` with Euclidean distance matrices ``a_ij = |x_i - x_j|`` and
``b_ij = |z_i - z_j|``, centre each matrix and take

    dCov^2(x, z) = <A, B>,   dCor^2 = dCov^2(x, z) / sqrt(dCov^2(x, x) dCov^2(z, z)),

zero iff ``x`` and ``z`` are independent (in the population), one when ``z`` is a
similarity transform of ``x``. The plain (V-statistic) estimator double-centres
``A_ij = a_ij - a_i. - a_.j + a..`` (row / column / grand means) and is biased
upwards; in high dimension it tends to 1 even for independent data (Székely &
Rizzo 2013), and activations have thousands of dimensions. So the default is the
*bias-corrected* estimator of Székely & Rizzo (2014): U-centring

    Ã_ij = a_ij - a_i./(n-2) - a_.j/(n-2) + a../((n-1)(n-2))   (i != j; 0 on the diagonal; sums, not means),
    <Ã, B̃> = 1/(n(n-3)) sum_{i != j} Ã_ij B̃_ij,

which is unbiased for the population dCov^2 and can be slightly negative; we report
``dcor = sqrt(max(dCor^2, 0))`` so values live in [0, 1] like the classic statistic.

Why it is cheap for every cut: what crosses a cut is a set of tensors, and the
squared distance of a concatenation is the sum of the parts' squared distances, so
each node contributes one ``n x n`` matrix and a cut's matrix is the sum over its
crossing tensors. Nodes run batch by batch in ``torch.fx``'s interpreter; storing
every activation of ``n`` samples would not fit for ResNet-50 at 224x224 (layer1 is
3.2 MB a sample), so each activation of more than :data:`SKETCH_DIM` numbers is
reduced to a **count-sketch** (Charikar et al. 2002; each coordinate is added, with
a random sign, to one of ``k`` buckets): an O(d) linear map whose squared norm is an
unbiased estimate of the original's, with relative standard error about
``sqrt(2/k)`` (3 % at k = 2048), which is all a distance matrix needs. A dense
Gaussian projection would need a ``d x k`` matrix (3 GB for layer1 of ResNet-50).
The model inputs' matrix is exact, so cut 0 (the raw input) has dcor 1 exactly;
any cut that still ships a model input is reported as 1 (the input itself leaks).

**Attack: the strong inversion attacker** (:mod:`splitc.privacy.attacker`), trained on the
attacker's split: wire tensors standardised per channel / per feature (attacker statistics), then
the best, on a 10 % validation split of the attacker's own data, of two decoder families: a
closed-form ridge inverse of the wire (patch-wise for image inputs) plus a trained conv
correction, and a conv (or MLP) decoder with a sigmoid output starting at the mean input.
Warm-up + cosine learning rate, best validation epoch kept. The old single conv decoder
under-reported the stem of the MNIST example by ~19 dB (27.8 vs 46.6 dB).

Metrics on the held-out split: ``MSE`` over all elements; ``PSNR = 10 log10(R^2 / MSE)``
with ``R`` = max - min of the input data given to the attack (1 for images in
[0, 1]); ``SSIM`` (Wang et al. 2004) with scikit-image's 7x7 uniform window, averaged
over held-out images, only for image inputs whose ``H, W >= 7``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.fx

from splitc.core.calibration import CalibrationData, load_calibration
from splitc.privacy.attacker import AttackBudget, best_attack
from splitc.core.samples import BATCH, as_input_list, placeholder_shapes, run_samples
from splitc.errors import SplitcError

__all__ = ["PrivacyProfile", "profile_privacy", "AttackResult", "attack_cut", "attack_bundle",
           "distance_correlation", "distance_correlation_sq", "squared_distances", "shallowest_cut",
           "rank_disagreements", "run_attack", "evaluate_model_privacy", "evaluate_bundle_privacy",
           "format_privacy_report", "write_privacy_report", "DEFAULT_SAMPLES", "SKETCH_DIM", "ATTACK_EPOCHS"]

log = logging.getLogger("splitc")

#: Samples the proxy uses: its cost is O(n^2) per node and its standard error ~1/n.
DEFAULT_SAMPLES = 128
#: Activations with more numbers than this are count-sketched to this many buckets.
SKETCH_DIM = 2048
#: Default training epochs of the inversion decoder (seconds on MNIST's 800 attacker digits).
ATTACK_EPOCHS = 30
#: Fractions of the data the attacker trains on / is scored on (disjoint).
ATTACK_SPLIT = {"attacker": 0.8, "held_out": 0.2}
#: Images in the PNG grid.
GRID_IMAGES = 8
NOT_IMAGE_NOTE = "input is not an image: SSIM skipped, MSE/PSNR only"


# --------------------------------------------------------------------------- distance correlation


def squared_distances(x: np.ndarray) -> np.ndarray:
    """``[n, n]`` squared Euclidean distances between the rows of ``x`` (``[n, ...]``, flattened), float64."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    norms = np.einsum("ij,ij->i", flat, flat)
    sq = norms[:, None] + norms[None, :] - 2.0 * (flat @ flat.T)
    np.fill_diagonal(sq, 0.0)
    return np.maximum(sq, 0.0)  # round-off can make tiny distances negative


def _centred(distances: np.ndarray, bias_corrected: bool) -> np.ndarray:
    n = len(distances)
    if not bias_corrected:
        return distances - distances.mean(0, keepdims=True) - distances.mean(1, keepdims=True) + distances.mean()
    rows = distances.sum(1, keepdims=True)
    cols = distances.sum(0, keepdims=True)
    out = distances - rows / (n - 2) - cols / (n - 2) + distances.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(out, 0.0)
    return out


def distance_correlation_sq(dx2: np.ndarray, dz2: np.ndarray, bias_corrected: bool = True) -> float:
    """Squared distance correlation from two ``[n, n]`` squared-distance matrices (see the module docstring).

    Returns 0 when either variable is constant. The bias-corrected value may be slightly negative.

    Raises:
        ValueError: fewer than 4 samples (the bias-corrected estimator divides by n - 3).
    """
    n = len(dx2)
    if n < 4:
        raise ValueError(f"distance correlation needs at least 4 samples, got {n}")
    a = _centred(np.sqrt(dx2), bias_corrected)
    b = _centred(np.sqrt(dz2), bias_corrected)
    # the 1/(n(n-3)) (or 1/n^2) normalisation cancels in the ratio
    ab, aa, bb = float((a * b).sum()), float((a * a).sum()), float((b * b).sum())
    if aa <= 0.0 or bb <= 0.0:
        return 0.0
    return ab / math.sqrt(aa * bb)


def distance_correlation(x: np.ndarray, z: np.ndarray, bias_corrected: bool = True) -> float:
    """Distance correlation in [0, 1] of paired samples ``x[i]``, ``z[i]`` (any shapes after the sample axis)."""
    r2 = distance_correlation_sq(squared_distances(x), squared_distances(z), bias_corrected)
    return math.sqrt(min(max(r2, 0.0), 1.0))


# --------------------------------------------------------------------------- running the graph on samples


# --------------------------------------------------------------------------- the proxy


@dataclass
class PrivacyProfile:
    """Leakage of every candidate cut, by the distance-correlation proxy.

    Attributes:
        dcor: ``[N + 1]`` distance correlation between the model input and everything crossing
            cut ``i`` (in [0, 1]; higher = more of the input's geometry survives = more leakage);
            nan where the cut is illegal; 1.0 at cut 0 (the raw input).
        samples: calibration samples used.
        method: how it was computed (estimator, sketch size, batching).
        notes: anything a reader should know (sketched nodes, inputs crossing deeper cuts).
        defended: cut -> ``{"undefended", "dcor", "method", "strength"}`` where ``--privacy-defence`` was
            trained for the planner (``dcor`` then holds the defended value; see privacy_profile.py).
    """

    dcor: np.ndarray
    samples: int
    method: str
    notes: list[str] = field(default_factory=list)
    defended: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"dcor": [None if not np.isfinite(v) else round(float(v), 6) for v in self.dcor],
                "samples": self.samples, "method": self.method, "notes": list(self.notes),
                **({"defended": {str(k): v for k, v in self.defended.items()}} if self.defended else {})}


class _Sketcher:
    """Count-sketch of flattened activations to ``k`` buckets, one hash per flattened size (seeded)."""

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.seed = k, seed
        self._hashes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sketched: set[str] = set()

    def __call__(self, name: str, value: torch.Tensor) -> torch.Tensor:
        flat = value.reshape(len(value), -1).to(torch.float64)
        d = flat.shape[1]
        if d <= self.k:
            return flat
        self.sketched.add(name)
        if d not in self._hashes:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + d)
            bucket = torch.randint(0, self.k, (d,), generator=gen)
            sign = torch.randint(0, 2, (d,), generator=gen).to(torch.float64) * 2 - 1
            self._hashes[d] = (bucket, sign)
        bucket, sign = self._hashes[d]
        return torch.zeros(len(flat), self.k, dtype=torch.float64).index_add_(1, bucket, flat * sign)


def profile_privacy(gm: torch.fx.GraphModule, candidates: Any, inputs: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
                    *, samples: int = DEFAULT_SAMPLES, sketch_dim: int = SKETCH_DIM, batch: int = BATCH,
                    seed: int = 0, bias_corrected: bool = True) -> PrivacyProfile:
    """Distance correlation between the input and every legal cut's crossing tensors.

    Args:
        gm: the profiled graph (``tensor_meta`` on every node), as the candidates were computed on.
        candidates: its :class:`~splitc.core.passes.candidates.Candidates`.
        inputs: one ``[S, ...]`` array per model input (sample axis first; per-sample shape with or
            without the leading batch-1 axis), or one array for a single-input model.
        samples: how many samples to use (a seeded random subset when more are given).
        sketch_dim: activations larger than this are count-sketched to this many numbers.
        batch: samples per interpreter run (if the graph batches; see :func:`_run_samples`).
        seed: subset and sketch seed.
        bias_corrected: the bias-corrected estimator (default) or the classic V-statistic.

    Raises:
        SplitcError: fewer than 4 samples.
    """
    arrays = as_input_list(inputs)
    total = len(arrays[0])
    if total < 4:
        raise SplitcError(f"the privacy proxy needs at least 4 samples, got {total}", "give more calibration samples")
    pick = np.sort(np.random.default_rng(seed).permutation(total)[:min(samples, total)])
    arrays = [a[pick] for a in arrays]
    n = len(pick)
    placeholders = [node.name for node in gm.graph.nodes if node.op == "placeholder"]
    wanted = {name for cut in candidates.cuts if cut.legal for name in cut.crossing} - set(placeholders)
    sketcher = _Sketcher(sketch_dim, seed)
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    start = time.perf_counter()
    mode = run_samples(gm, arrays, wanted, lambda name, v: chunks[name].append(sketcher(name, v)), batch)
    matrices = {name: squared_distances(a) for name, a in zip(placeholders, arrays)}  # exact for the inputs
    for name, parts in chunks.items():
        matrices[name] = squared_distances(torch.cat(parts).numpy())
    del chunks
    input_matrix = sum(matrices[name] for name in placeholders)
    dcor = np.full(len(candidates.cuts), np.nan)
    notes: list[str] = []
    shipped_input = []
    for cut in candidates.cuts:
        if not cut.legal:
            continue
        if any(name in placeholders for name in cut.crossing):
            dcor[cut.index] = 1.0  # the raw input itself is on the wire
            if cut.index > 0:
                shipped_input.append(cut.index)
            continue
        r2 = distance_correlation_sq(input_matrix, sum(matrices[name] for name in cut.crossing), bias_corrected)
        dcor[cut.index] = math.sqrt(min(max(r2, 0.0), 1.0))
    if sketcher.sketched:
        notes.append(f"{len(sketcher.sketched)} activation(s) larger than {sketch_dim} numbers were count-sketched "
                     f"to {sketch_dim} (distances within ~{100 * math.sqrt(2 / sketch_dim):.0f}% relative error)")
    if shipped_input:
        notes.append(f"{len(shipped_input)} cut(s) past the first still ship a model input; their dcor is 1")
    if n < 32:
        notes.append(f"only {n} samples: dcor is noisy (standard error ~1/n)")
    estimator = "bias-corrected (Székely & Rizzo 2014)" if bias_corrected else "V-statistic"
    method = (f"distance correlation, {estimator}; {n} samples run {mode}; activations > {sketch_dim} numbers "
              f"count-sketched; {time.perf_counter() - start:.2f}s")
    return PrivacyProfile(dcor, n, method, notes)


def shallowest_cut(candidates: Any) -> int:
    """Index of the first legal cut after at least one node: the attack's reference.

    Cut 0 ships the raw input, which needs no attack; the first computed tensor is the
    most an attacker can hope for among real cuts.
    """
    for cut in candidates.cuts[1:]:
        if cut.legal:
            return cut.index
    raise SplitcError("the model has no legal cut after its first node", "the privacy attack needs one")


# --------------------------------------------------------------------------- the attack


@dataclass
class AttackResult:
    """How well an inversion decoder reconstructs held-out inputs from what crosses a cut.

    Attributes:
        mse: mean squared error over every element of the held-out inputs.
        psnr_db: ``10 log10(R^2 / mse)``, ``R`` = ``data_range`` (inf when the raw input is sent).
        ssim: mean SSIM over the held-out images; None when the input is not an image.
        samples: held-out samples scored.
        note: why SSIM is missing, or what else is special (None when nothing).
        grid_png: path of the original-vs-reconstruction PNG, when written.
        label: which cut or link was attacked.
        train_samples: samples the attacker trained on.
        data_range: ``R`` of the PSNR.
        seconds: wall time of the attack (collect + train + score).
        attacker: the decoder family that won on the attacker's validation split.
        families: every family's training summary (:meth:`~splitc.privacy.attacker.Attacker.summary`).
    """

    mse: float
    psnr_db: float
    ssim: float | None
    samples: int
    note: str | None = None
    grid_png: str | None = None
    label: str = ""
    train_samples: int = 0
    data_range: float = 1.0
    seconds: float = 0.0
    attacker: str = ""
    families: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def num(v):
            return None if v is None or not np.isfinite(v) else round(float(v), 6)
        return {"label": self.label, "mse": num(self.mse), "psnr_db": num(self.psnr_db), "ssim": num(self.ssim),
                "samples": self.samples, "train_samples": self.train_samples, "data_range": num(self.data_range),
                "note": self.note, "grid_png": self.grid_png, "seconds": round(self.seconds, 2),
                "attacker": self.attacker, "families": list(self.families)}


def _image_shape(sample_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(c, H, W)`` when a per-sample input shape is an image (``[c, H, W]`` or ``[H, W]``), else None."""
    if len(sample_shape) == 3 and sample_shape[0] <= 4:
        return tuple(sample_shape)  # type: ignore[return-value]
    if len(sample_shape) == 2:
        return (1, *sample_shape)  # type: ignore[return-value]
    return None


def _ssim(x: np.ndarray, recon: np.ndarray, data_range: float) -> tuple[float | None, str | None]:
    image = _image_shape(tuple(x.shape[1:]))
    if image is None or image[1] < 7 or image[2] < 7:
        return None, NOT_IMAGE_NOTE
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None, "scikit-image is not installed: SSIM skipped (pip install 'splitc[privacy]')"
    values = []
    for a, b in zip(x.reshape(len(x), *image), recon.reshape(len(recon), *image)):
        if image[0] == 1:
            values.append(structural_similarity(a[0], b[0], data_range=data_range))
        else:
            values.append(structural_similarity(a, b, data_range=data_range, channel_axis=0))
    return float(np.mean(values)), None


def run_attack(train_features: list[np.ndarray], train_x: np.ndarray, eval_features: list[np.ndarray],
               eval_x: np.ndarray, *, epochs: int = ATTACK_EPOCHS, seed: int = 0, label: str = "",
               data_range: float | None = None, png: Path | None = None,
               budget: AttackBudget | None = None) -> AttackResult:
    """Train the strong attacker on ``(train_features, train_x)``, score it on ``(eval_features, eval_x)``.

    The attacker (:mod:`splitc.privacy.attacker`) trains each decoder family of ``budget`` (a closed-form
    ridge inverse + conv correction, and a sigmoid conv decoder) on 90 % of its samples, picks the family
    with the best PSNR on the other 10 % (and the best epoch, early stopping), and that decoder alone is
    scored on the held-out ``eval`` samples it never saw.

    Args:
        train_features, eval_features: one ``[S, ...]`` array per wire tensor (per-sample shapes; a
            leading batch-1 axis is dropped).
        train_x, eval_x: the inputs ``[S, ...]`` to reconstruct (per-sample shape without the batch-1 axis).
        epochs: the budget when ``budget`` is None (:meth:`AttackBudget.from_epochs`: the conv family
            trains ``epochs`` epochs, the hybrid a third of them).
        data_range: ``R`` of the PSNR; default max - min over both sets of inputs.
        png: write the original-vs-reconstruction grid here.
        budget: families and budgets (``BUDGETS["strong"]`` for the benchmark, ``["quick"]`` for tests).
    """
    start = time.perf_counter()
    budget = budget or AttackBudget.from_epochs(epochs)
    train_f = [_drop_batch_axis(np.asarray(f)) for f in train_features]
    eval_f = [_drop_batch_axis(np.asarray(f)) for f in eval_features]
    tx, ex = train_x.astype(np.float32), eval_x.astype(np.float32)
    lo, hi = float(min(tx.min(), ex.min())), float(max(tx.max(), ex.max()))
    attacker, families = best_attack(train_f, tx, budget, seed=seed)
    recon = attacker.reconstruct(eval_f)
    data_range = float(data_range if data_range is not None else (hi - lo)) or 1.0
    mse = float(np.mean((recon.astype(np.float64) - ex) ** 2))
    psnr = 10.0 * math.log10(data_range ** 2 / mse) if mse > 0 else float("inf")
    ssim, note = _ssim(ex, recon, data_range)
    result = AttackResult(mse, psnr, ssim, len(ex), note, None, label, len(tx), data_range,
                          time.perf_counter() - start, attacker=attacker.family, families=families)
    if png is not None:
        result.grid_png = save_grid(ex, recon, png, f"{label}: PSNR {psnr:.1f} dB" if label else f"PSNR {psnr:.1f} dB")
    return result


def _drop_batch_axis(array: np.ndarray) -> np.ndarray:
    """``[S, 1, ...]`` -> ``[S, ...]``: wire tensors keep the batch-1 axis of the graph in every sample."""
    return array.reshape(len(array), *array.shape[2:]) if array.ndim >= 3 and array.shape[1] == 1 else array


def save_grid(originals: np.ndarray, reconstructions: np.ndarray, path: Path, title: str) -> str | None:
    """Top row originals, bottom row reconstructions (matplotlib, Agg); returns the path, or None for non-images."""
    image = _image_shape(tuple(originals.shape[1:]))
    if image is None:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no PNG grid (pip install matplotlib)")
        return None
    count = min(GRID_IMAGES, len(originals))
    lo, hi = float(originals.min()), float(originals.max())
    fig, axes = plt.subplots(2, count, figsize=(1.3 * count, 3.0), squeeze=False)
    for row, data in enumerate((originals, reconstructions)):
        for col in range(count):
            img = data[col].reshape(image)
            img = img[0] if image[0] != 3 else np.transpose(img, (1, 2, 0))  # RGB as is, else the first channel
            axes[row][col].imshow(np.clip((img - lo) / ((hi - lo) or 1.0), 0, 1), cmap="gray", vmin=0, vmax=1)
            axes[row][col].axis("off")
    for row, label in enumerate(("original", "reconstructed")):  # row labels left of the rows, never over a digit
        axes[row][0].text(-0.08, 0.5, label, transform=axes[row][0].transAxes, rotation=90, ha="right", va="center",
                          fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0.03, 0.0, 1.0, 1.0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _attack_split(samples: int, seed: int, max_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint attacker / held-out index sets (``CalibrationData.split``), capped at ``max_samples`` in all."""
    data = CalibrationData([np.zeros((samples, 1), np.float32)], None, "attack")
    parts = data.split(ATTACK_SPLIT, seed=seed)
    train, held = parts["attacker"], parts["held_out"]
    if max_samples is not None and samples > max_samples:
        keep = max_samples / samples
        train, held = train[:max(1, int(len(train) * keep))], held[:max(1, int(len(held) * keep))]
    return train, held


def attack_cut(gm: torch.fx.GraphModule, candidates: Any, cut_index: int,
               inputs: Sequence[np.ndarray] | np.ndarray | torch.Tensor, *, epochs: int = ATTACK_EPOCHS, seed: int = 0,
               png: Path | None = None, max_samples: int | None = None, batch: int = BATCH,
               budget: AttackBudget | None = None) -> AttackResult:
    """The inversion attack on candidate cut ``cut_index`` of the graph (float tensors, no wire encoding).

    Args:
        gm, candidates: the profiled graph and its candidates.
        cut_index: which cut (``candidates.cuts[cut_index]``); must be legal.
        inputs: as for :func:`profile_privacy`; the first model input is what the attacker reconstructs.
        epochs, seed, png, budget: see :func:`run_attack`.
        max_samples: use at most this many samples (attacker + held-out).

    Raises:
        SplitcError: the cut is out of range or illegal, or too few samples.
    """
    if not 0 <= cut_index < len(candidates.cuts) or not candidates.cuts[cut_index].legal:
        raise SplitcError(f"cut {cut_index} is not a legal candidate cut of this model",
                          "pick one from 'splitc privacy' or 'splitc plan --json'")
    cut = candidates.cuts[cut_index]
    label = f"cut {cut.index} after {cut.after or 'input'}"
    arrays = as_input_list(inputs)
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if any(name in placeholders for name in cut.crossing):  # the raw input is on the wire: nothing to attack
        return AttackResult(0.0, float("inf"), 1.0, 0, "the raw input crosses this cut: it leaks exactly",
                            label=label)
    train, held = _attack_split(len(arrays[0]), seed, max_samples)
    start = time.perf_counter()
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in cut.crossing}
    used = np.concatenate([train, held])
    run_samples(gm, [a[used] for a in arrays], set(cut.crossing), lambda n, v: collected[n].append(v), batch)
    features = [torch.cat(collected[name]).float().numpy() for name in cut.crossing]
    shape = placeholder_shapes(gm)[0]
    target = arrays[0].reshape(len(arrays[0]), *(shape[1:] if shape[0] == 1 else shape))  # per-sample, no batch-1 axis
    k = len(train)
    result = run_attack([f[:k] for f in features], target[train], [f[k:] for f in features], target[held],
                        epochs=epochs, seed=seed, label=label, png=png, budget=budget)
    result.seconds = time.perf_counter() - start
    return result


def attack_bundle(bundle_dir: str | Path, calib_path_or_data: str | Path | CalibrationData, link: int = 0, *,
                  epochs: int = ATTACK_EPOCHS, seed: int = 0, png: Path | None = None,
                  max_samples: int | None = None, budget: AttackBudget | None = None,
                  held_out: str | Path | CalibrationData | None = None) -> AttackResult:
    """The inversion attack on exactly what a bundle sends on ``link`` (``budget``: see :func:`run_attack`).

    Without ``held_out`` the attacker trains on one split of the calibration data and is scored on the
    other; with it (an ``.npz`` like ``--calib``) it trains on all of the calibration data and is scored
    on ``held_out`` (the benchmark: 1,000 calibration digits to train, 1,000 unseen test digits to score).

    Tiers ``0 .. link`` run in ONNX Runtime through :class:`~splitc.runtime.runner.BundleRunner`
    and the link's tensors are encoded and decoded as the receiver does, so a bottleneck,
    the uint8 wire and in-partition noise are all part of what the attacker sees. Early exits
    are switched off: the attack scores what the wire reveals whenever a request is sent.

    Raises:
        SplitcError: no manifest, no transfer on ``link``, unreadable or mismatched calibration data.
    """
    from splitc.core.loader import InputSpec
    from splitc.runtime.runner import BundleRunner, load_manifest

    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / "manifest.json").exists():
        raise SplitcError(f"'{bundle_dir}' is not a splitc bundle (no manifest.json)", "pass the folder given to -o")
    manifest = load_manifest(bundle_dir)
    transfers = {t["link"]: t for t in manifest["transfers"]}
    if link not in transfers:
        raise SplitcError(f"bundle '{bundle_dir}' sends nothing on link {link}",
                          f"links with a transfer: {sorted(transfers) or 'none (one tier runs everything)'}")
    specs = [InputSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in manifest["model"]["inputs"]]
    data = calib_path_or_data if isinstance(calib_path_or_data, CalibrationData) else \
        load_calibration(calib_path_or_data, specs)
    transfer = transfers[link]
    names = [t["name"] for t in transfer["tensors"]]
    cut = transfer.get("cut", {})
    label = f"link {link} ({manifest['tiers'][link]['name']} -> {manifest['tiers'][link + 1]['name']}), " \
            f"after {cut.get('after') or 'input'}"
    start = time.perf_counter()
    runner = BundleRunner(bundle_dir, tiers=range(link + 1), threads=1)
    runner.use_exits = False  # see the docstring
    if held_out is None:
        train, held = _attack_split(data.samples, seed, max_samples)
        train_x, held_x = data.inputs[0][train], data.inputs[0][held]
        stacked = _bundle_wire(runner, specs, names, link, data, np.concatenate([train, held]))
        k = len(train)
        train_f, held_f = [f[:k] for f in stacked], [f[k:] for f in stacked]
    else:
        other = held_out if isinstance(held_out, CalibrationData) else load_calibration(held_out, specs)
        train, held = np.arange(data.samples), np.arange(other.samples)
        train_x, held_x = data.inputs[0], other.inputs[0]
        train_f = _bundle_wire(runner, specs, names, link, data, train)
        held_f = _bundle_wire(runner, specs, names, link, other, held)
    result = run_attack(train_f, train_x, held_f, held_x, epochs=epochs, seed=seed, label=label, png=png,
                        budget=budget)
    encodings = sorted({t.get("encoding", {}).get("kind", "raw") if isinstance(t.get("encoding"), dict) else "raw"
                        for t in transfer["tensors"]})
    result.note = "; ".join(filter(None, [result.note, f"wire encoding: {', '.join(encodings)}"]))
    result.seconds = time.perf_counter() - start
    return result


def _bundle_wire(runner, specs, names: list[str], link: int, data: CalibrationData,
                 index: np.ndarray) -> list[np.ndarray]:
    """What tiers ``0 .. link`` of the bundle send on ``link`` (decoded as the receiver gets it), per sample."""
    features: list[list[np.ndarray]] = [[] for _ in names]
    for i in index:
        values = {s.name: data.inputs[k][i].reshape(s.shape) for k, s in enumerate(specs)}
        for tier in range(link + 1):
            values, _ = runner.run_tier(tier, values)
        for k, name in enumerate(names):
            features[k].append(np.asarray(values[name], dtype=np.float32))
    return [np.stack(f) for f in features]


def rank_disagreements(labels: list[str], dcor: list[float], psnr: list[float], tolerance_db: float = 0.5) -> list[str]:
    """Pairs where the proxy and the attack order two cuts differently.

    Higher dcor should mean higher attacker PSNR. A pair disagrees when the dcor order is the
    opposite of the PSNR order and the PSNRs differ by more than ``tolerance_db`` (decoder
    training noise).
    """
    out = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if not (np.isfinite(psnr[i]) and np.isfinite(psnr[j])) or abs(psnr[i] - psnr[j]) <= tolerance_db:
                continue
            if (dcor[i] - dcor[j]) * (psnr[i] - psnr[j]) < 0:
                out.append(f"proxy ranks {labels[i]} (dcor {dcor[i]:.3f}) and {labels[j]} (dcor {dcor[j]:.3f}) "
                           f"opposite to the attack (PSNR {psnr[i]:.1f} vs {psnr[j]:.1f} dB)")
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """``payload`` as indented JSON (non-finite floats already mapped to null by the ``to_dict`` methods)."""
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- the `splitc privacy` report


def evaluate_model_privacy(gm: torch.fx.GraphModule, candidates: Any, plan_result: Any, calibration: CalibrationData,
                           *, top: int = 3, epochs: int = ATTACK_EPOCHS, samples: int = DEFAULT_SAMPLES,
                           max_samples: int | None = None, seed: int = 0, png_dir: Path | None = None,
                           progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Proxy for every legal cut, then the attack on the ``top`` fastest cuts of the first link + the shallowest.

    Args:
        gm, candidates, plan_result: a planned model (``splitc plan``'s analyses).
        calibration: the ``--calib`` data; the attacker trains and is scored on disjoint splits of it.
        top: how many cuts to attack, by the planner's latency ranking of the first boundary
            (cuts that ship the raw input or nothing are skipped: nothing to attack).
        png_dir: where to write one original-vs-reconstruction grid per attacked cut.
        progress: called with one line before each long step.

    Returns:
        A JSON-ready dict: ``proxy`` (per cut), ``attacks`` (per attacked cut, shallowest first,
        with ``psnr_gap_db`` = reference PSNR - this PSNR), ``reference``, ``disagreements``.
    """
    progress(f"[privacy] distance correlation of {int(candidates.legal_mask.sum())} legal cuts "
             f"on {min(samples, calibration.samples)} samples")
    profile = profile_privacy(gm, candidates, calibration.inputs, samples=samples, seed=seed)
    last = len(candidates.nodes)
    reference = shallowest_cut(candidates)
    chosen = _fastest_cuts(candidates, plan_result, top, last)
    attacked = sorted(set(chosen) | {reference})
    attacks = []
    for number, index in enumerate(attacked, start=1):
        cut = candidates.cuts[index]
        progress(f"[privacy] attack {number}/{len(attacked)}: inversion decoder on cut {index} after {cut.after} "
                 f"({epochs} epochs)")
        png = None if png_dir is None else Path(png_dir) / f"attack_cut{index}_{cut.after}.png"
        result = attack_cut(gm, candidates, index, calibration.inputs, epochs=epochs, seed=seed, png=png,
                            max_samples=max_samples)
        attacks.append({"index": index, "after": cut.after, "dcor": _num(profile.dcor[index]),
                        "reference": index == reference, "fast": index in chosen, **result.to_dict()})
    ref_psnr = next(a["psnr_db"] for a in attacks if a["reference"])
    for a in attacks:
        a["psnr_gap_db"] = None if a["psnr_db"] is None or ref_psnr is None else round(ref_psnr - a["psnr_db"], 3)
    labels = [f"cut {a['index']} ({a['after']})" for a in attacks]
    disagreements = rank_disagreements(labels, [a["dcor"] for a in attacks],
                                       [a["psnr_db"] if a["psnr_db"] is not None else float("nan") for a in attacks])
    latency = _latency_by_cut(plan_result)
    proxy = [{"index": c.index, "after": c.after, "legal": c.legal, "dcor": _num(profile.dcor[c.index]),
              "bytes": c.bytes, "best_latency_s": latency.get(c.index)} for c in candidates.cuts]
    return {"kind": "model", "proxy": proxy, "proxy_method": profile.method, "proxy_notes": profile.notes,
            "proxy_samples": profile.samples, "reference": reference, "attacks": attacks,
            "disagreements": disagreements, "epochs": epochs}


def evaluate_bundle_privacy(bundle_dir: str | Path, calib: str | Path, *, epochs: int = ATTACK_EPOCHS, seed: int = 0,
                            max_samples: int | None = None, png_dir: Path | None = None,
                            progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """The attack on what the bundle sends on each of its links (see :func:`attack_bundle`)."""
    from splitc.runtime.runner import load_manifest

    transfers = load_manifest(bundle_dir)["transfers"]
    if not transfers:
        raise SplitcError(f"bundle '{bundle_dir}' sends nothing between tiers: there is no wire to attack",
                          "compile with a cut (see 'splitc plan')")
    attacks = []
    for number, transfer in enumerate(transfers, start=1):
        link = transfer["link"]
        progress(f"[privacy] attack {number}/{len(transfers)}: inversion decoder on link {link} "
                 f"(after {transfer['cut']['after'] or 'input'}, {epochs} epochs)")
        png = None if png_dir is None else Path(png_dir) / f"attack_link{link}.png"
        result = attack_bundle(bundle_dir, calib, link, epochs=epochs, seed=seed, png=png, max_samples=max_samples)
        attacks.append({"link": link, "index": transfer["cut"]["index"], "after": transfer["cut"]["after"],
                        "bytes": transfer["bytes"], **result.to_dict()})
    return {"kind": "bundle", "bundle": str(bundle_dir), "attacks": attacks, "epochs": epochs}


def _num(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def _latency_by_cut(plan_result: Any) -> dict[int, float | None]:
    rows = plan_result.ranking[0] if plan_result is not None and plan_result.ranking else []
    return {row["index"]: row.get("best_latency_s") for row in rows}


def _fastest_cuts(candidates: Any, plan_result: Any, top: int, last: int) -> list[int]:
    """The ``top`` legal cuts with the lowest best latency on the first boundary that send a computed tensor."""
    rows = plan_result.ranking[0] if plan_result is not None and plan_result.ranking else []
    if not rows and plan_result is not None:  # a forced --split has no ranking: its own cut
        rows = [{"index": plan_result.best.cuts[0], "legal": True, "best_latency_s": plan_result.best.latency_s}]
    out = []
    for row in rows:  # already sorted by latency (illegal / infeasible last)
        if len(out) >= top:
            break
        if row["legal"] and row.get("best_latency_s") is not None and 0 < row["index"] < last:
            out.append(int(row["index"]))
    return out


def format_privacy_report(payload: dict[str, Any], markdown: bool = False) -> str:
    """The proxy table (by depth) and the attack table of :func:`evaluate_model_privacy` / ``evaluate_bundle_privacy``."""
    lines: list[str] = []
    fence = ["```"] if markdown else []
    if payload["kind"] == "model":
        if markdown:
            lines += ["# splitc privacy report", "", "## Proxy: distance correlation per candidate cut", "",
                      "dcor between the input and everything crossing the cut (1 = the input's geometry is intact, "
                      "0 = independent); illegal cuts omitted.", ""]
        lines += fence + [f"{'cut':>4} {'after':<28} {'dcor':>6} {'wire':>10} {'best ms':>9}"]
        for row in payload["proxy"]:
            if not row["legal"]:
                continue
            ms = "-" if row["best_latency_s"] is None else f"{row['best_latency_s'] * 1e3:.2f}"
            lines.append(f"{row['index']:>4} {(row['after'] or 'input')[:28]:<28} {row['dcor']:>6.3f} "
                         f"{_bytes(row['bytes']):>10} {ms:>9}")
        lines += fence
        lines.append(f"proxy: {payload['proxy_method']}")
        lines += [f"note: {n}" for n in payload["proxy_notes"]]
        lines.append("")
    if markdown:
        lines += ["## Attack: inversion decoder on held-out samples", ""]
    head = f"{'cut':>4} {'after':<28} {'dcor':>6} {'MSE':>9} {'PSNR dB':>8} {'SSIM':>6} {'gap dB':>7}"
    if payload["kind"] == "bundle":
        head = f"{'link':>4} {'after':<28} {'wire':>10} {'MSE':>9} {'PSNR dB':>8} {'SSIM':>6}"
    lines += fence + [head]
    for a in payload["attacks"]:
        psnr = "inf" if a["psnr_db"] is None else f"{a['psnr_db']:.2f}"
        ssim = "-" if a["ssim"] is None else f"{a['ssim']:.3f}"
        if payload["kind"] == "bundle":
            lines.append(f"{a['link']:>4} {(a['after'] or 'input')[:28]:<28} {_bytes(a['bytes']):>10} "
                         f"{a['mse']:>9.5f} {psnr:>8} {ssim:>6}")
            continue
        gap = "-" if a.get("psnr_gap_db") is None else f"{a['psnr_gap_db']:+.2f}"
        mark = " (reference: shallowest)" if a["reference"] else ""
        lines.append(f"{a['index']:>4} {(a['after'] or 'input')[:28]:<28} {a['dcor']:>6.3f} {a['mse']:>9.5f} "
                     f"{psnr:>8} {ssim:>6} {gap:>7}{mark}")
    lines += fence
    first = payload["attacks"][0] if payload["attacks"] else {}
    lines.append(f"attacker: {first.get('train_samples', 0)} training samples, {first.get('samples', 0)} held out, "
                 f"{payload['epochs']} epochs; PSNR range R = {first.get('data_range')}"
                 + ("; gap = PSNR at the shallowest cut - PSNR here (higher = the attacker does worse)"
                    if payload["kind"] == "model" else ""))
    notes = sorted({a["note"] for a in payload["attacks"] if a.get("note")})
    lines += [f"note: {n}" for n in notes]
    if payload["kind"] == "model":
        if payload["disagreements"]:
            lines.append("proxy vs attack: " + str(len(payload["disagreements"])) + " pair(s) ranked differently:")
            lines += [f"  - {d}" for d in payload["disagreements"]]
        else:
            lines.append("proxy vs attack: the proxy orders the attacked cuts as the attack does")
    if markdown:
        grids = [a["grid_png"] for a in payload["attacks"] if a.get("grid_png")]
        if grids:
            lines += ["", "## Reconstructions (top: original, bottom: attacker's reconstruction)", ""]
            lines += [f"![{Path(g).stem}]({Path(g).name})" for g in grids]
    return "\n".join(lines)


def _bytes(count: int) -> str:
    from splitc.units import format_bytes

    return format_bytes(count)


def write_privacy_report(payload: dict[str, Any], report_dir: Path) -> list[Path]:
    """``privacy.json`` and ``privacy.md`` in ``report_dir`` (the PNG grids are written there by the attacks)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json(report_dir / "privacy.json", payload)
    (report_dir / "privacy.md").write_text(format_privacy_report(payload, markdown=True) + "\n", encoding="utf-8")
    return [report_dir / "privacy.json", report_dir / "privacy.md",
            *(Path(a["grid_png"]) for a in payload["attacks"] if a.get("grid_png"))]
