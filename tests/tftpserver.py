"""A TftpService on loopback for the service tests (tests/service): the
server in a thread, the ini they build it from, the error a start fails with,
and the port a daemon bound for ``port = 0`` read from its log.

Every server here binds ``port = 0``: the kernel picks a free port and the
test reads it back (Server.port), so no number is chosen, released and
reused (another process could take it meanwhile)."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import pytest

from pybootd.config import parse_config
from pybootd.errors import PybootdError
from pybootd.runtime import Runtime
from pybootd.server.httpd import HttpService
from pybootd.server.tftp import TftpService


class Server:
    """A TftpService on its own loop in a thread, and its HttpService when
    the ini has ``[httpd]`` (the same resolver, as the daemon builds them)."""

    def __init__(self, ini: str, path: Path, **kw: Any) -> None:
        self.config = parse_config(ini, path)
        self.loop = asyncio.new_event_loop()
        self.executor = ThreadPoolExecutor(4)
        self.runtime = Runtime(self.config, self.loop, self.executor)
        self.service = TftpService(self.runtime, **kw)
        self.http: HttpService | None = None
        if self.config.httpd is not None:
            self.http = HttpService(self.runtime, self.service.resolver,
                                    address=self.service.address)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(10)
            if self.http is not None:
                asyncio.run_coroutine_threadsafe(self.http.start(), self.loop).result(10)
        except BaseException:
            self.call(self.service.close)
            if self.http is not None:
                self.call(self.http.close)
            self._end_loop()
            raise
        # What the service bound (the configured port, or the kernel's
        # choice for port = 0), one per listener: IPv4 first, then IPv6.
        self.ports: list[int] = self.service.ports
        self.port = self.ports[0]
        self.http_port = self.http.ports[0] if self.http is not None else 0

    def call(self, func: Any) -> Any:
        async def wrapper() -> Any:
            return func()
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def stop(self) -> None:
        # As the daemon does: transfers that are ending get to report first.
        asyncio.run_coroutine_threadsafe(self.service.drain(2), self.loop).result(10)
        self.call(self.service.close)
        if self.http is not None:
            self.call(self.http.close)
        self._end_loop()

    def _end_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()
        self.executor.shutdown(wait=False)

    def held(self) -> threading.Event:
        """Hold the loop (a busy turn) until the event returned is set, so
        that what is sent meanwhile waits in the sockets."""
        entered, release = threading.Event(), threading.Event()

        def hold() -> None:
            entered.set()
            release.wait(5)

        self.loop.call_soon_threadsafe(hold)
        assert entered.wait(5)
        return release


def ini(root: Path, extra: str = "") -> str:
    """[tftp] on 127.0.0.1, a port the kernel picks, timeout 0.2 s, 2 retries
    (*extra*: more [tftp] lines); stats every 0.2 s."""
    return (f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {root}\n"
            f"timeout = 0.2\nretries = 2\n{extra}\n[daemon]\nstats_interval = 0.2\n")


def start_error(text: str, path: Path) -> str:
    """TftpService.start's error for the configuration *text*."""
    config = parse_config(text, path)

    async def start() -> None:
        with ThreadPoolExecutor(2) as executor:
            service = TftpService(Runtime(config, asyncio.get_running_loop(), executor))
            try:
                await service.start()
            finally:
                service.close()

    with pytest.raises(PybootdError) as info:
        asyncio.run(start())
    return str(info.value)


SERVING = re.compile(r"TFTP serving .* on 127\.0\.0\.1:(\d+)")


def bound_port(log: IO[str], seen: list[str]) -> int:
    """The port a process chose for ``port = 0``, from its log (the "TFTP
    serving" line, read up to 50 lines; those read are added to *seen*).
    As tests/interop/test_daemon.py reads the daemon's."""
    for _ in range(50):
        line = log.readline()
        if not line:
            break  # the process ended
        seen.append(line)
        match = SERVING.search(line)
        if match:
            return int(match[1])
    raise AssertionError("no 'TFTP serving' line:\n" + "".join(seen))
