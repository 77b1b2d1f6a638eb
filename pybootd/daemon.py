"""One process, one event loop, both services.

Signals (handled on the loop, so a handler never interrupts a service):

* ``SIGTERM``, ``SIGINT``: take no new requests, give running transfers
  ``shutdown_grace`` seconds, exit 0; a second one ends them at once (each
  gets its ERROR from ``close()``), still exit 0: the stop was asked for;
* ``SIGHUP``: re-read the configuration; apply what can change live, name
  what needs a restart; a broken file changes nothing;
* ``SIGUSR1``: log statistics (leases by state, each service's totals);
* ``SIGUSR2``: reopen the log file (after logrotate moved it).

A service that can no longer serve (a damaged lease file) stops the daemon
with exit status 1, so that systemd's ``Restart=on-failure`` restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pybootd.config import Config, load_config
from pybootd.configvalues import redact
from pybootd.dhcp.pool import Lease
from pybootd.errors import PybootdError
from pybootd.logsetup import reopen_log_files, set_level
from pybootd.privileges import drop_privileges, prepare_dirs
from pybootd.runtime import Runtime, Service

log = logging.getLogger("pybootd")
FEW_FILES = 4096  # below this many descriptors, a room of PCs booting hits the limit


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
    if dhcp and config.bootp is not None and config.bootp.mode == "server" \
            and config.lease_store.path is not None:
        dirs.append(config.lease_store.path.parent)
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


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: a TFTP session holds a socket and a file,
    and systemd's default soft limit (1024) would cap them near 500."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # RLIM_INFINITY above fs.nr_open
            log.debug("open files limit stays %d: %s", soft, exc)
    log.debug("open files limit: %d", soft)
    if soft < FEW_FILES:
        log.warning("open files limit is %d (hard limit %d): about %d transfers at once at "
                    "most (expected LimitNOFILE=65536 in the unit, or ulimit -n)", soft,
                    hard, soft // 2)
    return soft


_LIVE = {  # Config fields applied on SIGHUP -> how the log line names them
    "filters": "[filters]", "mac": "[mac]", "uuid": "[uuid]", "static_dhcp": "[static_dhcp]",
    "bootfiles": "[bootfile]", "ipxe_bootfile": "[bootfile]", "ipxe_bootfiles": "[bootfile]",
    "http": "[http]",
}
_LIVE_KEYS = {("bootp", "access"), ("logger", "level")}
_RESTART_SECTIONS = ("logger", "daemon", "tftp", "bootp", "httpd", "api")
_ALIASES = {"root_path": "root", "root_url": "root"}  # TftpConfig fields of one INI key


def split_reload(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """What SIGHUP applies: (the config to run with, live changes, restart-needed changes).

    The config to run with is *new* for what can change live and *old* for
    the rest, so a service never sees an address or a port it is not bound to.
    """
    applied = sorted({name for field, name in _LIVE.items()
                      if _comparable(field, old) != _comparable(field, new)})
    running: dict[str, Any] = {field: getattr(new, field) for field in _LIVE}
    running["lines"] = new.lines
    running["logger"] = dataclasses.replace(old.logger, level=new.logger.level)
    if old.logger.level != new.logger.level:
        applied.append("logger.level")
    if old.bootp is not None and new.bootp is not None:
        running["bootp"] = dataclasses.replace(old.bootp, access=new.bootp.access)
        if old.bootp.access != new.bootp.access:
            applied.append("bootp.access")
    restart = [f"[{name}]" for name in ("bootp", "httpd", "api")
               if (getattr(old, name) is None) != (getattr(new, name) is None)]
    for section in _RESTART_SECTIONS:
        restart.extend(_changed(section, getattr(old, section), getattr(new, section)))
    return dataclasses.replace(old, **running), applied, restart


def _comparable(field: str, config: Config) -> Any:
    """A filter rule's line number is not a change (a comment added above it)."""
    value = getattr(config, field)
    if field == "filters":
        return [(rule.pattern, rule.target, rule.indirect) for rule in value]
    return value


def _changed(section: str, old: Any, new: Any) -> list[str]:
    """``section.key (old -> new)`` for each field that differs and needs a restart."""
    if old is None or new is None:
        return []
    changes = []
    for field in dataclasses.fields(old):
        key = _ALIASES.get(field.name, field.name)
        before, after = getattr(old, field.name), getattr(new, field.name)
        if field.name == "address_set" or (section, key) in _LIVE_KEYS or before == after:
            continue
        if key == "lease_store":  # a URL may hold a password: never logged
            before, after = (None if url is None else redact(url) for url in (before, after))
        text = (f"{section}.{key} (changed)" if key == "token"  # a secret: never logged
                else f"{section}.{key} ({_shown(before)} -> {_shown(after)})")
        if text not in changes:
            changes.append(text)
    return changes


