"""The code stays ruff- and mypy-clean: part of the test suite, so CI enforces it."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_ruff() -> None:
    if shutil.which("ruff") is None:
        pytest.skip("ruff not installed (pip install -e '.[test]')")
    result = run("ruff", "check", "pybootd", "tests", "scripts")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_sans_io_packages_import_no_io() -> None:
    """pybootd.tftp and pybootd.dhcp never import socket, asyncio or time."""
    forbidden = ("socket", "asyncio", "time", "select", "sqlite3", "requests", "threading")
    for package in ("tftp", "dhcp"):
        for path in (REPO / "pybootd" / package).glob("*.py"):
            for line in path.read_text().splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] in ("import", "from"):
                    module = words[1].split(".")[0]
                    assert module not in forbidden, f"{path.name}: {line.strip()}"


def module_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The pybootd modules *path* imports at module level (under try/if too,
    ``if TYPE_CHECKING:`` included: a circle the type checker must follow is
    one a reader must follow as well); not those inside functions."""
    found: set[str] = set()
    stack: list[ast.stmt] = list(ast.parse(path.read_text()).body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: from the package of *name*
                base = ".".join([*name.split(".")[:-node.level], node.module])
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                      for alias in node.names}
        for field in ("body", "orelse", "finalbody", "handlers"):
            stack += getattr(node, field, [])
    return found & modules - {name}


def test_no_import_cycle_in_pybootd() -> None:
    """No module of pybootd imports one that imports it back, directly or
    through others (issue 11: tftp_transfer -> tftp_pump -> tftp_lockstep ->
    tftp_transfer was one, since gone)."""
    paths = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (REPO / "pybootd").rglob("*.py")}
    graph = {name: module_imports(path, name, set(paths)) for name, path in paths.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycle = " -> ".join([*trail[trail.index(name):], name])
            raise AssertionError(f"import cycle: {cycle}")
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
