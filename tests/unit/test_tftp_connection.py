"""The read connection on bytes, with an injected clock: what a client would
receive for what it sends, and the fast-path contract a pump relies on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pybootd.errors import ProtocolError
from pybootd.tftp.connection import (
    FIRST_ANSWER_WAIT,
    Datagram,
    FastPath,
    Finish,
    Outcome,
    ReadConnection,
    ReadState,
    WriteConnection,
    WriteState,
)
from pybootd.tftp.options import Negotiated
from pybootd.tftp.packets import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Oack,
    encode_ack,
    encode_data,
    encode_error,
    parse_packet_untrusted,
)

T0 = 1000.0


def wire(datagrams: list[Datagram]) -> list[bytes]:
    """What the client receives: each datagram's buffers joined."""
    return [b"".join(bytes(part) for part in datagram) for datagram in datagrams]


def packets(conn: ReadConnection | WriteConnection, now: float = T0) -> list[object]:
    return [parse_packet_untrusted(raw) for raw in wire(conn.datagrams_to_send(now))]


def reader(data: bytes, *, blksize: int = 8, windowsize: int = 1,
           oack: tuple[tuple[str, str], ...] = (), retries: int = 3) -> ReadConnection:
    conn = ReadConnection(Negotiated(blksize, windowsize, 1.0, None, oack), retries, T0)
    conn.feed(data, eof=True)
    return conn


def test_lockstep_read_from_first_block_to_final_ack() -> None:
    conn = reader(b"0123456789abcdef-end")  # 8 + 8 + 4 bytes
    assert packets(conn) == [Data(1, b"01234567")]
    conn.receive(encode_ack(1), T0 + 0.01)
    assert packets(conn) == [Data(2, b"89abcdef")]
    conn.receive(encode_ack(2), T0 + 0.02)
    assert packets(conn) == [Data(3, b"-end")]
    assert conn.state is ReadState.WAITING
    conn.receive(encode_ack(3), T0 + 0.03)
    assert conn.finished is not None and conn.finished.outcome is Outcome.COMPLETE
    assert conn.state.name == "DONE" and conn.datagrams_to_send(T0) == []


def test_a_multiple_of_blksize_ends_with_an_empty_block() -> None:
    """RFC 1350 section 6: the last DATA is shorter than blksize, so 0 bytes here."""
    conn = reader(b"01234567")
    assert packets(conn) == [Data(1, b"01234567")]
    conn.receive(encode_ack(1), T0)
    assert packets(conn) == [Data(2, b"")]


def test_options_start_with_an_oack_and_wait_for_ack_0() -> None:
    conn = reader(b"hello", oack=(("blksize", "8"),))
    assert packets(conn) == [Oack((("blksize", "8"),))]
    assert conn.state is ReadState.OACK_SENT and not conn.established
    conn.receive(encode_ack(0), T0 + 0.1)
    assert packets(conn) == [Data(1, b"hello")] and conn.established


def test_a_window_goes_out_at_once_and_an_ack_inside_it_restarts_after() -> None:
    """RFC 7440 section 4."""
    conn = reader(bytes(range(8)) * 6, windowsize=4)
    assert [p.block for p in packets(conn)] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    conn.receive(encode_ack(2), T0 + 0.1)  # 3 and 4 were lost
    assert [p.block for p in packets(conn)] == [3, 4, 5, 6]  # type: ignore[attr-defined]


def test_a_duplicate_ack_sends_nothing() -> None:
    """Sorcerer's Apprentice (RFC 1123 section 4.2.3.1): no resend on a duplicate."""
    conn = reader(b"x" * 20)
    packets(conn)
    conn.receive(encode_ack(1), T0)
    assert len(packets(conn)) == 1
    conn.receive(encode_ack(1), T0 + 0.1)
    assert packets(conn) == []


