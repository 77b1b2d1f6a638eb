"""The DHCP service on loopback, in process: real datagrams in, what peers and
operators see out.

The service binds 127.0.0.1 on a port of its own (``[bootp] port = 0``, read
back from :attr:`DhcpService.port`; ``pxe_port = 0``: no boot service). A
client socket sends it encoded requests. Replies go to the DHCP client port
(68) or a broadcast, which a test cannot bind without racing the host, so the
tests look at what else leaves the service: the ``[bootp] notify`` lines (one
per event, received by a UDP peer of the test), the log lines an operator
reads, and the lease file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dhcplab import MAC, MAC_TEXT, datagram

from pybootd.config import parse_config
from pybootd.dhcp.events import Event
from pybootd.dhcp.options import DhcpOption, MessageType
from pybootd.dhcp.pool import Lease, LeaseState
from pybootd.dhcp.pxe import ClientInfo
from pybootd.errors import NetworkConfigError, PybootdError
from pybootd.loglimit import LogLimiter
from pybootd.netif import LocalNetwork
from pybootd.runtime import Runtime
from pybootd.server import dhcp as dhcp_service
from pybootd.server.dhcp import DhcpService
from pybootd.server.dhcpacl import AccessControl, Verdict
from pybootd.server.leasestore import LeaseStore, read_leases
from pybootd.server.notify import Notifier, format_event

T = TypeVar("T")
UUID = "4C4C4544-0042-3510-8051-B4C04F4D3132"  # as dmidecode prints it
UUID_OPTION = bytes.fromhex("0044454c4c420010358051b4c04f4d3132")  # the same, SMBIOS order
OTHER = bytes.fromhex("525400000002")
OTHER_TEXT = "52:54:00:00:00:02"
SERVER_ID: dict[int, bytes] = {DhcpOption.SERVER_ID: IPv4Address("127.0.0.1").packed}
PXE_EFI: dict[int, bytes] = {DhcpOption.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016",
                             DhcpOption.CLIENT_ARCH: bytes((0, 7))}
WAIT = 5.0  # seconds any wait for the service or a peer may take


def runtime(text: str, tmp_path: Path, workers: int = 2) -> Runtime:
    config = parse_config(text, tmp_path / "pybootd.ini")
    return Runtime(config, asyncio.new_event_loop(), ThreadPoolExecutor(workers))


def _lan(name: str, cidr: str) -> LocalNetwork:
    address = cidr.partition("/")[0]
    return LocalNetwork(name, IPv4Address(address), IPv4Network(cidr, strict=False))


def mac(i: int) -> bytes:
    return bytes((2, 0, 0, 0, i >> 8, i & 0xFF))


def fields(line: str) -> dict[str, str]:
    """A notify line as ``{"event": ..., "mac": ..., "ip": ..., ...}``."""
    words = line.split()
    assert words[0] == "pybootd", line
    return {"event": words[1], **dict(word.split("=", 1) for word in words[2:])}


def brief(lines: list[str]) -> list[tuple[str, str]]:
    """Notify lines as ``(EVENT, IP)``."""
    return [(f["event"], f["ip"]) for f in map(fields, lines)]


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


class Served:
    """pybootd's DHCP service on 127.0.0.1, a client socket sending it
    datagrams, and the UDP peer its notifications go to."""

    def __init__(self, tmp_path: Path, *, bootp: str = "", tail: str = "", simple: str = "on",
                 count: int = 50, workers: int = 4) -> None:
        self.tmp_path = tmp_path
        self.lease_file = tmp_path / "leases.sqlite"
        self.workers, self.simple, self.count = workers, simple, count
        self.notes = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.notes.bind(("127.0.0.1", 0))
        self.notes.setblocking(False)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.runtime = runtime(self.config_text(bootp, tail), tmp_path, workers)
        self.service = DhcpService(self.runtime)
        self.sent = 0
        self.closed = False
        self.late: list[str] = []  # notify lines not read when the service stopped

    def config_text(self, bootp: str = "", tail: str = "") -> str:
        return (f"[daemon]\nworkers = {self.workers}\n"
                "[bootp]\naddress = 127.0.0.1\nport = 0\npxe_port = 0\n"
                f"pool_start = 127.0.0.100\npool_count = {self.count}\n"
                f"allow_simple_dhcp = {self.simple}\nlease_file = {self.lease_file}\n"
                f"notify = 127.0.0.1:{self.notes.getsockname()[1]}\n{bootp}{tail}")

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runtime.loop.run_until_complete(coro)

    async def send(self, kind: MessageType | None, *, mac: bytes = MAC,
                   options: dict[int, bytes] | None = None, settle: bool = True,
                   **fields: Any) -> None:
        """One request from the client socket; with *settle*, wait until it is read."""
        data = datagram(kind, mac=mac, options=options, **fields)
        self.client.sendto(data, ("127.0.0.1", self.service.port))
        self.sent += 1
        if settle:
            await self.settled()

    async def settled(self) -> None:
        """Every datagram sent so far has been read (and judged) by the service."""
        await until(lambda: self.service.stats.get("received", 0) >= self.sent,
                    f"the service to read {self.sent} datagrams")

    async def lines(self, count: int) -> list[str]:
        """The next *count* notify lines, each within WAIT seconds."""
        loop = asyncio.get_running_loop()
        found: list[str] = []
        for _ in range(count):
            data = await asyncio.wait_for(loop.sock_recv(self.notes, 1024), WAIT)
            found.append(data.decode().rstrip("\n"))
        return found

    def more_lines(self) -> list[str]:
        """Notify lines already received and not read yet."""
        found: list[str] = []
        while True:
            try:
                found.append(self.notes.recv(1024).decode().rstrip("\n"))
            except BlockingIOError:
                return found

    def close(self) -> None:
        """Stop as the daemon does: drain, close (logs "DHCP stopped"), pools down;
        the notify lines not read yet are kept in :attr:`late`."""
        if self.closed:
            return
        self.closed = True
        self.service.stop_accepting()
        self.run(self.service.drain(1))
        self.service.close()
        cancelled = asyncio.all_tasks(self.runtime.loop)
        if cancelled:  # let them end, as asyncio.run does for the daemon
            self.run(asyncio.wait(cancelled, timeout=WAIT))
        self.late = self.more_lines()
        self.runtime.close()
        self.runtime.loop.close()
        self.client.close()
        self.notes.close()


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.002)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start a :class:`Served` with the given options; all are closed at the end."""
    made: list[Served] = []

    def make(**options: Any) -> Served:
        lab = Served(tmp_path, **options)
        made.append(lab)
        lab.run(lab.service.start())
        return lab

    try:
        yield make
    finally:
        for lab in made:
            lab.close()


