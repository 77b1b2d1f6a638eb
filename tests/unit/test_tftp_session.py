"""Read and write sessions, driven on bytes-free events with an injected clock."""

from __future__ import annotations

from pybootd.tftp.options import Negotiated
from pybootd.tftp.session import (
    FIRST_ANSWER_WAIT,
    WAIT,
    Finish,
    Outcome,
    ReadSession,
    SendAck,
    SendOack,
    SendWindow,
    Store,
    WriteSession,
)


def read_session(windowsize: int = 1, oack: bool = False, retries: int = 3,
                 blksize: int = 512, first_answer_wait: float = FIRST_ANSWER_WAIT,
                 ) -> ReadSession:
    options = (("blksize", str(blksize)),) if oack else ()
    return ReadSession(Negotiated(blksize, windowsize, 1.0, None, options), retries,
                       first_answer_wait)


def send(session: ReadSession, action: object, last_block: int, now: float) -> tuple[int, int]:
    """Play the I/O layer: 'send' the window, report it. Returns (first, last)."""
    assert isinstance(action, SendWindow)
    last = min(action.first + action.count - 1, last_block)
    session.window_sent(last, last == last_block, now)
    return action.first, last


def test_lock_step_transfer() -> None:
    s = read_session()
    now = 0.0
    action = s.start(now)
    for block in range(1, 4):
        assert send(s, action, 3, now) == (block, block)
        action = s.on_ack(block, now)
    assert action == Finish(Outcome.COMPLETE)


def test_oack_then_ack0_then_data() -> None:
    s = read_session(oack=True)
    assert isinstance(s.start(0.0), SendOack)
    assert s.on_ack(1, 0.1) is WAIT  # only ACK 0 acknowledges an OACK
    action = s.on_ack(0, 0.1)
    assert isinstance(action, SendWindow) and action.first == 1


def test_lost_oack_is_resent_with_backoff_then_gives_up() -> None:
    s = read_session(oack=True, retries=2, first_answer_wait=100.0)
    s.start(0.0)
    assert s.on_timer(0.5) is WAIT  # not due yet
    assert s.on_timer(1.0) == SendOack(s.oack, retransmit=True)
    assert s.deadline == 3.0  # timeout doubled to 2 s
    assert isinstance(s.on_timer(3.0), SendOack)
    assert s.deadline == 7.0
    result = s.on_timer(7.0)
    assert isinstance(result, Finish) and result.outcome == Outcome.TIMED_OUT


# --- a client that never answers: FIRST_ANSWER_WAIT, not the whole retry budget ----------
def test_unanswered_oack_ends_after_the_first_answer_wait() -> None:
    """Retries 5 at 1 s would hold the slot 31 s; unanswered, it ends at 3 s."""
    assert FIRST_ANSWER_WAIT == 3.0
    s = read_session(oack=True, retries=5)
    assert isinstance(s.start(10.0), SendOack)
    assert s.on_timer(11.0) == SendOack(s.oack, retransmit=True)
    assert s.deadline == 13.0  # the retransmission's would be 14.0
    assert s.on_timer(12.9) is WAIT
    result = s.on_timer(13.0)
    assert result == Finish(Outcome.TIMED_OUT, "no answer to the first packet in 3s")
    assert not s.established


def test_unanswered_first_data_ends_after_the_first_answer_wait() -> None:
    s = read_session(retries=5)
    send(s, s.start(0.0), 100, 0.0)
    assert s.deadline == 1.0
    send(s, s.on_timer(1.0), 100, 1.0)
    assert s.deadline == 3.0
    result = s.on_timer(3.0)
    assert isinstance(result, Finish) and result.outcome == Outcome.TIMED_OUT


def test_answered_session_keeps_its_whole_retry_budget() -> None:
    """Once the client answered, lost packets later get every retry."""
    s = read_session(oack=True, retries=5)
    s.start(0.0)
    send(s, s.on_ack(0, 0.5), 100, 0.5)  # ACK of the OACK: established
    assert s.established and s.deadline == 1.5
    now = 1.5
    for _ in range(5):  # 1.5 + 2 + 4 + 8 + 8 + 8: far beyond 3 s
        action = s.on_timer(now)
        assert isinstance(action, SendWindow) and action.retransmit
        send(s, action, 100, now)
        assert s.deadline is not None
        now = s.deadline
    assert now > 20
    result = s.on_timer(now)
    assert isinstance(result, Finish) and result.detail == "no ACK after block 0"


