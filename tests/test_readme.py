"""Every command of the README runs as written, in order, on what the earlier commands produced (issue 16.3).

The README's ```bash blocks are executed one by one with ``bash -euo pipefail`` in a fresh copy of the
project (its tracked files: no bundles, no trained example models), so each block runs on what the blocks
before it wrote. Annotations are HTML comments on the line right above a block (invisible to readers):

* ``<!-- readme-test: skip: REASON -->`` -- not run (installing packages, running this test suite); the
  reason is required;
* ``<!-- readme-test: expect: TEXT -->`` -- TEXT must appear in the block's output, runs of spaces aside
  (a figure the README quotes next to it); several may be stacked;
* ``<!-- readme-test: exit: N -->`` -- the block must fail with exit code N (an example of an error the
  README shows; the error is checked with ``expect``).

Set ``SPLITC_README_LOG=folder`` to keep each block's output there. The one change made to the commands: the serving example's ports 8000 and 8001 become free ports, so runs on a
shared machine cannot collide. A block that leaves a process running (a server started with ``&``) is
cleaned up with its process group.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ANNOTATION = re.compile(r"<!--\s*readme-test:\s*(skip|expect|exit):\s*(.*?)\s*-->")


@dataclass
class Block:
    line: int
    code: str
    skip: str | None = None
    expect: list[str] = field(default_factory=list)
    exit: int = 0


def readme_blocks(text: str) -> list[Block]:
    """The ```bash blocks of ``text`` with their annotations, in order."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start, body = i, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            block = Block(start + 1, "\n".join(body))
            j = start - 1
            while j >= 0 and ANNOTATION.search(lines[j]):
                kind, value = ANNOTATION.search(lines[j]).groups()
                if kind == "skip":
                    block.skip = value
                elif kind == "exit":
                    block.exit = int(value)
                else:
                    block.expect.insert(0, value)
                j -= 1
            blocks.append(block)
        i += 1
    return blocks


def test_readme_blocks_are_annotated_properly() -> None:
    blocks = readme_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    for block in blocks:
        if block.skip is not None:
            assert len(block.skip) > 10, f"README line {block.line}: a skipped block needs its reason"
    skipped = [b for b in blocks if b.skip is not None]
    assert len(skipped) <= 3, "only installing and the test suite itself may be skipped"
    text = "\n".join(b.code for b in blocks if b.skip is None)
    for placeholder in ("model.pt ", "calib.npz ", "my.yaml"):  # commands must name files the README makes
        assert not re.search(rf"(?<![\w/.-]){re.escape(placeholder)}", text), placeholder


def _fresh_copy(dest: Path) -> None:
    """The project as a fresh clone has it: tracked files (and new, not ignored ones), no build outputs."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True)
    if listed.returncode != 0:
        pytest.skip("git is needed to list the project's files")
    for name in listed.stdout.splitlines():
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_every_readme_command_runs_in_order(tmp_path) -> None:
    work = tmp_path / "splitc"
    _fresh_copy(work)
    blocks = readme_blocks((work / "README.md").read_text(encoding="utf-8"))
    env = {**os.environ, "PYTHONPATH": str(work), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MPLBACKEND": "Agg"}
    port, grpc_port = str(_free_port()), str(_free_port())
    for block in blocks:
        if block.skip is not None:
            continue
        code = block.code.replace("8000", port).replace("8001", grpc_port)
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", code], cwd=work, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=2400)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # anything the block left running (a server)
            except ProcessLookupError:
                pass
        if os.environ.get("SPLITC_README_LOG"):  # keep every block's output (to update the figures the README quotes)
            log_dir = Path(os.environ["SPLITC_README_LOG"])
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / f"line{block.line:04d}.txt").write_text(f"$ {code}\n{output}", encoding="utf-8")
        assert proc.returncode == block.exit, (f"README line {block.line}: exit {proc.returncode}, not {block.exit}:\n"
                                               f"{code}\n--- output (last 4000 characters) ---\n{output[-4000:]}")
        flat = " ".join(output.split())  # column spacing is not part of a figure
        for text in block.expect:
            assert " ".join(text.split()) in flat, f"README line {block.line}: '{text}' not in the output:\n" \
                                                   f"{output[-4000:]}"
