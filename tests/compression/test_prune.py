"""prune: structured pruning really shrinks the sending partition's FLOPs and the boundary tensor."""

from __future__ import annotations

import pytest

from splitc.compression.settings import CompressionSettings
from splitc.core.options import CompileOptions
from splitc.errors import SplitcError
from tests.digits_model import compile_digits

pytest.importorskip("torch_pruning")


def test_prune_shrinks_flops_and_boundary(tmp_path):
    """A setting the accuracy guard accepts (the build is seeded, so it is accepted on every run)."""
    result = compile_digits(tmp_path / "b", prune=0.25, accuracy_target=0.95)
    compression = result.manifest["plan"]["compression"]
    pruning = compression["pruning"]
    assert pruning is not None, compression["notes"]
    assert pruning["sending_flops_after"] < pruning["sending_flops_before"]
    assert pruning["boundary_bytes_after"] < pruning["boundary_bytes_before"]
    tensor = result.manifest["transfers"][0]["tensors"][0]
    assert tensor["shape"][1] < 16 and tensor["bytes"] == pruning["boundary_bytes_after"]
    verdict = next(v for v in result.manifest["accuracy"]["verdicts"] if v["step"].startswith("--prune 0.25"))
    assert verdict["met"] and verdict["accuracy"] - verdict["margin"] >= verdict["required"]
    assert result.manifest["verification"]["passed"]


def test_prune_needs_calibration_data():
    with pytest.raises(SplitcError, match="--prune 0.3 \\(fine-tuning\\) needs calibration data"):
        CompressionSettings.from_options(CompileOptions(targets=("jetson",), prune=0.3))
