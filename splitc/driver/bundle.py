"""Write a bundle atomically: build it in a hidden sibling folder, move it into place at the end.

A failed compile (bad input, failed verification, a bug) removes the staging
folder, so nothing half-written ever sits at the output path looking like a bundle.
An existing output folder is replaced only if it is itself a splitc bundle (has a
manifest.json) or is empty; anything else is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from splitc.errors import SplitcError

__all__ = ["check_output_dir", "staging_dir"]

log = logging.getLogger("splitc")


def check_output_dir(out: Path) -> None:
    """Fail early (before any work) if ``out`` cannot receive a bundle."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SplitcError(f"output path '{out}' exists and is a file", "choose a folder with -o")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise SplitcError(f"output folder '{out}' is not empty and is not a splitc bundle",
                          "choose another -o folder or empty this one")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SplitcError(f"cannot create the output folder's parent '{parent}': {exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SplitcError(f"output folder '{out}' is not writable (no write permission on '{parent}')",
                          "choose a writable -o folder")


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh folder next to ``out``; on success it replaces ``out``, on error it is removed."""
    out = Path(out).resolve()
    check_output_dir(out)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.splitc-", dir=out.parent))
    except OSError as exc:
        raise SplitcError(f"cannot write into '{out.parent}': {exc.strerror}", "choose a writable -o folder") from None
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _replace(stage, out)


def _replace(stage: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.splitc-old-{os.getpid()}")
        os.replace(out, old)
        log.info("replacing the existing bundle at %s", out)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
