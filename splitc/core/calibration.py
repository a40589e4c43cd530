"""Calibration data (``--calib calib.npz``): real inputs, optional labels, held-out splits.

``calib.npz`` holds ``x`` (inputs stacked on a leading sample axis: shape
``[S, *input_shape_without_batch]`` or ``[S, *input_shape]``) and optionally ``y``
(integer class labels, shape ``[S]``). Models with several inputs use one array per
input name instead of ``x``. Without ``y``, the original model's own predictions
are the reference (accuracy = agreement with the full model).

Every consumer (exit training, threshold calibration, quantization, bottleneck
training, privacy attacks) gets disjoint, deterministic index splits from
:meth:`CalibrationData.split`, so nothing is ever evaluated on samples it was
trained or calibrated on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitc.core.loader import InputSpec
from splitc.errors import SplitcError

__all__ = ["CalibrationData", "load_calibration", "as_samples", "calibration_input_shapes",
           "calibration_named_inputs", "MIN_SAMPLES"]

#: Fewer samples than this cannot train, calibrate and evaluate on disjoint splits.
MIN_SAMPLES = 64


@dataclass
class CalibrationData:
    """Calibration inputs (one array per model input, sample axis first) and optional labels."""

    inputs: list[np.ndarray]
    labels: np.ndarray | None
    source: str

    @property
    def samples(self) -> int:
        return len(self.inputs[0])

    def batch(self, index: np.ndarray) -> list[np.ndarray]:
        """The inputs of the samples in ``index``."""
        return [a[index] for a in self.inputs]

    def split(self, fractions: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
        """Disjoint, shuffled index sets, e.g. ``{"train": 0.6, "calibrate": 0.2, "test": 0.2}``.

        Raises:
            SplitcError: a split would be empty.
        """
        order = np.random.default_rng(seed).permutation(self.samples)
        total = sum(fractions.values())
        out, start = {}, 0
        for i, (name, fraction) in enumerate(fractions.items()):
            end = self.samples if i == len(fractions) - 1 else start + int(round(self.samples * fraction / total))
            out[name] = np.sort(order[start:end])
            if len(out[name]) == 0:
                raise SplitcError(f"calibration data '{self.source}' has {self.samples} samples: too few for a "
                                  f"non-empty '{name}' split", f"give at least {MIN_SAMPLES} samples")
            start = end
        return out

    def to_dict(self) -> dict:
        return {"source": self.source, "samples": self.samples, "labels": self.labels is not None}


def load_calibration(path: str | Path, specs: list[InputSpec], min_samples: int = MIN_SAMPLES) -> CalibrationData:
    """Read and check ``calib.npz`` against the model's input specs.

    Raises:
        SplitcError: unreadable file, missing arrays, wrong shapes or dtypes, labels
            of the wrong length or kind, or fewer than ``min_samples`` samples.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise SplitcError(f"cannot read calibration data '{path}': {str(exc).splitlines()[0][:200]}",
                          "give an .npz file with an array 'x' (inputs) and optionally 'y' (labels)") from None
    if not hasattr(archive, "files"):
        raise SplitcError(f"calibration data '{path}' is a single array, not an .npz archive",
                          "save it with numpy.savez(path, x=inputs, y=labels)")
    keys = ["x"] if len(specs) == 1 and "x" in archive.files else [s.name for s in specs]
    missing = [k for k in keys if k not in archive.files]
    if missing:
        raise SplitcError(f"calibration data '{path}' lacks array(s) {', '.join(missing)} "
                          f"(it has: {', '.join(archive.files) or 'nothing'})",
                          "store the inputs as 'x' (or one array per model input name)")
    inputs = [_check_inputs(archive[k], spec, path, k) for k, spec in zip(keys, specs)]
    counts = {len(a) for a in inputs}
    if len(counts) != 1:
        raise SplitcError(f"calibration inputs in '{path}' have different sample counts {sorted(counts)}")
    labels = _check_labels(archive["y"], inputs[0], path) if "y" in archive.files else None
    data = CalibrationData(inputs, labels, str(path))
    if data.samples < min_samples:
        raise SplitcError(f"calibration data '{path}' has {data.samples} samples; at least {min_samples} are needed "
                          "to train, calibrate and evaluate on disjoint splits", "give more samples")
    return data


