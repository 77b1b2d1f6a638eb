"""A small, strict TFTP client for tests (blocking sockets with timeouts)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from pybootd.tftp.packets import (
    Ack,
    Data,
    Error,
    Oack,
    Opcode,
    Packet,
    Request,
    encode_ack,
    encode_data,
    encode_error,
    encode_oack,
    encode_request,
    parse_packet_untrusted,
)


class TftpFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"ERROR {code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Result:
    data: bytes
    oack: dict[str, str] = field(default_factory=dict)
    server: tuple[str, int] = ("", 0)
    packets: int = 0


class Client:
    def __init__(self, host: str, port: int, timeout: float = 3.0) -> None:
        self.server = (host, port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, name: str, mode: str = "octet",
                options: tuple[tuple[str, str], ...] = (), write: bool = False) -> None:
        opcode = Opcode.WRQ if write else Opcode.RRQ
        self.sock.sendto(encode(Request(opcode, name, mode, options)), self.server)

    def receive(self) -> tuple[Packet, tuple[str, int]]:
        data, addr = self.sock.recvfrom(70000)
        return parse_packet_untrusted(data), addr

    def get(self, name: str, mode: str = "octet",
            options: tuple[tuple[str, str], ...] = (), max_packets: int = 10**7) -> Result:
        """Fetch *name*; windowed if the server grants windowsize."""
        self.request(name, mode, options)
        result = Result(b"")
        blksize, window, expected, chunks = 512, 1, 1, []
        for _ in range(max_packets):
            packet, addr = self.receive()
            result.server = addr
            if isinstance(packet, Error):
                raise TftpFailure(packet.code, packet.message)
            if isinstance(packet, Oack):
                result.oack = dict(packet.options)
                blksize = int(result.oack.get("blksize", 512))
                window = int(result.oack.get("windowsize", 1))
                self.sock.sendto(encode_ack(0), addr)
                continue
            if not isinstance(packet, Data):
                continue
            result.packets += 1
            if packet.block != expected & 0xFFFF:
                self.sock.sendto(encode_ack(expected - 1), addr)
                continue
            chunks.append(packet.data)
            last = len(packet.data) < blksize
            if last or expected % window == 0:
                self.sock.sendto(encode_ack(expected), addr)
            expected += 1
            if last:
                result.data = b"".join(chunks)
                return result
        raise AssertionError("too many packets")

    def put(self, name: str, data: bytes, blksize: int = 512) -> None:
        options = (("blksize", str(blksize)),) if blksize != 512 else ()
        self.request(name, "octet", options, write=True)
        packet, addr = self.receive()
        if isinstance(packet, Error):
            raise TftpFailure(packet.code, packet.message)
        assert isinstance(packet, (Ack, Oack))
        blocks = [data[i:i + blksize] for i in range(0, len(data) + 1, blksize)]
        for number, block in enumerate(blocks, start=1):
            self.sock.sendto(encode(Data(number & 0xFFFF, block)), addr)
            reply, _ = self.receive()
            if isinstance(reply, Error):
                raise TftpFailure(reply.code, reply.message)
            assert isinstance(reply, Ack) and reply.block == number & 0xFFFF


def encode(packet: Packet) -> bytes:
    """Encode any packet (a client's side of the codec)."""
    if isinstance(packet, Request):
        return encode_request(packet)
    if isinstance(packet, Data):
        return encode_data(packet.block, packet.data)
    if isinstance(packet, Ack):
        return encode_ack(packet.block)
    if isinstance(packet, Error):
        return encode_error(packet.code, packet.message)
    return encode_oack(packet.options)
