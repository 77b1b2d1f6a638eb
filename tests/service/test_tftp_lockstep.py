"""Lock-step reads served on the loop, through the compiled pump
(pybootd/_pump.c, server/tftp_pump.py) and through the event loop alone:
what a client sees and what the stats report must be the same."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from netlab import wait_for
from tftpclient import Client, encode
from tftpserver import Server, ini

from pybootd.api import TransferStats
from pybootd.server import tftp_pump
from pybootd.tftp.packets import Data, Error, ErrorCode, encode_ack


# --- the service: lock-step reads on the loop, with each pump and without -----------------
@pytest.fixture(params=["pump", "python"])
def on_loop(request: pytest.FixtureRequest, root: Path, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, list[TransferStats]]]:
    """A server whose lock-step reads go through the pump, or through
    Python alone."""
    if request.param == "python":
        monkeypatch.setenv(tftp_pump.DISABLE_ENV, "1")
    elif not tftp_pump.available():
        assert not os.environ.get("CI"), "the pump must build under .ci/run"
        pytest.skip("pybootd._pump is not built")
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
    with Client("127.0.0.1", srv.port) as one, Client("127.0.0.1", srv.port) as two, \
            ThreadPoolExecutor(1) as other:
        one.request("big")
        two.request("big")
        # At once: one after the other, the second would wait past its
        # 1 s timeout on a slow machine and count a retransmission.
        second = other.submit(fetch, two)
        assert fetch(one) == big
        assert second.result(timeout=30) == big
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
