"""Malformed and hostile packets are logged and dropped; service goes on."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from dhcplab import DhcpLab, Prober, lab_session
from tests_vectors import vector_bytes

from pybootd.dhcp.options import MessageType
from pybootd.dhcp.packet import DhcpPacket, encode_packet

pytestmark = [pytest.mark.netns, pytest.mark.interop]


@pytest.fixture
def dlab(lab: object, tmp_path: Path) -> Iterator[DhcpLab]:
    with lab_session(lab, tmp_path / "dhcp", log_tail=5000) as d:  # type: ignore[arg-type]
        yield d


def test_garbage_flood_then_a_real_client_is_served(dlab: DhcpLab) -> None:
    ns, ifname = dlab.client("probe")
    p = Prober(ns, ifname)
    rng = random.Random(7)
    real = vector_bytes("udhcpc-01-discover.bin")
    hostile = [
        b"", b"\x01", real[:100], real[:240],
        bytes((1, 1, 200)) + real[3:],  # hlen 200
        real[:240] + bytes((53, 200, 1)),  # option runs past the end
        real[:240] + bytes((52, 1, 3)) + real[243:],  # overload into garbage fields
        encode_packet(DhcpPacket(op=2, xid=1, chaddr=bytes(6))),  # a BOOTREPLY
        bytes(4000),
    ]
    hostile += [rng.randbytes(rng.randrange(1, 600)) for _ in range(2000)]
    for i in range(len(real)):
        corrupt = bytearray(real)
        corrupt[i] ^= 0xFF
        hostile.append(bytes(corrupt))
    for data in hostile:
        p.sock.sendto(data, ("255.255.255.255", 67))
    xid = p.send(MessageType.DISCOVER, bytes((2, 0, 0, 0, 0, 0x42)))
    replies = p.collect(5.0)
    p.close()
    assert xid in replies and replies[xid][1].message_type == MessageType.OFFER
    assert dlab.server is not None and dlab.server.poll() is None
    log = dlab.server_log()
    assert "malformed packet dropped" in log
    assert "Traceback" not in log
