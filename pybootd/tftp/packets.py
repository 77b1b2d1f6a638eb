"""TFTP packet codec (RFC 1350 section 5, RFC 2347 section 2).

``parse_packet_untrusted`` reads bytes from the network and raises only
:class:`~pybootd.errors.BadPacket`. ``encode_*`` build bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from pybootd.errors import BadPacket


class Opcode(IntEnum):
    """RFC 1350 section 5; OACK from RFC 2347 section 2."""

    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(IntEnum):
    """RFC 1350 appendix; 8 from RFC 2347 section 2."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


# Opcode + block number: the header of DATA and ACK (RFC 1350 section 5).
HEADER = struct.Struct("!HH")
MAX_BLOCK = 0xFFFF


@dataclass(frozen=True)
class Request:
    """RRQ or WRQ. ``options`` keep the client's order, names lower-cased."""

    opcode: Opcode
    filename: str
    mode: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def is_write(self) -> bool:
        return self.opcode == Opcode.WRQ


@dataclass(frozen=True)
class Data:
    block: int
    data: bytes


@dataclass(frozen=True)
class Ack:
    block: int


@dataclass(frozen=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True)
class Oack:
    options: tuple[tuple[str, str], ...]


Packet = Request | Data | Ack | Error | Oack


def _text(raw: bytes) -> str:
    # Filenames are bytes on the wire; surrogateescape maps them 1:1 onto
    # POSIX file names whatever their encoding.
    return raw.decode("utf-8", "surrogateescape")


def _strings(body: bytes) -> list[bytes]:
    """NUL-terminated strings; trailing padding NULs are tolerated."""
    if not body.endswith(b"\0"):
        raise BadPacket("request string is not NUL-terminated")
    fields = body[:-1].split(b"\0")
    while len(fields) > 2 and fields[-1] == b"":
        fields.pop()
    return fields


def _parse_request(opcode: Opcode, body: bytes) -> Request:
    fields = _strings(body)
    if len(fields) < 2:
        raise BadPacket("request lacks a mode")
    filename, mode = fields[0], fields[1]
    if not filename:
        raise BadPacket("empty filename")
    if not mode:
        raise BadPacket("empty mode")
    options: list[tuple[str, str]] = []
    seen: set[str] = set()
    # RFC 2347 section 2: options follow as name/value pairs; an unpaired
    # trailing name is ignored (some firmware pads requests).
    for i in range(2, len(fields) - 1, 2):
        name = _text(fields[i]).lower()
        if name and name not in seen:
            seen.add(name)
            options.append((name, _text(fields[i + 1])))
    return Request(opcode, _text(filename), _text(mode).lower(), tuple(options))


def _parse_error(body: bytes) -> Error:
    if len(body) < 2:
        raise BadPacket("ERROR too short")
    code = HEADER.unpack_from(b"\0\0" + body[:2])[1]
    message = body[2:].split(b"\0", 1)[0]
    return Error(code, message.decode("utf-8", "replace"))


def _parse_oack(body: bytes) -> Oack:
    if not body:
        return Oack(())
    fields = _strings(body)
    if len(fields) % 2:
        raise BadPacket("OACK has an option without a value")
    pairs = tuple(
        (_text(fields[i]).lower(), _text(fields[i + 1])) for i in range(0, len(fields), 2)
    )
    return Oack(pairs)


def parse_packet_untrusted(packet: bytes) -> Packet:
    """Decode one datagram. Raises only :class:`BadPacket`."""
    if len(packet) < 4:
        raise BadPacket(f"datagram of {len(packet)} bytes is too short")
    opcode_value, block = HEADER.unpack_from(packet)
    try:
        opcode = Opcode(opcode_value)
    except ValueError:
        raise BadPacket(f"unknown opcode {opcode_value}") from None
    body = packet[2:]
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return _parse_request(opcode, body)
    if opcode == Opcode.DATA:
        return Data(block, bytes(packet[4:]))
    if opcode == Opcode.ACK:
        return Ack(block)
    if opcode == Opcode.ERROR:
        return _parse_error(body)
    return _parse_oack(body)


def _options_bytes(options: tuple[tuple[str, str], ...]) -> bytes:
    return b"".join(
        name.encode("utf-8", "surrogateescape") + b"\0" + value.encode("utf-8", "surrogateescape")
        + b"\0"
        for name, value in options
    )


def encode_request(request: Request) -> bytes:
    return (
        HEADER.pack(request.opcode, 0)[:2]
        + request.filename.encode("utf-8", "surrogateescape")
        + b"\0"
        + request.mode.encode("ascii")
        + b"\0"
        + _options_bytes(request.options)
    )


def encode_data(block: int, data: bytes) -> bytes:
    return HEADER.pack(Opcode.DATA, block & MAX_BLOCK) + data


def data_header(block: int) -> bytes:
    """The 4-byte header of DATA *block* (rolled over past 65535)."""
    return HEADER.pack(Opcode.DATA, block & MAX_BLOCK)


def encode_ack(block: int) -> bytes:
    return HEADER.pack(Opcode.ACK, block & MAX_BLOCK)


def encode_error(code: int, message: str) -> bytes:
    return HEADER.pack(Opcode.ERROR, code) + message.encode("utf-8", "replace") + b"\0"


def encode_oack(options: tuple[tuple[str, str], ...]) -> bytes:
    return HEADER.pack(Opcode.OACK, 0)[:2] + _options_bytes(options)
