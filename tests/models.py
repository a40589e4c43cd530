"""Tiny models used across the tests (importable, so .pt files of them can be unpickled)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Chain(nn.Module):
    """A straight line: every cut carries exactly one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class Residual(nn.Module):
    """A residual block: cuts inside it must carry the skip tensor too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.b(torch.relu(self.a(x)))
        x = torch.relu(x + y)
        return self.head(x.mean(dim=(2, 3)))


class BranchConcat(nn.Module):
    """Three parallel branches joined by a concatenation (inception-like)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.b1 = nn.Conv2d(6, 4, 1)
        self.b2 = nn.Sequential(nn.Conv2d(6, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.b3 = nn.MaxPool2d(3, stride=1, padding=1)
        self.head = nn.Linear(14, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.cat([self.b1(x), self.b2(x), self.b3(x)], dim=1)
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


class MultiOutput(nn.Module):
    """Returns an early feature map and the final logits (an output produced upstream of the last tier)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        early = torch.sigmoid(self.c1(x))
        late = self.fc(self.c2(early).mean(dim=(2, 3)))
        return early, late


class UsesShape(nn.Module):
    """Reads x.shape and reshapes with it (shape arithmetic that must fold to constants)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = torch.relu(self.conv(x))
        return self.fc(y.reshape(n, 4 * h * w))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(4, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.a(x)) * torch.sigmoid(self.b(y)))


class DataDependent(nn.Module):
    """Python control flow on tensor values: neither symbolic_trace nor torch.export can capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if y.sum() > 0:
            return y * 2
        return y


class ShapeBranch(nn.Module):
    """Control flow on a shape: symbolic_trace fails, torch.export specialises it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            return self.fc(x).sum(0, keepdim=True)
        return torch.relu(self.fc(x))


class Attention(nn.Module):
    """nn.MultiheadAttention returns a tuple: the cut right after it is illegal."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, _ = self.attn(h, h, h)
        return self.fc((a + h).mean(1))


def chain() -> nn.Module:
    """Factory used as ``tests.models:chain`` on the command line."""
    torch.manual_seed(0)
    return Chain().eval()


IMAGE = (1, 3, 8, 8)
INPUT_SHAPES: dict[type, list[tuple[int, ...]]] = {
    Chain: [IMAGE], Residual: [IMAGE], BranchConcat: [IMAGE], MultiOutput: [IMAGE], UsesShape: [IMAGE],
    TwoInputs: [(2, 8), (2, 4)], Attention: [(1, 5, 6)],
}


class InPlace(nn.Module):
    """In-place activations (torchvision Inception's BasicConv2d does this): a cut right before one
    must not let the downstream in-place op corrupt the tensor that crossed the wire."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.relu(self.conv(x), inplace=True)
        return self.fc(y.mean(dim=(2, 3)))


INPUT_SHAPES[InPlace] = [IMAGE]


class PooledBranches(nn.Module):
    """Two branches that each shrink the input 16x with a cheap pooling, then widen it with heavy
    convolutions: the best 2-tier placement pools both branches on the device and ships the two small
    tensors, which no prefix of the traced order (branch a whole, then branch b) can do."""

    def __init__(self) -> None:
        super().__init__()
        self.a_pool, self.b_pool = nn.AvgPool2d(4), nn.MaxPool2d(4)
        self.a1, self.a2 = nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 128, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 128, 3, padding=1)
        self.head = nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a2(torch.relu(self.a1(self.a_pool(x))))
        b = self.b2(torch.relu(self.b1(self.b_pool(x))))
        return self.head(torch.cat([a, b], dim=1).mean(dim=(2, 3)))


def pooled_branches() -> nn.Module:
    """Factory used as ``tests.models:pooled_branches`` (seeded weights)."""
    torch.manual_seed(0)
    return PooledBranches().eval()


INPUT_SHAPES[PooledBranches] = [(1, 3, 64, 64)]
