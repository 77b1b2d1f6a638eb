"""The compiled lock-step path (pybootd/_lockstep.c, server/tftp_pump.py):
the pump itself on loopback sockets, then the service serving lock-step
reads on the loop through it and without it."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import wait_for
from test_tftp_service import Server, ini
from tftpclient import Client

from pybootd.api import TransferStats
from pybootd.server import tftp_pump
from pybootd.server.tftp_pump import SPIN_MISSES, SPIN_PROBE
from pybootd.tftp.packets import Data, Error, ErrorCode, encode, encode_ack

try:
    from pybootd import _lockstep
except ImportError:
    _lockstep = None  # type: ignore[assignment]

@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    (folder / "big").write_bytes(os.urandom(300_000))
    return folder


def test_pump_is_built_in_ci() -> None:
    """.ci/run installs gcc and linux-libc-dev and builds it: there, its
    absence is a failure."""
    if os.environ.get("CI"):
        assert _lockstep is not None, "the compiled module must build under .ci/run"


# --- the pump alone -----------------------------------------------------------------------
class Pair:
    """A pump watching *server*, the transfer's socket, for *client*."""

    def __init__(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
        self.server = socket.socket(family, socket.SOCK_DGRAM)
        self.client = socket.socket(family, socket.SOCK_DGRAM)
        for sock in (self.server, self.client):
            sock.bind((host, 0))
            sock.settimeout(2)
        self.server.setblocking(False)
        self.pump = _lockstep.Pump(spin_misses=SPIN_MISSES, spin_probe=SPIN_PROBE)
        self.fd = self.server.fileno()
        self.pump.add(self.fd, self.client.getsockname())

    def ack(self, block: int, sock: socket.socket | None = None) -> None:
        (sock or self.client).sendto(encode_ack(block), self.server.getsockname())

    def run(self, expect: int = 0) -> list[tuple[int, bytes, tuple[str, int]]]:
        """Run the pump until *expect* datagrams are handed back (bounded)."""
        out: list[tuple[int, bytes, tuple[str, int]]] = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            out += self.turn()
            if len(out) >= expect:
                time.sleep(0.01)
                return out + self.turn()
        return out

    def turn(self) -> list[tuple[int, bytes, tuple[str, int]]]:
        return self.pump.run(64)

    def data(self) -> tuple[int, bytes]:
        packet, _ = self.client.recvfrom(70000)
        assert packet[:2] == b"\x00\x03", packet
        return (packet[2] << 8) | packet[3], packet[4:]

    def close(self) -> None:
        self.pump.close()
        self.server.close()
        self.client.close()


def skip_unless_built() -> None:
    if _lockstep is None:
        pytest.skip("pybootd._lockstep is not built")


@pytest.fixture
def pair() -> Iterator[Pair]:
    skip_unless_built()
    p = Pair()
    yield p
    p.close()


CHUNK = bytes(range(256)) * 8  # 2048 bytes: blocks 10..13 at blksize 512, from first=10


def test_pump_answers_the_ack_of_the_block_sent_with_the_next(pair: Pair) -> None:
    pair.pump.arm(pair.fd, 10, CHUNK, 10, 512)  # block 10 is out, 11.. in the chunk
    before = time.monotonic()
    for block in (10, 11, 12):
        pair.ack(block)
        assert pair.run() == []
        assert pair.data() == (block + 1, CHUNK[(block + 1 - 10) * 512:][:512])
    sent, sent_at, packets = pair.pump.take(pair.fd)
    assert (sent, packets) == (13, 3) and before <= sent_at <= time.monotonic()
    assert pair.pump.take(pair.fd) == (-1, 0.0, 0)  # nothing since


def test_pump_hands_back_the_end_of_the_chunk(pair: Pair) -> None:
    pair.pump.arm(pair.fd, 13, CHUNK, 10, 512)  # block 14 is not in it
    pair.ack(13)
    assert pair.run(1) == [(pair.fd, encode_ack(13), pair.client.getsockname())]


def test_pump_sends_a_short_last_block(pair: Pair) -> None:
    pair.pump.arm(pair.fd, 4, b"x" * 700, 4, 512)  # block 4: 512 bytes, block 5: 188
    pair.ack(4)
    pair.run()
    assert pair.data() == (5, b"x" * 188)


def test_pump_numbers_blocks_modulo_65536(pair: Pair) -> None:
    pair.pump.arm(pair.fd, 65535, CHUNK, 65535, 512)
    pair.ack(65535)
    pair.run()
    assert pair.data() == (0, CHUNK[512:1024])  # block 65536 on the wire: 0
    pair.ack(0)
    pair.run()
    assert pair.data() == (1, CHUNK[1024:1536])
    assert pair.pump.take(pair.fd)[0] == 65537


@pytest.mark.parametrize("datagram", [
    encode_ack(9),  # a duplicate ACK: Python decides (it ignores it)
    encode_ack(10) + b"x",  # not exactly an ACK
    encode(Error(0, "bye")),
    b"\x00",
])
def test_pump_hands_back_what_needs_a_decision_and_what_follows(
        pair: Pair, datagram: bytes) -> None:
    pair.pump.arm(pair.fd, 10, CHUNK, 10, 512)
    pair.client.sendto(datagram, pair.server.getsockname())
    pair.ack(10)  # after it: Python's too, in order
    got = pair.run(2)
    assert [d for _, d, _ in got] == [datagram, encode_ack(10)]
    assert pair.pump.take(pair.fd) == (-1, 0.0, 0)


def test_pump_hands_back_a_foreign_tid_with_its_address(pair: Pair) -> None:
    pair.pump.arm(pair.fd, 10, CHUNK, 10, 512)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
        intruder.bind(("127.0.0.1", 0))
        pair.ack(10, intruder)
        assert pair.run(1) == [(pair.fd, encode_ack(10), intruder.getsockname())]


def test_pump_unarmed_hands_back_everything(pair: Pair) -> None:
    pair.ack(10)
    assert [d for _, d, _ in pair.run(1)] == [encode_ack(10)]


def test_pump_removed_socket_is_not_read(pair: Pair) -> None:
    pair.pump.remove(pair.fd)
    pair.ack(10)
    assert pair.run() == []
    assert pair.server.recv(100) == encode_ack(10)
    with pytest.raises(KeyError):
        pair.pump.take(pair.fd)


def test_pump_over_ipv6() -> None:
    skip_unless_built()
    try:
        p = Pair(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        p.pump.arm(p.fd, 10, CHUNK, 10, 512)
        p.ack(10)
        p.run()
        assert p.data() == (11, CHUNK[512:1024])
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as intruder:
            intruder.bind(("::1", 0))
            p.ack(11, intruder)
            ((_, _, addr),) = p.run(1)
            assert addr[:2] == intruder.getsockname()[:2] and len(addr) == 4
    finally:
        p.close()


def test_pump_refuses_bad_arguments(pair: Pair) -> None:
    with pytest.raises(ValueError):
        pair.pump.add(pair.client.fileno(), ("not an address", 69))
    with pytest.raises(ValueError):
        pair.pump.add(pair.fd, ("127.0.0.1", 69))  # already in
    with pytest.raises(KeyError):
        pair.pump.arm(12345, 1, CHUNK, 1, 512)
    with pytest.raises(ValueError):
        pair.pump.arm(pair.fd, 1, CHUNK, 1, 0)


# --- busy-polling: adaptive (tftp_pump.SPIN_MISSES, SPIN_PROBE) ---------------------------
def test_pump_polls_while_polls_see_answers_then_once_every_probe(pair: Pair) -> None:
    """With nothing to read, run(spin) polls for *spin* seconds SPIN_MISSES
    times in a row, then returns at once for SPIN_PROBE - 1 runs, then polls
    again; a datagram seen while polling starts the count again."""
    spin = 0.02

    def timed_run() -> float:
        started = time.monotonic()
        assert pair.pump.run(64, spin) == []
        return time.monotonic() - started

    assert all(timed_run() >= spin for _ in range(SPIN_MISSES))
    started = time.monotonic()
    for _ in range(SPIN_PROBE - 1):
        pair.pump.run(64, spin)
    assert time.monotonic() - started < SPIN_PROBE * spin / 10  # no polling: at once
    assert timed_run() >= spin  # the probe
    assert pair.pump.run(64, 0.0) == []  # spin 0: never polls
    pair.pump.arm(pair.fd, 10, CHUNK, 10, 512)
    pair.ack(10)
    assert pair.pump.run(64, spin) == [] and pair.data()[0] == 11


# --- the service: lock-step reads on the loop, with each pump and without -----------------
@pytest.fixture(params=["pump", "python"])
def on_loop(request: pytest.FixtureRequest, root: Path, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, list[TransferStats]]]:
    """A server whose lock-step reads go through the pump, or through
    Python alone."""
    if request.param == "python":
        monkeypatch.setenv(tftp_pump.DISABLE_ENV, "1")
    elif _lockstep is None and not os.environ.get("CI"):
        pytest.skip("pybootd._lockstep is not built")
    seen: list[TransferStats] = []
    srv = Server(ini(root), tmp_path / "t.ini", session_stats=seen.append)
    yield srv, seen
    srv.stop()


def fetch(client: Client, tid: tuple[str, int] | None = None, *, skip_ack: int = 0,
          duplicate_ack: int = 0) -> bytes:
    """Read a requested file in lock-step; do not ACK block *skip_ack* the
    first time; ACK block *duplicate_ack* twice."""
    chunks: list[bytes] = []
    block, skipped = 0, False
    while True:
        packet, addr = client.receive()
        assert isinstance(packet, Data), packet
        tid = tid or addr
        if packet.block != (block + 1) & 0xFFFF:
            assert packet.block == block & 0xFFFF  # a retransmission
        else:
            block += 1
            chunks.append(packet.data)
        if block == skip_ack and not skipped:
            skipped = True
            continue
        client.sock.sendto(encode_ack(block & 0xFFFF), tid)
        if block == duplicate_ack:
            client.sock.sendto(encode_ack(block & 0xFFFF), tid)
        if len(packet.data) < 512 and packet.block == block & 0xFFFF:
            return b"".join(chunks)


def test_loop_reads_complete_and_count(on_loop: tuple[Server, list[TransferStats]],
                                       root: Path) -> None:
    srv, seen = on_loop
    big = (root / "big").read_bytes()  # 300000 bytes: 586 blocks, 5 chunks of 64 KiB
    with Client("127.0.0.1", srv.port) as one, Client("127.0.0.1", srv.port) as two:
        one.request("big")
        two.request("big")
        assert fetch(one) == big
        assert fetch(two) == big
    wait_for(lambda: len(seen) == 2, 5, what="both transfers to end")
    for stats in seen:
        assert (stats.outcome, stats.bytes, stats.packets, stats.retransmits) == (
            "complete", len(big), 586, 0)


@pytest.mark.parametrize("skip_ack, duplicate_ack, packets, retransmits", [
    (300, 0, 587, 1),  # a lost ACK: block 300 again after the timeout
    (0, 100, 586, 0),  # never resend on a duplicate ACK (RFC 1123 section 4.2.3.1)
])
def test_loop_read_recovers_a_lost_ack_and_ignores_a_duplicate(
        on_loop: tuple[Server, list[TransferStats]], root: Path, skip_ack: int,
        duplicate_ack: int, packets: int, retransmits: int) -> None:
    srv, seen = on_loop
    with Client("127.0.0.1", srv.port) as client:
        client.request("big")
        got = fetch(client, skip_ack=skip_ack, duplicate_ack=duplicate_ack)
    assert got == (root / "big").read_bytes()
    wait_for(lambda: len(seen) == 1, 5, what="the transfer to end")
    assert (seen[0].outcome, seen[0].packets, seen[0].retransmits) == (
        "complete", packets, retransmits)


def test_loop_read_answers_a_foreign_tid(on_loop: tuple[Server, list[TransferStats]],
                                         root: Path) -> None:
    srv, seen = on_loop
    with Client("127.0.0.1", srv.port) as client, Client("127.0.0.1", srv.port) as intruder:
        client.request("big")
        _, tid = client.receive()
        for block in range(1, 50):  # into the pump's stride
            client.sock.sendto(encode_ack(block), tid)
            client.receive()
        intruder.sock.sendto(encode_ack(50), tid)
        error, _ = intruder.receive()
        assert isinstance(error, Error) and error.code == ErrorCode.UNKNOWN_TID
        client.sock.sendto(encode(Error(0, "enough")), tid)
    wait_for(lambda: len(seen) == 1, 5, what="the transfer to end")
    assert seen[0].outcome == "aborted by client"
    assert seen[0].packets == 50 and seen[0].bytes == 49 * 512


def test_loop_read_rolls_over(on_loop: tuple[Server, list[TransferStats]],
                              root: Path) -> None:
    srv, seen = on_loop
    payload = os.urandom(66_000 * 8 + 3)  # 66001 blocks of 8 bytes
    (root / "roll").write_bytes(payload)
    chunks: list[bytes] = []
    with Client("127.0.0.1", srv.port) as client:
        client.request("roll", options=(("blksize", "8"),))
        _, tid = client.receive()  # the OACK
        client.sock.sendto(encode_ack(0), tid)
        block = 0
        while True:
            packet, _ = client.receive()
            assert isinstance(packet, Data) and packet.block == (block + 1) & 0xFFFF
            block += 1
            chunks.append(packet.data)
            client.sock.sendto(encode_ack(packet.block), tid)
            if len(packet.data) < 8:
                break
    assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(payload).digest()
    wait_for(lambda: len(seen) == 1, 5, what="the transfer to end")
    assert seen[0].outcome == "complete" and seen[0].packets == 66_001


def test_loop_read_stops_at_shutdown(on_loop: tuple[Server, list[TransferStats]]) -> None:
    srv, _ = on_loop
    with Client("127.0.0.1", srv.port) as client:
        client.request("big")
        packet, tid = client.receive()
        for block in range(1, 20):
            client.sock.sendto(encode_ack(block), tid)
            packet, _ = client.receive()
        srv.call(srv.service.close)
        client.sock.sendto(encode_ack(20), tid)
        for _ in range(5):
            packet, _ = client.receive()
            if isinstance(packet, Error):
                break
        assert isinstance(packet, Error) and "shutting down" in packet.message
