"""Imports point one way: the folders are the architecture, and this test keeps them so.

Two checks over every import, function-level and ``TYPE_CHECKING`` ones included:

* the ``import-linter`` contracts in ``pyproject.toml`` (layers driver > capabilities > backends
  > targets > core > runtime > units > errors, the four capabilities independent of one another,
  no cycle between the subpackages of any package);
* an AST scan of our own (no third-party code in the loop) for module-level cycles and for the
  runtime, which must import nothing of splitc but ``splitc.errors`` (it ships without torch).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "splitc"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``splitc`` module ``path`` imports, wherever the import statement stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "splitc")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "splitc":
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:  # `from pkg import name` where name is not a module
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_import_linter_contracts_hold():
    pytest.importorskip("importlinter", reason="import-linter is a dev dependency")
    # in a child process: import-linter configures logging with dictConfig, which would disable the
    # loggers of every module already imported into the test session
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"an import breaks a contract in pyproject.toml:\n{result.stdout[-4000:]}"


def test_no_module_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodule is not a cycle
                continue
            if state.get(nxt) == 1 and not node.startswith(nxt + "."):
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("module cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_runtime_imports_nothing_of_the_compiler():
    graph = _graph()
    for module, targets in graph.items():
        if module.startswith("splitc.runtime"):
            outside = {t for t in targets if not t.startswith("splitc.runtime") and t not in ("splitc", "splitc.errors")}
            assert not outside, f"{module} imports {sorted(outside)}: the runtime ships without the compiler"


def test_every_folder_says_what_lives_there():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc, f"{init.relative_to(ROOT)} needs a docstring: what lives here, what it may import"
