"""The I/O edge without namespaces: network detection, lease file, ACL, notify."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import requests
from dhcp_helpers import MAC, MAC_TEXT, request

from pybootd.config import parse_config
from pybootd.dhcp.options import DhcpOption, MessageType
from pybootd.dhcp.packet import encode_packet
from pybootd.dhcp.pool import Lease, LeaseState
from pybootd.dhcp.pxe import ClientInfo, client_info
from pybootd.dhcp.responder import ignore, respond
from pybootd.errors import NetworkConfigError, PybootdError
from pybootd.loglimit import LogLimiter
from pybootd.netif import LocalNetwork
from pybootd.runtime import Runtime
from pybootd.server import dhcp as dhcp_service
from pybootd.server import dhcpacl
from pybootd.server.dhcp import DhcpService, _Peer
from pybootd.server.dhcpacl import AccessControl, Verdict
from pybootd.server.leasestore import LeaseStore, read_leases
from pybootd.server.notify import Notifier, format_event

UUID = "4C4C4544-0042-3510-8051-B4C04F4D3132"  # as dmidecode prints it
T0 = 1_700_000_000.0


def runtime(text: str, tmp_path: Path) -> Runtime:
    config = parse_config(text, tmp_path / "pybootd.ini")
    return Runtime(config, asyncio.new_event_loop(), ThreadPoolExecutor(2))


def _lan(name: str, cidr: str) -> LocalNetwork:
    address = cidr.partition("/")[0]
    return LocalNetwork(name, IPv4Address(address), IPv4Network(cidr, strict=False))


def test_proxy_mode_with_several_lans_asks_which(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxy mode has no pool_start to find its LAN by: with two LANs (a
    docker or libvirt bridge beside eth0) it names them rather than guess."""
    lans = [_lan("lo", "127.0.0.1/8"), _lan("eth0", "198.51.100.2/24"),
            _lan("virbr0", "203.0.113.1/24")]
    monkeypatch.setattr(dhcp_service, "local_networks", lambda: lans)
    config = parse_config("[bootp]\nmode = proxy\n", tmp_path / "pybootd.ini")
    with pytest.raises(NetworkConfigError) as info:
        dhcp_service.detect_network(config)
    assert "several networks (eth0 198.51.100.2/24, virbr0 203.0.113.1/24)" in str(info.value)
    assert "interface = NAME" in str(info.value)
    chosen = parse_config("[bootp]\nmode = proxy\ninterface = virbr0\n",
                          tmp_path / "pybootd.ini")
    assert dhcp_service.detect_network(chosen).address == IPv4Address("203.0.113.1")
    monkeypatch.setattr(dhcp_service, "local_networks", lambda: lans[:2])
    assert dhcp_service.detect_network(config).interface == "eth0"  # the only LAN


def test_pool_in_no_local_network(tmp_path: Path) -> None:
    rt = runtime("[bootp]\npool_start = 203.0.113.50\n", tmp_path)
    service = DhcpService(rt)
    with pytest.raises(NetworkConfigError) as info:
        rt.loop.run_until_complete(service.start())
    service.close()
    rt.loop.close()
    message = str(info.value)
    assert message.startswith("Unable to detect network configuration: pool_start 203.0.113.50 "
                              "is in no local network (found: ")
    assert "lo 127.0.0.1/8" in message


def test_unusable_lease_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rt = runtime(f"[bootp]\npool_start = 127.0.0.100\nport = 6767\npxe_port = 0\n"
                 f"lease_file = {blocker}/sub/leases.sqlite\n", tmp_path)
    service = DhcpService(rt)
    with pytest.raises(PybootdError, match=rf"{blocker}/sub/leases.sqlite.lock: Not a directory"):
        rt.loop.run_until_complete(service.start())
    service.close()
    rt.loop.close()


