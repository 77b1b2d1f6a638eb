"""The BOOTP/DHCP codec against real captured requests and hostile bytes."""

from __future__ import annotations

import contextlib
import random
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pybootd.dhcp.options import (
    MAGIC_COOKIE,
    DhcpOption,
    MessageType,
    decode_options,
    encode_options,
)
from pybootd.dhcp.packet import (
    BOOTREPLY,
    HEADER_SIZE,
    MIN_REPLY_SIZE,
    DhcpPacket,
    encode_packet,
    parse_packet_untrusted,
)
from pybootd.dhcp.pxe import client_info
from pybootd.errors import BadPacket

VECTORS = sorted((Path(__file__).resolve().parent.parent / "vectors" / "dhcp").glob("*.bin"))
KINDS = {"discover": MessageType.DISCOVER, "request": MessageType.REQUEST,
         "release": MessageType.RELEASE, "decline": MessageType.DECLINE,
         "inform": MessageType.INFORM, "bootp": None}


def test_vectors_exist_for_every_client() -> None:
    names = {p.name.split("-")[0] for p in VECTORS}
    assert {"udhcpc", "dhcl", "dhcpcd"} <= names


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.name)
def test_vector_decodes_and_reencodes(path: Path) -> None:
    data = path.read_bytes()
    packet = parse_packet_untrusted(data)
    assert packet.op == 1
    assert packet.message_type == KINDS[path.stem.rsplit("-", 1)[1]]
    assert len(packet.chaddr) == 6
    again = parse_packet_untrusted(encode_packet(packet))
    assert again == packet
    # The option bytes themselves survive (order aside).
    assert dict(again.options) == dict(packet.options)


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.name)
def test_vector_cut_at_every_offset_raises_only_badpacket(path: Path) -> None:
    data = path.read_bytes()
    for cut in range(len(data)):
        with contextlib.suppress(BadPacket):
            parse_packet_untrusted(data[:cut])
    for cut in range(HEADER_SIZE):
        with pytest.raises(BadPacket):
            parse_packet_untrusted(data[:cut])


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.name)
def test_vector_with_random_corruption_raises_only_badpacket(path: Path) -> None:
    rng = random.Random(path.name)
    data = bytearray(path.read_bytes())
    for _ in range(300):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        with contextlib.suppress(BadPacket):
            parse_packet_untrusted(bytes(corrupt))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=700))
def test_random_bytes_raise_only_badpacket(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        parse_packet_untrusted(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_options_after_valid_header_raise_only_badpacket(tail: bytes) -> None:
    header = DhcpPacket(op=1, xid=1, chaddr=bytes(6), dhcp=False)
    data = encode_packet(header)[:HEADER_SIZE] + MAGIC_COOKIE + tail
    try:
        packet = parse_packet_untrusted(data)
    except BadPacket:
        return
    assert packet.dhcp


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(1, 254).filter(lambda c: c != 52), st.binary(max_size=600),
                       max_size=8))
def test_options_round_trip(options: dict[int, bytes]) -> None:
    assert decode_options(encode_options(options.items())) == options


def test_long_option_is_split_and_joined() -> None:
    """RFC 3396: a value over 255 bytes becomes several instances of the option."""
    value = bytes(range(256)) * 2
    encoded = encode_options([(DhcpOption.BOOTFILE, value)])
    assert encoded[0] == 67 and encoded[1] == 255
    assert decode_options(encoded) == {67: value}


def test_option_running_past_the_end() -> None:
    with pytest.raises(BadPacket):
        decode_options(bytes((53, 5, 1)))
    with pytest.raises(BadPacket):
        decode_options(bytes((53,)))


def test_missing_end_is_tolerated_and_pad_skipped() -> None:
    assert decode_options(bytes((0, 0, 53, 1, 1, 0))) == {53: b"\x01"}


