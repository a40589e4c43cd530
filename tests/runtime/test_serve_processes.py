"""`splitc serve` / `splitc run` as real processes (splitc's own server; Triton: test_triton.py): the CLI
round trip over HTTP and gRPC, and a server killed and restarted mid-run (the client reports each failure
clearly, recovers, and never returns a wrong answer)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from splitc.runtime.client import RemoteError, SplitClient
from splitc.runtime.process import start_tier_process, stop_tier_process
from splitc.runtime.runner import BundleRunner

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(bundle, tier: str, port: int, timeout_s: float = 60.0) -> subprocess.Popen:
    """Start `splitc serve` on a fixed port (the fault test restarts on the same one)."""
    return start_tier_process(bundle, tier, port=port, timeout_s=timeout_s, cwd=ROOT).proc


def _stop(proc: subprocess.Popen) -> None:
    stop_tier_process(proc, graceful=False)  # SIGKILL: the fault the tests inject


def _inputs(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_cli_run_in_process_and_remote(bundle3, tmp_path):
    np.save(tmp_path / "x.npy", np.stack([_inputs(i)["x"] for i in range(3)]))
    expected = np.concatenate([BundleRunner(bundle3).run(_inputs(i))["output_0"] for i in range(3)])
    local = subprocess.run([sys.executable, "-m", "splitc", "run", str(bundle3), "--input", str(tmp_path / "x.npy"),
                            "--output", str(tmp_path / "local.npz")], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert local.returncode == 0, local.stderr
    assert local.stdout.count("answered by tier 2 'aws-lambda'") == 3
    np.testing.assert_array_equal(np.load(tmp_path / "local.npz")["output_0"], expected)
    port = _free_port()
    server = _start(bundle3, "edge", port)
    try:
        for url in (f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{port + 1}"):  # gRPC on --port + 1
            remote = subprocess.run([sys.executable, "-m", "splitc", "run", str(bundle3), "--input",
                                     str(tmp_path / "x.npy"), "--remote", url, "--output",
                                     str(tmp_path / "remote.npz"), "--concurrency", "2"],
                                    cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert remote.returncode == 0, remote.stderr
            assert remote.stdout.count("answered by tier 2 'aws-lambda'") == 3
            np.testing.assert_array_equal(np.load(tmp_path / "remote.npz")["output_0"], expected)
    finally:
        _stop(server)
    down = subprocess.run([sys.executable, "-m", "splitc", "run", str(bundle3), "--input", str(tmp_path / "x.npy"),
                           "--remote", f"http://127.0.0.1:{port}", "--timeout", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert down.stderr.startswith(f"error: cannot reach the remote tier: http://127.0.0.1:{port}: cannot connect")


def test_kill_and_restart_mid_run(bundle3):
    runner = BundleRunner(bundle3)
    port = _free_port()
    server = _start(bundle3, "edge", port)
    try:
        client = SplitClient(bundle3, remote=f"http://127.0.0.1:{port}", timeout_s=5, retries=0)
        outcomes = []
        for i in range(45):
            if i == 15:
                server.send_signal(signal.SIGKILL)  # crash, not a clean shutdown
                server.wait(10)
            if i == 30:
                _stop(server)
                server = _start(bundle3, "edge", port)
            try:
                outcomes.append(client.infer(_inputs(i)))
            except RemoteError as exc:
                outcomes.append(exc)
        failed = [i for i, o in enumerate(outcomes) if isinstance(o, RemoteError)]
        assert failed == list(range(15, 30))  # exactly the requests sent while it was down
        for i in failed:
            error = outcomes[i]
            assert error.code in {"unreachable", "disconnected"}
            assert str(error).startswith(f"http://127.0.0.1:{port}: ") and error.request_id in str(error)
        for i, outcome in enumerate(outcomes):  # every answer is the right one
            if not isinstance(outcome, RemoteError):
                np.testing.assert_array_equal(outcome.outputs["output_0"], runner.run(_inputs(i))["output_0"])

        # with retries, a request sent while the server restarts succeeds once it is back
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        patient = client
        patient.retries, patient.backoff_s = 40, 0.25
        restarted = {}
        threading.Thread(target=lambda: restarted.setdefault("proc", _start(bundle3, "edge", port))).start()
        result = patient.infer(_inputs(99))
        assert result.attempts > 1
        np.testing.assert_array_equal(result.outputs["output_0"], runner.run(_inputs(99))["output_0"])
        deadline = time.monotonic() + 30
        while "proc" not in restarted and time.monotonic() < deadline:
            time.sleep(0.1)
        server = restarted["proc"]
    finally:
        _stop(server)


def test_cli_user_errors_are_one_line(bundle3, tmp_path, capsys):
    from splitc.driver.cli import main

    for argv, message in (
            (["serve", str(bundle3), "--tier", "gpu-farm"], "error: tier 'gpu-farm' is not in this bundle"),
            (["serve", str(tmp_path), "--tier", "edge"], "is not a splitc bundle (no manifest.json)"),
            (["run", str(bundle3), "--input", str(tmp_path / "missing.npy")], "cannot read --input"),
            (["run", str(bundle3), "--input", str(tmp_path / "x.npy"), "--remote", "ftp://x"],
             "is not an http://host:port or grpc://host:port URL"),
            (["serve", str(bundle3), "--tier", "edge", "--server", "triton", "--next", "http://x:1"],
             "--next works with splitc's server only"),
            (["serve", str(bundle3), "--tier", "edge", "--design", "bls"], "apply to --server triton")):
        np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and "Traceback" not in err, (argv, err)
