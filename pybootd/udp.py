"""What the DHCP and TFTP services share at the socket edge.

``IP_PKTINFO`` (Linux, ip(7)) and ``IPV6_PKTINFO`` (RFC 3542 section 6) tell
a server bound to every address which interface a datagram came in on, and
which local address it was sent to; a server answers from that address and
sends broadcasts out of that interface. Python's socket module lacks the
IPv4 constant and the structures, so they live here, once.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)  # <linux/in.h>
IN_PKTINFO = struct.Struct("=i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
IN6_PKTINFO = struct.Struct("=16sI")  # struct in6_pktinfo: addr, ifindex (RFC 3542 6.1)
PKTINFO_SPACE = socket.CMSG_SPACE(max(IN_PKTINFO.size, IN6_PKTINFO.size))

Ancillary = list[tuple[int, int, bytes]]


@dataclass(frozen=True)
class PacketInfo:
    """Where a datagram arrived: the interface, and the local address to answer
    from (None when the kernel gave none)."""

    ifindex: int
    local: str | None


def packet_info(ancdata: Ancillary) -> PacketInfo | None:
    """The ``IP_PKTINFO`` / ``IPV6_PKTINFO`` of a ``recvmsg``, if any."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= IN_PKTINFO.size:
            # ipi_spec_dst, not ipi_addr: Linux sets it to the destination of
            # a unicast to us and, for a broadcast or multicast (whatever the
            # netmask), to the receiving interface's preferred address (ip(7)).
            # It is 0.0.0.0 only without a route.
            ifindex, spec_dst, _dst = IN_PKTINFO.unpack_from(data)
            local = None if spec_dst == bytes(4) else socket.inet_ntop(socket.AF_INET, spec_dst)
            return PacketInfo(ifindex, local)
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO \
                and len(data) >= IN6_PKTINFO.size:
            dst, ifindex = IN6_PKTINFO.unpack_from(data)
            return PacketInfo(ifindex, socket.inet_ntop(socket.AF_INET6, dst))
    return None


def pktinfo_cmsg(ifindex: int, source: bytes) -> Ancillary:
    """Ancillary data that sends a datagram out of *ifindex* from IPv4 *source*
    (packed), with no route needed (ip(7), IP_PKTINFO on sendmsg)."""
    return [(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(ifindex, source, bytes(4)))]


def format_peer(peer: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """``192.0.2.50:2070`` or ``[2001:db8::1]:2070``: how every log line names a peer."""
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
