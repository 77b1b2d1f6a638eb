"""The packet watcher's HTTP and UDP accounting, on hand-made frames (no VM,
no root): a boot test that asserts "no TFTP" or "the initrd came whole over
HTTP" is only as good as this."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

from boot.sniff import PcapWriter, Sniffer

VM, SERVER = "192.0.2.100", "192.0.2.1"
VM_MAC, SERVER_MAC = b"\x52\x54\x00\x00\x02\x01", b"\x02\x00\x00\x00\x00\x01"
ACK, FIN = 0x10, 0x01


def ip_frame(src: str, dst: str, proto: int, segment: bytes) -> bytes:
    src_mac, dst_mac = (VM_MAC, SERVER_MAC) if src == VM else (SERVER_MAC, VM_MAC)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 0, 0x4000, 64, proto,
                         0, bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return dst_mac + src_mac + b"\x08\x00" + header + segment


def tcp(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, payload: bytes = b"",
        flags: int = ACK) -> bytes:
    segment = struct.pack("!HHIIBBHHH", sport, dport, seq % (1 << 32), ack % (1 << 32),
                          5 << 4, flags, 65535, 0, 0) + payload
    return ip_frame(src, dst, 6, segment)


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    return ip_frame(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
                    + payload)


class Recorder:
    def __init__(self) -> None:
        self.out = io.StringIO()
        self.sniffer = Sniffer(self.out, PcapWriter(io.BytesIO()))

    def feed(self, t: float, frame: bytes) -> None:
        self.sniffer.frame(t, int(t * 1e9), frame)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


def test_http_get_whole_body_and_server_share() -> None:
    """HEAD then GET (sent twice) on one connection, the body in three
    segments, one of them resent; the server owed data 0.5 s (all
    acknowledged, body short)."""
    rec = Recorder()
    seq = 0xFFFFFF00  # the body crosses the 2**32 wrap
    rec.feed(1.0, tcp(VM, 4000, SERVER, 80, 1, seq, b"HEAD /snponly.efi HTTP/1.1\r\n\r\n"))
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n"
    rec.feed(1.1, tcp(SERVER, 80, VM, 4000, seq, 31, head))
    seq += len(head)
    request = b"GET /snponly.efi HTTP/1.1\r\nRange: bytes=0-\r\n\r\n"
    rec.feed(2.0, tcp(VM, 4000, SERVER, 80, 31, seq, request))
    rec.feed(2.05, tcp(VM, 4000, SERVER, 80, 31, seq, request))  # resent: one request
    header = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\nConnection: keep-alive\r\n\r\n"
    rec.feed(2.1, tcp(SERVER, 80, VM, 4000, seq, 0, header + b"x" * 1000))
    body = seq + len(header)
    rec.feed(2.2, tcp(VM, 4000, SERVER, 80, 0, body + 1000))  # all acknowledged
    rec.feed(2.7, tcp(SERVER, 80, VM, 4000, body + 1000, 0, b"y" * 1000))
    rec.feed(2.8, tcp(SERVER, 80, VM, 4000, body + 1000, 0, b"y" * 1000))  # resent
    rec.feed(2.9, tcp(SERVER, 80, VM, 4000, body + 2000, 0, b"z" * 1000))
    events = [e for e in rec.events() if e["proto"] == "http"]
    assert [(e["op"], e["file"]) for e in events] == [
        ("HEAD", "/snponly.efi"), ("STATUS", "/snponly.efi"), ("GET", "/snponly.efi"),
        ("STATUS", "/snponly.efi"), ("DONE", "/snponly.efi")]
    assert events[2]["range"] == "bytes=0-"
    done = events[-1]
    assert (done["bytes"], done["code"], done["seconds"]) == (3000, 200, 0.9)
    assert done["server_s"] == 0.6  # GET -> header 0.1 s, then 0.5 s with nothing in flight
    assert done["eth_dst"] == "52:54:00:00:02:01"


def test_http_body_until_close() -> None:
    """Without Content-Length the body ends with the server's FIN."""
    rec = Recorder()
    rec.feed(1.0, tcp(VM, 4001, SERVER, 8080, 1, 100, b"GET /boot.ipxe HTTP/1.0\r\n\r\n"))
    rec.feed(1.1, tcp(SERVER, 8080, VM, 4001, 100, 29, b"HTTP/1.0 200 OK\r\n\r\n#!ipxe\n"))
    rec.feed(1.2, tcp(SERVER, 8080, VM, 4001, 126, 29, flags=ACK | FIN))
    done = [e for e in rec.events() if e.get("op") == "DONE"]
    assert [(d["file"], d["bytes"]) for d in done] == [("/boot.ipxe", 7)]


def test_tftp_and_other_udp_are_reported() -> None:
    """A request to port 69 is a TFTP event; any other UDP flow is reported
    once (so that "no TFTP" cannot hide a transfer on another port)."""
    rec = Recorder()
    rec.feed(1.0, udp(VM, 2000, SERVER, 69, b"\x00\x01linux\x00octet\x00"))
    rec.feed(1.1, udp(SERVER, 69, VM, 2001, b"\x00\x05\x00\x01nope\x00"))
    rec.feed(1.2, udp(VM, 3000, SERVER, 53, b"dns"))
    rec.feed(1.3, udp(VM, 3000, SERVER, 53, b"dns again"))
    kinds = [(e["proto"], e.get("op"), e["dst"]) for e in rec.events()]
    assert kinds == [("tftp", "RRQ", "192.0.2.1:69"), ("tftp", "ERROR", "192.0.2.100:2001"),
                     ("udp", None, "192.0.2.1:53")]
