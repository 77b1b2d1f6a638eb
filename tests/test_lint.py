"""The code stays ruff- and mypy-clean: part of the test suite, so CI enforces it."""

from __future__ import annotations

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