def _shown(value: Any) -> str:
    return "unset" if value is None else str(value)


class Daemon:
    def __init__(self, config: Config, *, dhcp: bool, tftp: bool) -> None:
        self.config = config
        self.want_dhcp = dhcp and config.bootp is not None
        self.want_tftp = tftp
        self.services: list[Service] = []
        self.stopping = asyncio.Event()
        self.at_once = asyncio.Event()  # a second SIGTERM/SIGINT: no grace
        self.status = 0
        self.runtime: Runtime | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(self.config.daemon.workers, thread_name_prefix="pybootd")
        runtime = self.runtime = Runtime(self.config, loop, executor, on_fatal=self.fail)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.log_summary)
        loop.add_signal_handler(signal.SIGUSR2, self.reopen_logs)
        raise_fd_limit()
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
            runtime.close()
        return self.status

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
            if self.config.httpd is not None:  # the same namespace, over HTTP
                from pybootd.server.httpd import HttpService

                http = HttpService(runtime, tftp.resolver, address=tftp.address)
                self.services.append(http)
                await http.start()
        if self.config.api is not None:
            await self._start_api(runtime)

    async def _start_api(self, runtime: Runtime) -> None:
        from pybootd.server.api import ApiService
        from pybootd.server.dhcp import DhcpService

        assert self.config.api is not None
        dhcp = next((s for s in self.services if isinstance(s, DhcpService)), None)
        served = list(self.services)

        def health() -> dict[str, bool]:
            return {s.name: not self.stopping.is_set() for s in served}

        def leases() -> list[Lease]:
            return [] if dhcp is None or dhcp.pool is None else dhcp.pool.leases()

        def pool_size() -> int:
            return 0 if dhcp is None or dhcp.pool is None else dhcp.pool.count

        api = ApiService(self.config.api, runtime.observer, health, leases, pool_size)
        self.services.append(api)
        await api.start()

    def stop(self) -> None:
        """SIGTERM, SIGINT: stop after the grace period; a second one: now."""
        if not self.stopping.is_set():
            log.info("stopping: no new requests; running transfers get %gs "
                     "(send the signal again to stop at once)", self.config.daemon.shutdown_grace)
            self.stopping.set()
        elif not self.at_once.is_set():
            log.info("stopping at once (second signal): running transfers are ended")
            self.at_once.set()

    def fail(self, message: str) -> None:
        """A service cannot go on (see Runtime.fatal): stop, exit status 1."""
        self.status = 1
        self.stop()

    async def _shutdown(self) -> None:
        for service in self.services:
            service.stop_accepting()
        grace = self.config.daemon.shutdown_grace
        drained: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(s.drain(grace) for s in self.services)))
        interrupted: asyncio.Future[Any] = asyncio.ensure_future(self.at_once.wait())
        await asyncio.wait({drained, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        for task in (drained, interrupted):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- SIGHUP, SIGUSR1, SIGUSR2 ---------------------------------------------
    def reload(self) -> None:
        """SIGHUP: validate the file again; apply what can change while running."""
        try:
            new = load_config(self.config.path)
        except PybootdError as exc:
            log.error("SIGHUP: configuration not reloaded, still running with the previous "
                      "one: %s", exc)
            return
        running, applied, restart = split_reload(self.config, new)
        self.config = running
        if self.runtime is not None:
            self.runtime.config = running
        set_level(running.logger.level)
        for service in self.services:
            try:
                service.reload(running)
            except Exception:  # a bug must not take the running services down
                log.exception("SIGHUP: %s did not apply the new configuration", service.name)
        log.info("SIGHUP: configuration %s reloaded: %s", running.path,
                 f"applied {', '.join(applied)}" if applied else "no change to apply")
        for change in restart:
            log.warning("SIGHUP: %s needs a restart; the running value is kept", change)

    def log_summary(self) -> None:
        """SIGUSR1: one line per service (leases by state, transfers, bytes)."""
        log.info("SIGUSR1: statistics of %s", ", ".join(s.name for s in self.services) or
                 "no service")
        for service in self.services:
            try:
                log.info("%s: %s", service.name, service.summary())
            except Exception:
                log.exception("%s: no statistics", service.name)

    def reopen_logs(self) -> None:
        """SIGUSR2: reopen the log file by name (logrotate without copytruncate)."""
        try:
            reopened = reopen_log_files()
        except PybootdError as exc:
            log.error("SIGUSR2: %s; still writing to the previous file", exc)
            return
        log.info("SIGUSR2: log file reopened%s", f": {', '.join(reopened)}" if reopened
                 else " (none: [logger] type is not file)")
