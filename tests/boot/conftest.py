"""Fixtures of the network-boot tests: boot files, accelerator, boot network.

Set ``PYBOOTD_BOOT_KEEP=1`` to keep the work folders (configs, logs, serial
consoles, pcaps) under ``/tmp/pybootd-boot-*`` after the session.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netlab import NetLab, require_root, require_tools, unavailable

from boot.bootlab import BootNet, BootTimes, keep_artifacts
from boot.fixtures import BootFiles, build_boot_files, missing_sources, open_dir
from boot.vm import QEMU, accelerator

log = logging.getLogger("pybootd.boot")
TIMES: list[str] = []


@pytest.fixture(scope="session")
def boot_files() -> Iterator[BootFiles]:
    """The Debian installer tree, mirrors of it and our menus, once a session."""
    require_root()
    missing = missing_sources()
    if missing:
        unavailable(f"needs the Debian packages {', '.join(missing)}")
    base = open_dir(Path(tempfile.mkdtemp(prefix="pybootd-boot-")))
    try:
        yield build_boot_files(base / "files")
    finally:
        if not keep_artifacts():
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def accel() -> str:
    """``kvm`` when it boots a guest here, else ``tcg`` (probed once)."""
    require_tools(QEMU)
    choice = accelerator()
    log.info("QEMU accelerator: %s", choice)
    return choice


@pytest.fixture
def net(lab: NetLab, boot_files: BootFiles, accel: str,
        request: pytest.FixtureRequest) -> Iterator[BootNet]:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    the_net = BootNet(lab, boot_files.base.parent / "runs" / name, accel)
    try:
        yield the_net
    finally:
        the_net.close()


@pytest.fixture
def report_times(request: pytest.FixtureRequest) -> Any:
    """``report_times(label, times)``: log a boot's times, list them at the end."""

    def report(label: str, times: BootTimes) -> None:
        line = f"{request.node.name} [{label}]: {times.text()}"
        log.info("%s", line)
        TIMES.append(line)

    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMES:
        terminalreporter.section("network boot times (from VM start)")
        for line in TIMES:
            terminalreporter.write_line(line)
