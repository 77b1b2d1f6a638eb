"""One process, one event loop, both services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pybootd.config import Config
from pybootd.privileges import drop_privileges, prepare_dirs
from pybootd.server.runtime import Runtime, Service

log = logging.getLogger("pybootd")


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state, if it asked (sd_notify(3))."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


def _writable_dirs(config: Config, dhcp: bool, tftp: bool) -> list[Path]:
    dirs = []
    if dhcp and config.bootp is not None and config.bootp.mode == "server":
        dirs.append(config.lease_file.parent)
    if tftp and config.tftp.root_url:
        dirs.append(config.cache_dir)
    return dirs


def _hand_over(dirs: list[Path], user: str) -> None:
    """Files created while root (the lease database) go to the service user."""
    if os.geteuid() != 0 or user == "root":
        return
    import pwd

    entry = pwd.getpwnam(user)
    for folder in dirs:
        for path in [folder, *folder.iterdir()]:
            with contextlib.suppress(OSError):
                os.chown(path, entry.pw_uid, entry.pw_gid)


class Daemon:
    def __init__(self, config: Config, *, dhcp: bool, tftp: bool) -> None:
        self.config = config
        self.want_dhcp = dhcp and config.bootp is not None
        self.want_tftp = tftp
        self.services: list[Service] = []
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(self.config.daemon.workers, thread_name_prefix="pybootd")
        runtime = Runtime(self.config, loop, executor)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        dirs = _writable_dirs(self.config, self.want_dhcp, self.want_tftp)
        try:
            prepare_dirs(dirs, self.config.daemon.user)
            await self._start(runtime)
            _hand_over(dirs, self.config.daemon.user)
            drop_privileges(self.config.daemon.user, self.config.daemon.group)
            sd_notify("READY=1")
            log.info("pybootd ready (%s)", ", ".join(s.name for s in self.services))
            await self.stopping.wait()
            sd_notify("STOPPING=1")
            await self._shutdown()
        finally:
            for service in self.services:
                service.close()
            executor.shutdown(wait=False, cancel_futures=True)
        return 0

    async def _start(self, runtime: Runtime) -> None:
        tftp_address = None
        if self.want_dhcp:
            from pybootd.server.dhcp import DhcpService

            dhcp = DhcpService(runtime)
            self.services.append(dhcp)
            await dhcp.start()
            if not self.config.tftp.address_set:
                # The original pybootd serves TFTP where it serves DHCP.
                tftp_address = str(dhcp.server_address)
        if self.want_tftp:
            from pybootd.server.tftp import TftpService

            tftp = TftpService(runtime, address=tftp_address)
            self.services.append(tftp)
            await tftp.start()

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping: no new requests; running transfers get %gs",
                     self.config.daemon.shutdown_grace)
            self.stopping.set()

    async def _shutdown(self) -> None:
        for service in self.services:
            service.stop_accepting()
        grace = self.config.daemon.shutdown_grace
        await asyncio.gather(*(s.drain(grace) for s in self.services))
