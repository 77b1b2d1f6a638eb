"""One TFTP transfer on its own ephemeral port (its TID, RFC 1350 section 4).

This is the per-block hot path. The socket is read from a plain
``loop.add_reader`` callback (no transport or protocol objects), an ACK is
decoded with two byte reads, and a DATA block goes out with ``sendmsg`` as a
4-byte header plus a slice of the chunk read from the source: no copy.
Lock-step reads go through :mod:`pybootd.server.tftp_pump` instead where it
is built, which sends the blocks that need no decision from C.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pybootd.api import TransferStats
from pybootd.errors import BadPacket, PybootdError, SourceError, TftpError
from pybootd.loglimit import LogLimiter, clip
from pybootd.sources.chunks import DISK_TIMEOUT, ChunkSource
from pybootd.tftp.blocks import BlockStore
from pybootd.tftp.netascii import NetasciiDecoder
from pybootd.tftp.packets import (
    HEADER,
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    Packet,
    encode_ack,
    encode_error,
    encode_oack,
    parse_packet_untrusted,
)
from pybootd.tftp.session import (
    Action,
    Finish,
    Outcome,
    ReadSession,
    SendAck,
    SendOack,
    SendWindow,
    Store,
    WriteSession,
)
from pybootd.udp import format_peer

if TYPE_CHECKING:
    from pybootd.runtime import Runtime
    from pybootd.server.tftp_pump import Pump
    from pybootd.sources.local import Upload

log = logging.getLogger("pybootd.tftp")

MIN_CHUNK = 64 * 1024
MAX_CHUNK = 1024 * 1024
RECV_BATCH = 64  # datagrams handled per wake-up before yielding to others
# UDP GSO (linux/udp.h): one sendmsg, many datagrams of one size.
_SOL_UDP = 17
_UDP_SEGMENT = 103
_GSO_SIZE = struct.Struct("=H")
GSO_BATCH = 16  # below the kernel's UDP_MAX_SEGMENTS, 64
GSO_MAX_BYTES = 65000  # below 65535 less the IPv6 and UDP headers
_NO_GSO = {errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP}
_DATA = int(Opcode.DATA)
_ACK = int(Opcode.ACK)
# What a client is told when the bytes cannot be read: the reason (a mirror
# URL, a path, an OS error) is for the log only.
SOURCE_UNAVAILABLE = "source unavailable"
INTERNAL_ERROR = "internal error"


def chunk_size(blksize: int, windowsize: int) -> int:
    """How much to read from the source at a time: a whole number of blocks,
    about one window, at least four blocks, within 64 KiB .. 1 MiB (measured:
    one 65464-byte block per read capped lock-step transfers at ~400 MB/s,
    as every block waited for a thread-pool round trip)."""
    wanted = min(max(blksize * windowsize, MIN_CHUNK, 4 * blksize), MAX_CHUNK)
    return max(1, wanted // blksize) * blksize


def gso_segments(blksize: int, windowsize: int) -> int:
    """How many DATA blocks one send takes: 1 where GSO is not Linux's, else
    a quarter of the window, at most GSO_BATCH and what one GSO send takes.

    Why a quarter: the client starts on the first datagrams while the rest
    go out. On loopback with atftp (scripts/bench_tftp.py, MB/s at
    512/ws8, 1468/ws8, 512/ws64, 1468/ws64): one send per block 44, 121,
    73, 216; the whole window in one send 40, 109, 104, 271; a quarter of it
    (at most 16) 54, 125, 134, 304; an eighth 45, 127, 137, 297."""
    if not sys.platform.startswith("linux"):
        return 1
    return max(1, min(GSO_BATCH, windowsize // 4, GSO_MAX_BYTES // (blksize + 4)))


def gso_cmsg(blksize: int) -> list[tuple[int, int, bytes]]:
    """The ancillary data of a GSO send: cut into datagrams of 4 + blksize."""
    return [(_SOL_UDP, _UDP_SEGMENT, _GSO_SIZE.pack(blksize + 4))]


@dataclass(frozen=True)
class TransferInfo:
    """What a transfer reports about its request (TransferStats, log lines)."""

    peer: tuple[str, int]
    name: str  # as the client asked
    served: str  # what is served (a filter's target, the upload's name)
    mode: str
    asked: dict[str, str]  # options in the request
    granted: dict[str, str]  # options in the OACK


Done = Callable[["Transfer", TransferStats], None]


class Transfer:
    """What read and write transfers share: socket, timer, stats, ending."""

    direction = "read"

    def __init__(self, runtime: Runtime, sock: socket.socket, info: TransferInfo,
                 on_done: Done) -> None:
        self.loop = runtime.loop
        self.runtime = runtime
        self.sock = sock
        self.peer = peer = info.peer
        self.key: tuple[str, int, int, str] = (peer[0], peer[1], 0, info.name)
        self.label = format_peer(peer)
        self.name, self.served, self.mode = info.name, info.served, info.mode
        self.asked, self.granted = info.asked, info.granted
        self.on_done = on_done
        self.started = time.monotonic()
        self.packets = 0
        self.finished = False
        self.done: asyncio.Future[None] = self.loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        # Lines a client can cause (a foreign TID) go through the service's
        # limiter, shared by every transfer; the service sets it at start.
        self.limiter = LogLimiter(logger=log)

    @property
    def established(self) -> bool:
        """Has the client answered once? Until then the service may evict
        the transfer for a new one (pybootd.tftp.session.FIRST_ANSWER_WAIT)."""
        raise NotImplementedError

    def start(self) -> None:
        """Send the first packet and start reading the socket."""
        raise NotImplementedError

    # --- timer: one handle, re-armed lazily ----------------------------------
    def arm(self, deadline: float | None) -> None:
        if deadline is None or self.finished:
            return
        if self._timer is not None:
            if self._timer_when <= deadline:
                return  # it fires first and re-arms for the later deadline
            self._timer.cancel()
        self._timer_when = deadline
        self._timer = self.loop.call_at(deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.on_timer()

    def on_timer(self) -> None:
        raise NotImplementedError

    # --- receiving: plain add_reader callback, a bounded batch per wake-up ----
    def _readable(self, all_waiting: bool = False) -> None:
        """*all_waiting*: go on past a lock-step ACK (see catch_up)."""
        sock, peer = self.sock, self.peer
        for _ in range(RECV_BATCH):
            try:
                data, addr = sock.recvfrom(65536 + 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if addr[1] != peer[1] or addr[0] != peer[0]:
                self.foreign(addr)
                continue
            if not (self.datagram(data) or all_waiting) or self.finished:
                return

    def catch_up(self) -> None:
        """Handle every datagram already waiting on the socket, now, without
        waiting: the service calls it before it takes a request that matches
        this transfer for a repeat (the ERROR or final ACK that ends this
        transfer may wait here, unread, while its client asks again)."""
        self._readable(all_waiting=True)

    def datagram(self, data: bytes) -> bool:
        """Handle one datagram from the peer; False: stop reading for now."""
        raise NotImplementedError

    def parse(self, data: bytes) -> Packet | None:
        """A packet from the peer, or None (logged) if it is malformed."""
        try:
            return parse_packet_untrusted(data)
        except BadPacket as exc:
            log.debug("%s: ignored malformed packet: %s", self.label, exc)
            return None

    # --- sending ------------------------------------------------------------
    def send(self, packet: bytes, to: tuple[str, int] | None = None) -> None:
        try:
            self.sock.sendto(packet, to or self.peer)
        except BlockingIOError:
            log.debug("%s: send buffer full, packet dropped (the timer resends)", self.label)
        except OSError as exc:
            self.fail(Outcome.FAILED, f"send failed: {exc.strerror}")

    def foreign(self, addr: tuple[str, int]) -> None:
        """A packet from another TID: tell it off, carry on (RFC 1350 section 4)."""
        if self.limiter.allow("packet from a foreign TID", time.monotonic(), logging.INFO):
            log.info("%s: packet from foreign TID %s answered with ERROR 5", self.label,
                     format_peer(addr))
        self.send(encode_error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID"), addr)

    def fail(self, outcome: Outcome, detail: str, code: int | None = None,
             message: str | None = None) -> None:
        """End the transfer; send ERROR *code* first if given, with *message*
        (default: *detail*, which only the log gets otherwise)."""
        if code is not None and not self.finished:
            self.send(encode_error(code, detail if message is None else message))
        self.finish(outcome, detail)

    def finish(self, outcome: Outcome, detail: str = "") -> None:
        if self.finished:
            return
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.detach()
        self.sock.close()
        self.release()
        stats = TransferStats(
            peer=self.peer, filename=self.name, served=self.served, direction=self.direction,
            mode=self.mode, options_asked=self.asked, options_granted=self.granted,
            bytes=self.byte_count(), packets=self.packets, retransmits=self.retransmits(),
            duration=time.monotonic() - self.started, outcome=outcome.value, error=detail)
        self.on_done(self, stats)
        if not self.done.done():
            self.done.set_result(None)

    def detach(self) -> None:
        """Stop reading the socket (before it is closed)."""
        self.loop.remove_reader(self.sock.fileno())

    def release(self) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        """Never started (the service closed while it was being set up):
        close what it holds, silently."""
        self.sock.close()
        self.release()

    def byte_count(self) -> int:
        raise NotImplementedError

    def retransmits(self) -> int:
        raise NotImplementedError


class ReadTransfer(Transfer):
    """Serves one RRQ."""

    def __init__(self, runtime: Runtime, sock: socket.socket, info: TransferInfo,
                 on_done: Done, session: ReadSession, source: ChunkSource,
                 pump: Pump | None = None) -> None:
        super().__init__(runtime, sock, info, on_done)
        self.session = session
        self.source = source
        self.store = BlockStore(session.blksize)
        self.chunk = chunk_size(session.blksize, session.windowsize)
        self.ahead = session.windowsize + self.chunk // session.blksize
        self.lockstep = session.windowsize == 1
        self._reading = False
        self._pending: tuple[int, int] | None = None  # window waiting for bytes
        self._segments = gso_segments(session.blksize, session.windowsize)
        self._gso = gso_cmsg(session.blksize)
        # Lock-step blocks that need no decision go out from compiled code
        # (pybootd.server.tftp_pump says why); windows stay here.
        self.pump = pump if self.lockstep else None
        self._attached = False

    def start(self) -> None:
        self.attach()
        self._fill()
        self._act(self.session.start(self.loop.time()))
        self._rearm()

    def attach(self) -> None:
        """Start reading the socket: through the pump, or a reader of its own."""
        if self.pump is not None:
            self.pump.add(self.sock.fileno(), self.peer, self)
        else:
            self.loop.add_reader(self.sock.fileno(), self._readable)
        self._attached = True

    def detach(self) -> None:
        if self.pump is not None:
            if self._attached:
                self.pump.remove(self.sock.fileno())
        else:
            super().detach()

    # --- through the pump ------------------------------------------------------
    def pumped(self, data: bytes, addr: tuple[str, int]) -> None:
        """A datagram the pump did not answer, in the order it came."""
        self._sync()
        if addr[1] != self.peer[1] or addr[0] != self.peer[0]:
            self.foreign(addr)
        elif not self.finished:
            self.datagram(data)
        self._rearm()

    def catch_up(self) -> None:
        self._sync()  # what the pump sent first: the session must know it
        super().catch_up()
        self._rearm()

    def _sync(self) -> None:
        """Take the state back from the pump and catch the session up."""
        if self._take_pumped():
            self.store.release_before(self.session.acked + 1)
            self._fill()

    def _take_pumped(self) -> bool:
        """Disarm the pump and count what it sent into the session (True: some)."""
        if self.pump is None or not self._attached or self.finished:
            return False
        sent, sent_at, packets = self.pump.take(self.sock.fileno())
        if not packets:
            return False
        self.packets += packets
        store = self.store
        eof = store.last_block is not None and sent >= store.last_block
        self.session.fast_forward(sent, sent_at, eof)
        return True

    def finish(self, outcome: Outcome, detail: str = "") -> None:
        self._take_pumped()  # the blocks the pump sent count in the stats (an abort, close)
        super().finish(outcome, detail)

    def _rearm(self) -> None:
        """Let the pump answer the ACK of the block last sent, and the next
        ones, from the stored segment that holds them."""
        session = self.session
        if (self.pump is None or not self._attached or self.finished or session.sending
                or session.awaiting_oack_ack or self._pending is not None
                or session.sent_through != session.acked + 1):
            return
        segment = self.store.segment(session.sent_through + 1)
        if segment is not None:
            self.pump.arm(self.sock.fileno(), session.sent_through, segment[1], segment[0],
                          self.store.blksize)

    def datagram(self, data: bytes) -> bool:
        if len(data) == 4 and data[1] == _ACK and data[0] == 0:
            self._act(self.session.on_ack((data[2] << 8) | data[3], self.loop.time()))
            # In lock-step the client sends nothing more before our DATA:
            # another recvfrom would only raise EAGAIN (the reader is
            # level-triggered, so a queued packet is read on the next turn).
            return not self.lockstep
        self._other(data)
        return True

    def _other(self, data: bytes) -> None:
        packet = self.parse(data)
        if isinstance(packet, Ack):
            self._act(self.session.on_ack(packet.block, self.loop.time()))
        elif isinstance(packet, Error):
            self._act(self.session.on_error(packet.code, packet.message))

    def _act(self, action: Action) -> None:
        if isinstance(action, SendWindow):
            self._send_window(action.first, action.first + action.count)
        elif isinstance(action, SendOack):
            self.send(encode_oack(action.options))
        elif isinstance(action, Finish):
            self.finish(action.outcome, action.detail)
            return
        self.arm(self.session.deadline)

    def _send_window(self, block: int, end: int) -> None:
        store, size = self.store, self.store.blksize
        sent, last = 0, False
        try:
            while block < end:
                batch = self._batch(block, end)
                if not batch:
                    self._pending = (block, end)
                    self._fill()
                    return
                self._transmit(block, batch)
                sent += len(batch)
                block += len(batch)
                if len(batch[-1]) < size:
                    last = True
                    break
        except BlockingIOError:
            # The send buffer is full: what is left goes when the client
            # asks again (its ACK inside the window) or on our timeout.
            end = block
        except OSError as exc:
            self.fail(Outcome.FAILED, f"send failed: {exc.strerror}")
            return
        finally:
            self.packets += sent
        self._pending = None
        if last:
            self.session.window_sent(block - 1, True, self.loop.time())
            return
        self.session.window_sent(end - 1, False, self.loop.time())
        store.release_before(self.session.acked + 1)
        self._fill()

    def _batch(self, block: int, end: int) -> list[memoryview | bytes]:
        """The payloads of the blocks from *block* that can go in one send:
        up to the window's end, the bytes read so far, the last block, and
        the segments one GSO send takes."""
        store, size = self.store, self.store.blksize
        batch: list[memoryview | bytes] = []
        for number in range(block, min(end, block + self._segments)):
            payload = store.block(number)
            if payload is None:
                break
            batch.append(payload)
            if len(payload) < size:
                break
        return batch

    def _transmit(self, first: int, payloads: list[memoryview | bytes]) -> None:
        """DATA blocks *first*.. as datagrams: one sendmsg each, or, several
        at once, one sendmsg whose buffers the kernel cuts into datagrams of
        4 + blksize bytes (UDP GSO, ``UDP_SEGMENT``, Linux 4.18).

        Why: with a window of 64 blocks of 1468 bytes the server's CPU per
        block, not the round trip, bounds a transfer, and one system call per
        block was most of that CPU (scripts/bench_tftp.py)."""
        sock, peer = self.sock, self.peer
        if len(payloads) > 1 and self._send_gso(first, payloads):
            return
        for number, payload in enumerate(payloads, first):
            sock.sendmsg((HEADER.pack(_DATA, number & 0xFFFF), payload), (), 0, peer)

    def _send_gso(self, first: int, payloads: list[memoryview | bytes]) -> bool:
        """One GSO send of the blocks; False if the route refuses it (a
        datagram larger than its MTU, no checksum offload): from then on this
        transfer sends one datagram per block. BlockingIOError: nothing was
        sent, the caller's window ends before *first*."""
        buffers: list[memoryview | bytes] = []
        for number, payload in enumerate(payloads, first):
            buffers += (HEADER.pack(_DATA, number & 0xFFFF), payload)
        try:
            self.sock.sendmsg(buffers, self._gso, 0, self.peer)
        except OSError as exc:
            if exc.errno not in _NO_GSO:  # BlockingIOError (EAGAIN) too: not a refusal
                raise
            log.debug("%s: UDP GSO refused (%s), sending block by block", self.label,
                      exc.strerror)
            self._segments = 1
            return False
        return True

    # --- reading from the source, ahead of the window -------------------------
    def _fill(self) -> None:
        store = self.store
        if self._reading or store.eof or self.finished:
            return
        if store.available_through >= self.session.acked + self.ahead:
            return
        self._reading = True
        self.loop.create_task(self._read_chunk())

    async def _read_chunk(self) -> None:
        try:
            chunk = await self.source.read(self.chunk)
        except TftpError as exc:
            self.fail(Outcome.FAILED, exc.detail, exc.code, exc.message)
            return
        except (PybootdError, OSError) as exc:  # a mirror or disk failing: its reason is ours
            self.fail(Outcome.FAILED, str(exc), ErrorCode.NOT_DEFINED, SOURCE_UNAVAILABLE)
            return
        except Exception as exc:  # a plugin's bug must end this transfer only
            log.exception("%s: reading %s failed", self.label, clip(self.served))
            self.fail(Outcome.FAILED, f"internal error: {exc}", ErrorCode.NOT_DEFINED,
                      INTERNAL_ERROR)
            return
        finally:
            self._reading = False
        if self.finished:
            return
        self._sync()
        self.feed(chunk)
        if self._pending is not None:
            self._send_window(*self._pending)
            self.arm(self.session.deadline)
        else:
            self._fill()
        self._rearm()

    def feed(self, chunk: bytes) -> None:
        """Store a chunk read from the source; the end is an empty chunk or
        the source's size reached."""
        size, store = self.source.size, self.store
        store.feed(chunk, eof=not chunk or (size is not None and store.fed + len(chunk) >= size))

    def on_timer(self) -> None:
        self._sync()
        self._act(self.session.on_timer(self.loop.time()))
        self._rearm()

    @property
    def established(self) -> bool:
        if (not self.session.established and self.pump is not None and self._attached
                and not self.finished):
            # The pump may have answered the first ACKs in C: ask it.
            self._sync()
            self._rearm()
        return self.session.established

    def release(self) -> None:
        self.source.close()

    def byte_count(self) -> int:
        if self.session.finished is not None and self.session.finished.succeeded:
            return self.store.fed
        return min(self.store.fed, self.session.acked * self.session.blksize)

    def retransmits(self) -> int:
        return self.session.retransmits


