"""A server namespace running pybootd's DHCP service and client namespaces.

Used by the DHCP interop tests and by ``scripts/capture_dhcp_vectors.py``.
Addresses: 198.51.100.0/24 (RFC 5737) inside namespaces only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab import REPO, NetLab, ns_socket, wait_for

from pybootd.dhcp.options import DhcpOption, MessageType
from pybootd.dhcp.packet import DhcpPacket, encode_packet, parse_packet_untrusted

__all__ = ["MAC", "MAC_TEXT", "REPO", "DhcpLab", "Prober", "datagram", "events",
           "parse_perfdhcp", "perfdhcp_drop_ratio", "wait_event"]

SERVER_CIDR = "198.51.100.1/24"
POOL_START = "198.51.100.100"
MAC = bytes.fromhex("525400123456")
MAC_TEXT = "52:54:00:12:34:56"


def datagram(kind: MessageType | None, *, mac: bytes = MAC,
             options: dict[int, bytes] | None = None, xid: int = 0x1234, **fields: Any) -> bytes:
    """A client's request as it goes on the wire (*kind* None: a BOOTP request)."""
    opts: dict[int, bytes] = {}
    if kind is not None:
        opts[DhcpOption.MESSAGE_TYPE] = bytes((kind,))
    opts.update(options or {})
    packet = DhcpPacket(op=1, xid=xid, chaddr=mac, options=opts,
                        dhcp=kind is not None or bool(options), **fields)
    return encode_packet(packet)

CLIENT_SCRIPT = """#!/bin/sh
# Records every client event as "EVENT IP" and configures the address the
# way the stock scripts would (udhcpc: $1/$ip, dhclient: $reason/$new_ip_address).
log={log}
event="${{reason:-$1}}"
addr="${{new_ip_address:-$ip}}"
case "$event" in
  bound|renew|BOUND|RENEW|REBIND|REBOOT)
    ip addr flush dev "$interface"; ip addr add "$addr/24" dev "$interface" ;;
  deconfig|RELEASE|EXPIRE|STOP|PREINIT)
    ip addr flush dev "$interface" ;;
esac
# Last: a test that sees the event finds the address already set.
echo "$event $addr" >> "$log"
exit 0
"""


@dataclass
class DhcpLab:
    """pybootd in namespace ``srv`` on a bridge; clients in their own namespaces."""

    lab: NetLab
    workdir: Path
    config: dict[str, dict[str, str]] = field(default_factory=dict)
    server_ns: str = ""
    bridge: str = ""
    server: subprocess.Popen[Any] | None = None
    clients: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (ns, ifname)

    def setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.server_ns = self.lab.ns("srv")
        self.bridge = self.lab.bridge(self.server_ns, f"br{self.lab.tag}"[:15], SERVER_CIDR)

    @property
    def lease_file(self) -> Path:
        return self.workdir / "state" / "leases.sqlite"

    def client(self, name: str) -> tuple[str, str]:
        """A client namespace with one interface on the server's bridge."""
        ns = self.lab.ns(name[:6])
        inside = f"c{name[:5]}{self.lab.tag}"[:15]
        outside = f"p{name[:5]}{self.lab.tag}"[:15]
        self.lab.veth(ns, None, self.server_ns, None, names=(inside, outside))
        self.lab.run(self.server_ns, ["ip", "link", "set", outside, "master", self.bridge])
        self.clients[name] = (ns, inside)
        return ns, inside

    def write_config(self, **sections: dict[str, str]) -> Path:
        config: dict[str, dict[str, str]] = {
            "logger": {"level": "debug"},
            "daemon": {"state_dir": str(self.workdir / "state")},
            "bootp": {
                "pool_start": POOL_START,
                "pool_count": "50",
                "allow_simple_dhcp": "on",
                "lease_time": "300",
                "lease_file": str(self.lease_file),
            },
        }
        for name, values in sections.items():
            config.setdefault(name, {}).update(values)
        text = "".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
            for name, values in config.items()
        )
        path = self.workdir / "pybootd.ini"
        path.write_text(text)
        self.config = config
        return path

    def start_server(self, timeout: float = 20, only: tuple[str, ...] = ("-p",)) -> None:
        """Start ``pybootd -c CONFIG -p`` (DHCP only, as the daemon user; *only*
        ``()``: every service the config has); wait until ready."""
        path = self.workdir / "pybootd.ini"
        log_path = self.workdir / "server.log"
        start = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            self.server = self.lab.popen(
                self.server_ns, [sys.executable, "-m", "pybootd", "-c", str(path), *only],
                stdout=log, stderr=log, cwd=str(REPO))
        deadline = time.monotonic() + timeout
        while "pybootd ready" not in log_path.read_text(errors="replace")[start:]:
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pybootd did not start:\n{self.server_log()}")
            time.sleep(0.02)

    def stop_server(self, sig: int = signal.SIGTERM) -> int:
        assert self.server is not None
        code = self.lab.stop(self.server, sig)
        self.server = None
        return code

    def server_log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stored_leases(self) -> dict[str, tuple[str, str]]:
        """``{mac: (ip, state)}`` read straight from the SQLite file."""
        from ipaddress import IPv4Address

        with sqlite3.connect(str(self.lease_file), timeout=5) as db:
            rows = db.execute("SELECT ip, mac, state FROM leases WHERE mac IS NOT NULL")
            return {mac: (str(IPv4Address(ip)), state) for ip, mac, state in rows}

    def mac_of(self, name: str) -> str:
        ns, ifname = self.clients[name]
        return self.lab.run(ns, ["cat", f"/sys/class/net/{ifname}/address"]).stdout.strip()

    def address_of(self, name: str) -> str | None:
        ns, ifname = self.clients[name]
        out = self.lab.run(ns, ["ip", "-4", "-o", "addr", "show", "dev", ifname]).stdout
        for word in out.split():
            if "/" in word and word[0].isdigit():
                return word.split("/")[0]
        return None

    def script(self, name: str) -> tuple[Path, Path]:
        """A client hook script and the event log it appends to."""
        log = self.workdir / f"{name}.events"
        log.write_text("")
        script = self.workdir / f"{name}.sh"
        script.write_text(textwrap.dedent(CLIENT_SCRIPT.format(log=log)))
        script.chmod(0o755)
        return script, log