def test_ack_of_data_1_establishes_a_session_without_oack() -> None:
    s = read_session(windowsize=4)
    send(s, s.start(0.0), 100, 0.0)
    assert not s.established
    send(s, s.on_ack(4, 0.1), 100, 0.1)
    assert s.established and s.deadline == 1.1


def test_lockstep_blocks_sent_by_the_pump_establish_the_session() -> None:
    s = read_session()
    send(s, s.start(0.0), 100, 0.0)
    s.fast_forward(5, 2.5, eof=False)  # ACKs 1..4 were answered in C
    assert s.established and s.on_timer(3.0) is WAIT and s.deadline == 3.5


def test_budget_smaller_than_the_first_answer_wait_ends_as_before() -> None:
    s = read_session(oack=True, retries=0)
    s.start(0.0)
    assert s.deadline == 1.0
    result = s.on_timer(1.0)
    assert isinstance(result, Finish) and result.detail == "no ACK after block 0"


def test_upload_without_data_1_ends_after_the_first_answer_wait() -> None:
    s = write_session(retries=5)
    assert s.start(0.0) == SendAck(0)
    assert s.on_timer(1.0) == SendAck(0, retransmit=True)
    assert s.deadline == 3.0
    result = s.on_timer(3.0)
    assert result == Finish(Outcome.TIMED_OUT, "no DATA 1 in 3s")
    s = write_session(retries=5)
    s.start(0.0)
    assert isinstance(s.on_data(1, 512, 0.5), Store) and s.established
    assert s.deadline == 1.5


def test_client_error_after_oack_is_an_abort_not_a_failure() -> None:
    # UEFI firmware probes tsize, reads the OACK, then sends ERROR 8.
    s = read_session(oack=True)
    s.start(0.0)
    result = s.on_error(8, "User aborted the transfer")
    assert isinstance(result, Finish) and result.outcome == Outcome.ABORTED
    assert not result.outcome.succeeded


def test_lost_data_is_resent_on_timeout() -> None:
    s = read_session()
    send(s, s.start(0.0), 5, 0.0)
    retry = s.on_timer(1.0)
    assert retry == SendWindow(1, 1, retransmit=True)
    send(s, retry, 5, 1.0)
    assert s.retransmits == 1


def test_duplicate_ack_never_resends() -> None:
    # Sorcerer's Apprentice (RFC 1123 4.2.3.1): a delayed duplicate ACK must
    # not trigger a second copy of the next block.
    s = read_session()
    send(s, s.start(0.0), 9, 0.0)
    send(s, s.on_ack(1, 0.1), 9, 0.1)
    assert s.on_ack(1, 0.2) is WAIT
    assert s.on_ack(1, 0.3) is WAIT
    assert isinstance(s.on_ack(2, 0.4), SendWindow)


def test_lost_ack_recovered_by_timeout() -> None:
    s = read_session()
    send(s, s.start(0.0), 3, 0.0)
    # The ACK of block 1 is lost: resend block 1 after the timeout.
    assert s.on_timer(1.0) == SendWindow(1, 1, retransmit=True)


def test_rollover_past_65535() -> None:
    s = read_session()
    total = 70000
    action = s.start(0.0)
    for block in range(1, total + 1):
        first, _ = send(s, action, total, 0.0)
        assert first == block
        action = s.on_ack(block & 0xFFFF, 0.0)
    assert action == Finish(Outcome.COMPLETE)


def test_window_sent_whole_then_next_window() -> None:
    s = read_session(windowsize=4)
    assert send(s, s.start(0.0), 10, 0.0) == (1, 4)
    assert send(s, s.on_ack(4, 0.1), 10, 0.1) == (5, 8)
    assert send(s, s.on_ack(8, 0.2), 10, 0.2) == (9, 10)
    assert s.on_ack(10, 0.3) == Finish(Outcome.COMPLETE)


