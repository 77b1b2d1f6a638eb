"""Log lines never carry raw control characters or undecodable bytes."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from pybootd.config import LoggerConfig
from pybootd.logsetup import LogSetupError, printable, reopen_log_files, set_level, setup_logging


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


def test_missing_log_folder_is_one_line_naming_it(tmp_path: Path) -> None:
    log_file = tmp_path / "no-such-folder" / "pybootd.log"
    with pytest.raises(LogSetupError) as info:
        setup_logging(LoggerConfig(type="file", level="info", file=log_file))
    assert str(info.value) == (f"cannot open log file {log_file}: No such file or directory "
                               f"(create the folder {log_file.parent} first)")


def test_reopen_after_logrotate_moved_the_file(tmp_path: Path) -> None:
    log_file = tmp_path / "pybootd.log"
    setup_logging(LoggerConfig(type="file", level="info", file=log_file))
    log = logging.getLogger("pybootd.dhcp")
    try:
        log.info("before")
        log_file.rename(tmp_path / "pybootd.log.1")
        assert reopen_log_files() == [str(log_file)]
        log.info("after")
    finally:
        setup_logging(LoggerConfig(type="none"))
    assert (tmp_path / "pybootd.log.1").read_text().endswith("pybootd.dhcp: before\n")
    assert log_file.read_text().endswith("pybootd.dhcp: after\n")


def test_level_from_a_reload_and_debug_flag(tmp_path: Path) -> None:
    root = logging.getLogger("pybootd")
    try:
        setup_logging(LoggerConfig(type="none", level="info"))
        set_level("warning")
        assert root.level == logging.WARNING
        setup_logging(LoggerConfig(type="none", level="info"), debug=True)
        set_level("error")  # -d on the command line wins over a SIGHUP
        assert root.level == logging.DEBUG
    finally:
        setup_logging(LoggerConfig(type="none"))


def test_json_format_one_object_per_line_with_the_event_fields(tmp_path: Path) -> None:
    log_file = tmp_path / "pybootd.log"
    setup_logging(LoggerConfig(type="file", file=log_file, format="json"))
    logger = logging.getLogger("pybootd.tftp")
    logger.info("192.0.2.10:2070: read %s complete", "linux\x1b[2J", extra={"event": {
        "source": "tftp", "client": "192.0.2.10", "what": "linux", "bytes": 7}})
    logger.warning("plain line")
    first, second = (json.loads(line) for line in log_file.read_text().splitlines())
    assert first["level"] == "info" and first["logger"] == "pybootd.tftp"
    assert first["message"] == "192.0.2.10:2070: read linux\x1b[2J complete"  # JSON-escaped
    assert "\x1b" not in log_file.read_text()
    assert (first["source"], first["client"], first["bytes"]) == ("tftp", "192.0.2.10", 7)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["time"])
    assert second["message"] == "plain line" and "source" not in second