def test_the_timer_resends_with_backoff_then_gives_up() -> None:
    conn = reader(b"x" * 20, retries=2)
    packets(conn)
    conn.receive(encode_ack(1), T0)  # established: the whole retry budget
    first = packets(conn)
    due = conn.get_timer()
    assert due == pytest.approx(T0 + 1.0)
    conn.handle_timer(due)  # type: ignore[arg-type]
    assert packets(conn, due) == first  # type: ignore[arg-type]
    assert conn.get_timer() == pytest.approx(T0 + 1.0 + 2.0) and conn.retransmits == 1
    conn.handle_timer(T0 + 3.0)
    packets(conn)
    conn.handle_timer(T0 + 3.0 + 4.0)
    assert conn.finished is not None and conn.finished.outcome is Outcome.TIMED_OUT


def test_a_client_error_ends_it_as_aborted() -> None:
    conn = reader(b"x" * 20, oack=(("tsize", "20"),))
    packets(conn)
    conn.receive(encode_error(ErrorCode.OPTION_REFUSED, "User aborted the transfer"), T0)
    assert conn.finished is not None and conn.finished.outcome is Outcome.ABORTED
    assert conn.datagrams_to_send(T0) == []


def test_garbage_from_the_peer_is_ignored() -> None:
    conn = reader(b"x" * 20)
    packets(conn)
    for junk in (b"", b"\x00", b"\x00\x09junk", b"\x00\x04\x00", b"\xff" * 600):
        conn.receive(junk, T0)
    assert packets(conn) == [] and conn.state is ReadState.WAITING


def test_block_numbers_roll_over_past_65535() -> None:
    data = b"z" * (8 * 65540)  # 65540 blocks of 8 bytes, then an empty one
    conn = ReadConnection(Negotiated(8, 1, 1.0, None, ()), 3, T0)
    conn.feed(data, eof=True)
    wire_numbers = []
    while conn.finished is None:
        for raw in wire(conn.datagrams_to_send(T0)):
            packet = parse_packet_untrusted(raw)
            assert isinstance(packet, Data)
            wire_numbers.append(packet.block)
            conn.receive(encode_ack(packet.block), T0)
    assert len(wire_numbers) == len(data) // 8 + 1  # and the empty last block
    assert wire_numbers[65534:65537] == [65535, 0, 1]
    assert conn.finished.outcome is Outcome.COMPLETE


def test_starved_until_the_source_gives_more() -> None:
    conn = ReadConnection(Negotiated(8, 2, 1.0, None, ()), 3, T0, read_ahead=4)
    assert conn.state is ReadState.STARVED and conn.wants_bytes()
    assert conn.get_timer() is None and conn.datagrams_to_send(T0) == []
    conn.feed(b"01234567", eof=False)
    assert packets(conn) == [Data(1, b"01234567")] and conn.state is ReadState.STARVED
    conn.feed(b"89", eof=True)
    assert packets(conn) == [Data(2, b"89")] and not conn.wants_bytes()


def test_abort_tells_the_client_and_ends() -> None:
    conn = reader(b"x" * 20)
    packets(conn)
    conn.abort(ErrorCode.NOT_DEFINED, "server shutting down", "shutdown")
    assert packets(conn) == [Error(0, "server shutting down")]
    assert conn.finished is not None and conn.finished.detail == "shutdown"


# --- the fast path: what a pump may do alone, and how the connection catches up -----

def steps(path: FastPath) -> list[tuple[bytes, bytes]]:
    """The contract spelled out: (the 4 bytes expected, the datagram sent) per step."""
    size = len(path.expects) // path.count
    assert len(path.heads) == len(path.expects)
    assert (path.count - 1) * path.stride <= len(path.body) <= path.count * path.stride
    return [(bytes(path.expects[i * size:(i + 1) * size]),
             bytes(path.heads[i * size:(i + 1) * size])
             + bytes(path.body[i * path.stride:(i + 1) * path.stride]))
            for i in range(path.count)]


