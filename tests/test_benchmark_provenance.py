"""benchmarks/_provenance.py: every results JSON records the commit and whether the tree was clean."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _provenance import provenance, write_results  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_clean_and_dirty_trees(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-qm", "one")
    clean = provenance(tmp_path, since=time.time() + 1)  # (the files were written after this test process started)
    assert clean["commit"] == _git(tmp_path, "rev-parse", "HEAD") and clean["clean"] is True
    assert "dirty_files" not in clean and clean["recorded_utc"]
    (tmp_path / "code.py").write_text("x = 2\n")  # uncommitted change: the figure is not traceable
    (tmp_path / "new.py").write_text("y = 1\n")   # an untracked source file counts too
    dirty = provenance(tmp_path, since=time.time() + 1)
    assert dirty["clean"] is False and {"code.py", "new.py"} <= set(dirty["dirty_files"])
    _git(tmp_path, "add", "code.py", "new.py")
    _git(tmp_path, "commit", "-qm", "two")
    during = provenance(tmp_path, since=time.time() - 60)  # committed, but changed after the run began
    assert during["clean"] is False and "code.py (modified while the benchmark ran)" in during["dirty_files"]


def test_write_results_adds_provenance(tmp_path):
    out = write_results(tmp_path / "results" / "x.json", {"figure": 1.5})
    document = json.loads(out.read_text())
    assert document["figure"] == 1.5 and set(document["provenance"]) >= {"commit", "clean", "branch", "command"}
    rows = json.loads(write_results(tmp_path / "rows.json", [{"a": 1}]).read_text())
    assert rows["rows"] == [{"a": 1}] and "provenance" in rows


def test_outside_a_checkout(tmp_path):
    assert provenance(tmp_path) == {**provenance(tmp_path), "commit": None, "clean": None}


def test_every_benchmark_writes_its_results_through_write_results():
    """A results JSON without provenance cannot be quoted: each script that writes one goes through write_results."""
    scripts = sorted(p for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")
                     if not p.name.startswith("_"))
    assert scripts
    missing = [p.name for p in scripts if ".json" in p.read_text(encoding="utf-8")
               and "write_results(" not in p.read_text(encoding="utf-8")]
    assert not missing, f"results written without provenance: {missing}"
