"""Command line: ``pybootd -c CONFIG [-p | -t] [-d] [--check]``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import sys
from collections.abc import Sequence

from pybootd import __version__
from pybootd.config import load_config
from pybootd.errors import PybootdError
from pybootd.logsetup import setup_logging

DEFAULT_CONFIG = "/etc/pybootd/pybootd.ini"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pybootd",
        description="Network boot daemon: BOOTP/DHCP/PXE and TFTP in one process.")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help=f"configuration file (INI), e.g. {DEFAULT_CONFIG}")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("-p", "--pxe", action="store_true", help="run BOOTP/DHCP/PXE only")
    only.add_argument("-t", "--tftp", action="store_true", help="run TFTP only")
    parser.add_argument("-d", "--debug", action="store_true", help="log everything to stderr")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration, print what would be served, exit")
    parser.add_argument("--version", action="version", version=f"pybootd {__version__}")
    return parser


_WHAT_TO_DO = {
    errno.EACCES: "give pybootd's user access to it, or change the path in the configuration",
    errno.EPERM: "give pybootd's user access to it, or change the path in the configuration",
    errno.ENOENT: "create it, or change the path in the configuration",
    errno.ENOTDIR: "a part of the path is a file: change the path in the configuration",
    errno.EISDIR: "it is a folder: name a file",
    errno.EROFS: "the file system is read-only: choose a writable path",
    errno.ENOSPC: "the disk is full: free space",
    errno.EADDRINUSE: "another program (another pybootd?) uses the port: stop it or "
                      "change the port",
    errno.EADDRNOTAVAIL: "the address is not on this host: change it (see --check)",
}


def os_error_line(exc: OSError) -> str:
    """``PATH: what failed (strerror): what to do``, for an OSError no check foresaw."""
    where = f"{exc.filename}: " if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    hint = _WHAT_TO_DO.get(exc.errno or 0, "run pybootd --check for details")
    return f"{where}cannot start ({reason}): {hint}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["leases"]:  # pybootd leases -c FILE [--json]
        from pybootd.leasecmd import main as leases_main

        return leases_main(argv[1:])
    if argv[:2] == ["db", "upgrade"]:  # pybootd db upgrade -c FILE
        from pybootd.leasecmd import upgrade_main

        return upgrade_main(argv[2:])
    args = _parser().parse_args(argv)
    if not args.config:
        print(f"pybootd: error: no configuration file: use -c FILE "
              f"(expected e.g. -c {DEFAULT_CONFIG}; see pybootd.ini.sample)", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        dhcp, tftp = not args.tftp, not args.pxe
        if dhcp and config.bootp is None:
            if args.pxe:
                raise PybootdError(f"{config.path}: no [bootp] section, so nothing for -p to "
                                   "serve (expected a [bootp] section)")
            dhcp = False
        if args.check:
            from pybootd import check

            return check.run(config, dhcp, tftp)
        setup_logging(config.logger, args.debug)
        from pybootd.daemon import Daemon

        return asyncio.run(Daemon(config, dhcp=dhcp, tftp=tftp).run())
    except PybootdError as exc:
        logging.getLogger("pybootd").debug("fatal", exc_info=True)
        print(f"pybootd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # what no check foresaw: one line, never a traceback
        logging.getLogger("pybootd").debug("fatal", exc_info=True)
        print(f"pybootd: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
