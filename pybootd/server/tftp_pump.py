"""Lock-step reads' per-block path, compiled and protocol-free.

Why: with many lock-step clients the server's CPU per block sets the
aggregate (bench_tftp.py, 100 clients x 8 MiB at blksize 1468, 2 cores):
through asyncio pybootd reached 0.71x tftpd-hpa, a minimal pure-Python
epoll server with no protocol logic at all 0.92x. So the step that needs no
decision runs in C (pybootd/_pump.c, which knows no TFTP): the connection
states it as a :class:`pybootd.tftp.connection.FastPath`, the pump answers
what matches and hands the rest back, in order, and the transfer tells the
connection how many it answered (``resume``) before it acts on anything else.

The pump is an epoll set that the stock asyncio loop watches like any
descriptor; after a wake-up's work it polls for up to ``[tftp] busy_poll``
microseconds (the policy, in _pump.c, is its alone). Without the compiled
module, transfers read their sockets on the loop.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

from pybootd.tftp.connection import FastPath

try:
    from pybootd import _pump
except ImportError:  # not built: the event loop carries every transfer
    _pump = None  # type: ignore[assignment]

BUDGET = 1024  # datagrams per wake-up before the loop's other work runs
DISABLE_ENV = "PYBOOTD_NO_LOCKSTEP_PUMP"  # set (non-empty): the event loop only


class Pumped(Protocol):
    def pumped(self, data: bytes) -> None: ...


def available() -> bool:
    """Is the compiled pump there, and not turned off with DISABLE_ENV?"""
    return _pump is not None and not os.environ.get(DISABLE_ENV)


class Pump:
    """The lock-step transfers' sockets in one epoll set."""

    def __init__(self, loop: asyncio.AbstractEventLoop, busy_poll: float) -> None:
        """*busy_poll*: seconds to poll for ACKs after a wake-up's work."""
        if _pump is None:
            raise RuntimeError("pybootd._pump is not built")
        self.loop = loop
        self.busy_poll = busy_poll
        self._pump = _pump.Pump()
        self._owners: dict[int, Pumped] = {}
        loop.add_reader(self._pump.fileno(), self._ready)

    def add(self, fd: int, owner: Pumped) -> None:
        """*fd*: a socket connected to its peer (udp.Port)."""
        self._pump.add(fd)
        self._owners[fd] = owner

    def remove(self, fd: int) -> None:
        """Before the socket is closed."""
        self._owners.pop(fd, None)
        self._pump.remove(fd)

    def arm(self, fd: int, path: FastPath) -> None:
        self._pump.arm(fd, path.count, path.expects, path.heads, path.body, path.stride)

    def take(self, fd: int) -> tuple[int, float]:
        """Disarm: how many steps were answered, and when the last reply went out."""
        return self._pump.take(fd)

    def _ready(self) -> None:
        for fd, data in self._pump.run(BUDGET, self.busy_poll):
            owner = self._owners.get(fd)
            if owner is not None:
                owner.pumped(data)

    def close(self) -> None:
        self.loop.remove_reader(self._pump.fileno())
        self._owners.clear()
        self._pump.close()
