"""Transfer state machines, sans-IO.

A session is told what arrived and what time it is, and answers with an
action for the I/O layer. Blocks are numbered absolutely (1, 2, ... past
65535); only the wire carries them modulo 65536 (the rollover).

The I/O layer keeps one timer per transfer, set to ``session.deadline``; a
timer that fires early (the deadline moved on) is simply set again. That
keeps timer churn off the per-block path.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pybootd.tftp.options import Negotiated
from pybootd.tftp.packets import MAX_BLOCK

MAX_BACKOFF = 8.0  # seconds; the retransmit timeout doubles up to this
# Seconds a session waits for the client's first answer (the ACK of the
# OACK or of DATA 1; DATA 1 of an upload) before it ends, whatever its retry
# budget (31 s by default): RRQs that are never answered (a flood, spoofed
# sources) must not hold a session slot for long. A real client answers in
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
class Wait:
    """Nothing to send now."""


@dataclass(frozen=True)
class SendOack:
    options: tuple[tuple[str, str], ...]
    retransmit: bool = False


@dataclass(frozen=True)
class SendWindow:
    """Send DATA blocks ``first .. first+count-1`` (fewer at end of file),
    then call :meth:`ReadSession.window_sent`."""

    first: int
    count: int
    retransmit: bool = False


@dataclass(frozen=True)
class SendAck:
    block: int
    retransmit: bool = False


@dataclass(frozen=True)
class Store:
    """Write the DATA payload just received; then send ACK *ack* if set.

    With *last*, the I/O layer puts the file in place and then calls
    :meth:`WriteSession.committed`, which gives the final ACK."""

    block: int
    ack: int | None
    last: bool


@dataclass(frozen=True)
class Finish:
    outcome: Outcome
    detail: str = ""


Action = Wait | SendOack | SendWindow | SendAck | Store | Finish
WAIT = Wait()


class _Retry:
    """Retransmit budget with a doubling timeout (RFC 1350 section 2 leaves
    the policy to the implementation; doubling avoids congesting a slow link)."""

    def __init__(self, timeout: float, retries: int) -> None:
        self.base = timeout
        self.cap = max(MAX_BACKOFF, timeout)
        self.retries = retries
        self.timeout = timeout
        self.left = retries
        self.used = 0

    def reset(self) -> None:
        self.timeout = self.base
        self.left = self.retries

    def spend(self) -> bool:
        """One retransmission; False when the budget is gone."""
        if self.left <= 0:
            return False
        self.left -= 1
        self.used += 1
        self.timeout = min(self.timeout * 2, self.cap)
        return True


class ReadSession:
    """The server side of an RRQ: sends DATA, reads ACKs (RFC 1350, RFC 7440)."""

    def __init__(self, negotiated: Negotiated, retries: int,
                 first_answer_wait: float = FIRST_ANSWER_WAIT) -> None:
        self.blksize = negotiated.blksize
        self.windowsize = negotiated.windowsize
        self.oack = negotiated.oack
        self.retry = _Retry(negotiated.timeout, retries)
        self.acked = 0  # highest block acknowledged
        self.sent_through = 0  # highest block sent in the current window
        self.last_block: int | None = None  # known once the short block is read
        self.deadline: float | None = None
        self.awaiting_oack_ack = False
        self.sending = False  # a SendWindow is out and window_sent() not yet called
        self.finished: Outcome | None = None
        self.first_answer_wait = first_answer_wait
        self.first_answer_by = 0.0  # set by start()
        self.established = False  # the client answered once (see FIRST_ANSWER_WAIT)

    @property
    def retransmits(self) -> int:
        return self.retry.used

    def start(self, now: float) -> Action:
        self.first_answer_by = now + self.first_answer_wait
        if self.oack:
            self.awaiting_oack_ack = True
            self._wait_answer(now)
            return SendOack(self.oack)
        return self._next_window()

    def _wait_answer(self, now: float) -> None:
        """The next deadline: the retransmission's, or sooner, the first answer's."""
        self.deadline = now + self.retry.timeout
        if not self.established:
            self.deadline = min(self.deadline, self.first_answer_by)

    def _next_window(self, retransmit: bool = False) -> SendWindow:
        count = self.windowsize
        if self.last_block is not None:
            count = min(count, self.last_block - self.acked)
        self.sending = True
        self.deadline = None
        return SendWindow(self.acked + 1, count, retransmit)

    def window_sent(self, last: int, eof: bool, now: float) -> None:
        """The I/O layer sent blocks through *last*; *eof* if *last* was short."""
        self.sent_through = last
        if eof:
            self.last_block = last
        self.sending = False
        self._wait_answer(now)

    def fast_forward(self, sent: int, sent_at: float, eof: bool) -> None:
        """Blocks through *sent* went out in lock-step, each answering the
        ACK of the one before, the last at *sent_at* (*eof*: it was the
        short, final block), without this session being told
        (a pump did it, see connection.FastPath): catch up, as if on_ack and window_sent
        had been called for each."""
        if (self.windowsize != 1 or self.finished is not None or self.sending
                or self.awaiting_oack_ack or sent <= self.sent_through):
            return
        self.acked = sent - 1
        self.sent_through = sent
        if eof:
            self.last_block = sent
        self.established = self.established or self.acked > 0
        self.retry.reset()
        self.deadline = sent_at + self.retry.timeout

    def _absolute(self, block: int) -> int | None:
        """The sent block that wire number *block* stands for, if any."""
        delta = (block - self.acked) & MAX_BLOCK
        candidate = self.acked + delta
        return candidate if candidate <= self.sent_through else None

    def on_ack(self, block: int, now: float) -> Action:
        if self.finished is not None or self.sending:
            return WAIT
        if self.awaiting_oack_ack:
            if block != 0:
                return WAIT
            self.awaiting_oack_ack = False
            self.established = True
            self.retry.reset()
            return self._next_window()
        acked = self._absolute(block)
        if acked is None or acked == self.acked:
            # A stale or duplicate ACK: never resend on it, or every
            # duplicate doubles the traffic (Sorcerer's Apprentice,
            # RFC 1123 section 4.2.3.1). The timer recovers real loss.
            return WAIT
        self.acked = acked
        self.established = True
        self.retry.reset()
        if self.last_block is not None and acked >= self.last_block:
            return self._finish(Outcome.COMPLETE)
        # An ACK inside the window means the client lost what followed:
        # restart the window after it (RFC 7440 section 4).
        return self._next_window(retransmit=acked < self.sent_through)

    def on_error(self, code: int, message: str) -> Action:
        if self.finished is not None:
            return WAIT
        return self._finish(Outcome.ABORTED, f"client sent ERROR {code}: {message}")

    def on_timer(self, now: float) -> Action:
        if self.finished is not None or self.deadline is None or now < self.deadline:
            return WAIT
        if not self.established and now >= self.first_answer_by and self.retry.left > 0:
            # (When the retry budget ends as soon, the budget's ending stands.)
            return self._finish(Outcome.TIMED_OUT,
                                f"no answer to the first packet in {self.first_answer_wait:g}s")
        if not self.retry.spend():
            if self.last_block is not None and self.sent_through >= self.last_block:
                # The client most likely has it all and its last ACK was lost
                # (RFC 1350 section 6 accepts this ending).
                return self._finish(Outcome.COMPLETE_UNCONFIRMED)
            return self._finish(Outcome.TIMED_OUT, f"no ACK after block {self.acked}")
        if self.awaiting_oack_ack:
            self._wait_answer(now)
            return SendOack(self.oack, retransmit=True)
        return self._next_window(retransmit=True)

    def _finish(self, outcome: Outcome, detail: str = "") -> Finish:
        self.finished = outcome
        self.deadline = None
        return Finish(outcome, detail)


class WriteSession:
    """The server side of a WRQ: reads DATA, sends ACKs.

    After the final (short) DATA block the session is *committing*: the I/O
    layer stores the file while nothing is sent, not even to a repeated
    DATA, since an ACK of the last block tells the client the file is stored
    (RFC 1350 section 6). :meth:`committed` then sends that ACK and the
    session dallies one timeout to answer a repeated final DATA.
    """

    def __init__(self, negotiated: Negotiated, retries: int,
                 first_answer_wait: float = FIRST_ANSWER_WAIT) -> None:
        self.blksize = negotiated.blksize
        self.windowsize = negotiated.windowsize
        self.oack = negotiated.oack
        self.retry = _Retry(negotiated.timeout, retries)
        self.received = 0  # highest block received in order
        self.committing = False  # the short block arrived; the file is being stored
        self.complete = False  # the file is stored; dallying for duplicates
        self.deadline: float | None = None
        self.finished: Outcome | None = None
        self._gap_acked = -1
        self.first_answer_wait = first_answer_wait
        self.first_answer_by = 0.0  # set by start()

    @property
    def established(self) -> bool:
        """Has DATA 1 come (see FIRST_ANSWER_WAIT)?"""
        return self.received > 0

    @property
    def retransmits(self) -> int:
        return self.retry.used

    def start(self, now: float) -> Action:
        self.first_answer_by = now + self.first_answer_wait
        self.deadline = min(now + self.retry.timeout, self.first_answer_by)
        if self.oack:
            return SendOack(self.oack)
        return SendAck(0)

    def on_data(self, block: int, size: int, now: float) -> Action:
        if self.finished is not None or self.committing:
            return WAIT
        if block == self.received & MAX_BLOCK and self.received > 0:
            # Our ACK was lost and the sender repeated itself: ACK again.
            return SendAck(self.received, retransmit=True)
        if self.complete or block != (self.received + 1) & MAX_BLOCK:
            return self._gap(now)
        self.received += 1
        self.retry.reset()
        if size < self.blksize:
            # No timer while the file is stored: the I/O layer bounds that
            # work and calls committed() or ends the transfer.
            self.committing = True
            self.deadline = None
            return Store(self.received, None, True)
        self.deadline = now + self.retry.timeout
        ack_now = self.received % self.windowsize == 0
        return Store(self.received, self.received if ack_now else None, False)

    def committed(self, now: float) -> Action:
        """The file is in place: ACK the last block, then dally one timeout
        to re-ACK a repeated final DATA (RFC 1350 section 6)."""
        if self.finished is not None or not self.committing:
            return WAIT
        self.committing = False
        self.complete = True
        self.deadline = now + self.retry.timeout
        return SendAck(self.received)

    def _gap(self, now: float) -> Action:
        """An out-of-order block: ACK what we have, once per gap (RFC 7440 section 4)."""
        if self.complete or self._gap_acked == self.received:
            return WAIT
        self._gap_acked = self.received
        self.deadline = now + self.retry.timeout
        return SendAck(self.received, retransmit=True)

    def on_error(self, code: int, message: str) -> Action:
        if self.finished is not None or self.committing:
            # Every byte arrived: the commit, not the client, decides now.
            return WAIT
        if self.complete:
            return self._finish(Outcome.COMPLETE)
        return self._finish(Outcome.ABORTED, f"client sent ERROR {code}: {message}")

    def on_timer(self, now: float) -> Action:
        if self.finished is not None or self.deadline is None or now < self.deadline:
            return WAIT
        if self.complete:
            return self._finish(Outcome.COMPLETE)
        if self.received == 0 and now >= self.first_answer_by and self.retry.left > 0:
            return self._finish(Outcome.TIMED_OUT,
                                f"no DATA 1 in {self.first_answer_wait:g}s")
        if not self.retry.spend():
            return self._finish(Outcome.TIMED_OUT, f"no DATA after block {self.received}")
        self.deadline = now + self.retry.timeout
        if self.received == 0:
            self.deadline = min(self.deadline, self.first_answer_by)
        if self.received == 0 and self.oack:
            return SendOack(self.oack, retransmit=True)
        return SendAck(self.received, retransmit=True)

    def _finish(self, outcome: Outcome, detail: str = "") -> Finish:
        self.finished = outcome
        self.deadline = None
        return Finish(outcome, detail)
