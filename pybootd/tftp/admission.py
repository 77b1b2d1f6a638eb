"""Whether a request to the server port starts a transfer: a pure decision.

Values in (the request's key and mode, what runs, the limits), a
:class:`Decision` out; the service applies it (pybootd/server/tftp.py).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

MODES = ("octet", "netascii")
Key = tuple[str, int, int, str]  # client address, port, opcode, file name: one request


class Admission(enum.Enum):
    SERVE = "serve"
    REPEAT = "repeat"  # the same request as an unanswered transfer's: that one answers
    BAD_MODE = "bad mode"  # ERROR 4 (mail and others)
    CLIENT_LIMIT = "client limit"  # max_client_sessions from this address
    BUSY = "busy"  # max_sessions, and every transfer's client has answered
    EVICT = "evict"  # serve it once the victim, never answered, is ended


@dataclass(frozen=True)
class Running:
    """A request being served, as admission sees it."""

    key: Key
    started: float
    # Has the client answered once? Until then the transfer may be evicted
    # for a new request (pybootd.tftp.connection.FIRST_ANSWER_WAIT).
    established: bool
    opening: bool = False  # its file is still being opened: not evictable yet


@dataclass(frozen=True)
class Limits:
    max_sessions: int
    max_client_sessions: int


@dataclass(frozen=True)
class Decision:
    outcome: Admission
    victim: Key | None = None  # EVICT: the transfer to end first
    running: int = 0  # CLIENT_LIMIT: from this address; BUSY: in all (for the log)


def admit(key: Key, mode: str, running: Sequence[Running], limits: Limits) -> Decision:
    """The rules, in order: a repeat of a request whose client has not
    answered yet is ignored (a second transfer would confuse its client;
    another request from the same port, or the same after an answer, is new:
    tftp-hpa reuses its port, busybox clients share one); an unknown mode is refused;
    one address gets at most max_client_sessions, so that one host cannot
    take every slot; when all max_sessions are taken, the oldest transfer
    whose client never answered makes room, so RRQs that are never ACKed
    (a flood, spoofed sources) cannot keep real clients out."""
    if any(r.key == key and not r.established for r in running):
        return Decision(Admission.REPEAT)
    if mode not in MODES:
        return Decision(Admission.BAD_MODE)
    mine = sum(1 for r in running if r.key[0] == key[0])  # the client's address
    if mine >= limits.max_client_sessions:
        return Decision(Admission.CLIENT_LIMIT, running=mine)
    if len(running) < limits.max_sessions:
        return Decision(Admission.SERVE)
    silent = [r for r in running if not r.established and not r.opening]
    if not silent:
        return Decision(Admission.BUSY, running=len(running))
    return Decision(Admission.EVICT, victim=min(silent, key=lambda r: r.started).key)
