"""Watch DHCP, TFTP and HTTP on one interface: JSON events and a pcap.

Run inside the server's namespace (``ip netns exec NS python3 sniff.py TAP...
--events FILE --pcap FILE``) on the taps of the VMs: every frame a VM sends or
receives crosses its tap once, whichever host on the bridge it talks to (a
frame forwarded between two bridge ports never reaches the bridge device
itself). A broadcast leaves by every tap: its copies are dropped. It prints
``ready`` once capturing, then writes
one JSON object a line per DHCP message, TFTP request, option ack, error,
first and last data block of each transfer, HTTP request, response header
and completed response body (on any TCP port: a connection is HTTP once the
VM sends a request line on it), the first datagram of any other UDP flow,
and ICMP unreachable. Times are ``time.monotonic()`` of the kernel's receive
timestamp, so the parent process can subtract its own ``monotonic()`` of the
VM start.

The pcap holds every DHCP packet, TFTP control packet, other UDP datagram,
HTTP request and response header and TCP control segment whole, and the
first 96 bytes of TFTP data packets and of TCP segments that carry a body:
enough for ``tshark -r`` when a boot fails, and to show that a boot used no
TFTP at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
DHCP_PORTS = frozenset({67, 68, 4011})
DHCP_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK",
              7: "RELEASE", 8: "INFORM"}
TFTP_OPS = {1: "RRQ", 2: "WRQ", 3: "DATA", 4: "ACK", 5: "ERROR", 6: "OACK"}
TEXT_OPTIONS = {60, 66, 67, 77}
HEX_OPTIONS = {43, 97, 175}
DATA_SNAP = 96
DUPLICATE_WINDOW = 0.5  # seconds: a flooded broadcast's copies arrive together
FRAME_MAX = 70000  # a GSO frame may exceed 64 KiB by its headers (below malloc's mmap)
HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"OPTIONS ")
SEQ_MOD = 1 << 32
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


@dataclass
class Transfer:
    """One TFTP read, keyed by the client's address and port."""

    file: str
    start: float
    blksize: int = 512
    bytes: int = 0
    last_block: int = -1
    done: bool = False
    last_ack: float | None = None  # the client's last ACK, not yet answered
    last_data: float | None = None  # the server's last DATA, not yet acknowledged
    server_s: float = 0.0  # sum of ACK -> next DATA: the server's share
    client_s: float = 0.0  # sum of DATA -> ACK: the client's (and the wire's)


def seq_ge(a: int, b: int) -> bool:
    """TCP sequence number *a* is at or after *b* (modulo 2**32)."""
    return (a - b) % SEQ_MOD < SEQ_MOD // 2


@dataclass
class HttpExchange:
    """One request on an HTTP connection and the response to it."""

    method: str
    path: str
    start: float  # the request
    code: int = 0
    length: int | None = None  # Content-Length; None: until the server's FIN
    body_start: int | None = None  # sequence number of the body's first byte
    server_s: float = 0.0  # time the server owed data with nothing in flight
    idle_since: float | None = None


@dataclass
class HttpConnection:
    """A TCP connection on which the VM sent an HTTP request."""

    pending: list[HttpExchange]
    current: HttpExchange | None = None  # the response being received
    sent_max: int | None = None  # highest sequence number the server sent, + 1
    request_seq: int | None = None  # of the VM's last request (a resent one has it too)


def http_head(payload: bytes) -> tuple[str, dict[str, str], int] | None:
    """(first line, lower-case headers, header length) of a request or
    response that starts this segment and whose header it holds whole."""
    end = payload.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = payload[:end].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return lines[0], headers, end + 4


