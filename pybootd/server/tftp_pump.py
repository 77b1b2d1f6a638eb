"""Lock-step reads on the event loop, their per-block path compiled.

Why: with many lock-step clients at once (bench_tftp.py, 100 atftp clients
x 8 MiB at blksize 1468 on this 2-core VM) the server's CPU per block sets
the aggregate. Through asyncio pybootd spent 15.1 us per DATA block and
reached 0.71x tftpd-hpa (10.4 us); a minimal pure-Python epoll server,
with no protocol logic at all, 0.92x. So the one step that needs no
decision -- ACK n from the peer, DATA n+1 from bytes already read -- runs
in C (pybootd/_lockstep.c): the transfers' sockets sit in the pump; each
wake-up answers every such ACK that is ready, and hands the rest back to
the transfer, in order.

A transfer in the pump is armed with the block it last sent and the stored
segment that holds the next ones. Before it acts on anything (a datagram
handed back, its timer, a chunk read) it takes the state back and catches
its :class:`ReadSession` up (``fast_forward``); it arms the pump again
after. Without the compiled module (another OS, no compiler at install)
transfers read their sockets through ``loop.add_reader`` as before.

The pump is an epoll set that the stock asyncio loop watches like any
descriptor (``loop.add_reader``).

Busy-polling: measured on this 2-core VM, most of a loopback round trip is
not work but wake-ups (a minimal server that sleeps in recvfrom served
16 MiB at blksize 512 at 8.5-9 MB/s, like tftpd-hpa; the same server
polling for the ACK, 25 MB/s). So after a wake-up's work the pump polls for
up to ``[tftp] busy_poll`` microseconds before the loop sleeps, as the
kernel's SO_BUSY_POLL does for NICs (it cannot for loopback or veth). It
costs CPU only while answers come that fast: after SPIN_MISSES polls in a
row that saw nothing (a real NIC, a slow firmware) it only sleeps, and polls
again once every SPIN_PROBE wake-ups.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Protocol

try:
    from pybootd import _lockstep
except ImportError:  # not built: pure Python
    _lockstep = None  # type: ignore[assignment]

log = logging.getLogger("pybootd.tftp")

BUDGET = 1024  # datagrams per wake-up before the loop's other work runs
DISABLE_ENV = "PYBOOTD_NO_LOCKSTEP_PUMP"  # set (non-empty): the pure-Python path
SPIN_MISSES = 4  # busy polls in a row that saw nothing before the pump only sleeps
SPIN_PROBE = 1024  # wake-ups after which it polls again


class Pumped(Protocol):
    def pumped(self, data: bytes, addr: tuple[str, int]) -> None: ...


def available() -> bool:
    """Is the compiled pump there, and not turned off with DISABLE_ENV?"""
    return _lockstep is not None and not os.environ.get(DISABLE_ENV)


class Pump:
    """The lock-step transfers' sockets in one epoll set."""

    def __init__(self, loop: asyncio.AbstractEventLoop, busy_poll: float) -> None:
        """*busy_poll*: seconds to poll for ACKs after a wake-up's work, before
        the loop sleeps ([tftp] busy_poll; adaptive, see the module)."""
        if _lockstep is None:
            raise RuntimeError("pybootd._lockstep is not built")
        self.loop = loop
        self.busy_poll = busy_poll
        self._pump = _lockstep.Pump(spin_misses=SPIN_MISSES, spin_probe=SPIN_PROBE)
        self._owners: dict[int, Pumped] = {}
        loop.add_reader(self._pump.fileno(), self._ready)

    def add(self, fd: int, peer: tuple[str, int], owner: Pumped) -> None:
        self._pump.add(fd, peer)
        self._owners[fd] = owner

    def remove(self, fd: int) -> None:
        """Before the socket is closed."""
        self._owners.pop(fd, None)
        self._pump.remove(fd)

    def arm(self, fd: int, sent: int, chunk: bytes, first: int, blksize: int) -> None:
        self._pump.arm(fd, sent, chunk, first, blksize)

    def take(self, fd: int) -> tuple[int, float, int]:
        """Disarm: (the last block the pump sent, when, how many it sent);
        (-1, 0.0, 0) if it sent none since the last take."""
        return self._pump.take(fd)

    def _ready(self) -> None:
        for fd, data, addr in self._pump.run(BUDGET, self.busy_poll):
            owner = self._owners.get(fd)
            if owner is not None:
                owner.pumped(data, addr)

    def close(self) -> None:
        self.loop.remove_reader(self._pump.fileno())
        self._owners.clear()
        self._pump.close()