@contextlib.contextmanager
def lab_session(lab: NetLab, workdir: Path, *, start: bool = True,
                log_tail: int = 20000) -> Iterator[DhcpLab]:
    """A DhcpLab set up (and its server started when *start*); the server is
    stopped and its log printed whatever the test did."""
    d = DhcpLab(lab, workdir)
    d.setup()
    if start:
        d.write_config()
        d.start_server()
    try:
        yield d
    finally:
        if d.server is not None:
            d.stop_server()
        print(d.server_log()[-log_tail:])


def events(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.strip()]


def wait_event(log: Path, word: str, timeout: float = 30, after: int = 0) -> str:
    """Wait for a line whose first word is *word* (past the first *after* lines)."""

    def found() -> str | None:
        for line in events(log)[after:]:
            if line.split()[0] == word:
                return line
        return None

    result: str = wait_for(found, timeout, what=f"client event {word} in {log.name}")
    return result


def parse_perfdhcp(text: str) -> dict[str, dict[str, float]]:
    """perfdhcp's report -> ``{"DISCOVER-OFFER": {"sent packets": ..., ...}, "rate": ...}``."""
    stats: dict[str, dict[str, float]] = {}
    section: dict[str, float] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("***Statistics for:"):
            section = stats.setdefault(line.split(":", 1)[1].strip(" *"), {})
        elif line.startswith("Rate:"):
            stats["rate"] = {"exchanges": float(line.split()[1])}
        elif section is not None and ":" in line:
            key, _, value = line.partition(":")
            words = value.split()
            try:
                section[key.strip()] = float(words[0]) if words else 0.0
            except ValueError:
                continue
    return stats


def perfdhcp_drop_ratio(stats: dict[str, dict[str, float]]) -> float:
    """Full 4-way exchanges lost: 1 - ACKs received / DISCOVERs sent."""
    sent = stats.get("DISCOVER-OFFER", {}).get("sent packets", 0.0)
    acked = stats.get("REQUEST-ACK", {}).get("received packets", 0.0)
    return 1.0 - acked / sent if sent else 1.0


class Prober:
    """A scripted DHCP client on port 68 of a client namespace: exact timings."""

    def __init__(self, ns: str, ifname: str) -> None:
        import socket

        self.sock = ns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        self.sock.bind(("0.0.0.0", 68))
        self.sent: dict[int, float] = {}
        self._xid = 0x5000

    def send(self, kind: MessageType, mac: bytes, options: dict[int, bytes] | None = None,
             to: tuple[str, int] = ("255.255.255.255", 67), **fields: Any) -> int:
        """Send one request (broadcast unless *to* says otherwise); returns its xid."""
        self._xid += 1
        opts = {int(DhcpOption.MESSAGE_TYPE): bytes((kind,)), **(options or {})}
        packet = DhcpPacket(op=1, xid=self._xid, chaddr=mac, options=opts, **fields)
        self.sent[self._xid] = time.monotonic()
        self.sock.sendto(encode_packet(packet), to)
        return self._xid

    def collect_all(self, seconds: float) -> list[tuple[int, DhcpPacket]]:
        """Every reply to one of our xids within *seconds* (several servers may answer)."""
        found: list[tuple[int, DhcpPacket]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                packet = parse_packet_untrusted(self.sock.recv(4096))
            except TimeoutError:
                break
            if packet.op == 2 and packet.xid in self.sent:
                found.append((packet.xid, packet))
        return found

    def collect(self, seconds: float) -> dict[int, tuple[float, DhcpPacket]]:
        """Replies for our xids received within *seconds*: ``{xid: (delay, packet)}``."""
        found: dict[int, tuple[float, DhcpPacket]] = {}
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            packet = parse_packet_untrusted(data)
            if packet.op == 2 and packet.xid in self.sent and packet.xid not in found:
                found[packet.xid] = (time.monotonic() - self.sent[packet.xid], packet)
        return found

    def close(self) -> None:
        self.sock.close()
