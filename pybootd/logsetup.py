"""``[logger]``: where log lines go."""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import os
import re
from typing import Any

from pybootd.config import LoggerConfig
from pybootd.errors import PybootdError

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# Control characters (C0, DEL, C1) and the surrogates that stand for bytes
# that are not UTF-8 in file names: a client chooses them, so a log line
# must show them escaped, never write them (a forged line, a terminal
# escape, or a UnicodeEncodeError that loses the line).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udcff]")


def printable(text: str) -> str:
    """*text* with every unsafe character written as an escape."""
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if code >= 0xDC00 else f"\\x{code:02x}"


class SafeFormatter(logging.Formatter):
    """Escapes what clients put in messages; tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """``[logger] format = json``: one JSON object per line (``time`` in ISO
    8601 UTC, ``level``, ``logger``, ``message``, ``traceback`` if any, and
    the fields of a record's ``event``, as the timeline has them). JSON
    escapes what clients put in messages itself."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {"time": when.isoformat(timespec="milliseconds"),
                                "level": record.levelname.lower(), "logger": record.name,
                                "message": record.getMessage()}
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            line.update(event)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class LogSetupError(PybootdError):
    """The log file cannot be opened (a missing folder, no permission)."""


_debug = False  # -d: debug level whatever [logger] level says, across reloads


def setup_logging(config: LoggerConfig, debug: bool = False) -> None:
    """Send pybootd's lines where ``[logger]`` says; raises :class:`LogSetupError`."""
    global _debug
    root = logging.getLogger("pybootd")
    handler: logging.Handler
    # Opened first: when that fails, the old handlers stay.
    opened = _open_file(config.file) if config.type == "file" and config.file else None
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.propagate = False
    _debug = debug
    set_level(config.level)
    if config.type == "none" and not debug:
        handler = logging.NullHandler()
    elif opened is not None:
        handler = opened
    elif config.type == "syslog" and os.path.exists("/dev/log"):
        syslog = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        syslog.setFormatter(JsonFormatter() if config.format == "json" else
                            SafeFormatter("pybootd[%(process)d]: %(name)s: %(message)s"))
        root.addHandler(syslog)
        return
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if config.format == "json" else SafeFormatter(FORMAT))
    root.addHandler(handler)


def set_level(level: str) -> None:
    """``[logger] level`` (also on SIGHUP); ``-d`` keeps debug."""
    value = logging.DEBUG if _debug else getattr(logging, level.upper())
    logging.getLogger("pybootd").setLevel(value)


def _open_file(path: str | os.PathLike[str]) -> logging.FileHandler:
    try:
        return logging.handlers.WatchedFileHandler(path)
    except OSError as exc:
        folder = os.path.dirname(os.fspath(path))
        advice = (f"create the folder {folder} first" if isinstance(exc, FileNotFoundError)
                  else "expected a file pybootd may write, see [logger] file")
        raise LogSetupError(f"cannot open log file {os.fspath(path)}: {exc.strerror} "
                            f"({advice})") from None


def reopen_log_files() -> list[str]:
    """SIGUSR2: reopen every log file by name (after logrotate moved it).

    Returns the files reopened. A file that cannot be reopened keeps its old
    stream (and raises :class:`LogSetupError` once the others are done), so
    no line is lost either way.
    """
    root = logging.getLogger("pybootd")
    reopened, failed = [], []
    for handler in list(root.handlers):
        if not isinstance(handler, logging.FileHandler):
            continue
        try:
            fresh = _open_file(handler.baseFilename)
        except LogSetupError as exc:
            failed.append(str(exc))
            continue
        fresh.setFormatter(handler.formatter)
        fresh.setLevel(handler.level)
        root.addHandler(fresh)
        root.removeHandler(handler)
        handler.close()
        reopened.append(handler.baseFilename)
    if failed:
        raise LogSetupError("; ".join(failed))
    return reopened
