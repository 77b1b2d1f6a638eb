"""What every service gets from the daemon: the loop, the config and the
thread pools where blocking work runs, each by name.

Nothing blocking runs on the event loop: disk, HTTP (requests) and SQLite
go to a bounded pool, always with a timeout. The pools are the runtime's:
``default`` (``[daemon] workers`` threads) for disk and HTTP, and any a
service asks for by name (the lease store's one writer thread, so commits
stay serialized on one connection and never queue behind a slow HTTP
query). :meth:`Runtime.close` shuts them all down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pybootd.config import Config
from pybootd.errors import SourceError
from pybootd.observe.observer import Observer

T = TypeVar("T")
log = logging.getLogger("pybootd")

DEFAULT_POOL = "default"


@dataclass
class Runtime:
    """Shared by the services of one daemon process."""

    config: Config
    loop: asyncio.AbstractEventLoop
    executor: ThreadPoolExecutor  # the default pool
    # Called by a service that cannot go on (a damaged lease file): the daemon
    # logs it and stops with a non-zero status, so systemd restarts it.
    on_fatal: Callable[[str], None] | None = None
    pools: dict[str, ThreadPoolExecutor] = field(default_factory=dict)
    # What the services report of each client event (metrics, timelines): [api] reads it.
    observer: Observer = field(default_factory=Observer)

    def __post_init__(self) -> None:
        self.pools.setdefault(DEFAULT_POOL, self.executor)

    def pool(self, name: str, workers: int = 1) -> ThreadPoolExecutor:
        """The pool called *name*, made with *workers* threads on first use."""
        if name not in self.pools:
            self.pools[name] = ThreadPoolExecutor(workers, thread_name_prefix=f"pybootd-{name}")
        return self.pools[name]

    def fatal(self, message: str) -> None:
        """A service can no longer serve: stop the process (exit status 1)."""
        log.error("%s: stopping (exit status 1)", message)
        if self.on_fatal is not None:
            self.on_fatal(message)

    async def blocking(self, timeout: float, func: Callable[..., T], *args: object,
                       pool: str = DEFAULT_POOL) -> T:
        """Run blocking *func* in the pool called *pool*, never on the loop.

        Raises :class:`SourceError` when it takes longer than *timeout*; the
        thread itself cannot be cancelled, so *func* must have its own bound.
        """
        future = self.loop.run_in_executor(self.pool(pool), functools.partial(func, *args))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise SourceError(f"timed out after {timeout:g}s") from None

    def close(self, wait: tuple[str, ...] = ()) -> None:
        """Shut every pool down; the pools named in *wait* finish their queued
        work first (the lease store's last commit), the others drop it."""
        for name, executor in self.pools.items():
            if name in wait:
                executor.shutdown(wait=True, cancel_futures=False)
            else:
                executor.shutdown(wait=False, cancel_futures=True)


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
