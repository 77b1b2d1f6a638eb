"""Admission of a request to the server port (pybootd.tftp.admission), on values."""

from __future__ import annotations

from pybootd.tftp.admission import Admission, Decision, Key, Limits, Running, admit

RRQ, WRQ = 1, 2
LIMITS = Limits(max_sessions=3, max_client_sessions=2)


def key(client: str = "192.0.2.1", port: int = 2000, name: str = "pxelinux.0",
        opcode: int = RRQ) -> Key:
    return (client, port, opcode, name)


def running(*keys: Key, established: bool = True) -> list[Running]:
    return [Running(k, float(i), established) for i, k in enumerate(keys)]


def test_a_request_with_room_is_served() -> None:
    assert admit(key(), "octet", [], LIMITS) == Decision(Admission.SERVE)
    assert admit(key(), "netascii", running(key(port=1)), LIMITS).outcome is Admission.SERVE


def test_the_same_request_as_an_unanswered_one_is_a_repeat() -> None:
    waiting = running(key(), established=False)
    assert admit(key(), "octet", waiting, LIMITS) == Decision(Admission.REPEAT)


def test_the_same_request_after_its_client_answered_is_new() -> None:
    """Another client on the same port (busybox's SO_REUSEADDR sockets can
    share one ephemeral port): it must be served, not taken for a repeat."""
    assert admit(key(), "octet", running(key()), LIMITS) == Decision(Admission.SERVE)


def test_another_request_from_the_same_port_is_new() -> None:
    """tftp-hpa reuses its port for every command: another file, or a write."""
    now = running(key())
    assert admit(key(name="ldlinux.c32"), "octet", now, LIMITS).outcome is Admission.SERVE
    assert admit(key(opcode=WRQ), "octet", now, LIMITS).outcome is Admission.SERVE


def test_an_unknown_mode_is_refused_a_repeat_first() -> None:
    assert admit(key(), "mail", [], LIMITS) == Decision(Admission.BAD_MODE)
    waiting = running(key(), established=False)
    assert admit(key(), "mail", waiting, LIMITS).outcome is Admission.REPEAT


def test_one_address_gets_at_most_max_client_sessions() -> None:
    now = running(key(port=1), key(port=2))
    assert admit(key(port=3), "octet", now, LIMITS) == Decision(Admission.CLIENT_LIMIT,
                                                                running=2)
    assert admit(key("192.0.2.2"), "octet", now, LIMITS).outcome is Admission.SERVE


def test_full_with_every_client_answered_is_busy() -> None:
    now = running(key("192.0.2.1"), key("192.0.2.2"), key("192.0.2.3"))
    assert admit(key("192.0.2.4"), "octet", now, LIMITS) == Decision(Admission.BUSY, running=3)


def test_full_evicts_the_oldest_transfer_whose_client_never_answered() -> None:
    now = [Running(key("192.0.2.1"), 1.0, True),
           Running(key("192.0.2.2"), 5.0, False),
           Running(key("192.0.2.3"), 2.0, False)]
    assert admit(key("192.0.2.4"), "octet", now, LIMITS) == Decision(
        Admission.EVICT, victim=key("192.0.2.3"))


def test_a_request_whose_file_is_being_opened_is_never_evicted() -> None:
    now = [Running(key("192.0.2.1"), 0.0, False, opening=True),
           *running(key("192.0.2.2"), key("192.0.2.3"))]
    assert admit(key("192.0.2.4"), "octet", now, LIMITS).outcome is Admission.BUSY


def test_the_client_limit_comes_before_eviction() -> None:
    now = running(key(port=1), key(port=2), key("192.0.2.9"), established=False)
    assert admit(key(port=3), "octet", now, LIMITS).outcome is Admission.CLIENT_LIMIT