FLUSH_BYTES = 256 * 1024


class WriteTransfer(Transfer):
    """Receives one WRQ into an :class:`Upload`."""

    direction = "write"

    def __init__(self, runtime: Runtime, sock: socket.socket, info: TransferInfo,
                 on_done: Done, session: WriteSession, upload: Upload,
                 max_size: int) -> None:
        super().__init__(runtime, sock, info, on_done)
        self.session = session
        self.upload = upload
        self.max_size = max_size
        self.decoder = NetasciiDecoder() if self.mode == "netascii" else None
        self.received = 0
        self._queue: list[bytes] = []
        self._flushing: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self._act(self.session.start(self.loop.time()), b"")

    def datagram(self, data: bytes) -> bool:
        self._packet(data)
        return True

    def _packet(self, data: bytes) -> None:
        if self.session.committing:
            return  # every byte is in: nothing the client sends changes that now
        packet = self.parse(data)
        if isinstance(packet, Data):
            if len(packet.data) > self.session.blksize:
                self.fail(Outcome.FAILED, "DATA larger than the block size",
                          ErrorCode.ILLEGAL_OPERATION)
                return
            self.packets += 1
            action = self.session.on_data(packet.block, len(packet.data), self.loop.time())
            self._act(action, packet.data)
        elif isinstance(packet, Error):
            self._act(self.session.on_error(packet.code, packet.message), b"")

    def _act(self, action: Action, payload: bytes) -> None:
        if isinstance(action, Store):
            self._store(action, payload)
        elif isinstance(action, SendAck):
            self.send(encode_ack(action.block))
        elif isinstance(action, SendOack):
            self.send(encode_oack(action.options))
        elif isinstance(action, Finish):
            self.finish(action.outcome, action.detail)
            return
        self.arm(self.session.deadline)

    def _store(self, action: Store, payload: bytes) -> None:
        self.received += len(payload)
        if self.received > self.max_size:
            self.fail(Outcome.FAILED, f"upload exceeds {self.max_size} bytes", ErrorCode.DISK_FULL)
            return
        if self.decoder is not None:
            payload = self.decoder.feed(payload) + (self.decoder.flush() if action.last else b"")
        self._queue.append(payload)
        if action.last:
            self._flush(commit=True)
            return
        if sum(map(len, self._queue)) >= FLUSH_BYTES:
            self._flush()
        if action.ack is not None:
            self.send(encode_ack(action.ack))

    def _flush(self, commit: bool = False) -> None:
        """Queue a write (and the commit) after the ones before it: one file,
        written in order, by one pool thread at a time."""
        previous = self._flushing
        self._flushing = self.loop.create_task(self._write(previous, commit))

    async def _write(self, previous: asyncio.Task[None] | None, commit: bool) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        if self.finished:
            return  # ended meanwhile: the abort comes after this task
        chunk, self._queue = b"".join(self._queue), []
        try:
            if chunk:
                await self.runtime.blocking(DISK_TIMEOUT, self.upload.write, chunk)
            if commit and not self.finished:
                await self.runtime.blocking(DISK_TIMEOUT, self.upload.commit)
                if self.finished:  # the server stopped meanwhile
                    log.info("%s: %s was stored, but the transfer had ended", self.label,
                             self.served)
                    return
                # Only now may the last block be ACKed (RFC 1350 section 6).
                self._act(self.session.committed(self.loop.time()), b"")
        except TftpError as exc:
            self.fail(Outcome.FAILED, exc.detail, exc.code, exc.message)
        except (SourceError, OSError) as exc:  # the reason (a path, an OS error) is ours
            self.fail(Outcome.FAILED, str(exc), ErrorCode.NOT_DEFINED, "cannot store the file")

    def on_timer(self) -> None:
        self._act(self.session.on_timer(self.loop.time()), b"")

    def finish(self, outcome: Outcome, detail: str = "") -> None:
        if self.finished:
            return
        super().finish(outcome, detail)
        if not outcome.succeeded:
            _background(self.loop.create_task(self._abort(self._flushing)))

    async def _abort(self, flushing: asyncio.Task[None] | None) -> None:
        """Remove the temporary file once the queued writes have stopped."""
        if flushing is not None:
            await asyncio.wait([flushing])
        try:
            await self.runtime.blocking(DISK_TIMEOUT, self.upload.abort)
        except (SourceError, OSError) as exc:
            log.warning("%s: removing %s failed: %s", self.label, self.upload.temp, exc)

    def abort_now(self, wait: float) -> None:
        """At shutdown: fail, and remove the temporary file right away (the
        pool may never run the queued abort)."""
        self.fail(Outcome.FAILED, "server shutting down", ErrorCode.NOT_DEFINED)
        try:
            self.upload.abort(wait)
        except OSError as exc:
            log.warning("%s: removing %s failed: %s", self.label, self.upload.temp, exc)

    @property
    def established(self) -> bool:
        return self.session.established

    def discard(self) -> None:
        super().discard()
        try:
            self.upload.abort(0)
        except OSError as exc:
            log.warning("%s: removing %s failed: %s", self.label, self.upload.temp, exc)

    def release(self) -> None:
        pass

    def byte_count(self) -> int:
        return self.received

    def retransmits(self) -> int:
        return self.session.retransmits


_tasks: set[asyncio.Task[None]] = set()


def _background(task: asyncio.Task[None]) -> None:
    """Keep a reference to a task nobody awaits (asyncio holds it weakly)."""
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
