"""Run one tier's ``splitc serve`` in a child process (tests, benchmarks, local demos).

Example:
    >>> proc, url = start_tier_process("bundle/", "cloud-gpu")   # doctest: +SKIP
    >>> stop_tier_process(proc)                                    # doctest: +SKIP
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

__all__ = ["start_tier_process", "stop_tier_process"]

READY_PREFIX = "serving tier"  # the line `splitc serve` prints once it accepts requests


def start_tier_process(bundle: str | Path, tier: str, *, port: int = 0, host: str = "127.0.0.1",
                       extra_args: Sequence[str] = (), prefix: Sequence[str] = (), timeout_s: float = 60.0,
                       cwd: str | Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``splitc serve BUNDLE --tier TIER`` and wait (bounded) for its ready line.

    Args:
        bundle, tier: what to serve.
        port: 0 lets the server pick a free port (read back from its ready line).
        host: address to bind.
        extra_args: more ``splitc serve`` flags.
        prefix: a command to run it under, e.g. ``("ip", "netns", "exec", "cloud")``.
        timeout_s: how long to wait for the ready line.
        cwd: working folder of the child.

    Returns:
        ``(process, url)``; the child's output keeps being read so it never blocks on a full pipe.

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
                url = line.split(" on ")[1].split()[0]
                threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain
                return proc, url
            if not line and proc.poll() is not None:
                break
    finally:
        selector.close()
    proc.kill()
    proc.wait(10)
    raise RuntimeError(f"splitc serve did not get ready within {timeout_s:g}s: {''.join(seen)}")


def stop_tier_process(proc: subprocess.Popen, graceful: bool = True) -> None:
    """Stop a server started by :func:`start_tier_process`: SIGTERM then SIGKILL, or SIGKILL at once."""
    if proc.poll() is None:
        if graceful:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        else:
            proc.kill()
    proc.wait(10)
