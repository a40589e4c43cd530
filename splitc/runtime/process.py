"""Run one tier's ``splitc serve`` in a child process (tests, benchmarks, local demos).

Works for both servers (``extra_args=("--server", "triton")`` starts a real tritonserver under it):
the child prints one ready line with its URLs, and SIGTERM stops it cleanly (Triton included:
server stopped, its shared memory removed).

Example:
    >>> tier = start_tier_process("bundle/", "cloud-gpu")           # doctest: +SKIP
    >>> tier.url, tier.grpc_url                                       # doctest: +SKIP
    ('http://127.0.0.1:41234', 'grpc://127.0.0.1:41235')
    >>> stop_tier_process(tier.proc)                                   # doctest: +SKIP
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple, Sequence

__all__ = ["TierProcess", "start_tier_process", "stop_tier_process"]

READY_PREFIX = "serving tier"  # the line `splitc serve` prints once it accepts requests


class TierProcess(NamedTuple):
    """A started ``splitc serve`` child: the process, its HTTP URL and its gRPC URL (None without gRPC)."""

    proc: subprocess.Popen
    url: str
    grpc_url: str | None
    ready_line: str


def start_tier_process(bundle: str | Path, tier: str, *, port: int = 0, host: str = "127.0.0.1",
                       extra_args: Sequence[str] = (), prefix: Sequence[str] = (), timeout_s: float = 120.0,
                       cwd: str | Path | None = None) -> TierProcess:
    """Start ``splitc serve BUNDLE --tier TIER`` and wait (bounded) for its ready line.

    Args:
        bundle, tier: what to serve.
        port: 0 lets the server pick free ports (read back from its ready line).
        host: address to bind.
        extra_args: more ``splitc serve`` flags (e.g. ``--server triton``).
        prefix: a command to run it under, e.g. ``("ip", "netns", "exec", "cloud")``.
        timeout_s: how long to wait for the ready line.
        cwd: working folder of the child.

    Returns:
        A :class:`TierProcess`; the child's output keeps being read so it never blocks on a full pipe.

    Raises:
        RuntimeError: the server exited or did not get ready in time (its output is included).
    """
    cmd = [*prefix, sys.executable, "-m", "splitc", "serve", str(bundle), "--tier", tier, "--host", host,
           "--port", str(port), *extra_args]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline, seen = time.monotonic() + timeout_s, []
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.5):
                continue
            line = proc.stdout.readline()
            seen.append(line)
            if line.startswith(READY_PREFIX):
                words = line.split()
                url = next(w for w in words if w.startswith("http://"))
                grpc = next((w for w in words if w.startswith("grpc://")), None)
                threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain
                return TierProcess(proc, url, grpc, line.strip())
            if not line and proc.poll() is not None:
                break
    finally:
        selector.close()
    stop_tier_process(proc, graceful=True)
    raise RuntimeError(f"splitc serve did not get ready within {timeout_s:g}s: {''.join(seen)}")


def stop_tier_process(proc: subprocess.Popen, graceful: bool = True, timeout_s: float = 30.0) -> None:
    """Stop a server started by :func:`start_tier_process`: SIGTERM (then SIGKILL after ``timeout_s``), or
    SIGKILL at once (a crash: a Triton under it then stops by itself, see ``TritonServer(die_with_parent)``)."""
    if proc.poll() is None:
        if graceful:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        else:
            proc.kill()
    proc.wait(timeout_s)