def run_pump(conn: ReadConnection, acks: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """A pump that follows the contract: (what it sent, what it handed back)."""
    path = conn.fast_path()
    assert path is not None
    pairs = steps(path)
    sent: list[bytes] = []
    back: list[bytes] = []
    step = 0
    for ack in acks:
        if back or step >= len(pairs) or ack != pairs[step][0]:
            back.append(ack)
            continue
        sent.append(pairs[step][1])
        step += 1
    conn.resume(step, T0 + 0.5)
    return sent, back


def test_fast_path_answers_each_ack_with_the_next_block() -> None:
    conn = reader(b"".join(bytes([i]) * 8 for i in range(5)) + b"end")
    assert packets(conn) == [Data(1, bytes([0]) * 8)]
    sent, back = run_pump(conn, [encode_ack(1), encode_ack(2), encode_ack(3)])
    assert [parse_packet_untrusted(raw) for raw in sent] == [
        Data(2, bytes([1]) * 8), Data(3, bytes([2]) * 8), Data(4, bytes([3]) * 8)]
    assert back == [] and conn.packets == 4
    assert conn.get_timer() == pytest.approx(T0 + 0.5 + 1.0)  # from the pump's last send
    conn.receive(encode_ack(4), T0 + 0.6)
    assert packets(conn) == [Data(5, bytes([4]) * 8)]


def test_fast_path_stops_at_the_last_block_and_hands_its_ack_back() -> None:
    conn = reader(b"x" * 8 + b"end")
    packets(conn)
    sent, back = run_pump(conn, [encode_ack(1), encode_ack(2)])
    assert [parse_packet_untrusted(raw) for raw in sent] == [Data(2, b"end")]
    assert back == [encode_ack(2)]
    conn.receive(back[0], T0 + 0.6)
    assert conn.finished is not None and conn.finished.outcome is Outcome.COMPLETE


def test_fast_path_ends_at_its_segment_when_the_short_block_is_in_the_next() -> None:
    """Found by the HTTP-root tests: a cached file read in two chunks (whole
    blocks, then the short last one) must not end with an empty block."""
    conn = ReadConnection(Negotiated(8, 1, 1.0, None, ()), 3, T0)
    conn.feed(b"a" * 16, eof=False)
    conn.feed(b"tail", eof=True)
    packets(conn)
    sent, back = run_pump(conn, [encode_ack(1), encode_ack(2)])
    assert [parse_packet_untrusted(raw) for raw in sent] == [Data(2, b"a" * 8)]
    assert back == [encode_ack(2)]
    conn.receive(back[0], T0 + 0.6)
    assert packets(conn) == [Data(3, b"tail")]


def test_fast_path_hands_back_what_it_does_not_expect() -> None:
    conn = reader(b"x" * 40)
    packets(conn)
    sent, back = run_pump(conn, [encode_ack(1), encode_ack(1), encode_ack(2)])
    assert len(sent) == 1 and back == [encode_ack(1), encode_ack(2)]
    for raw in back:  # in order: the duplicate is ignored, ACK 2 answered
        conn.receive(raw, T0 + 0.6)
    assert packets(conn) == [Data(3, b"x" * 8)]


def test_fast_path_is_offered_only_in_lockstep_with_a_block_out() -> None:
    assert reader(b"x" * 40, windowsize=4).fast_path() is None
    oack = reader(b"x" * 40, oack=(("blksize", "8"),))
    packets(oack)
    assert oack.fast_path() is None  # the OACK's ACK 0 is not a DATA's
    starved = ReadConnection(Negotiated(8, 1, 1.0, None, ()), 3, T0)
    starved.feed(b"x" * 8, eof=False)
    packets(starved)
    assert starved.fast_path() is None  # block 2 is not read yet


def test_fast_path_steps_roll_over_too() -> None:
    conn = reader(b"y" * (8 * 65537))
    while True:
        (raw,) = wire(conn.datagrams_to_send(T0))
        block = (raw[2] << 8) | raw[3]
        if block == 65534:
            break
        conn.receive(encode_ack(block), T0)
    path = conn.fast_path(limit=3)
    assert path is not None
    assert [(ack, datagram[:4]) for ack, datagram in steps(path)] == [
        (encode_ack(65534), b"\x00\x03\xff\xff"), (encode_ack(65535), b"\x00\x03\x00\x00"),
        (encode_ack(0), b"\x00\x03\x00\x01")]


def test_calls_the_state_does_not_allow_raise() -> None:
    conn = reader(b"x" * 40)
    packets(conn)
    with pytest.raises(ProtocolError):
        conn.resume(1, T0)  # no fast path out
    assert conn.fast_path() is not None
    with pytest.raises(ProtocolError):
        conn.receive(encode_ack(1), T0)  # the pump holds the state
    with pytest.raises(ProtocolError):
        conn.handle_timer(T0 + 5)
    conn.resume(0, 0.0)
    with pytest.raises(ProtocolError):
        conn.feed(b"more", eof=True)  # the file already ended


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=20))
def test_whatever_the_peer_sends_never_raises(datagrams: list[bytes]) -> None:
    """Bytes from the network are accepted or ignored, never an exception."""
    conn = reader(b"x" * 100, windowsize=2)
    now = T0
    for data in datagrams:
        conn.receive(data, now)
        conn.datagrams_to_send(now)
        now += 0.3
        due = conn.get_timer()
        if due is not None and due <= now:
            conn.handle_timer(now)


