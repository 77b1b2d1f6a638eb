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

Where the kernel allows io_uring (Linux 6.1 and later, not turned off by
``kernel.io_uring_disabled`` or a seccomp filter) and the loop comes from
:func:`new_event_loop`, the pump's system calls are batched across every
transfer in one ring (pybootd/_lockstep_ring.c says why and what it
measured): the loop's :class:`RingSelector` then waits in the ring while
transfers are in it, with the loop's own epoll descriptor polled there, so
every other socket and timer still ends the wait. Anywhere else the pump is
an epoll set that the loop watches like any descriptor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import weakref
from typing import Protocol

from pybootd.server.tftp_lockstep import SPIN_MISSES, SPIN_PROBE

try:
    from pybootd import _lockstep
except ImportError:  # not built: pure Python
    _lockstep = None  # type: ignore[assignment]

log = logging.getLogger("pybootd.tftp")

BUDGET = 1024  # datagrams per wake-up before the loop's other work runs
DISABLE_ENV = "PYBOOTD_NO_LOCKSTEP_PUMP"  # set (non-empty): the pure-Python path
NO_RING_ENV = "PYBOOTD_NO_IO_URING"  # set (non-empty): the epoll pump, never io_uring


class Pumped(Protocol):
    def pumped(self, data: bytes, addr: tuple[str, int]) -> None: ...


def available() -> bool:
    """Is the compiled pump there, and not turned off with DISABLE_ENV?"""
    return _lockstep is not None and not os.environ.get(DISABLE_ENV)


class RingSelector(selectors.EpollSelector):
    """asyncio's epoll selector, which waits in the pump's ring instead while
    transfers are in it (the ring polls this selector's epoll descriptor, so
    whatever else the loop watches ends that wait as it would end epoll's)."""

    def __init__(self) -> None:
        super().__init__()
        self.ring: _lockstep.Pump | None = None
        self.spin = 0.0
        self.failures = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ring = self.ring
        if ring is not None and ring.active():
            try:
                ring.wait(self.fileno(), -1.0 if timeout is None else max(timeout, 0.0),
                          self.spin, BUDGET)
            except OSError as exc:  # the ring's transfers then end on their timers
                self.failures += 1
                if self.failures == 1:  # once, not once per turn of the loop
                    log.error("TFTP: waiting in io_uring failed: %s", exc)
            else:
                timeout = 0
        return super().select(timeout)


_SELECTORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RingSelector] = (
    weakref.WeakKeyDictionary())


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The daemon's loop: a selector loop that can wait in the pump's ring."""
    selector = RingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _SELECTORS[loop] = selector
    return loop


def _open(loop: asyncio.AbstractEventLoop) -> tuple[_lockstep.Pump, RingSelector | None]:
    """The io_uring pump if this loop can wait in it and the kernel lets us,
    else the epoll pump."""
    selector = _SELECTORS.get(loop)
    if selector is not None and selector.ring is None and not os.environ.get(NO_RING_ENV):
        try:
            return _lockstep.Pump(spin_misses=SPIN_MISSES, spin_probe=SPIN_PROBE,
                                  ring=True), selector
        except OSError as exc:  # ENOSYS, EPERM (io_uring_disabled, seccomp), old kernel
            log.debug("TFTP: io_uring unavailable (%s), lock-step reads use epoll", exc)
    return _lockstep.Pump(spin_misses=SPIN_MISSES, spin_probe=SPIN_PROBE), None


class Pump:
    """The lock-step transfers' sockets in one io_uring or one epoll set."""

    def __init__(self, loop: asyncio.AbstractEventLoop, busy_poll: float) -> None:
        """*busy_poll*: seconds to poll for ACKs after a wake-up's work, before
        the loop sleeps ([tftp] busy_poll; adaptive, as the lone thread's).
        Call it on the loop's thread: an io_uring pump is used from it only."""
        if _lockstep is None:
            raise RuntimeError("pybootd._lockstep is not built")
        self.loop = loop
        self.busy_poll = busy_poll
        self._pump, self._selector = _open(loop)
        if self._selector is not None:
            self._selector.ring = self._pump
            self._selector.spin = busy_poll
        self.backend = self._pump.backend()
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
        if self._selector is not None:
            self._selector.ring = None
        self._owners.clear()
        self._pump.close()
