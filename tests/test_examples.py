"""Every example runs as the README says (in a real process, on real files)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd):
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_readme_main_job_resnet50(tmp_path):
    """README: make the example model, compile it for jetson,cloud-gpu, and for three tiers with a forced split."""
    run(str(ROOT / "examples" / "make_resnet50.py"), "--out", "resnet50.pt", cwd=tmp_path)
    run("-m", "splitc", "compile", "resnet50.pt", "--target", "jetson,cloud-gpu", "-o", "bundle", cwd=tmp_path)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["verification"]["passed"]
    assert manifest["model"]["inputs"][0]["shape"] == [1, 3, 224, 224]  # inferred from conv1
    run("-m", "splitc", "compile", "resnet50.pt", "--target", "pi,edge,cloud-gpu", "--split",
        "layer1_2_relu_2,layer3_5_relu_2", "-o", "bundle3", cwd=tmp_path)
    manifest = json.loads((tmp_path / "bundle3" / "manifest.json").read_text())
    assert manifest["verification"]["passed"] and len(manifest["partitions"]) == 3
    assert [t["tensors"][0]["shape"] for t in manifest["transfers"]] == [[1, 256, 56, 56], [1, 1024, 14, 14]]
    summary = run("-m", "splitc", "inspect", "bundle3", cwd=tmp_path).stdout
    assert "tier 2 cloud-gpu-t4" in summary
