"""Shared fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from netlab import NetLab, netlab


@pytest.fixture
def lab() -> Iterator[NetLab]:
    """A fresh set of namespaces, removed after the test whatever happens."""
    with netlab() as the_lab:
        yield the_lab
