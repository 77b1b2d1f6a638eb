"""Shared fixtures."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgcluster
from netlab import NetLab, netlab, unavailable
from pgcluster import PgCluster


@pytest.fixture
def lab() -> Iterator[NetLab]:
    """A fresh set of namespaces, removed after the test whatever happens."""
    with netlab() as the_lab:
        yield the_lab


@pytest.fixture(autouse=True)
def pybootd_logger_restored() -> Iterator[None]:
    """A test that runs the CLI (setup_logging: its own handler, no propagation,
    a level) must not change what a later test's caplog sees."""
    logger = logging.getLogger("pybootd")
    saved = (logger.level, logger.propagate, list(logger.handlers), logger.disabled)
    logger.propagate = True
    yield
    for handler in logger.handlers:
        if handler not in saved[2]:
            handler.close()
    logger.setLevel(saved[0])
    logger.propagate, logger.handlers[:], logger.disabled = saved[1], saved[2], saved[3]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
         ) -> pytest.LogCaptureFixture:
    """pybootd's log records at INFO and above, as an operator reads them."""
    monkeypatch.setattr(logging.getLogger("pybootd"), "propagate", True)  # the CLI's tests
    caplog.set_level(logging.INFO, logger="pybootd")
    return caplog


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A TFTP root with a small and a big file (the service tests; a test
    module may define its own)."""
    folder = tmp_path / "root"
    folder.mkdir()
    (folder / "small").write_bytes(b"hello")
    (folder / "big").write_bytes(os.urandom(300_000))
    return folder


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgCluster]:
    """One throw-away PostgreSQL cluster for the session (see tests/pgcluster.py)."""
    reason = pgcluster.missing()
    if reason is not None:
        unavailable(reason)
    with pgcluster.pg_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_server: PgCluster, request: pytest.FixtureRequest) -> str:
    """A new, empty database of its own for one test: its libpq URL."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    pg_server.psql(f"DROP DATABASE IF EXISTS {name}", db="postgres")
    pg_server.createdb(name)
    return pg_server.url.replace("/pybootd?", f"/{name}?")