def test_service_starts_and_stops_on_loopback(tmp_path: Path) -> None:
    rt = runtime(f"[bootp]\npool_start = 127.0.0.100\naddress = 127.0.0.1\nport = 6767\n"
                 "pxe_port = 6768\n"
                 f"lease_file = {tmp_path / 'l.sqlite'}\n", tmp_path)
    service = DhcpService(rt)
    try:
        rt.loop.run_until_complete(service.start())
    except NetworkConfigError as exc:  # no permission to bind in this sandbox
        pytest.skip(str(exc))
    assert service.server_address == IPv4Address("127.0.0.1")
    service.stop_accepting()
    rt.loop.run_until_complete(service.drain(1))
    service.close()
    rt.loop.close()
    assert (tmp_path / "l.sqlite").exists()


def _write_then_die(path: str) -> None:
    store = LeaseStore(Path(path))
    store.write([Lease(IPv4Address("198.51.100.10"), "02:00:00:00:00:01", LeaseState.BOUND,
                       2e9, True)], 1.0)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint


def test_committed_lease_survives_kill_9(tmp_path: Path) -> None:
    """WAL + synchronous=NORMAL: a commit is in the kernel once write() returns."""
    path = tmp_path / "leases.sqlite"
    child = multiprocessing.get_context("fork").Process(target=_write_then_die, args=(str(path),))
    child.start()
    child.join(20)
    assert child.exitcode == -signal.SIGKILL
    store = LeaseStore(path)
    leases = store.load()
    store.close()
    assert leases == [Lease(IPv4Address("198.51.100.10"), "02:00:00:00:00:01", LeaseState.BOUND,
                            2e9, True)]


def test_lease_store_is_wal(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "x.sqlite")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()


def test_mac_and_uuid_lists(tmp_path: Path) -> None:
    rt = runtime("[bootp]\npool_start = 127.0.0.100\naccess = mac\n"
                 "[mac]\nAA-BB-CC-DD-EE-01 = enable\naa:bb:cc:dd:ee:02 = disable\n", tmp_path)
    acl = AccessControl(rt.config, rt)
    assert acl.quick(ClientInfo("aa:bb:cc:dd:ee:01")) is Verdict.ALLOW
    assert acl.quick(ClientInfo("aa:bb:cc:dd:ee:02")) is Verdict.DENY
    assert acl.quick(ClientInfo("aa:bb:cc:dd:ee:03")) is Verdict.DENY
    rt = runtime(f"[bootp]\npool_start = 127.0.0.100\naccess = uuid\n[uuid]\n{UUID.lower()} = on\n",
                 tmp_path)  # any case in the file; matching ignores case
    acl = AccessControl(rt.config, rt)
    assert acl.quick(ClientInfo("aa:bb:cc:dd:ee:01", uuid=UUID, pxe=True)) is Verdict.ALLOW
    assert acl.quick(ClientInfo("aa:bb:cc:dd:ee:01")) is Verdict.ALLOW  # its PXE UUID
    assert acl.quick(ClientInfo("aa:bb:cc:dd:ee:02")) is Verdict.DENY


def test_http_url(tmp_path: Path) -> None:
    rt = runtime("[bootp]\npool_start = 127.0.0.100\naccess = http\n"
                 "[http]\nlocation = http://acl.example:8080/\npxe = boot\ndhcp = linux\n",
                 tmp_path)
    acl = AccessControl(rt.config, rt)
    assert acl.url(ClientInfo("aa:bb:cc:dd:ee:01", uuid=UUID, pxe=True)) == \
        f"http://acl.example:8080/boot?mac=AA-BB-CC-DD-EE-01&uuid={UUID}"
    assert acl.url(ClientInfo("aa:bb:cc:dd:ee:02")) == \
        "http://acl.example:8080/linux?mac=AA-BB-CC-DD-EE-02"
    assert acl.quick(ClientInfo("aa:bb:cc:dd:ee:02")) is None  # must ask


