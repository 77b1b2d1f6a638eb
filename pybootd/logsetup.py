"""``[logger]``: where log lines go."""

from __future__ import annotations

import logging
import logging.handlers
import os
import re

from pybootd.config import LoggerConfig

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


def setup_logging(config: LoggerConfig, debug: bool = False) -> None:
    root = logging.getLogger("pybootd")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.propagate = False
    level = logging.DEBUG if debug else getattr(logging, config.level.upper())
    root.setLevel(level)
    handler: logging.Handler
    if config.type == "none" and not debug:
        handler = logging.NullHandler()
    elif config.type == "file" and config.file is not None:
        handler = logging.handlers.WatchedFileHandler(config.file)
    elif config.type == "syslog" and os.path.exists("/dev/log"):
        syslog = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        syslog.setFormatter(SafeFormatter("pybootd[%(process)d]: %(name)s: %(message)s"))
        root.addHandler(syslog)
        return
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(FORMAT))
    root.addHandler(handler)