def test_ack_inside_window_restarts_after_it() -> None:
    s = read_session(windowsize=4)
    send(s, s.start(0.0), 20, 0.0)
    action = s.on_ack(2, 0.1)  # blocks 3 and 4 were lost
    assert action == SendWindow(3, 4, retransmit=True)
    assert send(s, action, 20, 0.1) == (3, 6)
    assert s.on_ack(2, 0.2) is WAIT  # a stale duplicate does nothing


def test_timeout_in_window_restarts_after_last_acked() -> None:
    s = read_session(windowsize=8)
    send(s, s.start(0.0), 30, 0.0)
    send(s, s.on_ack(8, 0.1), 30, 0.1)  # window 9..16 sent, nothing comes back
    assert s.on_timer(1.1) == SendWindow(9, 8, retransmit=True)


def test_window_rollover() -> None:
    s = read_session(windowsize=16)
    total = 65536 + 40
    action = s.start(0.0)
    while isinstance(action, SendWindow):
        _, last = send(s, action, total, 0.0)
        action = s.on_ack(last & 0xFFFF, 0.0)
    assert action == Finish(Outcome.COMPLETE)


def test_missing_final_ack_ends_complete_after_retries() -> None:
    s = read_session(retries=1)
    send(s, s.start(0.0), 1, 0.0)
    send(s, s.on_timer(1.0), 1, 1.0)
    result = s.on_timer(3.0)
    assert isinstance(result, Finish) and result.outcome == Outcome.COMPLETE_UNCONFIRMED
    assert result.outcome.succeeded


def test_stale_ack_beyond_window_ignored() -> None:
    s = read_session(windowsize=2)
    send(s, s.start(0.0), 10, 0.0)
    assert s.on_ack(7, 0.1) is WAIT


def test_acks_ignored_while_a_window_waits_for_data() -> None:
    s = read_session()
    s.start(0.0)  # window requested, not sent yet (source slow)
    assert s.on_ack(0, 0.1) is WAIT
    assert s.on_timer(5.0) is WAIT  # no retransmit while nothing was sent


# --- write ------------------------------------------------------------------------

def write_session(windowsize: int = 1, oack: bool = False, retries: int = 3) -> WriteSession:
    options = (("blksize", "512"),) if oack else ()
    return WriteSession(Negotiated(512, windowsize, 1.0, None, options), retries)


def test_write_lock_step() -> None:
    s = write_session()
    assert s.start(0.0) == SendAck(0)
    assert s.on_data(1, 512, 0.1) == Store(1, 1, False)
    # The last block: stored first, ACKed only once committed.
    assert s.on_data(2, 100, 0.2) == Store(2, None, True)
    assert s.committed(0.3) == SendAck(2)
    # Dally: a repeated last DATA (our ACK was lost) gets ACKed again.
    assert s.on_data(2, 100, 0.4) == SendAck(2, retransmit=True)
    assert s.on_timer(1.2) is WAIT  # one timeout after the commit, not after the DATA
    result = s.on_timer(1.3)
    assert isinstance(result, Finish) and result.outcome == Outcome.COMPLETE


def test_write_committing_sends_nothing_until_committed() -> None:
    # A slow fsync: no timer runs out and no repeated final DATA is ACKed
    # while the file is not yet stored (the ACK says it is, RFC 1350 section 6).
    s = write_session(retries=1)
    s.start(0.0)
    s.on_data(1, 512, 0.1)
    assert s.on_data(2, 7, 0.2) == Store(2, None, True)
    assert s.committing and s.deadline is None
    for now in (1.2, 5.0, 60.0):
        assert s.on_data(2, 7, now) is WAIT
        assert s.on_data(1, 512, now) is WAIT
        assert s.on_timer(now) is WAIT
    assert s.on_error(0, "bored") is WAIT  # every byte arrived: the commit decides
    assert s.finished is None
    assert s.committed(61.0) == SendAck(2)
    assert s.deadline == 62.0
    assert s.committed(61.5) is WAIT  # only once
    result = s.on_timer(62.0)
    assert isinstance(result, Finish) and result.outcome == Outcome.COMPLETE


