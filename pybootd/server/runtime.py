"""What every service gets from the daemon: the loop, the pool and the config."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pybootd.config import Config
from pybootd.errors import SourceError

T = TypeVar("T")
log = logging.getLogger("pybootd")


@dataclass
class Runtime:
    """Shared by the services of one daemon process."""

    config: Config
    loop: asyncio.AbstractEventLoop
    executor: ThreadPoolExecutor
    # Called by a service that cannot go on (a damaged lease file): the daemon
    # logs it and stops with a non-zero status, so systemd restarts it.
    on_fatal: Callable[[str], None] | None = None

    def fatal(self, message: str) -> None:
        """A service can no longer serve: stop the process (exit status 1)."""
        log.error("%s: stopping (exit status 1)", message)
        if self.on_fatal is not None:
            self.on_fatal(message)

    async def blocking(self, timeout: float, func: Callable[..., T], *args: object) -> T:
        """Run blocking *func* (disk, HTTP) in the bounded pool, never on the loop.

        Raises :class:`SourceError` when it takes longer than *timeout*; the
        thread itself cannot be cancelled, so *func* must have its own bound.
        """
        future = self.loop.run_in_executor(self.executor, functools.partial(func, *args))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise SourceError(f"timed out after {timeout:g}s") from None


class Service(Protocol):
    """A network service run by the daemon (TFTP, DHCP)."""

    name: str

    async def start(self) -> None:
        """Bind sockets and begin serving. Called while still root."""

    def reload(self, config: Config) -> None:
        """Apply what can change while running (SIGHUP) from a validated *config*."""

    def summary(self) -> str:
        """One line of statistics since start, for SIGUSR1."""

    def stop_accepting(self) -> None:
        """Take no new requests; running transfers go on."""

    async def drain(self, timeout: float) -> None:
        """Wait up to *timeout* seconds for running work to end."""

    def close(self) -> None:
        """Release every socket and resource at once."""