def test_notify_line_format() -> None:
    line = format_event("ack", "52:54:00:12:34:56", IPv4Address("192.0.2.10"), UUID, "efi-x64",
                        "boot dir/grubx64.efi")
    assert line == (b"pybootd ack mac=52:54:00:12:34:56 ip=192.0.2.10 "
                    b"uuid=4C4C4544-0042-3510-8051-B4C04F4D3132 arch=efi-x64 "
                    b"file=boot%20dir/grubx64.efi\n")
    assert format_event("discover", "52:54:00:12:34:56", None, None, None, None) == \
        b"pybootd discover mac=52:54:00:12:34:56 ip=- uuid=- arch=- file=-\n"


def test_notifier_sends_and_never_raises() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(2)
    notifier = Notifier([("127.0.0.1", 1), ("localhost", listener.getsockname()[1]),
                         ("no-such-host.invalid", 9)])
    for _ in range(3):
        notifier.send("offer", "52:54:00:12:34:56", None, None, None, None)
    assert listener.recv(512).startswith(b"pybootd offer ")
    notifier.close()
    listener.close()


def test_http_queries_are_shared_and_cached(tmp_path: Path) -> None:
    """Two requests of one client while its query runs: one HTTP GET; then cached."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server calls it by this name
            seen.append(self.path)
            time.sleep(0.3)
            self.send_response(403 if "EE-02" in self.path else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    rt = runtime("[bootp]\npool_start = 127.0.0.100\naccess = http\ntimeout = 2\n"
                 f"[http]\nlocation = http://127.0.0.1:{server.server_address[1]}/\n"
                 "pxe = boot\ndhcp = linux\n", tmp_path)
    acl = AccessControl(rt.config, rt)
    one, two = ClientInfo("aa:bb:cc:dd:ee:01"), ClientInfo("aa:bb:cc:dd:ee:02")

    async def scenario() -> list[Verdict]:
        return list(await asyncio.gather(acl.ask(one), acl.ask(one), acl.ask(two)))

    try:
        assert rt.loop.run_until_complete(scenario()) == [Verdict.ALLOW, Verdict.ALLOW,
                                                           Verdict.DENY]
        assert sorted(seen) == ["/linux?mac=AA-BB-CC-DD-EE-01", "/linux?mac=AA-BB-CC-DD-EE-02"]
        assert acl.quick(one) is Verdict.ALLOW and acl.quick(two) is Verdict.DENY  # cached
    finally:
        server.shutdown()
        server.server_close()
        rt.executor.shutdown()
        rt.loop.close()


# --- access queries: one deadline from the request's arrival ------------------
def _acl_runtime(tmp_path: Path, workers: int, timeout: float) -> Runtime:
    rt = runtime(f"[daemon]\nworkers = {workers}\n[bootp]\npool_start = 127.0.0.100\n"
                 f"access = http\ntimeout = {timeout}\n[http]\nlocation = http://acl.invalid/\n",
                 tmp_path)
    rt.executor = ThreadPoolExecutor(workers)
    return rt


def test_access_deadline_counts_from_the_arrival(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    def slow_status(url: str, timeout: float) -> int:
        time.sleep(0.3)
        return 200

    monkeypatch.setattr(dhcpacl, "_http_status", slow_status)
    rt = _acl_runtime(tmp_path, workers=4, timeout=0.5)
    acl = AccessControl(rt.config, rt)

    async def scenario() -> tuple[Verdict, float, Verdict]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        late = await acl.ask(ClientInfo("aa:bb:cc:dd:ee:01"), start - 0.4)  # 0.1 s left
        waited = loop.time() - start
        return late, waited, await acl.ask(ClientInfo("aa:bb:cc:dd:ee:02"), loop.time())

    try:
        late, waited, in_time = rt.loop.run_until_complete(scenario())
    finally:
        rt.executor.shutdown()
        rt.loop.close()
    assert late is Verdict.IGNORE and waited < 0.25
    assert in_time is Verdict.ALLOW


def test_stuck_query_keeps_its_slot_later_ones_fail_fast(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One slot (workers = 2): a timed-out thread holds it until it ends; no pile-up."""
    import threading

    release = threading.Event()
    calls: list[str] = []

    def stuck(url: str, timeout: float) -> int:
        calls.append(url)
        release.wait(5)
        return 200

    monkeypatch.setattr(dhcpacl, "_http_status", stuck)
    rt = _acl_runtime(tmp_path, workers=2, timeout=0.3)
    acl = AccessControl(rt.config, rt)

    async def scenario() -> tuple[Verdict, Verdict, float, Verdict]:
        loop = asyncio.get_running_loop()
        first = await acl.ask(ClientInfo("aa:bb:cc:dd:ee:01"))  # times out, thread stays
        start = loop.time()
        second = await acl.ask(ClientInfo("aa:bb:cc:dd:ee:02"))  # no slot before its deadline
        waited = loop.time() - start
        release.set()
        await asyncio.sleep(0.1)  # the stuck thread ends and gives its slot back
        return first, second, waited, await acl.ask(ClientInfo("aa:bb:cc:dd:ee:03"))

    try:
        first, second, waited, third = rt.loop.run_until_complete(scenario())
    finally:
        release.set()
        rt.executor.shutdown()
        rt.loop.close()
    assert first is Verdict.IGNORE and second is Verdict.IGNORE
    assert 0.25 <= waited < 0.5  # the whole deadline, not more
    assert len(calls) == 2 and "EE-02" not in " ".join(calls)  # the second never ran
    assert third is Verdict.ALLOW


