"""The I/O edge without namespaces: network detection, lease file, ACL, notify."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from pybootd.config import parse_config
from pybootd.dhcp.pool import Lease, LeaseState
from pybootd.dhcp.pxe import ClientInfo
from pybootd.errors import ConfigError, NetworkConfigError
from pybootd.server.dhcp import DhcpService
from pybootd.server.dhcpacl import AccessControl, Verdict
from pybootd.server.leasestore import LeaseStore
from pybootd.server.notify import Notifier, format_event
from pybootd.server.runtime import Runtime

UUID = "4c4c4544-0042-3510-8051-b4c04f4d3132"


def runtime(text: str, tmp_path: Path) -> Runtime:
    config = parse_config(text, tmp_path / "pybootd.ini")
    return Runtime(config, asyncio.new_event_loop(), ThreadPoolExecutor(2))


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
    with pytest.raises(ConfigError, match=r"bootp\.lease_file: cannot use"):
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
    rt = runtime(f"[bootp]\npool_start = 127.0.0.100\naccess = uuid\n[uuid]\n{UUID.upper()} = on\n",
                 tmp_path)
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
                    b"uuid=4c4c4544-0042-3510-8051-b4c04f4d3132 arch=efi-x64 "
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