def test_write_empty_file_is_committed_before_its_ack() -> None:
    s = write_session(windowsize=4)
    s.start(0.0)
    assert s.on_data(1, 0, 0.1) == Store(1, None, True)
    assert s.on_timer(10.0) is WAIT
    assert s.committed(10.0) == SendAck(1)


def test_write_window_last_block_waits_for_the_commit() -> None:
    s = write_session(windowsize=4)
    s.start(0.0)
    assert [s.on_data(b, 512, 0.0) for b in (1, 2)] == [Store(1, None, False),
                                                        Store(2, None, False)]
    assert s.on_data(3, 10, 0.0) == Store(3, None, True)
    assert s.on_data(3, 10, 0.1) is WAIT
    assert s.on_data(4, 10, 0.1) is WAIT  # nothing after the last block either
    assert s.committed(0.2) == SendAck(3)
    assert s.on_data(4, 10, 0.3) is WAIT  # past the end: no gap ACK
    assert s.on_error(0, "done") == Finish(Outcome.COMPLETE)


def test_write_duplicate_data_reacked_not_stored() -> None:
    s = write_session()
    s.start(0.0)
    s.on_data(1, 512, 0.1)
    assert s.on_data(1, 512, 0.2) == SendAck(1, retransmit=True)


def test_write_oack_then_data() -> None:
    s = write_session(oack=True)
    assert isinstance(s.start(0.0), SendOack)
    assert s.on_timer(1.0) == SendOack(s.oack, retransmit=True)
    assert s.on_data(1, 0, 1.5) == Store(1, None, True)


def test_write_timeout_resends_ack_then_gives_up() -> None:
    s = write_session(retries=1)
    s.start(0.0)
    s.on_data(1, 512, 0.1)
    assert s.on_timer(1.1) == SendAck(1, retransmit=True)
    result = s.on_timer(3.1)
    assert isinstance(result, Finish) and result.outcome == Outcome.TIMED_OUT


def test_write_window_acks_every_window_and_on_gap() -> None:
    s = write_session(windowsize=4)
    s.start(0.0)
    assert [s.on_data(b, 512, 0.0) for b in (1, 2, 3)] == [
        Store(1, None, False), Store(2, None, False), Store(3, None, False)]
    assert s.on_data(4, 512, 0.0) == Store(4, 4, False)
    assert s.on_data(6, 512, 0.0) == SendAck(4, retransmit=True)  # block 5 lost
    assert s.on_data(7, 512, 0.0) is WAIT  # one ACK per gap
    assert s.on_data(5, 512, 0.0) == Store(5, None, False)


def test_write_rollover() -> None:
    s = write_session()
    s.start(0.0)
    for block in range(1, 65540):
        action = s.on_data(block & 0xFFFF, 512, 0.0)
        assert isinstance(action, Store) and action.block == block


def test_fast_forward_catches_up_with_blocks_sent_elsewhere() -> None:
    """A pump answered ACKs 1..4 with blocks 2..5; the session
    learns it before it acts, as if it had seen each ACK."""
    s = read_session(retries=2)
    send(s, s.start(0.0), 9, 0.0)
    s.on_timer(1.0)  # a retransmission spent some budget
    send(s, SendWindow(1, 1, retransmit=True), 9, 1.0)
    s.fast_forward(5, 1.5, eof=False)
    assert (s.acked, s.sent_through, s.deadline) == (4, 5, 2.5)  # budget reset: 1 s
    assert s.on_ack(4, 1.6) is WAIT  # a duplicate now
    assert s.on_ack(5, 1.7) == SendWindow(6, 1)
    s.fast_forward(3, 2.0, eof=False)  # nothing new: ignored
    assert (s.acked, s.sending) == (5, True)


def test_fast_forward_to_the_last_block_then_the_final_ack_completes() -> None:
    s = read_session()
    send(s, s.start(0.0), 3, 0.0)
    s.fast_forward(3, 0.2, eof=True)
    assert s.last_block == 3
    assert s.on_ack(3, 0.3) == Finish(Outcome.COMPLETE)


def test_fast_forward_is_for_lock_step_only() -> None:
    s = read_session(windowsize=4)
    send(s, s.start(0.0), 9, 0.0)
    s.fast_forward(6, 0.1, eof=False)
    assert (s.acked, s.sent_through) == (0, 4)
