"""Command line: ``pybootd -c CONFIG [-p | -t] [-d] [--check]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from pybootd import __version__
from pybootd.config import Config, load_config
from pybootd.errors import PybootdError
from pybootd.logsetup import setup_logging
from pybootd.netif import LocalNetwork

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


def describe(config: Config, dhcp: bool, tftp: bool,
             network: LocalNetwork | None = None) -> str:
    """What would be served, for --check (*network*: the one DHCP detected)."""
    lines = [f"configuration {config.path}: OK"]
    if network is not None:
        lines.append(f"DHCP: serves {network} (server address {network.address})")
    if dhcp:
        bootp = config.bootp
        assert bootp is not None
        if bootp.mode == "proxy":
            lines.append(f"DHCP: proxy mode on port {bootp.port} and {bootp.pxe_port}, "
                         "no addresses handed out")
        else:
            assert bootp.pool_start is not None
            last = bootp.pool_start + (bootp.pool_count - 1)
            lines.append(f"DHCP: pool {bootp.pool_start}-{last} ({bootp.pool_count} addresses),"
                         f" boot file {bootp.boot_file}, access {bootp.access}")
    if tftp:
        t = config.tftp
        root = t.root_url or t.root_path
        where = t.address or (str(network.address) if network is not None and
                              not t.address_set else "all addresses")
        lines.append(f"TFTP: {root} on {where} port {t.port}, "
                     f"blksize<={t.blocksize} windowsize<={t.windowsize}, "
                     f"uploads {'to ' + str(t.upload_dir) if t.allow_write else 'off'}")
        for rule in config.filters:
            target = f"[{rule.target}]" if rule.indirect else rule.target
            lines.append(f"  filter {rule.pattern} -> {target}")
    return "\n".join(lines)


def _check_network(config: Config) -> LocalNetwork:
    """The network DHCP would serve, as the daemon detects it (raises if none)."""
    from pybootd.server.dhcp import detect_network

    return detect_network(config)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["leases"]:  # pybootd leases -c FILE [--json]
        from pybootd.leasecmd import main as leases_main

        return leases_main(argv[1:])
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
            network = _check_network(config) if dhcp else None
            if tftp:
                from pybootd.server.tftp import check_folders

                check_folders(config)  # what TftpService.start checks too
            print(describe(config, dhcp, tftp, network))
            return 0
        setup_logging(config.logger, args.debug)
        from pybootd.daemon import Daemon
        from pybootd.server.tftp_pump import new_event_loop

        # The loop can wait in the lock-step pump's io_uring (tftp_pump).
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(Daemon(config, dhcp=dhcp, tftp=tftp).run())
    except PybootdError as exc:
        logging.getLogger("pybootd").debug("fatal", exc_info=True)
        print(f"pybootd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
