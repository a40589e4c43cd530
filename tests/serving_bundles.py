"""Bundles shared by the serving tests (runtime/ and backends/): compiled once per test session."""

from __future__ import annotations

from pathlib import Path

from splitc.core.options import CompileOptions
from splitc.driver.pipeline import compile_model

#: tests.models:Residual on device (jetson: tensorrt) -> edge (edge-cpu: Triton) -> faas (aws-lambda):
#: every backend artifact kind, two links (one with two tensors), a model small enough for fast tests.
THREE_TIERS = dict(model="tests.models:Residual", targets=("jetson", "edge", "lambda"), split=("a", "add"),
                   input_shapes=[(1, 3, 8, 8)])


def three_tier_bundle(tmp_path_factory) -> Path:
    """The THREE_TIERS bundle in the session's temp folder (compiled on first use)."""
    out = tmp_path_factory.getbasetemp() / "serving-three-tier-bundle"
    if not (out / "manifest.json").exists():
        spec = THREE_TIERS
        compile_model(spec["model"], CompileOptions(targets=spec["targets"], split=spec["split"]), out,
                      input_shapes=spec["input_shapes"])
    return out
