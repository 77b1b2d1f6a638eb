"""A lone lock-step read, served by a thread of its own with blocking I/O.

Why: in lock-step (windowsize 1, what PXE ROMs, pxelinux and most clients
use) every block costs one round trip, and through the event loop each
block also waited for an epoll wake-up and a pass of asyncio's loop. On
loopback with atftp and a 100 MiB file (scripts/bench_tftp.py) that held
pybootd to 0.75x tftpd-hpa's throughput at blksize 512 and 0.83x at 1468.
A minimal server measured both ways served 16 MiB at 512 in 2.55-3.0 s
through asyncio and 2.2-2.7 s from a thread blocked in recvfrom (tftpd-hpa:
2.3-2.6 s): the loop, not the protocol code, was the limit.

Threads contend for the GIL, though: 100 blocking threads served 100 such
clients at 8.5 MB/s where one event loop served 34, and a thread beside a
busy loop waits for the GIL at every block (in bench_tftp.py's 100 clients
the threaded one starved and failed). So only a transfer that starts while
no other runs gets a thread (the common case: one PC booting), and as soon
as another starts it is handed back to the loop: the thread stops at its
next step and the loop goes on with the same session, blocks and socket.

Busy-polling: measured on this 2-core VM, most of a loopback round trip is
not work but wake-ups. A minimal server that sleeps in recvfrom served
16 MiB at blksize 512 at 8.5-9 MB/s, like tftpd-hpa (which sleeps in poll);
the same server polling with MSG_DONTWAIT for the ACK served 25 MB/s. So
after each block the thread polls for up to ``[tftp] busy_poll``
microseconds before it sleeps, as the kernel's SO_BUSY_POLL does for NICs
(it cannot for loopback or veth). It costs CPU only while answers come that
fast: after SPIN_MISSES polls in a row that saw nothing (a real NIC, a slow
firmware) the thread only sleeps, and tries again after SPIN_PROBE blocks.

The session is the same sans-IO :class:`ReadSession`, driven from the
thread with ``time.monotonic()``. The loop only starts the thread and, when
it ends, finishes the transfer (stats, logs, closing) on the loop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable

from pybootd.errors import PybootdError, SourceError, TftpError
from pybootd.loglimit import LogLimiter, clip
from pybootd.server.tftp_transfer import (
    _ACK,
    _DATA,
    INTERNAL_ERROR,
    SOURCE_UNAVAILABLE,
    ReadTransfer,
)
from pybootd.tftp.packets import HEADER, Ack, Error, ErrorCode, encode_error, encode_oack
from pybootd.tftp.session import WAIT, Action, Finish, Outcome, SendOack, SendWindow, Wait

log = logging.getLogger("pybootd.tftp")

STOP_POLL = 0.25  # seconds: how soon a stop asked by the loop is seen
RECEIVE_BUFFER = 2048  # a client sends ACKs and ERRORs; longer datagrams are cut
_TIMEVAL = struct.Struct("@ll")  # struct timeval for SO_RCVTIMEO
SPIN_MISSES = 4  # polls in a row that saw nothing before the thread only sleeps
SPIN_PROBE = 1024  # waits after which it polls again
# How long close() waits for the thread to stop: a wait in recvfrom ends
# within STOP_POLL, a source read within its own bound (mostly much less).
STOP_JOIN = 4 * STOP_POLL
# outcome, detail (logged), ERROR code to send, message to send (None: the detail)
Ending = tuple[Outcome, str, int | None, str | None]


class _Resume:
    """The thread stopped for a hand-over; the loop does *action* next."""

    def __init__(self, action: Action | None) -> None:
        self.action = action


class ThreadedReadTransfer(ReadTransfer):
    """A :class:`ReadTransfer` whose block loop runs in its own thread."""

    def __init__(self, *args: object, read_blocking: Callable[[int], bytes],
                 busy_poll: float = 0.0, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._read_blocking = read_blocking
        self._busy_poll = busy_poll  # seconds
        self._misses = 0 if busy_poll > 0 else SPIN_MISSES
        self._waits = 0
        self._stop: Ending | None = None
        self._result: Ending | None = None  # how the thread ended, once it has
        self._thread_limiter = LogLimiter(logger=log)  # the service's is the loop's only
        self._handover = False  # asked by the loop: another transfer started
        self._on_loop = False  # handed over: an ordinary ReadTransfer now
        self._rcvtimeo = -1.0
        self._buffer = bytearray(RECEIVE_BUFFER)
        self._thread = threading.Thread(target=self._run, name=f"pybootd-tftp {self.label}",
                                        daemon=True)

    def start(self) -> None:
        self.sock.setblocking(True)
        self._thread.start()

    def fail(self, outcome: Outcome, detail: str, code: int | None = None,
             message: str | None = None) -> None:
        """From the loop: the thread ends the transfer within STOP_POLL."""
        if self._on_loop:
            super().fail(outcome, detail, code, message)
        elif not self.finished and self._stop is None:
            self._stop = (outcome, detail, code, message)

    def stop_now(self, detail: str, message: str, wait: float = STOP_JOIN) -> None:
        """At close, from the loop: end the transfer before returning, the
        client told (ERROR 0 *message*) and the end logged. The daemon exits
        right after close(), so what the thread would do later never happens:
        it is waited for (up to *wait* seconds), and what it left undone is
        done here."""
        if self.finished:
            return
        if self._on_loop:
            super().fail(Outcome.FAILED, detail, ErrorCode.NOT_DEFINED, message)
            return
        self.fail(Outcome.FAILED, detail, ErrorCode.NOT_DEFINED, message)
        self._thread.join(wait)
        result = self._result
        if self._thread.is_alive() or result is None:
            # Stuck in a read, or stopped for a hand-over the loop has not
            # run yet: nothing was sent, so say it from here.
            super().fail(Outcome.FAILED, detail, ErrorCode.NOT_DEFINED, message)
            return
        self._ended(result[0], result[1])  # the thread sent its ERROR, if any

    def log_limiter(self) -> LogLimiter:
        """Lines caused from the thread (a foreign TID) are bounded by a
        limiter of its own: the service's is not thread-safe."""
        return self.limiter if self._on_loop else self._thread_limiter

    def hand_over(self) -> None:
        """From the loop: go on as an ordinary transfer (within STOP_POLL)."""
        self._handover = True

    def _resume(self, action: Action | None) -> None:
        """On the loop, once the thread has stopped touching the transfer."""
        self._on_loop = True
        self._thread_limiter.flush()
        if self._stop is not None:
            super().fail(*self._stop)
            return
        self.sock.setblocking(False)
        self.attach()
        if action is not None:
            self._act(action)
        else:
            self.arm(self.session.deadline)
        self._rearm()

    def _ended(self, outcome: Outcome, detail: str) -> None:
        """On the loop, once the thread is done with the socket."""
        self._thread_limiter.flush()
        super().finish(outcome, detail)

    # --- the thread -------------------------------------------------------------
    def _run(self) -> None:
        try:
            result = self._serve()
        except Exception as exc:  # a plugin's or our bug ends this transfer only
            log.exception("%s: serving %s failed", self.label, clip(self.served))
            result = Outcome.FAILED, f"internal error: {exc}", 0, INTERNAL_ERROR
        if isinstance(result, _Resume):
            with contextlib.suppress(RuntimeError):  # the loop is gone at exit
                self.loop.call_soon_threadsafe(self._resume, result.action)
            return
        outcome, detail, code, message = result
        if code is not None:
            with contextlib.suppress(OSError):
                self.sock.sendto(encode_error(code, detail if message is None else message),
                                 self.peer)
        self._result = result  # before the thread ends: stop_now() reads it after join()
        with contextlib.suppress(RuntimeError):  # the loop is gone at exit
            self.loop.call_soon_threadsafe(self._ended, outcome, detail)

    def _serve(self) -> Ending | _Resume:
        session = self.session
        action: Action | None = session.start(time.monotonic())
        while True:
            if self._stop is not None:
                return self._stop
            if self._handover:
                return _Resume(action)
            if isinstance(action, Finish):
                return action.outcome, action.detail, None, None
            try:
                if isinstance(action, SendWindow):
                    self._send_window_blocking(action.first, action.first + action.count)
                elif isinstance(action, SendOack):
                    self.sock.sendto(encode_oack(action.options), self.peer)
            except TftpError as exc:
                return Outcome.FAILED, exc.detail, exc.code, exc.message
            except PybootdError as exc:  # the source's reason (a path, a URL) is ours
                return Outcome.FAILED, str(exc), ErrorCode.NOT_DEFINED, SOURCE_UNAVAILABLE
            except OSError as exc:
                return (Outcome.FAILED, f"send failed: {exc.strerror}", ErrorCode.NOT_DEFINED,
                        None)
            action = self._next_action()

    def _send_window_blocking(self, block: int, end: int) -> None:
        store, sock, peer, size = self.store, self.sock, self.peer, self.store.blksize
        session = self.session
        while block < end:
            payload = store.block(block)
            while payload is None:
                self.feed(self._read_source())
                payload = store.block(block)
            sock.sendmsg((HEADER.pack(_DATA, block & 0xFFFF), payload), (), 0, peer)
            self.packets += 1
            if len(payload) < size:
                session.window_sent(block, True, time.monotonic())
                return
            block += 1
        session.window_sent(end - 1, False, time.monotonic())
        store.release_before(session.acked + 1)

    def _read_source(self) -> bytes:
        """The next chunk; an OSError of the source is a SourceError (not a send's)."""
        try:
            return self._read_blocking(self.chunk)
        except OSError as exc:
            raise SourceError(f"reading {self.served}: {exc}") from None

    def _next_action(self) -> Action | None:
        """Wait for the client's answer or the session's deadline (None: a
        hand-over was asked meanwhile).

        The per-block path: one recvfrom_into a reused buffer (a plain
        recvfrom allocates its whole size for every packet), SO_RCVTIMEO
        touched only near a deadline."""
        session, sock, peer, buffer = self.session, self.sock, self.peer, self._buffer
        while self._stop is None and not self._handover:
            now = time.monotonic()
            deadline = session.deadline
            if deadline is not None:
                if now >= deadline:
                    action = session.on_timer(now)
                    if not isinstance(action, Wait):
                        return action
                    continue
                if deadline - now < STOP_POLL:
                    self._receive_timeout(deadline - now)
                elif self._rcvtimeo != STOP_POLL:
                    self._receive_timeout(STOP_POLL)
            try:
                got = self._poll() if self._polling() else None
                count, addr = got if got is not None else sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError, TimeoutError):
                continue
            if addr[1] != peer[1] or addr[0] != peer[0]:
                self.foreign(addr)  # a send error there stops us via fail()
                continue
            if count == 4 and buffer[1] == _ACK and buffer[0] == 0:
                action = session.on_ack((buffer[2] << 8) | buffer[3], time.monotonic())
            else:
                action = self._answer(bytes(buffer[:count]))
            if not isinstance(action, Wait):
                return action
        return None  # _serve returns the stop's ending, or the hand-over

    def _polling(self) -> bool:
        """Poll before this wait? Yes while polls see answers; after
        SPIN_MISSES misses, once every SPIN_PROBE waits (the link may be
        faster now)."""
        if self._misses < SPIN_MISSES:
            return True
        self._waits += 1
        if self._busy_poll > 0 and self._waits >= SPIN_PROBE:
            self._waits = 0
            self._misses = SPIN_MISSES - 1
            return True
        return False

    def _poll(self) -> tuple[int, tuple[str, int]] | None:
        """Busy-poll for a datagram for up to busy_poll seconds (None: nothing
        came; after SPIN_MISSES such polls in a row, stop polling for a while)."""
        sock, buffer = self.sock, self._buffer
        limit = time.perf_counter() + self._busy_poll
        while True:
            try:
                got = sock.recvfrom_into(buffer, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                if time.perf_counter() < limit:
                    continue
                self._misses += 1
                return None
            self._misses = 0
            return got

    def _answer(self, data: bytes) -> Action:
        """Anything but a plain ACK (an ACK with trailing bytes, an ERROR)."""
        session = self.session
        packet = self.parse(data)
        if isinstance(packet, Ack):
            return session.on_ack(packet.block, time.monotonic())
        if isinstance(packet, Error):
            return session.on_error(packet.code, packet.message)
        return WAIT

    def _receive_timeout(self, seconds: float) -> None:
        """SO_RCVTIMEO, set only when it changes (not once per block)."""
        seconds = max(seconds, 0.001)
        if abs(seconds - self._rcvtimeo) < 0.001:
            return
        self._rcvtimeo = seconds if seconds < STOP_POLL else STOP_POLL
        whole = int(seconds)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                             _TIMEVAL.pack(whole, int((seconds - whole) * 1_000_000)))
