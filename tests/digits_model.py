"""A tiny CNN trained in seconds on scikit-learn's 1,797 real 8x8 digits (offline), for the
compression tests: accuracy figures are real, not random-weight noise.

``digits_bundle_inputs(tmp)`` trains it (seeded), saves ``digits_cnn.pt`` and a
``calib.npz`` of 600 digits the model never saw, and returns both paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DigitsCNN", "train_digits", "CUT_4D", "CUT_2D"]

#: a cut carrying one [1, 16, 8, 8] float tensor (after the second convolution's ReLU)
CUT_4D = "relu_1"
#: a cut carrying one [1, 256] tensor (after flatten): cannot take a bottleneck
CUT_2D = "flatten"


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


def train_digits(folder: Path, epochs: int = 15, seed: int = 0) -> tuple[Path, Path]:
    """Train on 1,197 digits; write the model and 600 held-out digits as calib.npz."""
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    train, calib = order[:1197], order[1197:]
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xt[batch]), yt[batch]).backward()
            opt.step()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.eval(), folder / "digits_cnn.pt")
    np.savez(folder / "calib.npz", x=x[calib], y=y[calib])
    return folder / "digits_cnn.pt", folder / "calib.npz"


_CACHE: dict[str, tuple[Path, Path]] = {}


def trained_digits() -> tuple[Path, Path]:
    """``train_digits`` once per test session (in a temporary folder)."""
    import tempfile

    if "paths" not in _CACHE:
        _CACHE["paths"] = train_digits(Path(tempfile.mkdtemp(prefix="splitc-digits-")), epochs=10)
    return _CACHE["paths"]


def compile_digits(out: Path, split: str = CUT_4D, **options):
    """Compile the digits CNN for jetson,cloud-gpu with the cut forced at ``split``."""
    from dataclasses import fields

    from splitc.core.options import CompileOptions
    from splitc.driver.pipeline import compile_model

    model, calib = trained_digits()
    extra = {"emit": ("none",)} if "emit" in {f.name for f in fields(CompileOptions)} else {}
    opts = CompileOptions(targets=("jetson", "cloud-gpu"), split=(split,), calib=str(calib), **extra, **options)
    return compile_model(str(model), opts, out, input_shapes=[(1, 1, 8, 8)])