# --- start-up -----------------------------------------------------------------
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
    rt.close()
    rt.loop.close()
    message = str(info.value)
    assert message.startswith("Unable to detect network configuration: pool_start 203.0.113.50 "
                              "is in no local network (found: ")
    assert "lo 127.0.0.1/8" in message


def test_unusable_lease_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rt = runtime(f"[bootp]\npool_start = 127.0.0.100\nport = 0\npxe_port = 0\n"
                 f"lease_file = {blocker}/sub/leases.sqlite\n", tmp_path)
    service = DhcpService(rt)
    with pytest.raises(PybootdError, match=rf"{blocker}/sub/leases.sqlite.lock: Not a directory"):
        rt.loop.run_until_complete(service.start())
    service.close()
    rt.close()
    rt.loop.close()


def test_service_serves_on_loopback_and_says_where(served: Callable[..., Served],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pybootd.dhcp"):
        lab = served()
        port = lab.service.port
        assert port != 0
        lab.run(lab.send(MessageType.DISCOVER))
        assert brief(lab.run(lab.lines(2))) == [("discover", "-"), ("offer", "127.0.0.100")]
        lab.close()
    text = messages(caplog, logging.INFO)
    assert f"DHCP server on 127.0.0.1:{port} (lo 127.0.0.0/8), pool 127.0.0.100+50" in text
    assert f"{MAC_TEXT}: DISCOVER -> OFFER 127.0.0.100" in text
    assert text[-1] == "DHCP stopped (offer=1, received=1, sent=1)"  # the OFFER left
    assert lab.lease_file.exists()


# --- the lease file -----------------------------------------------------------
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


def test_lease_file_is_wal(tmp_path: Path) -> None:
    """What another reader of the file (``pybootd leases``) finds: a WAL database."""
    path = tmp_path / "x.sqlite"
    store = LeaseStore(path)
    try:
        store.write([Lease(IPv4Address("198.51.100.10"), "02:00:00:00:00:01", LeaseState.BOUND,
                           2e9, True)], 1.0)
        assert Path(f"{path}-wal").exists()
        with contextlib.closing(sqlite3.connect(str(path), timeout=WAIT)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_bound_lease_keeps_host_name_and_uuid(served: Callable[..., Served]) -> None:
    """What ``pybootd leases`` shows: option 12 and the UUID of the PXE boot."""
    lab = served()
    pxe = {**PXE_EFI, DhcpOption.CLIENT_UUID: UUID_OPTION}
    selecting = {**SERVER_ID, DhcpOption.REQUESTED_IP: IPv4Address("127.0.0.100").packed}

    async def scenario() -> list[tuple[str, str]]:
        await lab.send(MessageType.REQUEST, options={**pxe, **selecting})
        first = await lab.lines(2)
        # The installer's plain DHCP afterwards: its host name, the UUID its MAC showed.
        await lab.send(MessageType.REQUEST,
                       options={**selecting, DhcpOption.HOST_NAME: b"pc-\xe9\x01"})
        return brief(first + await lab.lines(2))

    assert lab.run(scenario()) == [("request", "127.0.0.100"), ("ack", "127.0.0.100")] * 2
    lab.close()
    (lease,) = read_leases(lab.lease_file)
    assert (lease.mac, lease.ip, lease.hostname, lease.uuid) == (
        MAC_TEXT, IPv4Address("127.0.0.100"), "pc-\\xe9\x01", UUID)


def test_a_locked_lease_file_withholds_the_ack_until_it_is_free(
        served: Callable[..., Served], caplog: pytest.LogCaptureFixture) -> None:
    """Locked (another writer): that batch only is withheld, the daemon goes on,
    and the client's retry is acknowledged once the file is free."""
    lab = served()
    failures: list[str] = []
    lab.runtime.on_fatal = failures.append
    selecting = {**SERVER_ID, DhcpOption.REQUESTED_IP: IPv4Address("127.0.0.100").packed}
    holder = sqlite3.connect(str(lab.lease_file), timeout=WAIT, isolation_level=None)

    def withheld() -> bool:
        return any("replies withheld" in line for line in messages(caplog))

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        holder.execute("BEGIN EXCLUSIVE")
        try:
            await lab.send(MessageType.REQUEST, options=selecting)
            asked = await lab.lines(1)
            await until(withheld, "the lease file error", timeout=3 * WAIT)
            await asyncio.sleep(0.1)
            early = lab.more_lines()
        finally:
            holder.execute("ROLLBACK")
        await lab.send(MessageType.REQUEST, options=selecting)  # the client retries
        return asked, early, await lab.lines(2)

    try:
        with caplog.at_level(logging.ERROR, logger="pybootd"):
            asked, early, retried = lab.run(scenario())
    finally:
        holder.close()
    lab.close()
    assert brief(asked) == [("request", "127.0.0.100")]
    assert early == []  # never an ACK for a lease that is not stored
    assert brief(retried) == [("request", "127.0.0.100"), ("ack", "127.0.0.100")]
    assert f"lease store {lab.lease_file} not written (database is locked): 1 replies " \
           "withheld" in messages(caplog)
    assert failures == []  # transient: the daemon keeps serving
    assert [lease.mac for lease in read_leases(lab.lease_file)] == [MAC_TEXT]


# --- notifications: exactly one line per event ---------------------------------
def test_notify_line_format() -> None:
    line = format_event(Event.ACK, "52:54:00:12:34:56", IPv4Address("192.0.2.10"), UUID,
                        "efi-x64", "boot dir/grubx64.efi")
    assert line == (b"pybootd ack mac=52:54:00:12:34:56 ip=192.0.2.10 "
                    b"uuid=4C4C4544-0042-3510-8051-B4C04F4D3132 arch=efi-x64 "
                    b"file=boot%20dir/grubx64.efi\n")
    assert format_event(Event.DISCOVER, "52:54:00:12:34:56", None, None, None, None) == \
        b"pybootd discover mac=52:54:00:12:34:56 ip=- uuid=- arch=- file=-\n"


def test_notifier_sends_and_never_raises() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(WAIT)
    notifier = Notifier([("127.0.0.1", 1), ("localhost", listener.getsockname()[1]),
                         ("no-such-host.invalid", 9)])
    for _ in range(3):
        notifier.send(Event.OFFER, "52:54:00:12:34:56", None, None, None, None)
    assert listener.recv(512).startswith(b"pybootd offer ")
    notifier.close()
    listener.close()


def test_one_notification_per_event(served: Callable[..., Served]) -> None:
    lab = served()
    other = IPv4Address("127.0.0.149")

    async def scenario() -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []

        async def exchange(kind: MessageType, count: int, **request: Any) -> str:
            await lab.send(kind, **request)
            seen.extend(brief(await lab.lines(count)))
            return seen[-1][1]

        async def dora() -> IPv4Address:
            ip = IPv4Address(await exchange(MessageType.DISCOVER, 2))
            await exchange(MessageType.REQUEST, 2,
                           options={**SERVER_ID, DhcpOption.REQUESTED_IP: ip.packed})
            return ip

        ip = await dora()
        await exchange(MessageType.REQUEST, 2,
                       options={DhcpOption.REQUESTED_IP: other.packed})  # -> NAK
        await exchange(MessageType.INFORM, 2, ciaddr=ip)
        await exchange(MessageType.DECLINE, 1,
                       options={**SERVER_ID, DhcpOption.REQUESTED_IP: ip.packed})
        ip2 = await dora()
        await exchange(MessageType.RELEASE, 1, ciaddr=ip2, options=SERVER_ID)
        return seen

    seen = lab.run(scenario())
    lab.close()  # the last commits are done: a line too many would be in lab.late
    assert lab.late == []
    a, b = seen[1][1], seen[-1][1]
    assert a != b  # the declined address is quarantined
    assert seen == [
        ("discover", "-"), ("offer", a), ("request", a), ("ack", a),
        ("request", str(other)), ("nak", str(other)),
        ("inform", a), ("ack", "-"),
        ("decline", a),
        ("discover", "-"), ("offer", b), ("request", b), ("ack", b),
        ("release", b),
    ]


def test_pool_excludes_the_servers_the_clients_are_given(served: Callable[..., Served]) -> None:
    """This server, the gateway, next_server and DNS servers inside the pool: never leased."""
    lab = served(count=20, bootp="gateway = 127.0.0.102\nnext_server = 127.0.0.103\n"
                       "dns = 127.0.0.104, 192.0.2.53\n")

    async def scenario() -> list[tuple[str, str]]:
        for i in range(20):
            await lab.send(MessageType.DISCOVER, mac=mac(i))
        return brief(await lab.lines(20 + 17))

    seen = lab.run(scenario())
    lab.close()
    assert lab.late == []
    offered = {int(IPv4Address(ip)) - int(IPv4Address("127.0.0.100"))
               for event, ip in seen if event == "offer"}
    assert offered == {0, 1, *range(5, 20)}  # not .102, .103 nor .104


# --- log lines: rate-limited, once per condition --------------------------------
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


def test_flood_of_warnings_writes_a_bounded_number_of_lines(
        served: Callable[..., Served], caplog: pytest.LogCaptureFixture) -> None:
    relay = IPv4Address("203.0.113.1")
    with caplog.at_level(logging.INFO, logger="pybootd.dhcp"):
        lab = served(count=1)

        async def flood() -> None:
            for i in range(500):
                await lab.send(MessageType.DISCOVER, mac=mac(i), settle=False)
                await lab.send(MessageType.DISCOVER, mac=mac(i), giaddr=relay, settle=False)
                if i % 16 == 15:  # never more than the socket buffer holds
                    await lab.settled()
            await lab.settled()

        lab.run(flood())
        lab.close()  # reports what was not written
    text = messages(caplog)
    assert sum("pool exhausted (1 addresses), no offer" in line for line in text) == 10
    assert sum("relay 203.0.113.1 is outside 127.0.0.0/8" in line for line in text) == 10
    assert "pool exhausted: 489 more lines not logged (at most 10 per 10s)" in text
    assert "relay outside the network: 490 more lines not logged (at most 10 per 10s)" in text
    assert text[-1] == "DHCP stopped (ignore=999, offer=1, received=1000, sent=1)"


def test_requests_beyond_the_waiting_limit_are_dropped_in_a_bounded_number_of_lines(
        served: Callable[..., Served], caplog: pytest.LogCaptureFixture) -> None:
    """1024 requests wait for a silent HTTP access service; 500 more are dropped."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # accepts nothing
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        with caplog.at_level(logging.INFO, logger="pybootd.dhcp"):
            lab = served(bootp="access = http\ntimeout = 30\n",
                         tail=f"[http]\nlocation = http://127.0.0.1:{silent.getsockname()[1]}/\n")

            async def flood() -> None:
                for i in range(1024 + 500):
                    await lab.send(MessageType.DISCOVER, mac=mac(i), settle=i % 16 == 15)
                await lab.settled()

            lab.run(flood())
            lab.close()  # cancels the waiting requests; reports what was not written
    finally:
        silent.close()  # resets the queries' connections: their threads end
    text = messages(caplog)
    assert sum("requests already wait for access answers; dropped" in line
               for line in text) == 10
    assert "02:00:00:00:04:00: 1024 requests already wait for access answers; dropped" in text
    assert "access overload: 490 more lines not logged (at most 10 per 10s)" in text
    assert text[-1] == "DHCP stopped (overload=500, received=1524)"


def test_lasting_condition_is_logged_once_per_mac(served: Callable[..., Served],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    http: dict[int, bytes] = {DhcpOption.VENDOR_CLASS: b"HTTPClient:Arch:00016:UNDI:003001",
                              DhcpOption.CLIENT_ARCH: bytes((0, 16))}
    lab = served()
    with caplog.at_level(logging.INFO, logger="pybootd.dhcp"):
        for client in (MAC, MAC, MAC, OTHER):
            lab.run(lab.send(MessageType.DISCOVER, mac=client, options=http))
        lab.close()
    lines = [line for line in messages(caplog, logging.INFO) if "ignored" in line]
    assert len(lines) == 2
    for line, text in zip(lines, (MAC_TEXT, OTHER_TEXT), strict=True):
        assert line.startswith(f"HTTP boot client {text} ignored: no http URL configured for "
                               "arch http-x64 (expected an [httpd] section, [bootfile] http-x64 = "
                               "http://...")


# --- refusals an operator can see, reload --------------------------------------
class _Clock:
    """Stands for the ``time`` module of pybootd.server.dhcp."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def monotonic(self) -> float:
        return self.now


def test_access_denial_is_logged_once_per_mac_per_five_minutes(
        served: Callable[..., Served], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(dhcp_service, "time", clock)
    lab = served(bootp="access = mac\n",
                 tail="[mac]\n02-00-00-00-00-99 = enable\n52-54-00-00-00-02 = disable\n")

    async def scenario() -> None:
        for _ in range(20):
            await lab.send(MessageType.DISCOVER)
            await lab.send(MessageType.DISCOVER, mac=OTHER)
            clock.now += 10  # 200 s in all: within the window
        clock.now += 101
        await lab.send(MessageType.DISCOVER)

    with caplog.at_level(logging.INFO, logger="pybootd.dhcp"):
        lab.run(scenario())
        notes = brief(lab.run(lab.lines(2 * 41)))
        lab.close()
    assert [line for line in messages(caplog, logging.INFO) if "access control" in line] == [
        f"{MAC_TEXT}: DISCOVER denied by access control: {MAC_TEXT} is not in [mac] "
        "(access = mac)",
        f"{OTHER_TEXT}: DISCOVER denied by access control: {OTHER_TEXT} is disabled in [mac]",
        f"{MAC_TEXT}: DISCOVER denied by access control: {MAC_TEXT} is not in [mac] "
        "(access = mac)",
    ]
    assert notes == [("discover", "-"), ("denied", "-")] * 41  # each one is notified


def test_plain_dhcp_client_ignored_is_logged_once_per_mac_per_five_minutes(
        served: Callable[..., Served], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(dhcp_service, "time", clock)
    lab = served(simple="off")

    async def scenario() -> list[tuple[str, str]]:
        for _ in range(10):
            await lab.send(MessageType.DISCOVER)
            clock.now += 20
        clock.now += 150
        await lab.send(MessageType.REQUEST, options={
            DhcpOption.REQUESTED_IP: IPv4Address("127.0.0.100").packed})
        return brief(await lab.lines(11))

    with caplog.at_level(logging.INFO, logger="pybootd.dhcp"):
        notes = lab.run(scenario())
        lab.close()
    assert notes == [("discover", "-")] * 10 + [("request", "127.0.0.100")]  # no reply
    assert lab.late == []
    assert [line for line in messages(caplog, logging.INFO) if "ignored" in line] == [
        f"{MAC_TEXT}: DISCOVER ignored: plain DHCP client (not PXE) and allow_simple_dhcp is "
        "off (expected allow_simple_dhcp = on to serve it)",
        f"{MAC_TEXT}: REQUEST ignored: plain DHCP client (not PXE) and allow_simple_dhcp is "
        "off (expected allow_simple_dhcp = on to serve it)",
    ]


def test_reload_applies_reservations_boot_files_and_access(
        served: Callable[..., Served]) -> None:
    lab = served()

    async def discover(client: bytes) -> list[dict[str, str]]:
        await lab.send(MessageType.DISCOVER, mac=client, options=PXE_EFI)
        return [fields(line) for line in await lab.lines(2)]

    before = lab.run(discover(MAC))
    text = lab.config_text(bootp="access = mac\n",
                           tail=f"[mac]\n{MAC_TEXT} = enable\n"
                                f"[static_dhcp]\n{MAC_TEXT} = 127.0.0.42\n"
                                "[bootfile]\nefi-x64 = new/grubx64.efi\n")
    lab.service.reload(parse_config(text, lab.tmp_path / "pybootd.ini"))  # what SIGHUP does
    after = lab.run(discover(MAC))
    other = lab.run(discover(OTHER))
    assert [(f["event"], f["ip"], f["file"]) for f in before + after + other] == [
        ("discover", "-", "-"), ("offer", "127.0.0.100", "pxelinux.0"),
        ("discover", "-", "-"), ("offer", "127.0.0.42", "new/grubx64.efi"),
        ("discover", "-", "-"), ("denied", "-", "-"),  # the other MAC: denied now
    ]


# --- access control -------------------------------------------------------------
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still stalling does not hold up the test's end


@contextlib.contextmanager
def access_service(answer: Callable[[BaseHTTPRequestHandler], None]
                   ) -> Iterator[tuple[str, list[str]]]:
    """An HTTP access service on 127.0.0.1; yields its location and the paths asked."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server calls it by this name
            seen.append(self.path)
            with contextlib.suppress(OSError):  # pybootd gave up and closed
                answer(self)

        def log_message(self, *args: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


def status(handler: BaseHTTPRequestHandler, code: int, delay: float = 0.0,
           location: str | None = None) -> None:
    time.sleep(delay)
    handler.send_response(code)
    if location is not None:
        handler.send_header("Location", location)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _acl_runtime(tmp_path: Path, location: str, workers: int, timeout: float) -> Runtime:
    return runtime(f"[daemon]\nworkers = {workers}\n[bootp]\npool_start = 127.0.0.100\n"
                   f"access = http\ntimeout = {timeout}\n[http]\nlocation = {location}\n"
                   "pxe = boot\ndhcp = linux\n", tmp_path, workers)


def _close_runtime(rt: Runtime) -> None:
    rt.close()
    rt.loop.close()


def test_http_queries_are_shared_and_cached(tmp_path: Path) -> None:
    """Two requests of one client while its query runs: one HTTP GET; then cached."""
    with access_service(lambda h: status(h, 403 if "EE-02" in h.path else 200, 0.3)) \
            as (location, seen):
        rt = _acl_runtime(tmp_path, location, workers=4, timeout=2)
        acl = AccessControl(rt.config, rt)
        one, two = ClientInfo("aa:bb:cc:dd:ee:01"), ClientInfo("aa:bb:cc:dd:ee:02")

        async def scenario() -> list[Verdict]:
            return list(await asyncio.gather(acl.ask(one), acl.ask(one), acl.ask(two)))

        try:
            assert rt.loop.run_until_complete(scenario()) == [Verdict.ALLOW, Verdict.ALLOW,
                                                               Verdict.DENY]
            assert sorted(seen) == ["/linux?mac=AA-BB-CC-DD-EE-01",
                                    "/linux?mac=AA-BB-CC-DD-EE-02"]
            assert acl.quick(one) is Verdict.ALLOW and acl.quick(two) is Verdict.DENY  # cached
        finally:
            _close_runtime(rt)


# --- access queries: one deadline from the request's arrival --------------------
def test_access_deadline_counts_from_the_arrival(tmp_path: Path) -> None:
    with access_service(lambda h: status(h, 200, 0.3)) as (location, _seen):
        rt = _acl_runtime(tmp_path, location, workers=4, timeout=0.5)
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
            _close_runtime(rt)
    assert late is Verdict.IGNORE and waited < 0.25
    assert in_time is Verdict.ALLOW


def test_stuck_query_keeps_its_slot_later_ones_fail_fast(tmp_path: Path) -> None:
    """One slot (workers = 2): a query whose answer trickles in (each byte within
    the read timeout) holds it until it ends; the others fail at their deadline."""
    release = threading.Event()

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        if "EE-01" not in handler.path:
            status(handler, 200)
            return
        handler.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
        deadline = time.monotonic() + WAIT
        while not release.is_set() and time.monotonic() < deadline:
            handler.wfile.write(b"z")
            time.sleep(0.05)
        handler.wfile.write(b"\r\nContent-Length: 0\r\n\r\n")

    with access_service(trickle) as (location, seen):
        rt = _acl_runtime(tmp_path, location, workers=2, timeout=0.3)
        acl = AccessControl(rt.config, rt)

        async def scenario() -> tuple[Verdict, Verdict, float, Verdict]:
            loop = asyncio.get_running_loop()
            first = await acl.ask(ClientInfo("aa:bb:cc:dd:ee:01"))  # times out, thread stays
            start = loop.time()
            second = await acl.ask(ClientInfo("aa:bb:cc:dd:ee:02"))  # no slot in time
            waited = loop.time() - start
            release.set()
            await asyncio.sleep(0.3)  # the stuck query ends and gives its slot back
            return first, second, waited, await acl.ask(ClientInfo("aa:bb:cc:dd:ee:03"))

        try:
            first, second, waited, third = rt.loop.run_until_complete(scenario())
        finally:
            release.set()
            _close_runtime(rt)
    assert first is Verdict.IGNORE and second is Verdict.IGNORE
    assert 0.25 <= waited < 0.5  # the whole deadline, not more
    assert seen == ["/linux?mac=AA-BB-CC-DD-EE-01", "/linux?mac=AA-BB-CC-DD-EE-03"]
    assert third is Verdict.ALLOW


def test_a_silent_access_service_frees_the_slot_by_the_read_timeout(tmp_path: Path) -> None:
    """A query that gets no answer ends by itself (the read is bounded): its slot is
    free again right after the deadline, for the next client."""
    with access_service(lambda h: status(h, 200, 0 if "EE-02" in h.path else 3)) \
            as (location, _seen):
        rt = _acl_runtime(tmp_path, location, workers=2, timeout=0.3)
        acl = AccessControl(rt.config, rt)

        async def scenario() -> tuple[Verdict, Verdict]:
            first = await acl.ask(ClientInfo("aa:bb:cc:dd:ee:01"))
            await asyncio.sleep(0.4)
            return first, await acl.ask(ClientInfo("aa:bb:cc:dd:ee:02"))

        try:
            first, second = rt.loop.run_until_complete(scenario())
        finally:
            _close_runtime(rt)
    assert (first, second) == (Verdict.IGNORE, Verdict.ALLOW)


def test_access_redirects_are_not_followed(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    with access_service(lambda h: status(h, 302, location="/granted")) as (location, seen):
        rt = _acl_runtime(tmp_path, location, workers=2, timeout=2)
        acl = AccessControl(rt.config, rt)
        try:
            with caplog.at_level(logging.WARNING, logger="pybootd.dhcp"):
                verdict = rt.loop.run_until_complete(acl.ask(ClientInfo("aa:bb:cc:dd:ee:01")))
        finally:
            _close_runtime(rt)
    assert verdict is Verdict.IGNORE
    assert seen == ["/linux?mac=AA-BB-CC-DD-EE-01"]  # never /granted
    assert f"access query {location}linux?mac=AA-BB-CC-DD-EE-01 answered 302: request " \
           "ignored" in messages(caplog)