# --- uploads ---------------------------------------------------------------------

def writer(*, blksize: int = 8, windowsize: int = 1, max_size: int = 1000,
           oack: tuple[tuple[str, str], ...] = (), netascii: bool = False) -> WriteConnection:
    return WriteConnection(Negotiated(blksize, windowsize, 1.0, None, oack), 3, T0,
                           max_size=max_size, netascii=netascii)


def test_an_upload_is_acked_block_by_block_and_last_only_once_stored() -> None:
    conn = writer()
    assert packets(conn) == [Ack(0)]
    conn.receive(encode_data(1, b"01234567"), T0)
    assert packets(conn) == [Ack(1)] and conn.to_store() == (b"01234567", False)
    conn.receive(encode_data(2, b"end"), T0)
    assert packets(conn) == [] and conn.state is WriteState.COMMITTING
    conn.receive(encode_data(2, b"end"), T0 + 0.5)  # repeated while storing: no ACK yet
    assert packets(conn) == [] and conn.to_store() == (b"end", True)
    conn.committed(T0 + 0.6)
    assert packets(conn) == [Ack(2)] and conn.state.name == "DALLYING"
    conn.receive(encode_data(2, b"end"), T0 + 0.7)  # our ACK was lost: again
    assert packets(conn) == [Ack(2)]
    conn.handle_timer(T0 + 2.0)
    assert conn.finished is not None and conn.finished.outcome is Outcome.COMPLETE


def test_an_upload_over_the_limit_is_error_3() -> None:
    conn = writer(max_size=10)
    packets(conn)
    conn.receive(encode_data(1, b"01234567"), T0)
    conn.receive(encode_data(2, b"01234567"), T0)
    assert packets(conn)[-1] == Error(ErrorCode.DISK_FULL, "upload exceeds 10 bytes")
    assert conn.finished is not None and conn.to_store() == (b"", False)


def test_a_data_larger_than_blksize_is_error_4() -> None:
    conn = writer()
    packets(conn)
    conn.receive(encode_data(1, b"x" * 9), T0)
    assert packets(conn) == [Error(ErrorCode.ILLEGAL_OPERATION, "DATA larger than the block size")]


def test_netascii_uploads_are_decoded_across_blocks() -> None:
    conn = writer(netascii=True)
    packets(conn)
    conn.receive(encode_data(1, b"line one"), T0)
    conn.receive(encode_data(2, b"\r\nnext\r"), T0)  # a CR ending the last block stays
    assert conn.to_store() == (b"line one\nnext\r", True)


def test_committed_only_while_committing() -> None:
    conn = writer()
    with pytest.raises(ProtocolError):
        conn.committed(T0)


# --- timers: retransmission, back-off, the first answer's wait (bytes in, bytes out) ----

def blocks(conn: ReadConnection, now: float = T0) -> list[int]:
    """The DATA block numbers sent now."""
    sent = packets(conn, now)
    assert all(isinstance(p, Data) for p in sent)
    return [p.block for p in sent]  # type: ignore[attr-defined]


def test_only_ack_0_acknowledges_an_oack() -> None:
    conn = reader(b"hello", oack=(("blksize", "8"),))
    packets(conn)
    conn.receive(encode_ack(1), T0 + 0.1)
    assert packets(conn) == [] and conn.state is ReadState.OACK_SENT


