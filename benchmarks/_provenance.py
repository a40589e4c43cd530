"""Provenance of a benchmark result: the git commit it was measured on and whether the tree was clean.

A figure is quotable (README) only when it comes from a clean tree: a result measured with
uncommitted changes cannot be traced to the code that produced it. Every benchmark writes its
results JSON through :func:`write_results`, which adds a ``provenance`` object::

    from _provenance import write_results          # benchmarks/ is on sys.path when a script runs
    write_results(out_path, payload)

``provenance`` = ``{"commit", "clean", "dirty_files" (up to 20, when not clean), "branch",
"command", "recorded_utc"}``; ``commit`` is None outside a git checkout (``clean`` then None).
A tracked file modified after the benchmark's process started also makes the tree not clean
(the code that ran is then not the commit recorded). A payload that is a list is wrapped as
``{"rows": payload, "provenance": ...}``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["provenance", "write_results"]

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str, root: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.rstrip() if done.returncode == 0 else None  # not strip(): porcelain lines start with a space


def provenance(root: Path = ROOT, since: float | None = None) -> dict[str, Any]:
    """The commit, branch and cleanliness of the checkout at ``root``, the command and the time.

    Args:
        since: tracked files modified after this time (default: when this process started) count as dirty.
    """
    commit = (_git("rev-parse", "HEAD", root=root) or "").strip() or None
    status = _git("status", "--porcelain", "--untracked-files=normal", root=root) if commit else None
    dirty = [line[3:] for line in status.splitlines()] if status else []
    if commit:
        dirty += [f"{name} (modified while the benchmark ran)" for name in _changed_since(root, since)
                  if name not in dirty]
    return {"commit": commit, "clean": (not dirty) if commit else None,
            **({"dirty_files": dirty[:20]} if dirty else {}),
            "branch": _git("rev-parse", "--abbrev-ref", "HEAD", root=root) if commit else None,
            "command": " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else None,
            "recorded_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _changed_since(root: Path, since: float | None) -> list[str]:
    """Tracked files modified after ``since`` (default: this process's start, from /proc; elsewhere nothing)."""
    started = since
    if started is None:
        try:
            started = Path(f"/proc/{os.getpid()}").stat().st_ctime
        except OSError:
            return []
    files = (_git("ls-files", root=root) or "").splitlines()
    return [f for f in files if (root / f).is_file() and (root / f).stat().st_mtime > started]


def write_results(path: str | Path, payload: Any, root: Path = ROOT) -> Path:
    """Write ``payload`` as JSON to ``path`` with its ``provenance`` (see the module docstring); returns the path."""
    document = dict(payload) if isinstance(payload, dict) else {"rows": payload}
    document["provenance"] = provenance(root)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if document["provenance"]["clean"] is False:
        print(f"note: {path} was measured on a tree with uncommitted changes "
              f"({len(document['provenance'].get('dirty_files', []))} file(s)); commit before quoting it",
              file=sys.stderr)
    return path