def test_reply_is_300_bytes_with_end_before_padding() -> None:
    reply = DhcpPacket(op=BOOTREPLY, xid=7, chaddr=bytes(6), yiaddr=IPv4Address("198.51.100.9"))
    data = encode_packet(reply, ((DhcpOption.SERVER_ID, bytes(4)),
                                 (DhcpOption.MESSAGE_TYPE, b"\x02")))
    assert len(data) == MIN_REPLY_SIZE
    assert data[HEADER_SIZE:HEADER_SIZE + 4] == MAGIC_COOKIE
    body = data[HEADER_SIZE + 4:]
    assert body[:3] == bytes((53, 1, 2))  # option 53 first
    end = body.index(255, 9)
    assert body[end + 1:] == bytes(len(body) - end - 1)
    assert DhcpOption.OVERLOAD not in parse_packet_untrusted(data).options


def test_overloaded_fields_are_read() -> None:
    """RFC 2132 9.3: options continued in file and sname."""
    packet = DhcpPacket(op=1, xid=1, chaddr=bytes(6), dhcp=False)
    raw = bytearray(encode_packet(packet)[:HEADER_SIZE])
    raw[108:108 + 4] = bytes((67, 2, 0x61, 0x62))  # file field: option 67 "ab"
    raw[44:44 + 3] = bytes((12, 1, 0x68))  # sname field: option 12 "h"
    data = bytes(raw) + MAGIC_COOKIE + bytes((53, 1, 1, 52, 1, 3, 255))
    parsed = parse_packet_untrusted(data)
    assert parsed.options[67] == b"ab" and parsed.options[12] == b"h"
    assert parsed.file == b"" and parsed.sname == b""


def test_bad_overload_value() -> None:
    packet = DhcpPacket(op=1, xid=1, chaddr=bytes(6), dhcp=False)
    data = encode_packet(packet)[:HEADER_SIZE] + MAGIC_COOKIE + bytes((52, 1, 9, 255))
    with pytest.raises(BadPacket):
        parse_packet_untrusted(data)


def test_header_checks() -> None:
    good = bytearray(encode_packet(DhcpPacket(op=1, xid=1, chaddr=bytes(6))))
    good[0] = 3
    with pytest.raises(BadPacket):
        parse_packet_untrusted(bytes(good))
    good[0] = 1
    good[2] = 17  # hlen
    with pytest.raises(BadPacket):
        parse_packet_untrusted(bytes(good))


def test_plain_bootp_request() -> None:
    """RFC 951: no magic cookie, 64-byte vend field of zeroes."""
    packet = DhcpPacket(op=1, xid=9, chaddr=bytes.fromhex("525400aabbcc"), dhcp=False)
    data = encode_packet(packet)
    assert len(data) == MIN_REPLY_SIZE
    parsed = parse_packet_untrusted(data)
    assert not parsed.dhcp and parsed.message_type is None and parsed.mac == "52:54:00:aa:bb:cc"


# Firmware captured in QEMU started with -uuid VM_UUID (scripts/capture_dhcp_vectors.py):
# option 97 must read back as that UUID, the way dmidecode prints it.
VM_UUID = "4C4C4544-0042-3510-8051-B4C04F4D3132"  # dmidecode: upper case
FIRMWARE = {  # name prefix -> (arch, pxe, http, ipxe)
    "ipxe-bios": (0, True, False, True),
    "ipxe-efi-x64": (7, True, False, True),
    "edk2-pxe-efi-x64": (7, True, False, False),
    "edk2-http-http-x64": (16, False, True, False),
}


def test_vectors_exist_for_every_firmware() -> None:
    names = {p.name.rsplit("-", 2)[0] for p in VECTORS}
    assert set(FIRMWARE) <= names


@pytest.mark.parametrize("path", [p for p in VECTORS if p.name.rsplit("-", 2)[0] in FIRMWARE],
                         ids=lambda p: p.name)
def test_firmware_vector_client_info(path: Path) -> None:
    info = client_info(parse_packet_untrusted(path.read_bytes()))
    arch, pxe, http, ipxe = FIRMWARE[path.name.rsplit("-", 2)[0]]
    assert (info.arch, info.pxe, info.http, info.ipxe) == (arch, pxe, http, ipxe)
    assert info.uuid == VM_UUID
    assert info.undi is not None