def test_a_lost_oack_is_resent_with_backoff_then_given_up() -> None:
    oack = (("blksize", "8"),)
    conn = ReadConnection(Negotiated(8, 1, 1.0, None, oack), 2, T0, first_answer_wait=100)
    packets(conn)
    conn.handle_timer(T0 + 0.5)  # not due yet
    assert packets(conn) == []
    conn.handle_timer(T0 + 1.0)
    assert packets(conn) == [Oack(oack)] and conn.get_timer() == T0 + 3.0  # doubled: 2 s
    conn.handle_timer(T0 + 3.0)
    assert packets(conn) == [Oack(oack)] and conn.get_timer() == T0 + 7.0
    conn.handle_timer(T0 + 7.0)
    assert conn.finished == Finish(Outcome.TIMED_OUT, "no ACK after block 0")


def test_an_unanswered_oack_ends_after_the_first_answer_wait() -> None:
    """Retries 5 at 1 s would hold the slot 31 s; unanswered, it ends at 3 s."""
    assert FIRST_ANSWER_WAIT == 3.0
    conn = reader(b"x", oack=(("blksize", "8"),), retries=5)
    packets(conn)
    conn.handle_timer(T0 + 1.0)
    assert len(packets(conn)) == 1 and conn.get_timer() == T0 + 3.0  # not T0 + 4
    conn.handle_timer(T0 + 2.9)
    assert conn.finished is None
    conn.handle_timer(T0 + 3.0)
    assert conn.finished == Finish(Outcome.TIMED_OUT, "no answer to the first packet in 3s")
    assert not conn.established


def test_an_unanswered_first_data_ends_after_the_first_answer_wait() -> None:
    conn = reader(b"x" * 100, retries=5)
    assert blocks(conn) == [1] and conn.get_timer() == T0 + 1.0
    conn.handle_timer(T0 + 1.0)
    assert blocks(conn) == [1] and conn.get_timer() == T0 + 3.0
    conn.handle_timer(T0 + 3.0)
    assert conn.finished is not None and conn.finished.outcome is Outcome.TIMED_OUT


def test_an_answered_read_keeps_its_whole_retry_budget() -> None:
    conn = reader(b"x" * 100, oack=(("blksize", "8"),), retries=5)
    packets(conn)
    conn.receive(encode_ack(0), T0 + 0.5)
    assert blocks(conn) == [1] and conn.established and conn.get_timer() == T0 + 1.5
    due = T0 + 1.5
    for _ in range(5):  # 1.5 + 2 + 4 + 8 + 8 + 8: far beyond 3 s
        conn.handle_timer(due)
        assert blocks(conn) == [1]
        due = conn.get_timer()  # type: ignore[assignment]
    assert due > T0 + 20
    conn.handle_timer(due)
    assert conn.finished == Finish(Outcome.TIMED_OUT, "no ACK after block 0")


def test_a_retry_budget_shorter_than_the_first_answer_wait_ends_first() -> None:
    conn = reader(b"x", oack=(("blksize", "8"),), retries=0)
    packets(conn)
    assert conn.get_timer() == T0 + 1.0
    conn.handle_timer(T0 + 1.0)
    assert conn.finished == Finish(Outcome.TIMED_OUT, "no ACK after block 0")


def test_the_ack_of_a_window_establishes_a_read_without_oack() -> None:
    conn = reader(b"x" * 100, windowsize=4)
    assert blocks(conn) == [1, 2, 3, 4] and not conn.established
    conn.receive(encode_ack(4), T0 + 0.1)
    assert blocks(conn) == [5, 6, 7, 8] and conn.established
    assert conn.get_timer() == pytest.approx(T0 + 1.1)


def test_a_timeout_in_a_window_restarts_after_the_last_acked_block() -> None:
    conn = reader(b"x" * 240, windowsize=8)
    blocks(conn)
    conn.receive(encode_ack(8), T0 + 0.1)
    assert blocks(conn) == list(range(9, 17))  # nothing comes back
    conn.handle_timer(T0 + 1.1)
    assert blocks(conn) == list(range(9, 17)) and conn.retransmits == 1