class PcapWriter:
    """Classic libpcap format, Ethernet link type."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        stream.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))

    def write(self, wall_ns: int, frame: bytes, snap: int | None = None) -> None:
        data = frame if snap is None else frame[:snap]
        sec, nsec = divmod(wall_ns, 1_000_000_000)
        self.stream.write(struct.pack("<IIII", sec, nsec, len(data), len(frame)) + data)


def ip_text(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw[:6])


def dhcp_options(payload: bytes) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    pos = 240
    while pos < len(payload):
        code = payload[pos]
        if code == 255:
            break
        if code == 0:
            pos += 1
            continue
        if pos + 1 >= len(payload):
            break
        length = payload[pos + 1]
        options[code] = options.get(code, b"") + payload[pos + 2:pos + 2 + length]
        pos += 2 + length
    return options


def option_values(options: dict[int, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code, value in options.items():
        if code in TEXT_OPTIONS:
            out[str(code)] = value.rstrip(b"\0").decode("latin-1")
        elif code in HEX_OPTIONS:
            out[str(code)] = value.hex()
        elif code == 93 and len(value) >= 2:
            out["93"] = int.from_bytes(value[:2], "big")
        elif code in (50, 54) and len(value) == 4:
            out[str(code)] = ip_text(value)
    return out


def cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1")


def dhcp_event(payload: bytes) -> dict[str, Any] | None:
    if len(payload) < 240 or payload[236:240] != b"\x63\x82\x53\x63":
        return None
    options = dhcp_options(payload)
    kind = options.get(53, b"\0")[0] if options.get(53) else 0
    return {
        "proto": "dhcp", "type": DHCP_TYPES.get(kind, f"BOOTP{payload[0]}"),
        "op": payload[0], "xid": payload[4:8].hex(), "mac": mac_text(payload[28:34]),
        "ciaddr": ip_text(payload[12:16]), "yiaddr": ip_text(payload[16:20]),
        "siaddr": ip_text(payload[20:24]), "sname": cstring(payload[44:108]),
        "file": cstring(payload[108:236]), "opt": option_values(options),
    }


def tftp_strings(payload: bytes) -> list[str]:
    return [part.decode("latin-1") for part in payload[2:].split(b"\0")][:-1]


class Sniffer:
    """Turns frames into events; remembers TFTP transfers."""

    def __init__(self, events: IO[str], pcap: PcapWriter) -> None:
        self.events = events
        self.pcap = pcap
        self.transfers: dict[tuple[str, int], Transfer] = {}
        self.http: dict[tuple[str, int, str, int], HttpConnection] = {}
        self.udp_flows: set[tuple[str, int, str, int]] = set()

    def emit(self, t: float, event: dict[str, Any]) -> None:
        event["t"] = round(t, 4)
        self.events.write(json.dumps(event) + "\n")
        self.events.flush()

    def frame(self, t: float, wall_ns: int, frame: bytes) -> None:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            return
        ihl = (frame[14] & 0x0F) * 4
        if struct.unpack_from("!H", frame, 20)[0] & 0x1FFF:
            return  # a later fragment
        src, dst = ip_text(frame[26:30]), ip_text(frame[30:34])
        if frame[23] == 1:
            self.icmp(t, wall_ns, frame, 14 + ihl)
            return
        if frame[23] == 6:
            self.tcp(t, wall_ns, frame, 14 + ihl, src, dst)
            return
        if frame[23] != 17 or len(frame) < 14 + ihl + 8:
            return
        sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
        payload = frame[14 + ihl + 8:]
        base = {"src": f"{src}:{sport}", "dst": f"{dst}:{dport}",
                "eth_src": mac_text(frame[6:12]), "eth_dst": mac_text(frame[0:6])}
        if sport in DHCP_PORTS and dport in DHCP_PORTS:
            self.pcap.write(wall_ns, frame)
            event = dhcp_event(payload)
            if event is not None:
                self.emit(t, {**base, **event})
        elif dport == 69:
            self.pcap.write(wall_ns, frame)
            self.request(t, base, (src, sport), payload)
        elif (src, sport) in self.transfers or (dst, dport) in self.transfers:
            client = (src, sport) if (src, sport) in self.transfers else (dst, dport)
            self.tftp(t, wall_ns, frame, base, self.transfers[client], payload)
        elif sport == 69:  # from a TFTP server's well-known port, not to a known transfer
            self.pcap.write(wall_ns, frame)
            op = TFTP_OPS.get(int.from_bytes(payload[:2], "big"), "?")
            self.emit(t, {**base, "proto": "tftp", "op": op})
        else:
            self.pcap.write(wall_ns, frame)
            flow = (src, sport, dst, dport)
            if flow not in self.udp_flows:
                self.udp_flows.add(flow)
                self.emit(t, {**base, "proto": "udp", "size": len(payload)})

    # --- HTTP -----------------------------------------------------------------
    def tcp(self, t: float, wall_ns: int, frame: bytes, offset: int, src: str,
            dst: str) -> None:
        if len(frame) < offset + 20:
            return
        sport, dport, seq, ack = struct.unpack_from("!HHII", frame, offset)
        flags = frame[offset + 13]
        total = struct.unpack_from("!H", frame, 16)[0]
        end = min(len(frame), 14 + total) if total else len(frame)
        payload = frame[offset + (frame[offset + 12] >> 4) * 4:end]
        base = {"src": f"{src}:{sport}", "dst": f"{dst}:{dport}",
                "eth_src": mac_text(frame[6:12]), "eth_dst": mac_text(frame[0:6])}
        key = (src, sport, dst, dport)
        if payload.startswith(HTTP_METHODS):
            self.pcap.write(wall_ns, frame)
            conn = self.http.setdefault(key, HttpConnection([]))
            if conn.request_seq != seq:  # not a retransmission of the last request
                conn.request_seq = seq
                self.http_request(t, base, conn, payload)
        elif key in self.http:
            self.pcap.write(wall_ns, frame, DATA_SNAP if payload else None)
            if flags & TCP_ACK:
                self.client_ack(t, self.http[key], ack)
        elif (dst, dport, src, sport) in self.http:
            conn = self.http[(dst, dport, src, sport)]
            header = self.http_response(t, base, conn, seq, payload)
            self.pcap.write(wall_ns, frame, None if header or not payload else DATA_SNAP)
            if payload:
                self.server_data(t, base, conn, (seq + len(payload)) % SEQ_MOD)
            if flags & (TCP_FIN | TCP_RST):
                self.server_close(t, base, conn, (seq + len(payload)) % SEQ_MOD)
        else:
            self.pcap.write(wall_ns, frame, DATA_SNAP if payload else None)

    def http_request(self, t: float, base: dict[str, Any], conn: HttpConnection,
                payload: bytes) -> None:
        line = payload.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = line.partition(" ")
        path = rest.rsplit(" ", 1)[0] if " HTTP/" in rest else rest
        head = http_head(payload)
        event: dict[str, Any] = {**base, "proto": "http", "op": method, "file": path}
        if head is not None and "range" in head[1]:
            event["range"] = head[1]["range"]
        exchange = HttpExchange(method, path, t, idle_since=t)
        conn.pending.append(exchange)
        self.emit(t, event)

    def http_response(self, t: float, base: dict[str, Any], conn: HttpConnection, seq: int,
                 payload: bytes) -> bool:
        """A response header at the start of this segment: True if so."""
        if conn.current is not None or not conn.pending or not payload.startswith(b"HTTP/1."):
            return False
        head = http_head(payload)
        if head is None:
            return False
        status, headers, length = head
        ex = conn.pending.pop(0)
        words = status.split()
        ex.code = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
        if ex.idle_since is not None:
            ex.server_s += t - ex.idle_since
            ex.idle_since = None
        event = {**base, "proto": "http", "op": "STATUS", "file": ex.path,
                 "method": ex.method, "code": ex.code, "wait": round(t - ex.start, 4)}
        for name in ("content-length", "content-range", "connection"):
            if name in headers:
                event[name] = headers[name]
        self.emit(t, event)
        size = headers.get("content-length", "")
        ex.length = int(size) if size.isdigit() else None
        if ex.method == "HEAD" or ex.code in (204, 304) or ex.length == 0:
            return True
        ex.body_start = (seq + length) % SEQ_MOD
        conn.current = ex
        return True

    def server_data(self, t: float, base: dict[str, Any], conn: HttpConnection,
                    seg_end: int) -> None:
        if conn.sent_max is None or seq_ge(seg_end, conn.sent_max):
            conn.sent_max = seg_end
        ex = conn.current
        if ex is None or ex.body_start is None:
            return
        if ex.idle_since is not None:
            ex.server_s += t - ex.idle_since
            ex.idle_since = None
        got = (conn.sent_max - ex.body_start) % SEQ_MOD
        if ex.length is not None and got >= ex.length:
            self.http_done(t, base, conn, ex.length)

    def client_ack(self, t: float, conn: HttpConnection, ack: int) -> None:
        """All the server sent is acknowledged, the body is not complete:
        from now on the server owes data (its share, as TFTP's ACK -> DATA)."""
        ex = conn.current
        if (ex is not None and ex.idle_since is None and conn.sent_max is not None
                and seq_ge(ack, conn.sent_max)):
            ex.idle_since = t

    def server_close(self, t: float, base: dict[str, Any], conn: HttpConnection,
                     seg_end: int) -> None:
        ex = conn.current
        if ex is not None and ex.body_start is not None:
            self.http_done(t, base, conn, (seg_end - ex.body_start) % SEQ_MOD, closed=True)

    def http_done(self, t: float, base: dict[str, Any], conn: HttpConnection, size: int,
                  closed: bool = False) -> None:
        ex = conn.current
        assert ex is not None
        conn.current = None
        event = {**base, "proto": "http", "op": "DONE", "file": ex.path, "method": ex.method,
                 "code": ex.code, "bytes": size, "seconds": round(t - ex.start, 3),
                 "server_s": round(ex.server_s, 3)}
        if closed and ex.length is not None and size < ex.length:
            event["short"] = True  # the server closed before the whole body
        self.emit(t, event)

    def request(self, t: float, base: dict[str, Any], client: tuple[str, int],
                payload: bytes) -> None:
        op = TFTP_OPS.get(int.from_bytes(payload[:2], "big"), "?")
        parts = tftp_strings(payload)
        if op not in ("RRQ", "WRQ") or not parts:
            self.emit(t, {**base, "proto": "tftp", "op": op})
            return
        options = dict(zip(parts[2::2], parts[3::2], strict=False))
        self.transfers[client] = Transfer(parts[0], t)
        self.emit(t, {**base, "proto": "tftp", "op": op, "file": parts[0],
                      "options": options})

    def tftp(self, t: float, wall_ns: int, frame: bytes, base: dict[str, Any],
             tr: Transfer, payload: bytes) -> None:
        op = TFTP_OPS.get(int.from_bytes(payload[:2], "big"), "?")
        self.pcap.write(wall_ns, frame, DATA_SNAP if op in ("DATA", "ACK") else None)
        event = {**base, "proto": "tftp", "op": op, "file": tr.file}
        if op == "OACK":
            parts = tftp_strings(payload)
            options = dict(zip(parts[::2], parts[1::2], strict=False))
            tr.blksize = int(options.get("blksize", tr.blksize))
            self.emit(t, {**event, "options": options})
        elif op == "ERROR":
            code = int.from_bytes(payload[2:4], "big")
            self.emit(t, {**event, "code": code, "message": cstring(payload[4:])})
        elif op == "DATA":
            self.data(t, event, tr, payload)
        elif op == "ACK" and tr.last_data is not None:
            tr.client_s += t - tr.last_data
            tr.last_data, tr.last_ack = None, t

    def data(self, t: float, event: dict[str, Any], tr: Transfer, payload: bytes) -> None:
        block, size = int.from_bytes(payload[2:4], "big"), len(payload) - 4
        expected = 1 if tr.last_block < 0 else (tr.last_block + 1) & 0xFFFF
        if block != expected or tr.done:
            return  # a retransmission (lock-step or a resent window)
        if tr.last_block < 0:
            self.emit(t, {**event, "op": "DATA1", "size": size})
        if tr.last_ack is not None:
            tr.server_s += t - tr.last_ack
        tr.last_ack, tr.last_data = None, t
        tr.last_block, tr.bytes = block, tr.bytes + size
        if size < tr.blksize:
            tr.done = True
            self.emit(t, {**event, "op": "DONE", "bytes": tr.bytes,
                          "seconds": round(t - tr.start, 3), "server_s": round(tr.server_s, 3),
                          "client_s": round(tr.client_s, 3)})

    def icmp(self, t: float, wall_ns: int, frame: bytes, offset: int) -> None:
        if len(frame) < offset + 8 + 28 or frame[offset] != 3:
            return
        inner = offset + 8
        inner_ihl = (frame[inner] & 0x0F) * 4
        if frame[inner + 9] != 17 or len(frame) < inner + inner_ihl + 4:
            return
        self.pcap.write(wall_ns, frame)
        sport, dport = struct.unpack_from("!HH", frame, inner + inner_ihl)
        self.emit(t, {"proto": "icmp", "type": 3, "code": frame[offset + 1],
                      "src": ip_text(frame[26:30]),
                      "about": f"{ip_text(frame[inner + 12:inner + 16])}:{sport}->"
                               f"{ip_text(frame[inner + 16:inner + 20])}:{dport}"})


def open_socket(iface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((iface, 0))
    return sock


def receive(sock: socket.socket) -> tuple[int, bytes]:
    """One frame and its kernel receive time (wall clock, ns)."""
    frame, ancillary, _flags, _addr = sock.recvmsg(FRAME_MAX, 64)
    wall_ns = time.time_ns()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            wall_ns = sec * 1_000_000_000 + nsec
    return wall_ns, frame


class Copies:
    """Drops the copies of a broadcast that the bridge floods to every tap."""

    def __init__(self) -> None:
        self.seen: dict[bytes, float] = {}

    def duplicate(self, frame: bytes, t: float) -> bool:
        if not frame[0] & 1:  # unicast: it crosses one tap only
            return False
        self.seen = {k: v for k, v in self.seen.items() if t - v < DUPLICATE_WINDOW}
        if frame in self.seen:
            return True
        self.seen[frame] = t
        return False


def run(ifaces: list[str], events_path: str, pcap_path: str) -> None:
    socks = [open_socket(iface) for iface in ifaces]
    offset = time.monotonic() - time.time()
    copies = Copies()
    with open(events_path, "a", encoding="utf-8") as events, open(pcap_path, "wb") as raw:
        sniffer = Sniffer(events, PcapWriter(raw))
        print("ready", flush=True)
        try:
            while True:
                readable, _, _ = select.select(socks, [], [])
                for sock in readable:
                    wall_ns, frame = receive(sock)
                    t = wall_ns / 1e9 + offset
                    if not copies.duplicate(frame, t):
                        sniffer.frame(t, wall_ns, frame)
        finally:
            raw.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ifaces", nargs="+")
    parser.add_argument("--events", required=True)
    parser.add_argument("--pcap", required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        run(args.ifaces, args.events, args.pcap)


if __name__ == "__main__":
    main()
