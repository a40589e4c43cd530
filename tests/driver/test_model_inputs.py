"""What the user reads about the model's inputs: assumed shapes are seen under -q and recorded (issue 16 item 4),
named inputs on the command line (issue 18)."""

from __future__ import annotations

import json

import torch

from tests.cli import run_cli
from tests.models import Chain


def test_assumed_shape_is_warned_under_quiet_and_recorded_in_plan_json_and_manifest(tmp_path, capsys):
    torch.manual_seed(0)
    model = tmp_path / "chain.pt"
    torch.save(Chain().eval(), model)  # a Conv2d first layer: the spatial size is not in the model
    code, _, err = run_cli(capsys, "plan", str(model), "--target", "jetson,cloud-gpu", "-q",
                           "--report", str(tmp_path / "report"))
    assert code == 0
    assert "input 'x' assumed 1x3x224x224" in err and "--input-shape" in err  # -q hides INFO, not this
    plan = json.loads((tmp_path / "report" / "plan.json").read_text())
    assert plan["inputs"][0]["shape"] == [1, 3, 224, 224] and "224x224" in plan["inputs"][0]["assumed"]
    code, _, _ = run_cli(capsys, "compile", str(model), "--target", "jetson,cloud-gpu", "-q", "--emit", "none",
                         "-o", str(tmp_path / "bundle"))
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert code == 0 and "224x224" in manifest["model"]["inputs"][0]["assumed"]
    assert manifest["plan"]["inputs"] == manifest["model"]["inputs"]
    code, _, err = run_cli(capsys, "plan", str(model), "--target", "jetson,cloud-gpu", "-q", "--input-shape", "1,3,28,28")
    assert code == 0 and "assumed" not in err


def test_named_input_flags(tmp_path, capsys):
    torch.manual_seed(0)
    model = tmp_path / "chain.pt"
    torch.save(Chain().eval(), model)
    code, out, err = run_cli(capsys, "plan", str(model), "--target", "jetson,cloud-gpu", "--input", "x:1x3x16x16",
                             "--json")
    assert code == 0 and json.loads(out)["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    code, _, err = run_cli(capsys, "plan", str(model), "--target", "jetson,cloud-gpu", "--input", "y:1x3x16x16")
    assert code == 2 and err.count("\n") == 1 and "has no argument 'y'" in err
    code, _, err = run_cli(capsys, "plan", str(model), "--target", "jetson,cloud-gpu", "--input", "x:1x3:float")
    assert code == 2 and "unknown dtype 'float'" in err
