"""Access control (HTTP, MAC and UUID lists) and UDP notifications.

The HTTP service and the UDP listener are sockets of this test process,
created inside the server's namespace (``ns_socket``); the DHCP client is a
scripted one (``Prober``) so that delays can be measured exactly.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from dhcplab import DhcpLab, Prober, lab_session
from netlab import NetLab, ns_socket

from pybootd.dhcp.options import DhcpOption, MessageType

pytestmark = [pytest.mark.netns, pytest.mark.interop]

UUID_TEXT = "4C4C4544-0042-3510-8051-B4C04F4D3132"  # as dmidecode prints it
UUID_OPTION = bytes.fromhex("00" "44454c4c" "4200" "1035" "8051b4c04f4d3132")
OTHER_UUID_OPTION = bytes(17)


def mac(n: int) -> bytes:
    return bytes((2, 0, 0, 0, 0, n))


def pxe(uuid: bytes = UUID_OPTION) -> dict[int, bytes]:
    return {DhcpOption.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016",
            DhcpOption.CLIENT_ARCH: bytes((0, 7)), DhcpOption.CLIENT_UUID: uuid}


class AclHttp:
    """A real HTTP access service: per MAC, a status and a delay."""

    def __init__(self, ns: str) -> None:
        self.policy: dict[str, tuple[int, float]] = {}
        self.seen: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server calls it by this name
                owner.seen.append(self.path)
                query = parse_qs(urlsplit(self.path).query)
                status, delay = owner.policy.get(query.get("mac", [""])[0], (404, 0.0))
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        sock = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.server.daemon_threads = True
        self.port = sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def dlab(lab: NetLab, tmp_path: Path) -> Iterator[DhcpLab]:
    with lab_session(lab, tmp_path / "dhcp", start=False) as d:
        yield d


@pytest.fixture
def http(dlab: DhcpLab) -> Iterator[AclHttp]:
    service = AclHttp(dlab.server_ns)
    try:
        yield service
    finally:
        service.close()


def prober(d: DhcpLab, name: str = "probe") -> Prober:
    ns, ifname = d.client(name)
    return Prober(ns, ifname)


def test_http_access_allowed_denied_timeout_slow(dlab: DhcpLab, http: AclHttp) -> None:
    dlab.write_config(
        bootp={"access": "http", "timeout": "1.5"},
        http={"location": f"http://127.0.0.1:{http.port}/", "pxe": "boot", "dhcp": "linux"},
    )
    dlab.start_server()
    http.policy = {
        "02-00-00-00-00-01": (200, 0.0),  # allowed
        "02-00-00-00-00-02": (403, 0.0),  # denied
        "02-00-00-00-00-03": (200, 4.0),  # answers after the timeout: ignored
        "02-00-00-00-00-04": (200, 1.0),  # slow but in time
        "02-00-00-00-00-05": (401, 0.0),  # denied
        "02-00-00-00-00-06": (500, 0.0),  # any other answer: ignored
    }
    p = prober(dlab)
    slow = p.send(MessageType.DISCOVER, mac(4))
    late = p.send(MessageType.DISCOVER, mac(3))
    allowed = p.send(MessageType.DISCOVER, mac(1), pxe())
    denied = [p.send(MessageType.DISCOVER, mac(n)) for n in (2, 5, 6)]
    replies = p.collect(3.0)
    assert allowed in replies and replies[allowed][0] < 0.5, replies  # not held up by slow
    assert slow in replies and 0.9 <= replies[slow][0] < 2.0
    assert late not in replies
    assert not set(denied) & set(replies)
    assert "/boot?mac=02-00-00-00-00-01&uuid=" + UUID_TEXT in http.seen
    assert "/linux?mac=02-00-00-00-00-02" in http.seen

    # Answers are cached: asking again sends no new query.
    queries = len(http.seen)
    again = p.send(MessageType.DISCOVER, mac(1), pxe())
    assert again in p.collect(1.0)
    assert len(http.seen) == queries
    p.close()


def test_mac_list_and_notifications(dlab: DhcpLab) -> None:
    listener = ns_socket(dlab.server_ns, socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    dlab.write_config(
        bootp={"access": "mac", "notify": f"127.0.0.1:1, 127.0.0.1:{port}",
               "boot_file": "pxelinux.0"},
        bootfile={"efi-x64": "grubx64.efi"},
        mac={"02-00-00-00-00-01": "enable", "02:00:00:00:00:02": "disable"},
    )
    dlab.start_server()
    p = prober(dlab)
    ok = p.send(MessageType.DISCOVER, mac(1), pxe())
    off = p.send(MessageType.DISCOVER, mac(2), pxe())
    unlisted = p.send(MessageType.DISCOVER, mac(3))
    replies = p.collect(1.5)
    assert set(replies) == {ok}
    assert replies[ok][0] < 0.5  # the dead notify target (port 1) delays nothing
    offer = replies[ok][1]
    request = p.send(MessageType.REQUEST, mac(1), {
        **pxe(), DhcpOption.SERVER_ID: bytes((198, 51, 100, 1)),
        DhcpOption.REQUESTED_IP: offer.yiaddr.packed})
    assert p.collect(1.5)[request][1].message_type == MessageType.ACK
    del off, unlisted
    server_id: dict[int, bytes] = {DhcpOption.SERVER_ID: bytes((198, 51, 100, 1))}
    wrong = p.send(MessageType.REQUEST, mac(1), {  # INIT-REBOOT for another address
        **pxe(), DhcpOption.REQUESTED_IP: bytes((198, 51, 100, 149))})
    assert p.collect(1.5)[wrong][1].message_type == MessageType.NAK
    p.send(MessageType.DECLINE, mac(1), {**server_id, DhcpOption.REQUESTED_IP: offer.yiaddr.packed})
    second = p.send(MessageType.DISCOVER, mac(1), pxe())
    new_offer = p.collect(1.5)[second][1]
    assert new_offer.yiaddr != offer.yiaddr  # the declined address is quarantined
    again = p.send(MessageType.REQUEST, mac(1), {
        **pxe(), **server_id, DhcpOption.REQUESTED_IP: new_offer.yiaddr.packed})
    assert p.collect(1.5)[again][1].message_type == MessageType.ACK
    p.send(MessageType.RELEASE, mac(1), server_id, ciaddr=new_offer.yiaddr)

    listener.settimeout(1.5)
    lines: list[str] = []
    try:
        while len(lines) < 100:
            lines.append(listener.recv(2048).decode())
    except TimeoutError:
        pass
    listener.close()
    p.close()
    events = [line.split()[1] for line in lines]
    # Exactly one line per event, also for those that get no reply.
    assert events.count("nak") == 1 and events.count("decline") == 1, lines
    assert events.count("release") == 1 and events.count("ack") == 2, lines
    ip, ip2 = str(offer.yiaddr), str(new_offer.yiaddr)
    remembered = f"uuid={UUID_TEXT} arch=- file=-\n"  # the UUID its PXE requests showed
    assert f"pybootd release mac=02:00:00:00:00:01 ip={ip2} {remembered}" in lines
    assert f"pybootd decline mac=02:00:00:00:00:01 ip={ip} {remembered}" in lines
    who = f"uuid={UUID_TEXT} arch=efi-x64"
    assert f"pybootd discover mac=02:00:00:00:00:01 ip=- {who} file=-\n" in lines
    assert f"pybootd offer mac=02:00:00:00:00:01 ip={ip} {who} file=grubx64.efi\n" in lines
    assert f"pybootd request mac=02:00:00:00:00:01 ip={ip} {who} file=-\n" in lines
    assert f"pybootd ack mac=02:00:00:00:00:01 ip={ip} {who} file=grubx64.efi\n" in lines
    assert f"pybootd denied mac=02:00:00:00:00:02 ip=- {who} file=-\n" in lines
    assert "pybootd denied mac=02:00:00:00:00:03 ip=- uuid=- arch=- file=-\n" in lines


def test_uuid_list_as_dmidecode_prints_it(dlab: DhcpLab) -> None:
    dlab.write_config(bootp={"access": "uuid"}, uuid={UUID_TEXT.lower(): "enable"})  # any case
    dlab.start_server()
    p = prober(dlab)
    ok = p.send(MessageType.DISCOVER, mac(1), pxe(UUID_OPTION))
    other = p.send(MessageType.DISCOVER, mac(2), pxe(OTHER_UUID_OPTION))
    no_uuid = p.send(MessageType.DISCOVER, mac(3))
    replies = p.collect(1.5)
    assert set(replies) == {ok}, (other, no_uuid)
    # The installer's plain DHCP from the same machine: judged by its PXE UUID.
    later = p.send(MessageType.DISCOVER, mac(1))
    assert later in p.collect(1.5)
    p.close()