def test_http_query_bounds_connect_and_read(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    class Response:
        status_code = 204

        def __enter__(self) -> Response:
            return self

        def __exit__(self, *args: object) -> None:
            pass

    def fake_get(url: str, **kwargs: object) -> Response:
        seen.update(kwargs)
        return Response()

    monkeypatch.setattr(requests, "get", fake_get)  # what dhcpacl calls
    assert dhcpacl._http_status("http://acl.invalid/x", 0.7) == 204
    assert seen["timeout"] == (0.7, 0.7) and seen["allow_redirects"] is False


# --- log lines: rate-limited, once per condition ----------------------------
def test_log_limiter_bounds_a_flood_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    t0 = 1000.0
    limiter = LogLimiter(window=10.0, burst=3)
    allowed = [limiter.allow("pool exhausted", t0 + i * 0.001) for i in range(1000)]
    assert allowed.count(True) == 3 and allowed[:3] == [True] * 3
    assert limiter.allow("relay outside the network", t0 + 1)  # topics are separate
    with caplog.at_level(logging.INFO, logger="pybootd.dhcp"):
        assert limiter.allow("pool exhausted", t0 + 10.0)  # the next window
        assert not caplog.records[1:]
        assert caplog.records[0].getMessage() == \
            "pool exhausted: 997 more lines not logged (at most 3 per 10s)"
        caplog.clear()
        limiter.flush()  # nothing suppressed since: nothing to say
        assert not caplog.records


def _service(tmp_path: Path, bootp: str = "", simple: str = "on") -> DhcpService:
    rt = runtime(f"[bootp]\npool_start = 198.51.100.100\nallow_simple_dhcp = {simple}\n"
                 f"lease_file = {tmp_path / 'l.sqlite'}\n{bootp}", tmp_path)
    service = DhcpService(rt)
    network = LocalNetwork("eth0", IPv4Address("198.51.100.1"), IPv4Network("198.51.100.0/24"))
    service.network = network
    service.settings = service._settings(network)
    service.pool = service._pool(network)
    return service


def _close(service: DhcpService) -> None:
    service.close()
    service.runtime.executor.shutdown()
    service.runtime.loop.close()


def test_flood_of_warnings_writes_a_bounded_number_of_lines(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    service = _service(tmp_path, "access = http\n[http]\nlocation = http://acl.invalid/\n")
    packet = request(MessageType.DISCOVER)
    peer = _Peer(packet, client_info(packet))
    full = ignore("pool exhausted (50 addresses), no offer", warning=True, topic="pool exhausted")
    relay = ignore("relay 203.0.113.1 is outside 198.51.100.0/24", warning=True,
                   topic="relay outside the network")
    service._waiting = {object() for _ in range(1024)}  # type: ignore[misc]
    data = encode_packet(packet)
    with caplog.at_level(logging.WARNING, logger="pybootd.dhcp"):
        for _ in range(500):
            service._log(peer, MessageType.DISCOVER, full)
            service._log(peer, MessageType.DISCOVER, relay)
            service._received(data, 0, ("198.51.100.7", 68), None, False)  # type: ignore[arg-type]
        service._waiting = set()
        _close(service)  # reports what was not written
    text = [r.getMessage() for r in caplog.records]
    assert sum("pool exhausted (50" in line for line in text) == 10
    assert sum("is outside 198.51.100.0/24" in line for line in text) == 10
    assert sum("wait for access answers" in line for line in text) == 10
    assert "pool exhausted: 490 more lines not logged (at most 10 per 10s)" in text
    assert "access overload: 490 more lines not logged (at most 10 per 10s)" in text
    assert service.stats["overload"] == 500


def test_lasting_condition_is_logged_once_per_mac(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    service = _service(tmp_path)
    http: dict[int, bytes] = {DhcpOption.VENDOR_CLASS: b"HTTPClient:Arch:00016:UNDI:003001",
            DhcpOption.CLIENT_ARCH: bytes((0, 16))}
    with caplog.at_level(logging.INFO, logger="pybootd.dhcp"):
        for mac in (MAC, MAC, MAC, bytes.fromhex("525400000002")):
            packet = request(MessageType.DISCOVER, mac=mac, options=http)
            decision = respond(packet, client_info(packet), service.pool, service.settings,  # type: ignore[arg-type]
                               T0)
            service._log(_Peer(packet, client_info(packet)), MessageType.DISCOVER, decision)
    _close(service)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert [line.split(":")[0] for line in lines if "ignored" in line] == [
        "HTTP boot client 52", "HTTP boot client 52"]
    assert lines[0].startswith(f"HTTP boot client {MAC_TEXT} ignored: no http URL configured "
                               "for arch http-x64")


# --- notifications: exactly one line per event -----------------------------
class _Recorder:
    targets = [("192.0.2.99", 9)]

    def __init__(self) -> None:
        self.lines: list[tuple[str, str | None]] = []

    def send(self, event: str, mac: str, ip: IPv4Address | None, uuid: str | None,
             arch: str | None, bootfile: str | None) -> None:
        self.lines.append((event, str(ip) if ip else None))

    def close(self) -> None:
        pass


def test_one_notification_per_event(tmp_path: Path) -> None:
    service = _service(tmp_path)
    rt = service.runtime
    recorder = _Recorder()
    service.notifier = recorder  # type: ignore[assignment]
    service.store = LeaseStore(tmp_path / "l.sqlite")
    service._send = lambda *args: None  # type: ignore[method-assign]
    server: dict[int, bytes] = {DhcpOption.SERVER_ID: IPv4Address("198.51.100.1").packed}

    def serve(kind: MessageType, **fields: object) -> None:
        packet = request(kind, **fields)  # type: ignore[arg-type]
        service._serve(packet, client_info(packet), Verdict.ALLOW, 0, ("0.0.0.0", 68),
                       None, False)  # type: ignore[arg-type]
        if service._writer is not None:
            rt.loop.run_until_complete(service._writer)

    def dora() -> IPv4Address:
        serve(MessageType.DISCOVER)
        lease = service.pool.lease_of(MAC_TEXT)  # type: ignore[union-attr]
        assert lease is not None
        serve(MessageType.REQUEST, options={**server, DhcpOption.REQUESTED_IP: lease.ip.packed})
        return lease.ip

    ip = dora()
    other = IPv4Address("198.51.100.149")
    serve(MessageType.REQUEST, options={DhcpOption.REQUESTED_IP: other.packed})  # -> NAK
    serve(MessageType.INFORM, ciaddr=ip)
    serve(MessageType.DECLINE, options={**server, DhcpOption.REQUESTED_IP: ip.packed})
    ip2 = dora()
    serve(MessageType.RELEASE, ciaddr=ip2, options=server)
    _close(service)
    a, b = str(ip), str(ip2)
    assert recorder.lines == [
        ("discover", None), ("offer", a), ("request", a), ("ack", a),
        ("request", str(other)), ("nak", str(other)),
        ("inform", a), ("ack", None),
        ("decline", a),
        ("discover", None), ("offer", b), ("request", b), ("ack", b),
        ("release", b),
    ]


def test_pool_excludes_the_servers_the_clients_are_given(tmp_path: Path) -> None:
    """This server, the gateway, next_server and DNS servers inside the pool: never leased."""
    service = _service(tmp_path, "pool_count = 20\ngateway = 198.51.100.102\n"
                                 "next_server = 198.51.100.103\n"
                                 "dns = 198.51.100.104, 192.0.2.53\n")
    pool = service.pool
    assert pool is not None
    given = set()
    for i in range(20):
        lease = pool.offer(f"02:00:00:00:03:{i:02x}", None, T0)
        if lease is not None:
            given.add(int(lease.ip) - int(IPv4Address("198.51.100.100")))
    _close(service)
    assert given == {0, 1, *range(5, 20)}  # not .102, .103 nor .104


# --- refusals an operator can see, reload, a failing store -----------------
class _Clock:
    """Stands for the ``time`` module of pybootd.server.dhcp."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return T0 + self.now

    def monotonic(self) -> float:
        return self.now


def _sent(service: DhcpService) -> list[str]:
    """Replies the service sends, as ``EVENT IP FILE``."""
    replies: list[str] = []

    def send(decision: object, *args: object) -> None:
        replies.append(f"{decision.event} {decision.ip} {decision.bootfile}")  # type: ignore[attr-defined]
    service._send = send  # type: ignore[method-assign,assignment]
    return replies


def _feed(service: DhcpService, kind: MessageType, mac: bytes = MAC,
          options: dict[int, bytes] | None = None, **fields: object) -> None:
    """One datagram as it arrives on the socket."""
    data = encode_packet(request(kind, mac=mac, options=options, **fields))
    service._received(data, 0, ("0.0.0.0", 68), None, False)  # type: ignore[arg-type]
    if service._writer is not None:
        service.runtime.loop.run_until_complete(service._writer)


def _info(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]


def test_access_denial_is_logged_once_per_mac_per_five_minutes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(dhcp_service, "time", clock)
    service = _service(tmp_path, "access = mac\n[mac]\n02-00-00-00-00-99 = enable\n"
                                 "52-54-00-00-00-02 = disable\n")
    other = bytes.fromhex("525400000002")
    with caplog.at_level(logging.INFO, logger="pybootd.dhcp"):
        for _ in range(20):
            _feed(service, MessageType.DISCOVER)
            _feed(service, MessageType.DISCOVER, mac=other)
            clock.now += 10  # 200 s in all: within the window
        clock.now += 101
        _feed(service, MessageType.DISCOVER)
    _close(service)
    assert [line for line in _info(caplog) if "access control" in line] == [
        f"{MAC_TEXT}: DISCOVER denied by access control: {MAC_TEXT} is not in [mac] "
        "(access = mac)",
        "52:54:00:00:00:02: DISCOVER denied by access control: 52:54:00:00:00:02 is "
        "disabled in [mac]",
        f"{MAC_TEXT}: DISCOVER denied by access control: {MAC_TEXT} is not in [mac] "
        "(access = mac)",
    ]


def test_plain_dhcp_client_ignored_is_logged_once_per_mac_per_five_minutes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(dhcp_service, "time", clock)
    service = _service(tmp_path, simple="off")
    replies = _sent(service)
    with caplog.at_level(logging.INFO, logger="pybootd.dhcp"):
        for _ in range(10):
            _feed(service, MessageType.DISCOVER)
            clock.now += 20
        clock.now += 150
        _feed(service, MessageType.REQUEST, options={DhcpOption.REQUESTED_IP: bytes(
            (198, 51, 100, 100))})
    _close(service)
    assert replies == []
    assert _info(caplog) == [
        f"{MAC_TEXT}: DISCOVER ignored: plain DHCP client (not PXE) and allow_simple_dhcp is "
        "off (expected allow_simple_dhcp = on to serve it)",
        f"{MAC_TEXT}: REQUEST ignored: plain DHCP client (not PXE) and allow_simple_dhcp is "
        "off (expected allow_simple_dhcp = on to serve it)",
    ]


def test_reload_applies_reservations_boot_files_and_access(tmp_path: Path) -> None:
    service = _service(tmp_path)
    replies = _sent(service)
    pxe: dict[int, bytes] = {DhcpOption.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016",
           DhcpOption.CLIENT_ARCH: bytes((0, 7))}
    _feed(service, MessageType.DISCOVER, options=pxe)
    text = (f"[bootp]\npool_start = 198.51.100.100\nallow_simple_dhcp = on\n"
            f"lease_file = {tmp_path / 'l.sqlite'}\naccess = mac\n"
            f"[mac]\n{MAC_TEXT} = enable\n[static_dhcp]\n{MAC_TEXT} = 198.51.100.42\n"
            "[bootfile]\nefi-x64 = new/grubx64.efi\n")
    service.reload(parse_config(text, tmp_path / "pybootd.ini"))
    _feed(service, MessageType.DISCOVER, options=pxe)
    _feed(service, MessageType.DISCOVER, mac=bytes.fromhex("525400000002"), options=pxe)
    _close(service)
    assert replies == ["offer 198.51.100.100 pxelinux.0",
                       "offer 198.51.100.42 new/grubx64.efi"]  # the other MAC: denied now


def test_a_damaged_lease_file_at_run_time_stops_the_daemon(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    service = _service(tmp_path)
    replies = _sent(service)
    service.store = LeaseStore(tmp_path / "l.sqlite")
    failures: list[str] = []
    service.runtime.on_fatal = failures.append
    server: dict[int, bytes] = {DhcpOption.SERVER_ID: IPv4Address("198.51.100.1").packed,
              DhcpOption.REQUESTED_IP: IPv4Address("198.51.100.100").packed}

    def locked(*args: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    def malformed(*args: object) -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    service.store.write = locked  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.ERROR):
        _feed(service, MessageType.REQUEST, options=server)
        assert failures == []  # transient: the client asks again
        service.store.write = malformed  # type: ignore[method-assign,assignment]
        _feed(service, MessageType.REQUEST, options=server)
        _feed(service, MessageType.REQUEST, options=server)  # no longer accepted
    _close(service)
    assert replies == []  # never an ACK for a lease that is not stored
    path = tmp_path / "l.sqlite"
    assert failures == [f"lease file {path} cannot be written (database disk image is "
                        "malformed); no lease can be acknowledged"]
    assert f"{failures[0]}: stopping (exit status 1)" in [r.getMessage() for r in caplog.records]


def test_bound_lease_keeps_host_name_and_uuid(tmp_path: Path) -> None:
    """What ``pybootd leases`` shows: option 12 and the UUID of the PXE boot."""
    service = _service(tmp_path)
    _sent(service)
    service.store = LeaseStore(tmp_path / "l.sqlite")
    pxe: dict[int, bytes] = {DhcpOption.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016",
           DhcpOption.CLIENT_ARCH: bytes((0, 7)),
           DhcpOption.CLIENT_UUID: bytes.fromhex("0044454c4c420010358051b4c04f4d3132")}
    server: dict[int, bytes] = {DhcpOption.SERVER_ID: IPv4Address("198.51.100.1").packed,
              DhcpOption.REQUESTED_IP: IPv4Address("198.51.100.100").packed}
    _feed(service, MessageType.REQUEST, options={**pxe, **server})
    # The installer's plain DHCP afterwards: its host name, the UUID its MAC showed.
    _feed(service, MessageType.REQUEST,
          options={**server, DhcpOption.HOST_NAME: b"pc-\xe9\x01"})
    _close(service)
    (lease,) = read_leases(tmp_path / "l.sqlite")
    assert (lease.mac, lease.hostname, lease.uuid) == (MAC_TEXT, "pc-\\xe9\x01", UUID)
