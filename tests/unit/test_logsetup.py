"""Log lines never carry raw control characters or undecodable bytes."""

from __future__ import annotations

import logging
from pathlib import Path

from pybootd.config import LoggerConfig
from pybootd.logsetup import printable, setup_logging


def test_printable_escapes_controls_and_surrogates() -> None:
    assert printable("a\nb\x1b[2J\x7f\x85") == "a\\x0ab\\x1b[2J\\x7f\\x85"
    assert printable("caf\u00e9 \udce9") == "caf\u00e9 \\xe9"


def test_file_logger_survives_hostile_names(tmp_path: Path) -> None:
    log_file = tmp_path / "pybootd.log"
    setup_logging(LoggerConfig(type="file", level="info", file=log_file))
    try:
        logging.getLogger("pybootd.tftp").info("%s: RRQ %s", "192.0.2.10:1", "x\nforged \udce9")
    finally:
        setup_logging(LoggerConfig(type="none"))
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("192.0.2.10:1: RRQ x\\x0aforged \\xe9")