def test_windows_roll_over_past_65535() -> None:
    conn = reader(b"w" * (8 * (65536 + 40) - 3), windowsize=16)
    sent = 0
    while conn.finished is None:
        numbers = blocks(conn)
        sent += len(numbers)
        conn.receive(encode_ack(numbers[-1]), T0)
    assert sent == 65576 and conn.finished.outcome is Outcome.COMPLETE


def test_a_missing_final_ack_ends_complete_after_the_retries() -> None:
    conn = reader(b"x", retries=1)
    blocks(conn)
    conn.handle_timer(T0 + 1.0)
    assert blocks(conn) == [1]
    conn.handle_timer(T0 + 3.0)
    assert conn.finished is not None and conn.finished.outcome is Outcome.COMPLETE_UNCONFIRMED
    assert conn.finished.outcome.succeeded and conn.transferred == 1


def test_an_ack_beyond_the_window_is_ignored() -> None:
    conn = reader(b"x" * 80, windowsize=2)
    blocks(conn)
    conn.receive(encode_ack(7), T0 + 0.1)
    assert packets(conn) == [] and conn.state is ReadState.WAITING


def test_no_ack_and_no_timer_count_while_the_window_waits_for_the_source() -> None:
    """And the first answer's wait starts when DATA 1 goes out: a slow mirror
    must not time the client out before it had anything to answer."""
    conn = ReadConnection(Negotiated(8, 1, 1.0, None, ()), 3, T0)
    conn.receive(encode_ack(0), T0 + 0.1)
    conn.handle_timer(T0 + 5.0)
    assert conn.state is ReadState.STARVED and conn.retransmits == 0
    conn.feed(b"late", eof=True)
    assert blocks(conn, T0 + 6) == [1] and conn.get_timer() == T0 + 7.0


def test_a_resumed_pump_resets_the_backoff_and_leaves_duplicates_duplicate() -> None:
    conn = reader(b"x" * 80, retries=2)
    blocks(conn)
    conn.handle_timer(T0 + 1.0)  # a retransmission spent some budget
    assert blocks(conn) == [1] and conn.get_timer() == T0 + 3.0
    sent, _ = run_pump(conn, [encode_ack(n) for n in (1, 2, 3, 4)])
    assert len(sent) == 4 and conn.established
    assert conn.get_timer() == T0 + 0.5 + 1.0  # the timeout is 1 s again
    conn.receive(encode_ack(4), T0 + 0.6)  # a duplicate now
    assert packets(conn) == []
    conn.receive(encode_ack(5), T0 + 0.7)
    assert blocks(conn) == [6]


# --- uploads: the commit, the dally, gaps ---------------------------------------------

def test_an_upload_without_data_1_ends_after_the_first_answer_wait() -> None:
    conn = WriteConnection(Negotiated(8, 1, 1.0, None, ()), 5, T0, max_size=100)
    assert packets(conn) == [Ack(0)]
    conn.handle_timer(T0 + 1.0)
    assert packets(conn) == [Ack(0)] and conn.get_timer() == T0 + 3.0
    conn.handle_timer(T0 + 3.0)
    assert conn.finished == Finish(Outcome.TIMED_OUT, "no DATA 1 in 3s")
    conn = WriteConnection(Negotiated(8, 1, 1.0, None, ()), 5, T0, max_size=100)
    conn.receive(encode_data(1, b"01234567"), T0 + 0.5)
    assert conn.established and conn.get_timer() == T0 + 1.5


def test_nothing_is_sent_while_the_upload_is_stored() -> None:
    """A slow fsync: no timer runs out and no repeated final DATA is ACKed
    while the file is not yet stored (the ACK says it is, RFC 1350 section 6)."""
    conn = writer()
    conn.receive(encode_data(1, b"01234567"), T0 + 0.1)
    conn.receive(encode_data(2, b"tail"), T0 + 0.2)
    assert packets(conn) == [Ack(0), Ack(1)] and conn.get_timer() is None
    for now in (T0 + 1.2, T0 + 5, T0 + 60):
        conn.receive(encode_data(2, b"tail"), now)
        conn.receive(encode_data(1, b"01234567"), now)
        conn.receive(encode_error(0, "bored"), now)  # every byte arrived: the commit decides
        conn.handle_timer(now)
    assert packets(conn) == [] and conn.state is WriteState.COMMITTING
    conn.committed(T0 + 61)
    assert packets(conn) == [Ack(2)] and conn.get_timer() == T0 + 62
    with pytest.raises(ProtocolError):
        conn.committed(T0 + 61.5)  # only once
    conn.handle_timer(T0 + 62)
    assert conn.finished == Finish(Outcome.COMPLETE)


