"""One TFTP transfer on its own ephemeral port (its TID, RFC 1350 section 4).

The transfer is the I/O edge of a sans-IO connection
(:mod:`pybootd.tftp.connection`): it hands the connection what arrives on
the socket and when its timer fires, sends what the connection gives, reads
the source when the connection wants bytes, and reports the outcome. It
frames no packet and recognises none. The wire is carried one of two ways,
chosen once per transfer: the event loop (``loop.add_reader``, ``sendmsg``
of a header and a slice of the chunk read, windows in UDP GSO sends), or,
for lock-step reads where it is built, the pump (:mod:`.tftp_pump`). Before
the transfer acts on anything it takes the pump's count back (``sync``);
after, it arms the pump again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pybootd.api import Direction, TransferStats
from pybootd.errors import PybootdError, SourceError, TftpError
from pybootd.loglimit import LogLimiter, clip
from pybootd.sources.chunks import DISK_TIMEOUT, ChunkSource
from pybootd.tftp.connection import Datagram, ReadConnection, WriteConnection, WriteState
from pybootd.tftp.options import Negotiated
from pybootd.tftp.packets import ErrorCode, encode_error
from pybootd.udp import Port, Sender, format_peer

if TYPE_CHECKING:
    from pybootd.runtime import Runtime
    from pybootd.server.tftp_pump import Pump
    from pybootd.sources.local import Upload

log = logging.getLogger("pybootd.tftp")

MIN_CHUNK = 64 * 1024
MAX_CHUNK = 1024 * 1024
RECV_BATCH = 64  # datagrams handled per wake-up before yielding to others
FLUSH_BYTES = 256 * 1024  # an upload is written in batches of this much
GSO_BATCH = 16  # below the kernel's UDP_MAX_SEGMENTS, 64
GSO_MAX_BYTES = 65000  # below 65535 less the IPv6 and UDP headers
# What a client is told when the bytes cannot be read or stored: the reason
# (a mirror URL, a path, an OS error) is for the log only.
SOURCE_UNAVAILABLE = "source unavailable"
INTERNAL_ERROR = "internal error"
SHUTTING_DOWN = "server shutting down"


def chunk_size(blksize: int, windowsize: int) -> int:
    """How much to read from the source at a time: a whole number of blocks,
    about one window, at least four blocks, within 64 KiB .. 1 MiB (measured:
    one 65464-byte block per read capped lock-step transfers at ~400 MB/s,
    as every block waited for a thread-pool round trip)."""
    wanted = min(max(blksize * windowsize, MIN_CHUNK, 4 * blksize), MAX_CHUNK)
    return max(1, wanted // blksize) * blksize


def gso_segments(blksize: int, windowsize: int) -> int:
    """How many DATA blocks one send takes (udp.Sender): a quarter of the
    window, at most GSO_BATCH and what one GSO send takes.

    Why a quarter: the client starts on the first datagrams while the rest
    go out. On loopback with atftp (scripts/bench_tftp.py, MB/s at
    512/ws8, 1468/ws8, 512/ws64, 1468/ws64): one send per block 44, 121,
    73, 216; the whole window in one send 40, 109, 104, 271; a quarter of it
    (at most 16) 54, 125, 134, 304; an eighth 45, 127, 137, 297."""
    return max(1, min(GSO_BATCH, windowsize // 4, GSO_MAX_BYTES // (blksize + 4)))


@dataclass(frozen=True)
class TransferInfo:
    """A transfer's request and what it was granted (TransferStats, log lines)."""

    peer: tuple[str, int]
    name: str  # as the client asked
    served: str  # what is served (a filter's target, the upload's name)
    mode: str
    asked: dict[str, str]  # options in the request
    negotiated: Negotiated  # its .oack: the options granted
    retries: int


Done = Callable[["Transfer", TransferStats], None]


