"""A TFTP read or write as a sans-IO connection that owns the wire.

Like aioquic's connection, :class:`ReadConnection` takes what arrived and
what time it is, and gives back the datagrams to send and when it next
needs to be woken; no caller frames DATA or recognises an ACK itself:

* :meth:`~ReadConnection.receive` (a datagram from the peer, ``now``),
  :meth:`~ReadConnection.handle_timer` (``now``);
* :meth:`~ReadConnection.datagrams_to_send` (``now``): each datagram a tuple
  of buffers to send as one (a 4-byte header and a memoryview of a stored
  block: no copy), :meth:`~ReadConnection.get_timer`;
* :meth:`~ReadConnection.feed` takes bytes read from the source, and
  :meth:`~ReadConnection.wants_bytes` says whether to read more.

The per-block fast path is a declarative contract: :meth:`fast_path` gives
the pairs "when these bytes arrive, send this datagram" that a pump may
answer without Python (the ACK of block *n* is answered with block *n+1*,
for every block already stored), and :meth:`resume` tells the connection
how many it answered, and when. The decisions (what a duplicate ACK means,
timeouts, the end of the file, rollover past block 65535) stay in
:class:`pybootd.tftp.session.ReadSession`, which this wraps.

States are a :class:`ReadState`; a call the state does not allow raises
:class:`pybootd.errors.ProtocolError` (a bug of the I/O layer, never a
client's doing: what a client sends is always accepted or ignored).

The I/O layer (:mod:`pybootd.server.tftp_transfer`) sends what it is given
and arms a pump (:mod:`pybootd.server.tftp_pump`) with :meth:`fast_path`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import cache

from pybootd.errors import BadPacket, ProtocolError
from pybootd.tftp.blocks import BlockStore
from pybootd.tftp.netascii import NetasciiDecoder
from pybootd.tftp.options import Negotiated
from pybootd.tftp.packets import (
    HEADER,
    MAX_BLOCK,
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    encode_ack,
    encode_error,
    encode_oack,
    parse_packet_untrusted,
)
from pybootd.tftp.session import (
    FIRST_ANSWER_WAIT,
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

Buffer = bytes | memoryview
Datagram = tuple[Buffer, ...]  # the buffers of one datagram, sent as one
_DATA, _ACK = int(Opcode.DATA), int(Opcode.ACK)


class ReadState(Enum):
    """Where a read stands (RFC 1350 section 6, RFC 2347, RFC 7440)."""

    OACK_SENT = "OACK sent, waiting for ACK 0"
    SENDING = "window ready to send"
    STARVED = "window waiting for bytes from the source"
    WAITING = "window sent, waiting for its ACK"
    DONE = "done"


@dataclass(frozen=True)
class FastPath:
    """What a pump may do alone, *count* steps: on the i-th of *count* equal
    slices of *expects* arriving from the peer, send the i-th of the equal
    slices of *heads* followed by ``body[i * stride:(i + 1) * stride]`` as
    one datagram (the last step's body may be shorter, or empty); anything
    else goes back to the connection. Buffers, not a Python object per step:
    building a tuple, a header and a slice per block cost ~0.5 us, a third
    of what the pump spends on a block."""

    count: int
    expects: Buffer
    heads: Buffer
    body: Buffer
    stride: int


@cache
def _headers(opcode: int) -> memoryview:
    """The 4-byte headers of *opcode* for wire blocks 0..65535, twice over, so
    that any run of up to 65536 consecutive blocks is one slice (rollover)."""
    one = b"".join(HEADER.pack(opcode, n) for n in range(MAX_BLOCK + 1))
    return memoryview(one + one)


class _Connection:
    """What both directions tell the service about themselves."""

    session: ReadSession | WriteSession

    @property
    def established(self) -> bool:
        """Has the client answered once (see ``session.FIRST_ANSWER_WAIT``)?"""
        return self.session.established

    @property
    def retransmits(self) -> int:
        return self.session.retransmits


class ReadConnection(_Connection):
    """The server side of one RRQ, from its first packet to its outcome."""

    session: ReadSession

    def __init__(self, negotiated: Negotiated, retries: int, now: float, *,
                 read_ahead: int = 0, first_answer_wait: float = FIRST_ANSWER_WAIT) -> None:
        """*read_ahead*: blocks to have stored beyond the window (how much the
        I/O layer reads at a time is its business)."""
        self.session = ReadSession(negotiated, retries, first_answer_wait)
        self.store = BlockStore(negotiated.blksize)
        self.blksize = negotiated.blksize
        self.windowsize = negotiated.windowsize
        self.lockstep = negotiated.windowsize == 1
        self.read_ahead = negotiated.windowsize + max(1, read_ahead)
        self.finished: Finish | None = None
        self.packets = 0  # DATA handed out to send, the pump's included
        self._out: list[Datagram] = []
        self._window: tuple[int, int] | None = None  # blocks [first, end) to send
        self._armed = False  # a FastPath is out; resume() before anything else
        self._armed_through = 0  # the last block the FastPath out may send
        self._act(self.session.start(now), now)

    # --- state ------------------------------------------------------------------
    @property
    def bytes_sent(self) -> int:
        """Payload bytes the client has acknowledged (all, once complete)."""
        if self.finished is not None and self.finished.outcome.succeeded:
            return self.store.fed
        return min(self.store.fed, self.session.acked * self.blksize)

    @property
    def state(self) -> ReadState:
        if self.finished is not None:
            return ReadState.DONE
        if self.session.awaiting_oack_ack:
            return ReadState.OACK_SENT
        if self._window is not None:
            first = self._window[0]
            return ReadState.SENDING if self.store.block(first) is not None \
                else ReadState.STARVED
        return ReadState.WAITING

    def _require_unarmed(self, call: str) -> None:
        if self._armed:
            raise ProtocolError(f"{call}() while a fast path is out: resume() first")

    # --- what arrives -----------------------------------------------------------
    def receive(self, data: bytes, now: float) -> None:
        """A datagram from the peer (its TID is the caller's check)."""
        self._require_unarmed("receive")
        if len(data) == 4 and data[1] == _ACK and data[0] == 0:  # the common case
            self._act(self.session.on_ack((data[2] << 8) | data[3], now), now)
            return
        try:
            packet = parse_packet_untrusted(data)
        except BadPacket:
            return  # RFC 1350 gives no answer to garbage; the timer recovers
        if isinstance(packet, Ack):
            self._act(self.session.on_ack(packet.block, now), now)
        elif isinstance(packet, Error):
            self._act(self.session.on_error(packet.code, packet.message), now)

    def handle_timer(self, now: float) -> None:
        self._require_unarmed("handle_timer")
        self._act(self.session.on_timer(now), now)

    def feed(self, chunk: bytes, eof: bool) -> None:
        """Bytes read from the source, in order; *eof* with the last ones."""
        if self.store.eof:
            raise ProtocolError("feed() after the end of the file")
        self.store.feed(chunk, eof)

    def abort(self, code: int, message: str, detail: str | None = None) -> None:
        """End with ERROR *code* *message* to the client (a source failing,
        shutdown); *detail* is the outcome's text for the log."""
        if self.finished is not None:
            return
        self._armed = False
        self._out = [(encode_error(code, message),)]
        self._window = None
        self.finished = Finish(Outcome.FAILED, detail if detail is not None else message)

    # --- what to do ---------------------------------------------------------------
    def wants_bytes(self) -> bool:
        """Should the I/O layer read the next chunk from the source? While the
        blocks stored do not reach *read_ahead* blocks past the ACKed one, or
        past the fast path's end while one is out: a pump that reaches the
        end of its segment must find the next one stored, not wait for a
        read (measured: 100 lock-step clients fell from 1.2x to 0.7x
        tftpd-hpa's aggregate when each segment ended in a stall)."""
        if self.finished is not None or self.store.eof:
            return False
        base = self._armed_through if self._armed else self.session.acked
        return self.store.available_through < base + self.read_ahead

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due (None: not before something arrives)."""
        if self.finished is not None or self._window is not None:
            return None
        return self.session.deadline

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """Everything to send now, in order (each a tuple of buffers)."""
        if self._window is not None:
            self._fill_window(now)
        out, self._out = self._out, []
        return out

    def _fill_window(self, now: float) -> None:
        assert self._window is not None
        block, end = self._window
        size, store = self.blksize, self.store
        while block < end:
            payload = store.block(block)
            if payload is None:  # STARVED: the rest once the source has given it
                self._window = (block, end)
                return
            self._out.append((HEADER.pack(_DATA, block & MAX_BLOCK), payload))
            self.packets += 1
            block += 1
            if len(payload) < size:
                self._window = None
                self.session.window_sent(block - 1, True, now)
                return
        self._window = None
        self.session.window_sent(end - 1, False, now)
        store.release_before(self.session.acked + 1)

    def _act(self, action: Action, now: float) -> None:
        if isinstance(action, SendWindow):
            self._window = (action.first, action.first + action.count)
            self._fill_window(now)
        elif isinstance(action, SendOack):
            self._out.append((encode_oack(action.options),))
        elif isinstance(action, Finish):
            self.finished = action
            self._window = None

    # --- the fast path --------------------------------------------------------------
    def fast_path(self, limit: int = 1024) -> FastPath | None:
        """Up to *limit* steps a pump may take alone, from the stored segment
        that holds the next block, or None when there are none (not
        lock-step, nothing sent yet, the next block not stored)."""
        session, store, size = self.session, self.store, self.blksize
        if (not self.lockstep or self._armed or self.state is not ReadState.WAITING
                or session.sent_through != session.acked + 1 or self._out):
            return None
        first = session.sent_through + 1  # the block that answers the ACK out
        found = store.segment(first)
        if found is None:
            # Only the empty final block is stored outside a segment.
            count = 1 if store.last_block == first else 0
            body: Buffer = b""
        else:
            start, data = found
            offset = (first - start) * size
            count = min(limit, -(-(len(data) - offset) // size))
            body = memoryview(data)[offset:offset + count * size]
            if (store.last_block == first + count and count < limit
                    and store.segment(first + count) is None):
                count += 1  # the empty final block: its step sends the header only
        if count == 0:
            return None
        self._armed, self._armed_through = True, first + count - 1
        wire = 4 * ((first - 1) & MAX_BLOCK)
        return FastPath(count, _headers(_ACK)[wire:wire + 4 * count],
                        _headers(_DATA)[wire + 4:wire + 4 + 4 * count], body, size)

    def resume(self, done: int, last_sent_at: float) -> None:
        """The pump answered the first *done* steps, the last at *last_sent_at*."""
        if not self._armed:
            raise ProtocolError("resume() without a fast path out")
        self._armed = False
        if done <= 0:
            return
        self.packets += done
        sent = self.session.sent_through + done
        last = self.store.last_block
        self.session.fast_forward(sent, last_sent_at, last is not None and sent >= last)
        self.store.release_before(self.session.acked + 1)


class WriteState(Enum):
    """Where an upload stands (RFC 1350 section 6, RFC 2347, RFC 7440)."""

    RECEIVING = "receiving DATA"
    COMMITTING = "last block in, the file being stored"
    DALLYING = "stored and acknowledged, answering a repeated last DATA"
    DONE = "done"


class WriteConnection(_Connection):
    """The server side of one WRQ: DATA in, ACKs out, bytes for the I/O layer
    to store. The last block is acknowledged only once the I/O layer says the
    file is stored (:meth:`committed`): an ACK of the last block tells the
    client its file is there (RFC 1350 section 6)."""

    session: WriteSession

    def __init__(self, negotiated: Negotiated, retries: int, now: float, *, max_size: int,
                 netascii: bool = False, first_answer_wait: float = FIRST_ANSWER_WAIT) -> None:
        self.session = WriteSession(negotiated, retries, first_answer_wait)
        self.blksize = negotiated.blksize
        self.max_size = max_size
        self.decoder = NetasciiDecoder() if netascii else None
        self.finished: Finish | None = None
        self.received = 0  # payload bytes, as the client sent them
        self.packets = 0  # DATA accepted
        self._out: list[Datagram] = []
        self._store: list[bytes] = []  # decoded payload waiting for the I/O layer
        self._commit = False  # the I/O layer stores, then calls committed()
        self._act(self.session.start(now), b"")

    @property
    def state(self) -> WriteState:
        if self.finished is not None:
            return WriteState.DONE
        if self.session.committing:
            return WriteState.COMMITTING
        return WriteState.DALLYING if self.session.complete else WriteState.RECEIVING

    def receive(self, data: bytes, now: float) -> None:
        """A datagram from the peer (its TID is the caller's check)."""
        if self.finished is not None or self.session.committing:
            return  # every byte is in: nothing the client sends changes that now
        try:
            packet = parse_packet_untrusted(data)
        except BadPacket:
            return
        if isinstance(packet, Data):
            if len(packet.data) > self.blksize:
                self.abort(ErrorCode.ILLEGAL_OPERATION, "DATA larger than the block size")
                return
            self._act(self.session.on_data(packet.block, len(packet.data), now), packet.data)
        elif isinstance(packet, Error):
            self._act(self.session.on_error(packet.code, packet.message), b"")

    def handle_timer(self, now: float) -> None:
        self._act(self.session.on_timer(now), b"")

    def to_store(self) -> tuple[bytes, bool]:
        """The bytes to append to the file, and whether to store (commit) it
        after them; then :meth:`committed`. Empties what was waiting."""
        chunk, self._store = b"".join(self._store), []
        commit, self._commit = self._commit, False
        return chunk, commit

    @property
    def pending(self) -> int:
        """Bytes waiting in :meth:`to_store` (the I/O layer writes in batches)."""
        return sum(map(len, self._store))

    def committed(self, now: float) -> None:
        """The file is in place: the last ACK goes out, then a dally."""
        if self.state is not WriteState.COMMITTING:
            raise ProtocolError(f"committed() while {self.state.value}")
        self._act(self.session.committed(now), b"")

    def abort(self, code: int, message: str, detail: str | None = None) -> None:
        """End with ERROR *code* *message*; *detail* is the outcome's text for the log."""
        if self.finished is not None:
            return
        self._out = [(encode_error(code, message),)]
        self._store, self._commit = [], False
        self.finished = Finish(Outcome.FAILED, detail if detail is not None else message)

    def get_timer(self) -> float | None:
        return None if self.finished is not None else self.session.deadline

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def _act(self, action: Action, payload: bytes) -> None:
        if isinstance(action, Store):
            self._stored(action, payload)
        elif isinstance(action, SendAck):
            self._out.append((encode_ack(action.block & MAX_BLOCK),))
        elif isinstance(action, SendOack):
            self._out.append((encode_oack(action.options),))
        elif isinstance(action, Finish):
            self.finished = action

    def _stored(self, action: Store, payload: bytes) -> None:
        self.packets += 1
        self.received += len(payload)
        if self.received > self.max_size:
            # RFC 1350 section 5: ERROR 3, disk full or allocation exceeded.
            self.abort(ErrorCode.DISK_FULL, f"upload exceeds {self.max_size} bytes")
            return
        if self.decoder is not None:
            payload = self.decoder.feed(payload) + (self.decoder.flush() if action.last else b"")
        self._store.append(payload)
        self._commit = action.last
        if action.ack is not None:
            self._out.append((encode_ack(action.ack & MAX_BLOCK),))
