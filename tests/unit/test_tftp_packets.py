"""TFTP codec: round trips, truncation at every offset, random bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tftpclient import encode

from pybootd.errors import BadPacket
from pybootd.tftp.packets import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Oack,
    Opcode,
    Request,
    encode_data,
    parse_packet_untrusted,
)

PACKETS = [
    Request(Opcode.RRQ, "pxelinux.0", "octet"),
    Request(Opcode.RRQ, "boot/grub/x86_64-efi/normal.mod", "netascii",
            (("tsize", "0"), ("blksize", "1468"), ("windowsize", "16"))),
    Request(Opcode.WRQ, "upload.bin", "octet", (("tsize", "1234"),)),
    Data(1, b"x" * 512),
    Data(65535, b""),
    Ack(0),
    Ack(65535),
    Error(ErrorCode.FILE_NOT_FOUND, "File not found"),
    Error(8, ""),
    Oack((("blksize", "1468"), ("tsize", "42"))),
]


@pytest.mark.parametrize("packet", PACKETS, ids=lambda p: type(p).__name__)
def test_round_trip(packet: object) -> None:
    assert parse_packet_untrusted(encode(packet)) == packet  # type: ignore[arg-type]


def test_request_keeps_option_order_and_lowercases_names() -> None:
    raw = b"\x00\x01file\x00OCTET\x00TSIZE\x000\x00BlkSize\x001468\x00"
    request = parse_packet_untrusted(raw)
    assert isinstance(request, Request)
    assert request.mode == "octet"
    assert request.options == (("tsize", "0"), ("blksize", "1468"))


def test_request_tolerates_padding_and_unpaired_option() -> None:
    raw = b"\x00\x01f\x00octet\x00blksize\x00512\x00orphan\x00\x00\x00"
    request = parse_packet_untrusted(raw)
    assert isinstance(request, Request)
    assert request.options == (("blksize", "512"),)


def test_duplicate_option_keeps_first() -> None:
    raw = b"\x00\x01f\x00octet\x00blksize\x00512\x00blksize\x001024\x00"
    request = parse_packet_untrusted(raw)
    assert isinstance(request, Request)
    assert request.options == (("blksize", "512"),)


def test_data_block_rolls_over() -> None:
    assert encode_data(65536, b"a")[:4] == b"\x00\x03\x00\x00"
    assert encode_data(65537, b"a")[:4] == b"\x00\x03\x00\x01"


@pytest.mark.parametrize("raw", [
    b"", b"\x00", b"\x00\x01", b"\x00\x01f", b"\x00\x01f\x00", b"\x00\x01\x00octet\x00",
    b"\x00\x01f\x00\x00", b"\x00\x07abcd", b"\xff\xff\x00\x00", b"\x00\x05\x00",
    b"\x00\x06a\x00",
])
def test_malformed_raises_bad_packet(raw: bytes) -> None:
    with pytest.raises(BadPacket):
        parse_packet_untrusted(raw)


@pytest.mark.parametrize("packet", PACKETS, ids=lambda p: type(p).__name__)
def test_every_truncation_decodes_or_raises_bad_packet(packet: object) -> None:
    raw = encode(packet)  # type: ignore[arg-type]
    for cut in range(len(raw)):
        with contextlib.suppress(BadPacket):
            parse_packet_untrusted(raw[:cut])


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_bad_packet(raw: bytes) -> None:
    with contextlib.suppress(BadPacket):
        parse_packet_untrusted(raw)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([1, 2, 3, 4, 5, 6]), st.binary(max_size=300))
def test_random_bodies_raise_only_bad_packet(opcode: int, body: bytes) -> None:
    with contextlib.suppress(BadPacket):
        parse_packet_untrusted(opcode.to_bytes(2, "big") + body)