class Transfer:
    """What reads and writes share: the port, the timer, sending, the end."""

    direction = Direction.READ
    conn: ReadConnection | WriteConnection

    def __init__(self, runtime: Runtime, port: Port, info: TransferInfo,
                 on_done: Done) -> None:
        self.loop = runtime.loop
        self.runtime = runtime
        self.port = port
        self.sock = port.sock  # connected to the peer: it gets only the peer's datagrams
        self.peer = info.peer
        self.info = info
        self.key: tuple[str, int, int, str] = (info.peer[0], info.peer[1], 0, info.name)
        self.label = format_peer(info.peer)
        self.on_done = on_done
        self.started = time.monotonic()
        self.finished = False
        self.done: asyncio.Future[None] = self.loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        # Lines a client can cause (a foreign TID) go through the service's
        # limiter, shared by every transfer; the service sets it at start.
        self.limiter = LogLimiter(logger=log)
        self.sender = Sender(port.sock)

    @property
    def established(self) -> bool:
        """Has the client answered once? Until then the service may evict
        the transfer for a new one (pybootd.tftp.connection.FIRST_ANSWER_WAIT)."""
        return self.conn.established

    def start(self) -> None:
        """Start reading the port and send the first packet."""
        self.loop.add_reader(self.port.stray.fileno(), self._stray)
        self.attach()
        self.flush()

    def attach(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._readable)

    # --- the connection's side: what it gives, when it wants the timer --------
    def flush(self) -> None:
        """Send what the connection gives, then end or re-arm the timer."""
        conn = self.conn
        out = conn.datagrams_to_send(self.loop.time())
        if out:
            self._send_all(out)
        if conn.finished is not None:
            self.finish()
            return
        deadline = conn.get_timer()
        if deadline is not None:
            self.arm(deadline)

    def arm(self, deadline: float) -> None:
        """One timer handle, re-armed lazily: a timer that fires before the
        deadline moved on is simply set again (no churn per block)."""
        if self._timer is not None:
            if self._timer_when <= deadline:
                return  # it fires first and re-arms for the later deadline
            self._timer.cancel()
        self._timer_when = deadline
        self._timer = self.loop.call_at(deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.sync()
        if not self.finished:
            self.conn.handle_timer(self.loop.time())
            self.flush()

    # --- receiving: plain add_reader callback, a bounded batch per wake-up ----
    def _readable(self, all_waiting: bool = False) -> None:
        """*all_waiting*: go on past a lock-step ACK (see catch_up)."""
        sock, conn = self.sock, self.conn
        lockstep = isinstance(conn, ReadConnection) and conn.lockstep and not all_waiting
        for _ in range(RECV_BATCH):
            try:
                data = sock.recv(65536 + 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error for an earlier send: the timer resends
                continue
            conn.receive(data, self.loop.time())
            self.flush()
            # In lock-step the client sends nothing more before our DATA:
            # another recvfrom would only raise EAGAIN (the reader is
            # level-triggered, so a queued packet is read on the next turn).
            if lockstep or self.finished:
                return

    def catch_up(self) -> None:
        """Handle every datagram already waiting on the socket, now: the
        service calls it before it takes a request that matches this
        transfer for a repeat (the ERROR or final ACK that ends this
        transfer may wait here, unread, while its client asks again)."""
        self.sync()
        if not self.finished:
            self._readable(all_waiting=True)

    def _stray(self) -> None:
        """Packets from another TID: tell each off, carry on (RFC 1350 section 4)."""
        for _ in range(RECV_BATCH):
            try:
                _data, addr = self.port.stray.recvfrom(65536 + 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self.foreign(addr)

    def foreign(self, addr: tuple[str, int]) -> None:
        """Answer a packet from another TID with ERROR 5 (RFC 1350 section 4)."""
        if self.limiter.allow("packet from a foreign TID", time.monotonic(), logging.INFO):
            log.info("%s: packet from foreign TID %s answered with ERROR 5", self.label,
                     format_peer(addr))
        try:
            self.port.stray.sendto(encode_error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID"),
                                   addr)
        except OSError as exc:
            log.debug("%s: ERROR 5 to %s not sent: %s", self.label, format_peer(addr), exc)

    # --- sending ------------------------------------------------------------
    def _send_all(self, out: list[Datagram]) -> None:
        try:
            sent = self.sender.send(out)
        except OSError as exc:
            self.conn.abort(ErrorCode.NOT_DEFINED, "send failed", f"send failed: {exc.strerror}")
            return
        if sent < len(out):  # the send buffer is full: the client asks again or the timer resends
            log.debug("%s: send buffer full, %d datagram(s) dropped", self.label, len(out) - sent)
        if self.sender.refused is not None:
            log.debug("%s: UDP GSO refused (%s), sending block by block", self.label,
                      self.sender.refused)
            self.sender.refused = None

    # --- the end --------------------------------------------------------------
    def fail(self, code: int, message: str, detail: str | None = None) -> None:
        """End now: ERROR *code* *message* to the client, *detail* (default:
        *message*) in the log and the stats."""
        self.sync()
        if not self.finished:
            self.conn.abort(code, message, detail)
            self.flush()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.detach()
        self.loop.remove_reader(self.port.stray.fileno())
        self.port.close()
        self.release()
        ending = self.conn.finished
        assert ending is not None  # flush() finishes a transfer its connection ended
        info = self.info
        stats = TransferStats(
            peer=self.peer, filename=info.name, served=info.served, direction=self.direction,
            mode=info.mode, options_asked=info.asked, options_granted=dict(info.negotiated.oack),
            bytes=self.conn.transferred, packets=self.conn.packets,
            retransmits=self.conn.retransmits, duration=time.monotonic() - self.started,
            outcome=ending.outcome, error=ending.detail)
        self.on_done(self, stats)
        if not self.done.done():
            self.done.set_result(None)

    def detach(self) -> None:
        """Stop reading the socket (before it is closed)."""
        self.loop.remove_reader(self.sock.fileno())

    def sync(self) -> None:
        """Before acting on anything: learn what was sent meanwhile elsewhere."""

    def release(self) -> None:
        """Let go of the source or the upload."""

    def discard(self) -> None:
        """Never started (the service closed while it was being set up):
        close what it holds, silently."""
        self.port.close()
        self.release()


class ReadTransfer(Transfer):
    """Serves one RRQ."""

    conn: ReadConnection

    def __init__(self, runtime: Runtime, port: Port, info: TransferInfo,
                 on_done: Done, source: ChunkSource, pump: Pump | None = None) -> None:
        super().__init__(runtime, port, info, on_done)
        negotiated = info.negotiated
        self.chunk = chunk_size(negotiated.blksize, negotiated.windowsize)
        self.conn = conn = ReadConnection(negotiated, info.retries, self.loop.time(),
                                          read_ahead=self.chunk // negotiated.blksize)
        self.source = source
        self._reading = False
        self.sender = Sender(port.sock, conn.blksize + 4,
                             gso_segments(conn.blksize, conn.windowsize))
        self.pump = pump if conn.lockstep else None
        self._armed = False  # a FastPath is out in the pump
        self._hold = False

    def attach(self) -> None:
        if self.pump is None:
            super().attach()
        else:
            self.pump.add(self.sock.fileno(), self)

    def flush(self) -> None:
        super().flush()
        if self.pump is not None and not (self.finished or self._armed or self._hold):
            path = self.conn.fast_path()
            if path is not None:
                self.pump.arm(self.sock.fileno(), path)
                self._armed = True
        self._fill()  # after arming: reads ahead of what the pump may send

    def detach(self) -> None:
        if self.pump is None:
            super().detach()
        else:
            self.sync()
            self.pump.remove(self.sock.fileno())

    # --- through the pump ------------------------------------------------------
    def sync(self) -> None:
        """Disarm the pump and tell the connection what it answered (the
        blocks it sent count in the stats, its last send sets the timer)."""
        if self._armed and self.pump is not None:
            self._armed = False
            done, last_sent_at = self.pump.take(self.sock.fileno())
            self.conn.resume(done, last_sent_at)

    def pumped(self, data: bytes) -> None:
        """A datagram the pump did not answer, in the order it came."""
        self.sync()
        if not self.finished:
            self.conn.receive(data, self.loop.time())
        if not self.finished:
            self.flush()

    def catch_up(self) -> None:
        self._hold = True  # no arming while the socket is read here
        try:
            super().catch_up()
        finally:
            self._hold = False
        if not self.finished:
            self.flush()

    @property
    def established(self) -> bool:
        if not self.conn.established and self._armed:
            # The pump may have answered the first ACKs in C: ask it.
            self.sync()
            self.flush()
        return self.conn.established

    # --- reading from the source, ahead of the window -------------------------
    def _fill(self) -> None:
        if not self._reading and not self.finished and self.conn.wants_bytes():
            self._reading = True
            self.loop.create_task(self._read_chunk())

    async def _read_chunk(self) -> None:
        try:
            chunk = await self.source.read(self.chunk)
        except TftpError as exc:
            self.fail(exc.code, exc.message, exc.detail)
            return
        except (PybootdError, OSError) as exc:  # a mirror or disk failing: its reason is ours
            self.fail(ErrorCode.NOT_DEFINED, SOURCE_UNAVAILABLE, str(exc))
            return
        except Exception as exc:  # a plugin's bug must end this transfer only
            log.exception("%s: reading %s failed", self.label, clip(self.info.served))
            self.fail(ErrorCode.NOT_DEFINED, INTERNAL_ERROR, f"internal error: {exc}")
            return
        finally:
            self._reading = False
        if self.finished:
            return
        size, conn = self.source.size, self.conn  # (a pump out goes on meanwhile)
        conn.feed(chunk, not chunk or (size is not None and conn.store.fed + len(chunk) >= size))
        self.flush()

    def release(self) -> None:
        self.source.close()


class WriteTransfer(Transfer):
    """Receives one WRQ into an :class:`Upload`."""

    direction = Direction.WRITE
    conn: WriteConnection

    def __init__(self, runtime: Runtime, port: Port, info: TransferInfo,
                 on_done: Done, upload: Upload, max_size: int) -> None:
        super().__init__(runtime, port, info, on_done)
        self.conn = WriteConnection(info.negotiated, info.retries, self.loop.time(),
                                    max_size=max_size, netascii=info.mode == "netascii")
        self.upload = upload
        self._flushing: asyncio.Task[None] | None = None

    def flush(self) -> None:
        conn = self.conn
        if conn.state is WriteState.COMMITTING or conn.pending >= FLUSH_BYTES:
            self._write_out()
        super().flush()

    def _write_out(self) -> None:
        """Queue a write (and the commit) after the ones before it: one file,
        written in order, by one pool thread at a time."""
        chunk, commit = self.conn.to_store()
        if chunk or commit:
            self._flushing = self.loop.create_task(self._write(self._flushing, chunk, commit))

    async def _write(self, previous: asyncio.Task[None] | None, chunk: bytes,
                     commit: bool) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        if self.finished:
            return  # ended meanwhile: the abort comes after this task
        try:
            if chunk:
                await self.runtime.blocking(DISK_TIMEOUT, self.upload.write, chunk)
            if commit and not self.finished:
                await self.runtime.blocking(DISK_TIMEOUT, self.upload.commit)
                if self.finished:  # the server stopped meanwhile
                    log.info("%s: %s was stored, but the transfer had ended", self.label,
                             self.info.served)
                    return
                # Only now may the last block be ACKed (RFC 1350 section 6).
                self.conn.committed(self.loop.time())
                self.flush()
        except TftpError as exc:
            self.fail(exc.code, exc.message, exc.detail)
        except (SourceError, OSError) as exc:  # the reason (a path, an OS error) is ours
            self.fail(ErrorCode.NOT_DEFINED, "cannot store the file", str(exc))

    def finish(self) -> None:
        if self.finished:
            return
        super().finish()
        ending = self.conn.finished
        if ending is not None and not ending.outcome.succeeded:
            _background(self.loop.create_task(self._abort(self._flushing)))

    async def _abort(self, flushing: asyncio.Task[None] | None) -> None:
        """Remove the temporary file once the queued writes have stopped."""
        if flushing is not None:
            await asyncio.wait([flushing])
        with self._removing():
            await self.runtime.blocking(DISK_TIMEOUT, self.upload.abort)

    @contextlib.contextmanager
    def _removing(self) -> Iterator[None]:
        try:
            yield
        except (SourceError, OSError) as exc:
            log.warning("%s: removing %s failed: %s", self.label, self.upload.temp, exc)

    def abort_now(self, wait: float) -> None:
        """At shutdown: fail, and remove the temporary file right away (the
        pool may never run the queued abort)."""
        self.fail(ErrorCode.NOT_DEFINED, SHUTTING_DOWN)
        with self._removing():
            self.upload.abort(wait)

    def discard(self) -> None:
        super().discard()
        with self._removing():
            self.upload.abort(0)


_tasks: set[asyncio.Task[None]] = set()


def _background(task: asyncio.Task[None]) -> None:
    """Keep a reference to a task nobody awaits (asyncio holds it weakly)."""
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
