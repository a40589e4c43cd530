"""Every torchvision classification family compiles to 2 and 3 tiers and verifies in ONNX Runtime.

Cuts are forced at about one third and two thirds of each graph (preferring cuts
that carry several tensors) so partitions really split the network; the planner
alone would often keep these small inputs on one tier. Fast variants use small
inputs or small configurations of the same architecture code; ``slow`` ones use
the real sizes and run in CI.
"""

from __future__ import annotations

import json

import pytest

from splitc.core.options import CompileOptions
from splitc.driver.pipeline import compile_model, plan_model

FAST = {
    "resnet18": 64, "mobilenet_v2": 64, "mobilenet_v3_small": 64, "efficientnet_b0": 64, "densenet121": 64,
    "googlenet": 64, "regnet_y_400mf": 64, "convnext_tiny": 64,
    "tests.test_torchvision_families:small_vit": 32, "tests.test_torchvision_families:small_swin": 64,
}
SLOW = {"resnet50": 224, "inception_v3": 299, "vit_b_16": 224, "swin_t": 224, "vgg11": 224, "mobilenet_v3_large": 224,
        "densenet121": 224}


def small_vit():
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=10)


def small_swin():
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=10)


def forced_cuts(spec: str, shape, tiers: int) -> tuple[str, ...]:
    prepared = plan_model(spec, CompileOptions(targets=("jetson",)), input_shapes=[shape])
    cuts = prepared.ctx.candidates.cuts
    inner = [c for c in cuts[1:-1] if c.legal]
    picks = []
    for fraction in [i / tiers for i in range(1, tiers)]:
        target = int(len(cuts) * fraction)
        near = [c for c in inner if abs(c.index - target) <= len(cuts) // 10] or inner
        picks.append(max(near, key=lambda c: (len(c.crossing), -abs(c.index - target))))
    picks.sort(key=lambda c: c.index)
    return tuple(c.after for c in picks)


def compile_and_check(spec: str, size: int, tmp_path) -> None:
    spec = spec if ":" in spec else f"torchvision.models:{spec}"
    shape = (1, 3, size, size)
    for targets in (("jetson", "cloud-gpu"), ("pi", "edge", "cloud-gpu")):
        split = forced_cuts(spec, shape, len(targets))
        out = tmp_path / f"b{len(targets)}"
        result = compile_model(spec, CompileOptions(targets=targets, split=split), out, input_shapes=[shape])
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["verification"]["passed"], manifest["verification"]
        assert len(manifest["partitions"]) == len(targets)
        assert len(manifest["transfers"]) == len(targets) - 1
        assert result.manifest["plan"]["cuts"][0]["after"] == split[0]


@pytest.mark.parametrize("spec,size", FAST.items(), ids=[k.split(":")[-1] for k in FAST])
def test_family_fast(spec, size, tmp_path):
    compile_and_check(spec, size, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("spec,size", SLOW.items(), ids=list(SLOW))
def test_family_full_size(spec, size, tmp_path):
    compile_and_check(spec, size, tmp_path)