def test_an_empty_upload_is_committed_before_its_ack() -> None:
    conn = writer(windowsize=4)
    packets(conn)
    conn.receive(encode_data(1, b""), T0)
    conn.handle_timer(T0 + 10)
    assert packets(conn) == [] and conn.to_store() == (b"", True)
    conn.committed(T0 + 10)
    assert packets(conn) == [Ack(1)]


def test_the_last_block_of_a_window_waits_for_the_commit() -> None:
    conn = writer(windowsize=4)
    packets(conn)
    for block, payload in ((1, b"a" * 8), (2, b"b" * 8), (3, b"end")):
        conn.receive(encode_data(block, payload), T0)
    conn.receive(encode_data(3, b"end"), T0 + 0.1)
    conn.receive(encode_data(4, b"more"), T0 + 0.1)  # nothing after the last block either
    assert packets(conn) == []
    conn.committed(T0 + 0.2)
    conn.receive(encode_data(4, b"more"), T0 + 0.3)  # past the end: no gap ACK
    assert packets(conn) == [Ack(3)]
    conn.receive(encode_error(0, "done"), T0 + 0.4)
    assert conn.finished == Finish(Outcome.COMPLETE)


def test_a_repeated_data_is_acked_again_not_stored_twice() -> None:
    conn = writer()
    packets(conn)
    conn.receive(encode_data(1, b"01234567"), T0)
    conn.receive(encode_data(1, b"01234567"), T0 + 0.1)
    assert packets(conn) == [Ack(1), Ack(1)] and conn.to_store() == (b"01234567", False)


def test_an_upload_with_options_resends_its_oack_until_data_1() -> None:
    conn = writer(oack=(("blksize", "8"),))
    assert packets(conn) == [Oack((("blksize", "8"),))]
    conn.handle_timer(T0 + 1.0)
    assert packets(conn) == [Oack((("blksize", "8"),))]
    conn.receive(encode_data(1, b""), T0 + 1.5)
    assert conn.state is WriteState.COMMITTING


def test_an_upload_resends_its_ack_then_gives_up() -> None:
    conn = WriteConnection(Negotiated(8, 1, 1.0, None, ()), 1, T0, max_size=100)
    conn.receive(encode_data(1, b"01234567"), T0 + 0.1)
    packets(conn)
    conn.handle_timer(T0 + 1.1)
    assert packets(conn) == [Ack(1)]
    conn.handle_timer(T0 + 3.1)
    assert conn.finished == Finish(Outcome.TIMED_OUT, "no DATA after block 1")


def test_a_windowed_upload_acks_each_window_and_once_per_gap() -> None:
    """RFC 7440 section 4."""
    conn = writer(windowsize=4, max_size=10_000)
    packets(conn)
    for block in (1, 2, 3):
        conn.receive(encode_data(block, b"x" * 8), T0)
    assert packets(conn) == []
    conn.receive(encode_data(4, b"x" * 8), T0)
    assert packets(conn) == [Ack(4)]
    conn.receive(encode_data(6, b"x" * 8), T0)  # block 5 was lost
    conn.receive(encode_data(7, b"x" * 8), T0)
    assert packets(conn) == [Ack(4)]
    conn.receive(encode_data(5, b"x" * 8), T0)
    assert conn.to_store() == (b"x" * 40, False)


def test_upload_block_numbers_roll_over_past_65535() -> None:
    conn = writer(blksize=1, max_size=70_000)
    for block in range(1, 65540):
        conn.receive(encode_data(block & 0xFFFF, b"u"), T0)
    assert conn.packets == 65539 and conn.datagrams_to_send(T0)[-1] == (encode_ack(3),)
