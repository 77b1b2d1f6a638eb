"""A TFTP read or write as a sans-IO connection that owns the wire.

Like aioquic's connection, a connection takes what arrived and what time it
is, and gives back the datagrams to send and when it next needs to be woken;
no caller frames DATA or recognises an ACK itself:

* :meth:`~ReadConnection.receive` (a datagram from the peer, ``now``),
  :meth:`~ReadConnection.handle_timer` (``now``);
* :meth:`~ReadConnection.datagrams_to_send` (``now``): each datagram a tuple
  of buffers to send as one (a 4-byte header and a memoryview of a stored
  block: no copy), :meth:`~ReadConnection.get_timer`;
* :meth:`~ReadConnection.feed` takes bytes read from the source, and
  :meth:`~ReadConnection.wants_bytes` says whether to read more.

Blocks are numbered absolutely (1, 2, ... past 65535); only the wire carries
them modulo 65536 (the rollover). The I/O layer keeps one timer per transfer,
set to :meth:`get_timer`; a timer that fires early (the deadline moved on) is
simply set again, which keeps timer churn off the per-block path.

The per-block fast path is a declarative contract: :meth:`fast_path` gives
the pairs "when these bytes arrive, send this datagram" that a pump may
answer without Python (the ACK of block *n* is answered with block *n+1*,
for every block already stored), and :meth:`resume` tells the connection
how many it answered, and when. The decisions (what a duplicate ACK means,
timeouts, the end of the file) stay here.

States are a :class:`ReadState` or a :class:`WriteState`; a call the state
does not allow raises :class:`pybootd.errors.ProtocolError` (a bug of the
I/O layer, never a client's doing: what a client sends is always accepted
or ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from functools import cache

from pybootd.errors import BadPacket, ProtocolError
from pybootd.tftp.blocks import BlockStore
from pybootd.tftp.netascii import NetasciiDecoder
from pybootd.tftp.options import Negotiated
from pybootd.tftp.packets import (
    HEADER,
    MAX_BLOCK,
    Data,
    Error,
    ErrorCode,
    Opcode,
    data_header,
    encode_ack,
    encode_error,
    encode_oack,
    parse_packet_untrusted,
)

Buffer = bytes | memoryview
Datagram = tuple[Buffer, ...]  # the buffers of one datagram, sent as one
_DATA, _ACK, _ERROR = int(Opcode.DATA), int(Opcode.ACK), int(Opcode.ERROR)
MAX_BACKOFF = 8.0  # seconds; the retransmit timeout doubles up to this
# Seconds a connection waits for the client's first answer (the ACK of the
# OACK or of DATA 1; DATA 1 of an upload) before it ends, whatever its retry
# budget (31 s by default): RRQs that are never answered (a flood, spoofed
# sources) must not hold a transfer slot for long. A real client answers in
# milliseconds and asks again when its request was lost.
FIRST_ANSWER_WAIT = 3.0


class Outcome(StrEnum):
    """How a transfer ended (``TransferStats.outcome``, the log's words)."""

    COMPLETE = "complete"
    COMPLETE_UNCONFIRMED = "complete (final ACK not received)"
    ABORTED = "aborted by client"
    TIMED_OUT = "timed out"
    FAILED = "failed"
    REFUSED = "refused"  # an ERROR instead of a transfer (never started)

    @property
    def succeeded(self) -> bool:
        return self in (Outcome.COMPLETE, Outcome.COMPLETE_UNCONFIRMED)


@dataclass(frozen=True)
class Finish:
    outcome: Outcome
    detail: str = ""


class ReadState(Enum):
    """Where a read stands (RFC 1350 section 6, RFC 2347, RFC 7440)."""

    OACK_SENT = "OACK sent, waiting for ACK 0"
    SENDING = "window ready to send"
    STARVED = "window waiting for bytes from the source"
    WAITING = "window sent, waiting for its ACK"
    PUMPING = "a fast path is out: resume() first"
    DONE = "done"


class WriteState(Enum):
    """Where an upload stands (RFC 1350 section 6, RFC 2347, RFC 7440)."""

    RECEIVING = "receiving DATA"
    COMMITTING = "last block in, the file being stored"
    DALLYING = "stored and acknowledged, answering a repeated last DATA"
    DONE = "done"


@dataclass(frozen=True)
class FastPath:
    """What a pump may do alone, *count* steps: on the i-th of *count* equal
    slices of *expects* from the peer, send the i-th slice of *heads* and
    ``body[i * stride:(i + 1) * stride]`` as one datagram (the last may be
    shorter, or empty); the rest goes back. Buffers, not an object per step:
    a tuple, a header and a slice per block cost ~0.5 us, a third of the pump's."""

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
    """The retransmit budget, the deadline and the outbox of either direction.
    The timeout doubles up to MAX_BACKOFF on each retransmission (RFC 1350
    section 2 leaves the policy open; doubling spares a slow link), reset by an answer."""

    def __init__(self, negotiated: Negotiated, retries: int, first_answer_wait: float) -> None:
        self.blksize = negotiated.blksize
        self.windowsize = negotiated.windowsize
        self.finished: Finish | None = None
        self.packets = 0  # DATA sent (a read, the pump's included) or accepted (a write)
        self.retransmits = 0
        self._oack = negotiated.oack
        self._base_timeout = self._timeout = negotiated.timeout
        self._retries = self._left = retries
        self._first_answer_wait = first_answer_wait
        self._first_answer_by: float | None = None  # set when the first packet goes out
        self._deadline: float | None = None
        self._out: list[Datagram] = []

    def _answered(self) -> None:
        self._timeout, self._left = self._base_timeout, self._retries

    def _spend_retry(self) -> bool:
        """One retransmission; False when the budget is gone."""
        if self._left <= 0:
            return False
        self._left -= 1
        self.retransmits += 1
        self._timeout = min(self._timeout * 2, max(MAX_BACKOFF, self._base_timeout))
        return True

    def _first_answer_late(self, now: float) -> bool:
        """The first answer's wait is over (when the retry budget ends as
        soon, the budget's ending stands)."""
        by = self._first_answer_by
        return by is not None and now >= by and self._left > 0

    def _wait(self, now: float, established: bool) -> None:
        """The next deadline: the retransmission's, or sooner, the first answer's."""
        self._deadline = now + self._timeout
        if not established:
            # Counted from the first packet sent, not from the request: a
            # slow source must not eat the client's time to answer.
            if self._first_answer_by is None:
                self._first_answer_by = now + self._first_answer_wait
            self._deadline = min(self._deadline, self._first_answer_by)

    def _end(self, outcome: Outcome, detail: str = "") -> None:
        self.finished = Finish(outcome, detail)
        self._deadline = None

    def _send(self, datagram: bytes) -> None:
        self._out.append((datagram,))

    def abort(self, code: int, message: str, detail: str | None = None) -> None:
        """End with ERROR *code* *message* to the client (a source failing,
        shutdown); *detail* is the outcome's text for the log."""
        if self.finished is None:
            self._out = [(encode_error(code, message),)]
            self._end(Outcome.FAILED, detail if detail is not None else message)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due (None: not before something arrives)."""
        return self._deadline

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """Everything to send now, in order (each a tuple of buffers)."""
        out, self._out = self._out, []
        return out


class ReadConnection(_Connection):
    """The server side of one RRQ: DATA out, ACKs in (RFC 1350, RFC 7440)."""

    def __init__(self, negotiated: Negotiated, retries: int, now: float, *,
                 read_ahead: int = 0, first_answer_wait: float = FIRST_ANSWER_WAIT) -> None:
        """*read_ahead*: blocks to keep stored beyond the window."""
        super().__init__(negotiated, retries, first_answer_wait)
        self.store = BlockStore(negotiated.blksize)
        self.lockstep = negotiated.windowsize == 1
        self.read_ahead = negotiated.windowsize + max(1, read_ahead)
        self.established = False  # the client answered once (see FIRST_ANSWER_WAIT)
        self._acked = 0  # highest block acknowledged
        self._sent_through = 0  # highest block sent
        self._window = (1, 1)  # blocks [next, end) to send while SENDING
        self._armed_through = 0  # the last block the fast path out may send
        self._state = ReadState.OACK_SENT
        if self._oack:
            self._send(encode_oack(self._oack))
            self._wait(now, False)
        else:
            self._send_window(now)

    @property
    def state(self) -> ReadState:
        if self.finished is not None:
            return ReadState.DONE
        if self._state is ReadState.SENDING and self.store.block(self._window[0]) is None:
            return ReadState.STARVED
        return self._state

    @property
    def transferred(self) -> int:
        """Payload bytes the client has acknowledged (all, once complete)."""
        if self.finished is not None and self.finished.outcome.succeeded:
            return self.store.fed
        return min(self.store.fed, self._acked * self.blksize)

    def _require_unarmed(self, call: str) -> None:
        if self.state is ReadState.PUMPING:
            raise ProtocolError(f"{call}() while a fast path is out: resume() first")

    # --- what arrives -----------------------------------------------------------
    def receive(self, data: bytes, now: float) -> None:
        """A datagram from the peer (its TID is the caller's check)."""
        self._require_unarmed("receive")
        if len(data) < 4 or data[0] != 0:
            return  # RFC 1350 gives no answer to garbage; the timer recovers
        if data[1] == _ACK:
            self._on_ack((data[2] << 8) | data[3], now)
        elif data[1] == _ERROR and self.finished is None:
            try:
                packet = parse_packet_untrusted(data)
            except BadPacket:
                return
            assert isinstance(packet, Error)
            self._end(Outcome.ABORTED, f"client sent ERROR {packet.code}: {packet.message}")

    def _on_ack(self, block: int, now: float) -> None:
        if self.state is ReadState.OACK_SENT:
            if block == 0:  # only ACK 0 acknowledges an OACK (RFC 2347)
                self.established = True
                self._answered()
                self._send_window(now)
            return
        if self.state is not ReadState.WAITING:
            return  # done, or a window not sent yet: nothing to acknowledge
        # The sent block that wire number *block* stands for, if any.
        acked = self._acked + ((block - self._acked) & MAX_BLOCK)
        if acked > self._sent_through or acked == self._acked:
            # A stale or duplicate ACK: never resend on it, or every
            # duplicate doubles the traffic (Sorcerer's Apprentice,
            # RFC 1123 section 4.2.3.1). The timer recovers real loss.
            return
        self._acked = acked
        self.established = True
        self._answered()
        last = self.store.last_block
        if last is not None and acked >= last:
            self._end(Outcome.COMPLETE)
        else:
            # An ACK inside the window means the client lost what followed:
            # restart the window after it (RFC 7440 section 4).
            self._send_window(now)

    def handle_timer(self, now: float) -> None:
        self._require_unarmed("handle_timer")
        if self._deadline is None or now < self._deadline:
            return
        if not self.established and self._first_answer_late(now):
            self._end(Outcome.TIMED_OUT,
                      f"no answer to the first packet in {self._first_answer_wait:g}s")
        elif not self._spend_retry():
            last = self.store.last_block
            if last is not None and self._sent_through >= last:
                # The client most likely has it all and its last ACK was lost
                # (RFC 1350 section 6 accepts this ending).
                self._end(Outcome.COMPLETE_UNCONFIRMED)
            else:
                self._end(Outcome.TIMED_OUT, f"no ACK after block {self._acked}")
        elif self._state is ReadState.OACK_SENT:
            self._send(encode_oack(self._oack))
            self._wait(now, False)
        else:
            self._send_window(now)

    def feed(self, chunk: bytes, eof: bool) -> None:
        """Bytes read from the source, in order; *eof* with the last ones."""
        if self.store.last_block is not None:
            raise ProtocolError("feed() after the end of the file")
        self.store.feed(chunk, eof)

    # --- what to do ---------------------------------------------------------------
    def wants_bytes(self) -> bool:
        """Should the I/O layer read the next chunk from the source? While the
        blocks stored do not reach *read_ahead* blocks past the ACKed one, or
        past the fast path's end while one is out: a pump that reaches the
        end of its segment must find the next one stored, not wait for a
        read (measured: 100 lock-step clients fell from 1.2x to 0.7x
        tftpd-hpa's aggregate when each segment ended in a stall)."""
        if self.finished is not None or self.store.last_block is not None:
            return False
        base = self._armed_through if self._state is ReadState.PUMPING else self._acked
        return self.store.available_through < base + self.read_ahead

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        if self.finished is None and self._state is ReadState.SENDING:
            self._fill_window(now)
        return super().datagrams_to_send(now)

    def _send_window(self, now: float) -> None:
        """The window after the last ACKed block: sent as far as it is stored,
        the rest (STARVED) once the source has given it; no timer meanwhile."""
        self._window = (self._acked + 1, self._acked + 1 + self.windowsize)
        self._state = ReadState.SENDING
        self._deadline = None
        self._fill_window(now)

    def _fill_window(self, now: float) -> None:
        block, end = self._window
        size, store = self.blksize, self.store
        while block < end:
            payload = store.block(block)
            if payload is None:
                self._window = (block, end)
                return
            self._out.append((data_header(block), payload))
            self.packets += 1
            block += 1
            if len(payload) < size:
                break  # the short, final block (RFC 1350 section 6)
        self._sent_through = block - 1
        self._state = ReadState.WAITING
        self._wait(now, self.established)
        store.release_before(self._acked + 1)

    # --- the fast path --------------------------------------------------------------
    def fast_path(self, limit: int = 1024) -> FastPath | None:
        """Up to *limit* steps a pump may take alone, from the stored segment
        that holds the next block, or None when there are none (not
        lock-step, nothing sent yet, the next block not stored)."""
        store, size = self.store, self.blksize
        if (not self.lockstep or self.state is not ReadState.WAITING
                or self._sent_through != self._acked + 1 or self._out):
            return None
        first = self._sent_through + 1  # the block that answers the ACK out
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
        self._state, self._armed_through = ReadState.PUMPING, first + count - 1
        wire = 4 * ((first - 1) & MAX_BLOCK)
        return FastPath(count, _headers(_ACK)[wire:wire + 4 * count],
                        _headers(_DATA)[wire + 4:wire + 4 + 4 * count], body, size)

    def resume(self, done: int, last_sent_at: float) -> None:
        """The pump answered the first *done* steps, the last at *last_sent_at*:
        catch up as if each ACK had been received and answered here."""
        if self._state is not ReadState.PUMPING:
            raise ProtocolError("resume() without a fast path out")
        self._state = ReadState.WAITING
        if done <= 0 or self.finished is not None:
            return
        self.packets += done
        self._sent_through += done
        self._acked = self._sent_through - 1
        self.established = True
        self._answered()
        self._deadline = last_sent_at + self._timeout
        self.store.release_before(self._acked + 1)


class WriteConnection(_Connection):
    """The server side of one WRQ: DATA in, ACKs out, bytes for the I/O layer
    to store. The last block is acknowledged only once the I/O layer says the
    file is stored (:meth:`committed`), as that ACK tells the client its file
    is there (RFC 1350 section 6); meanwhile nothing is sent. Then it dallies
    one timeout to answer a repeated final DATA."""

    def __init__(self, negotiated: Negotiated, retries: int, now: float, *, max_size: int,
                 netascii: bool = False, first_answer_wait: float = FIRST_ANSWER_WAIT) -> None:
        super().__init__(negotiated, retries, first_answer_wait)
        self.max_size = max_size
        self.decoder = NetasciiDecoder() if netascii else None
        self.transferred = 0  # payload bytes received, as the client sent them
        self._block = 0  # highest block received in order
        self._gap_acked = -1
        self._state = WriteState.RECEIVING
        self._store: list[bytes] = []  # decoded payload waiting for the I/O layer
        self._commit = False  # the I/O layer stores, then calls committed()
        self._send(encode_oack(self._oack) if self._oack else encode_ack(0))
        self._wait(now, False)

    @property
    def established(self) -> bool:
        """Has DATA 1 come (see FIRST_ANSWER_WAIT)?"""
        return self._block > 0

    @property
    def state(self) -> WriteState:
        return WriteState.DONE if self.finished is not None else self._state

    def receive(self, data: bytes, now: float) -> None:
        """A datagram from the peer (its TID is the caller's check)."""
        if self.state not in (WriteState.RECEIVING, WriteState.DALLYING):
            return  # every byte is in: nothing the client sends changes that now
        try:
            packet = parse_packet_untrusted(data)
        except BadPacket:
            return
        if isinstance(packet, Data):
            if len(packet.data) > self.blksize:
                self.abort(ErrorCode.ILLEGAL_OPERATION, "DATA larger than the block size")
            else:
                self._on_data(packet.block, packet.data, now)
        elif isinstance(packet, Error):
            if self._state is WriteState.DALLYING:
                self._end(Outcome.COMPLETE)
            else:
                self._end(Outcome.ABORTED, f"client sent ERROR {packet.code}: {packet.message}")

    def _on_data(self, block: int, payload: bytes, now: float) -> None:
        if block == self._block & MAX_BLOCK and self._block > 0:
            # Our ACK was lost and the sender repeated itself: ACK again.
            self._send(encode_ack(block))
        elif self._state is WriteState.DALLYING or block != (self._block + 1) & MAX_BLOCK:
            # Out of order: ACK what we have, once per gap (RFC 7440 section 4).
            if self._state is WriteState.RECEIVING and self._gap_acked != self._block:
                self._gap_acked = self._block
                self._deadline = now + self._timeout
                self._send(encode_ack(self._block & MAX_BLOCK))
        else:
            self._block += 1
            self._answered()
            last = len(payload) < self.blksize
            # No timer while the file is stored: the I/O layer bounds that
            # work and calls committed() or ends the transfer.
            self._deadline = None if last else now + self._timeout
            self._stored(payload, last)

    def _stored(self, payload: bytes, last: bool) -> None:
        self.packets += 1
        self.transferred += len(payload)
        if self.transferred > self.max_size:
            # RFC 1350 section 5: ERROR 3, disk full or allocation exceeded.
            self.abort(ErrorCode.DISK_FULL, f"upload exceeds {self.max_size} bytes")
            return
        if self.decoder is not None:
            payload = self.decoder.feed(payload) + (self.decoder.flush() if last else b"")
        self._store.append(payload)
        if last:
            self._state, self._commit = WriteState.COMMITTING, True
        elif self._block % self.windowsize == 0:
            self._send(encode_ack(self._block & MAX_BLOCK))

    def handle_timer(self, now: float) -> None:
        if self.finished is not None or self._deadline is None or now < self._deadline:
            return
        if self._state is WriteState.DALLYING:
            self._end(Outcome.COMPLETE)
        elif self._block == 0 and self._first_answer_late(now):
            self._end(Outcome.TIMED_OUT, f"no DATA 1 in {self._first_answer_wait:g}s")
        elif not self._spend_retry():
            self._end(Outcome.TIMED_OUT, f"no DATA after block {self._block}")
        else:
            self._wait(now, self.established)
            first = self._block == 0 and self._oack
            self._send(encode_oack(self._oack) if first else encode_ack(self._block & MAX_BLOCK))

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
        """The file is in place: ACK the last block, then dally one timeout to
        re-ACK a repeated final DATA (RFC 1350 section 6)."""
        if self.state is not WriteState.COMMITTING:
            raise ProtocolError(f"committed() while {self.state.value}")
        self._state = WriteState.DALLYING
        self._deadline = now + self._timeout
        self._send(encode_ack(self._block & MAX_BLOCK))

    def abort(self, code: int, message: str, detail: str | None = None) -> None:
        self._store, self._commit = [], False
        super().abort(code, message, detail)
