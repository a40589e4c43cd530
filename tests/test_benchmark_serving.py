"""benchmarks/serving.py --quick runs every part end to end and every answer is right (a smoke run: the figures
themselves come from a quiet machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("tritonclient.grpc", reason="the benchmark's clients are tritonclient's")


@pytest.mark.slow
def test_serving_benchmark_quick(tmp_path):
    from splitc.errors import SplitcError
    from splitc.runtime.triton_server import find_triton

    try:
        find_triton()
    except SplitcError as exc:
        pytest.skip(f"no usable tritonserver here: {exc}")
    out = tmp_path / "serving.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["git"]["commit"] and isinstance(report["git"]["clean"], bool)
    rows = report["designs"]
    pipelines = {r["pipeline"] for r in rows}
    assert len(pipelines) == 6 and any("ensemble" in p for p in pipelines) and any("BLS" in p for p in pipelines)
    assert {r["concurrency"] for r in rows} == {1, 2}
    for row in rows + report["batching_with_exits"]:
        assert row["errors"] == 0 and row["wrong_answers"] == 0 and row["requests"] > 0, row
    batched = report["batching_with_exits"][0]
    assert batched["exit_at_edge"]["requests"] > 0 and batched["forwarded_to_cloud"]["requests"] > 0
    assert batched["edge_model"]["answers"]["exit"] > 0 and "mixed_calls" in batched["edge_model"]["answers"]
    link = report["emulated_link"]
    assert link["predicted_link_ms"] > 0 and link["measured_link_ms"] > 0
    assert link["predicted_bandwidth_ms"] > 0 and "measured_bandwidth_ms" in link and "bandwidth_error_pct" in link
    resplit = report["live_resplit"]
    assert [p["rate_mbps"] for p in resplit["phases"]] == [60, 500, 60, 15]
    assert all(p[c]["wrong_answers"] == 0 for p in resplit["phases"] for c in ("adaptive", "fixed"))
    assert resplit["switches"], "the adaptive client never changed variant while the link went from 60 to 15 Mbit/s"
