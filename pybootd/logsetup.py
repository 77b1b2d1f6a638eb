"""``[logger]``: where log lines go."""

from __future__ import annotations

import logging
import logging.handlers
import os

from pybootd.config import LoggerConfig

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


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
        syslog.setFormatter(logging.Formatter("pybootd[%(process)d]: %(name)s: %(message)s"))
        root.addHandler(syslog)
        return
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
