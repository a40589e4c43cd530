"""benchmarks/serving.py --quick runs end to end (bounded: ~1 min) and every answer is right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_serving_benchmark_quick(tmp_path):
    out = tmp_path / "serving.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    for rows in report["loopback_load"].values():
        assert all(r["errors"] == 0 and r["wrong_answers"] == 0 and r["requests"] > 0 for r in rows)
    link = report["emulated_link"]
    assert link["predicted_link_ms"] > 0 and link["measured_link_ms"] > 0
    assert abs(link["link_error_pct"]) < 50  # a loose sanity bound: the figure itself goes in the README