def _check_inputs(array: np.ndarray, spec: InputSpec, path: Path, key: str) -> np.ndarray:
    return as_samples(array, spec, f"calibration array '{key}' in '{path}'")


def as_samples(array: np.ndarray, spec: InputSpec, what: str) -> np.ndarray:
    """Check ``array`` holds samples of the input ``spec`` and stack them on a leading axis.

    For a batch-1 input of shape ``[1, *rest]`` both ``[S, *rest]`` and ``[S, 1, *rest]`` are
    accepted and returned as ``[S, *rest]``; for other inputs ``[S, *shape]``.

    Args:
        array: the user's array.
        spec: the model input it feeds.
        what: how errors name the array (e.g. "calibration array 'x' in 'calib.npz'").

    Raises:
        SplitcError: wrong shape, non-numeric or mismatched dtype, NaN or infinite values.
    """
    per_sample = tuple(spec.shape[1:]) if spec.shape and spec.shape[0] == 1 else tuple(spec.shape)
    if array.ndim == len(spec.shape) and spec.shape[0] == 1 and tuple(array.shape[1:]) == per_sample:
        pass  # [S, *shape[1:]]
    elif array.ndim == len(spec.shape) + 1 and tuple(array.shape[1:]) == tuple(spec.shape):
        array = array.reshape((-1, *per_sample)) if spec.shape[0] == 1 else array
    else:
        raise SplitcError(f"{what} has shape {list(array.shape)}; the model input "
                          f"'{spec.name}' is {list(spec.shape)}, so expected [S, {', '.join(map(str, per_sample))}]")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise SplitcError(f"{what} has dtype {array.dtype}, not numbers")
    want = np.dtype(spec.dtype)
    if np.issubdtype(want, np.floating) != np.issubdtype(array.dtype, np.floating):
        raise SplitcError(f"{what} has dtype {array.dtype} but the model input '{spec.name}' is {spec.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise SplitcError(f"{what} contains NaN or infinite values")
    return array.astype(want)


def _check_labels(labels: np.ndarray, inputs: np.ndarray, path: Path) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != len(inputs):
        raise SplitcError(f"labels 'y' in '{path}' have shape {list(labels.shape)}; expected [{len(inputs)}] "
                          "(one integer class per sample)")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise SplitcError(f"labels 'y' in '{path}' must be non-negative integer class indices "
                          f"(got dtype {labels.dtype})")
    return labels.astype(np.int64)


def calibration_input_shapes(path: str | Path) -> list[tuple[int, ...]] | None:
    """Batch-1 input shape(s) read from ``calib.npz``'s ``x`` (``[S, *shape]`` -> ``(1, *shape)``), if it has one.

    Used when no ``--input-shape`` is given: better than guessing from the first layer.
    Returns None when the file has no ``x`` (multi-input files are keyed by input name,
    whose order the model defines) or cannot be read (``load_calibration`` reports that).
    """
    try:
        with np.load(Path(path), allow_pickle=False) as archive:
            if "x" not in getattr(archive, "files", ()):
                return None
            shape = archive["x"].shape
    except Exception:
        return None
    return [(1, *shape[1:])] if len(shape) >= 2 else None


def calibration_named_inputs(path: str | Path) -> list[InputSpec]:
    """Batch-1 input specs read from a ``calib.npz`` keyed by input name (no ``x``; ``y`` = labels).

    ``{"input_ids": [S, 64] int64, "attention_mask": [S, 64] int64, "y": [S]}`` gives
    ``input_ids 1x64 int64`` and ``attention_mask 1x64 int64``: a text model's calibration data
    names its inputs, as ``--input`` would. Floating arrays are float32 inputs, integer arrays
    int64, booleans bool. Returns ``[]`` when the file has ``x`` or cannot be read
    (``load_calibration`` reports that).
    """
    try:
        with np.load(Path(path), allow_pickle=False) as archive:
            files = list(getattr(archive, "files", ()))
            if not files or "x" in files:
                return []
            arrays = {k: (archive[k].shape, archive[k].dtype) for k in files if k != "y"}
    except Exception:
        return []
    specs = []
    for name, (shape, dtype) in arrays.items():
        if len(shape) < 2:
            return []
        kind = "float32" if np.issubdtype(dtype, np.floating) else "bool" if dtype == np.bool_ else "int64"
        specs.append(InputSpec(name, (1, *map(int, shape[1:])), kind))
    return specs
