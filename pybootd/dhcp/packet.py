"""The BOOTP/DHCP message: fixed header plus options (RFC 951, RFC 2131 section 2).

Sans-IO. :func:`parse_packet_untrusted` takes bytes from the network and
raises only :class:`BadPacket`; :func:`encode_packet` builds a reply that is at
least 300 bytes long (RFC 1542 section 2.1), puts END before the padding and
never uses option overload.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from pybootd.dhcp.options import (
    MAGIC_COOKIE,
    OVERLOAD_FILE,
    OVERLOAD_SNAME,
    DhcpOption,
    MessageType,
    decode_options,
    encode_options,
)
from pybootd.errors import BadPacket

# RFC 2131 figure 1: op htype hlen hops xid secs flags ciaddr yiaddr siaddr
# giaddr chaddr(16) sname(64) file(128); the options field follows.
HEADER = struct.Struct("!BBBBIHHIIII16s64s128s")
HEADER_SIZE = HEADER.size  # 236
MIN_REPLY_SIZE = 300  # RFC 1542 section 2.1: BOOTP relays/clients expect >= 300
BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHERNET = 1
FLAG_BROADCAST = 0x8000  # RFC 2131 section 2, figure 2

ZERO = IPv4Address(0)


@dataclass(frozen=True, slots=True)
class DhcpPacket:
    """One decoded BOOTP/DHCP message. Addresses are IPv4Address."""

    op: int
    xid: int
    chaddr: bytes  # client hardware address, hlen bytes long
    htype: int = HTYPE_ETHERNET
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = ZERO
    yiaddr: IPv4Address = ZERO
    siaddr: IPv4Address = ZERO
    giaddr: IPv4Address = ZERO
    sname: bytes = b""
    file: bytes = b""
    options: Mapping[int, bytes] = field(default_factory=dict)
    dhcp: bool = True  # has the magic cookie (False: plain BOOTP, RFC 951)

    @property
    def message_type(self) -> MessageType | None:
        """Option 53, or None for BOOTP (and unknown values)."""
        raw = self.options.get(DhcpOption.MESSAGE_TYPE)
        if raw is None or len(raw) != 1:
            return None
        try:
            return MessageType(raw[0])
        except ValueError:
            return None

    @property
    def mac(self) -> str:
        """The hardware address as ``aa:bb:cc:dd:ee:ff``."""
        return self.chaddr.hex(":")

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    def address_option(self, code: int) -> IPv4Address | None:
        """A four-byte address option (50, 54), or None when absent or malformed."""
        raw = self.options.get(code)
        return IPv4Address(raw) if raw is not None and len(raw) == 4 else None


def _cstring(raw: bytes) -> bytes:
    """A NUL-terminated fixed field (sname, file)."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def parse_packet_untrusted(data: bytes) -> DhcpPacket:
    """Decode *data*; anything malformed raises :class:`BadPacket` and nothing else."""
    if len(data) < HEADER_SIZE:
        raise BadPacket(f"{len(data)} bytes is shorter than the {HEADER_SIZE}-byte BOOTP header")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file) = HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise BadPacket(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
    if hlen > 16:
        raise BadPacket(f"hlen {hlen} is larger than chaddr (16)")
    options: dict[int, bytes] = {}
    dhcp = data[HEADER_SIZE : HEADER_SIZE + 4] == MAGIC_COOKIE
    if dhcp:
        decode_options(data[HEADER_SIZE + 4 :], options)
        overload = options.get(DhcpOption.OVERLOAD)
        if overload is not None:
            # RFC 2132 section 9.3: file then sname carry more options.
            if len(overload) != 1 or not 1 <= overload[0] <= 3:
                raise BadPacket(f"bad option overload value {overload.hex()}")
            if overload[0] & OVERLOAD_FILE:
                decode_options(file, options)
                file = b""
            if overload[0] & OVERLOAD_SNAME:
                decode_options(sname, options)
                sname = b""
            del options[DhcpOption.OVERLOAD]
    return DhcpPacket(
        op=op,
        htype=htype,
        hops=hops,
        xid=xid,
        secs=secs,
        flags=flags,
        ciaddr=IPv4Address(ciaddr),
        yiaddr=IPv4Address(yiaddr),
        siaddr=IPv4Address(siaddr),
        giaddr=IPv4Address(giaddr),
        chaddr=chaddr[:hlen],
        sname=_cstring(sname),
        file=_cstring(file),
        options=options,
        dhcp=dhcp,
    )


def encode_packet(packet: DhcpPacket, option_order: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """Encode *packet*; options come from *option_order* if given, else ``packet.options``.

    Option 53 is always first (RFC 2131 section 4.1 recommends it early so
    relays and clients find it), and option 82 last (RFC 3046 section 2.1).
    """
    if len(packet.chaddr) > 16 or len(packet.sname) > 63 or len(packet.file) > 127:
        raise ValueError("chaddr, sname or file too long for the BOOTP header")
    header = HEADER.pack(
        packet.op,
        packet.htype,
        len(packet.chaddr),
        packet.hops,
        packet.xid,
        packet.secs,
        packet.flags,
        int(packet.ciaddr),
        int(packet.yiaddr),
        int(packet.siaddr),
        int(packet.giaddr),
        packet.chaddr,
        packet.sname,
        packet.file,
    )
    pairs = option_order or tuple(packet.options.items())
    body = b""
    if packet.dhcp or pairs:
        first = [p for p in pairs if p[0] == DhcpOption.MESSAGE_TYPE]
        last = [p for p in pairs if p[0] == DhcpOption.RELAY_AGENT]
        middle = [p for p in pairs if p[0] not in (DhcpOption.MESSAGE_TYPE,
                                                   DhcpOption.RELAY_AGENT)]
        body = MAGIC_COOKIE + encode_options([*first, *middle, *last])
    data = header + body
    if len(data) < MIN_REPLY_SIZE:
        data += bytes(MIN_REPLY_SIZE - len(data))
    return data
