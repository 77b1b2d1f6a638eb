"""What the DHCP and TFTP services share at the socket edge: their server
ports, TFTP's transfer ports, where datagrams came in, and sending runs of
datagrams.

``IP_PKTINFO`` (Linux, ip(7)) and ``IPV6_PKTINFO`` (RFC 3542 section 6) tell
a server bound to every address which interface a datagram came in on, and
which local address it was sent to; a server answers from that address and
sends broadcasts out of that interface. Python's socket module lacks the
IPv4 constant and the structures, so they live here, once.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)  # <linux/in.h>
IN_PKTINFO = struct.Struct("=i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
IN6_PKTINFO = struct.Struct("=16sI")  # struct in6_pktinfo: addr, ifindex (RFC 3542 6.1)
PKTINFO_SPACE = socket.CMSG_SPACE(max(IN_PKTINFO.size, IN6_PKTINFO.size))

Ancillary = list[tuple[int, int, bytes]]
Address = tuple[str, int] | tuple[str, int, int, int]  # as the socket module gives them
Buffer = bytes | memoryview
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux value (socket(7))
# UDP GSO (linux/udp.h): one sendmsg, many datagrams of one size.
_SOL_UDP = 17
_UDP_SEGMENT = 103
_GSO_SIZE = struct.Struct("=H")
_NO_GSO = {errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP}
GSO = sys.platform.startswith("linux")


def listen(family: int, host: str, port: int, *, buffer: int, broadcast: bool = False,
           device: str | None = None) -> socket.socket:
    """A non-blocking server port that reports where each datagram came in
    (PKTINFO), with a receive buffer of *buffer* bytes: a room of machines
    switched on at once sends hundreds of requests in a few milliseconds.
    Bound without SO_REUSEADDR or SO_REUSEPORT: a second server on the same
    port (another pybootd, dnsmasq, tftpd-hpa) must fail to start rather than
    share the requests, as dnsmasq refuses too. (An IPv6 socket is V6ONLY, so
    it never conflicts with the IPv4 one on the same port.) Raises OSError."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        # Linux reports twice what was set (socket(7)); less means rmem_max
        # capped it: go beyond when we may (root).
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < buffer:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if device:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class Port:
    """A transfer's own port (its TID, RFC 1350 section 4) as two sockets on
    it: *sock*, connected to the peer, and *stray*, unconnected, which gets
    what any other address sends to the port (Linux gives a datagram to the
    connected socket of a SO_REUSEPORT group only when it comes from its peer).

    Why connected: a send on a connected socket reuses the socket's route
    instead of looking one up per datagram. 100 lock-step clients x 8 MiB at
    blksize 1468 (scripts/bench_tftp.py, busybox, same run, alternated):
    0.71x and 0.67x tftpd-hpa unconnected, 0.92x and 0.88x connected."""

    sock: socket.socket
    stray: socket.socket

    @classmethod
    def open(cls, family: int, local: Address, peer: Address, *, buffer: int) -> Port:
        """A new port on *local* (port 0: the kernel picks a free one), connected
        to *peer*, with send and receive buffers of *buffer*. Raises OSError."""
        sock = socket.socket(family, socket.SOCK_DGRAM)
        stray = socket.socket(family, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
                # A burst from another TID must not overflow it either (a
                # limit, not memory taken: idle, it holds nothing).
                stray.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            sock.bind(local)
            # SO_REUSEPORT once the port is chosen: a socket that sets it only
            # after its bind is never given a port already taken, and only
            # one that sets it too (the stray) may share this one.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            stray.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            stray.bind(sock.getsockname())
            sock.connect(peer)
            sock.setblocking(False)
            stray.setblocking(False)
        except OSError:
            sock.close()
            stray.close()
            raise
        return cls(sock, stray)

    def close(self) -> None:
        self.sock.close()
        self.stray.close()


def ipv6_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


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


def format_peer(peer: Address) -> str:
    """``192.0.2.50:2070`` or ``[2001:db8::1]:2070``: how every log line names a peer."""
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gso_cmsg(size: int) -> Ancillary:
    """The ancillary data of a GSO send: cut into datagrams of *size* bytes."""
    return [(_SOL_UDP, _UDP_SEGMENT, _GSO_SIZE.pack(size))]


class Sender:
    """Sends datagrams, each a sequence of buffers, on a connected socket: each with one
    sendmsg, or runs of up to *batch* datagrams of *size* bytes (the last may
    be shorter) with one UDP GSO send, which the kernel cuts into datagrams
    (``UDP_SEGMENT``, Linux 4.18). Where the route refuses GSO (a datagram
    larger than its MTU, no checksum offload) it sends one by one from then on.

    Why: with a TFTP window of 64 blocks of 1468 bytes the server's CPU per
    block, not the round trip, bounds a transfer, and one system call per
    block was most of that CPU (scripts/bench_tftp.py)."""

    def __init__(self, sock: socket.socket, size: int = 0, batch: int = 1) -> None:
        self.sock, self.size = sock, size
        self.batch = batch if GSO and size else 1
        self.refused: str | None = None  # why the route refused GSO, once it did

    def send(self, out: Sequence[Sequence[Buffer]]) -> int:
        """Send *out* in order; how many went before the send buffer filled
        or an ICMP error came back (the rest are lost as on the wire).
        Raises OSError."""
        i, count, size = 0, len(out), self.size
        try:
            if self.batch == 1:  # lock-step, or no GSO: no run to look for
                for datagram in out:
                    self.sock.sendmsg(datagram)
                    i += 1
                return i
            while i < count:
                end = i
                while end < count and end - i < self.batch and sum(map(len, out[end])) == size:
                    end += 1
                if end < count and i < end < i + self.batch and sum(map(len, out[end])) < size:
                    end += 1  # a shorter one may end a GSO send
                if end - i > 1 and self._send_gso(out[i:end]):
                    i = end
                    continue
                self.sock.sendmsg(out[i])
                i += 1
        except (BlockingIOError, ConnectionRefusedError):
            # A full send buffer, or an ICMP error that an earlier datagram
            # caused (a connected socket reports it on its next send): this
            # datagram is lost as on the wire; the peer or the timer recovers.
            pass
        return i

    def _send_gso(self, run: Sequence[Sequence[Buffer]]) -> bool:
        buffers = [buffer for datagram in run for buffer in datagram]
        try:
            self.sock.sendmsg(buffers, gso_cmsg(self.size))
        except OSError as exc:
            if exc.errno not in _NO_GSO:  # BlockingIOError (EAGAIN) too: not a refusal
                raise
            self.batch, self.refused = 1, exc.strerror or str(exc)
            return False
        return True
