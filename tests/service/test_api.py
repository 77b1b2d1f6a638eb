"""[api] over a real HTTP client: the daemon (DHCP, TFTP, HTTP and the API on
loopback, ports 0) sees one machine get a lease and fetch a file by TFTP and
one by HTTP; the API shows its timeline, its lease, the transfers, and
counts them in /metrics. Loopback takes any 127/8 address, so the client
fetches from the address it was given (127.0.0.100) and is recognized."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from dhcplab import MAC_TEXT, datagram
from tftpclient import Client

from pybootd.dhcp.options import DhcpOption, MessageType

REPO = Path(__file__).resolve().parents[2]
START = 20.0
CLIENT_IP = "127.0.0.100"
TOKEN = "s3cret-token-for-tests"
PORTS = {"dhcp": r"DHCP server on 127\.0\.0\.1:(\d+)",
         "tftp": r"TFTP serving .* on 127\.0\.0\.1:(\d+)",
         "http": r"HTTP serving the TFTP root on 127\.0\.0\.1:(\d+)",
         "api": r"API on 127\.0\.0\.1:(\d+)"}


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int]

    def get(self, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports['api']}{path}")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                body = answer.read()
                kind = answer.headers.get("Content-Type", "")
                return answer.status, json.loads(body) if "json" in kind else body.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def start(folder: Path, api: str = f"token = {TOKEN}\n") -> Running:
    (folder / "root").mkdir(exist_ok=True)
    (folder / "root" / "pxelinux.0").write_bytes(os.urandom(30_000))
    (folder / "root" / "linux").write_bytes(os.urandom(300_000))
    log = folder / "pybootd.log"
    config = folder / "pybootd.ini"
    config.write_text(
        f"[logger]\ntype = file\nfile = {log}\n[daemon]\nstate_dir = {folder / 'state'}\n"
        "user = root\nshutdown_grace = 1\n"
        "[bootp]\naddress = 127.0.0.1\nport = 0\npxe_port = 0\npool_start = 127.0.0.100\n"
        "pool_count = 10\nallow_simple_dhcp = on\n"
        f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {folder / 'root'}\n"
        f"[httpd]\nport = 0\n[api]\nport = 0\n{api}")
    proc = subprocess.Popen([sys.executable, "-m", "pybootd", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True)
    deadline = time.monotonic() + START
    text = ""
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text() if log.exists() else ""
        if "pybootd ready" in text:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"pybootd did not start:\n{text}")
    return Running(proc, log, {name: int(re.findall(pattern, text)[0])
                               for name, pattern in PORTS.items()})


def stop(running: Running) -> None:
    if running.proc.poll() is None:
        running.proc.send_signal(signal.SIGTERM)
        try:
            running.proc.wait(15)
        except subprocess.TimeoutExpired:
            running.proc.kill()
            running.proc.wait(10)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Running]:
    running = start(tmp_path)
    try:
        yield running
    finally:
        stop(running)


def boot(daemon: Running) -> None:
    """DISCOVER, REQUEST (the lease), then pxelinux.0 by TFTP and linux by HTTP
    from the address the lease gave."""
    server = ("127.0.0.1", daemon.ports["dhcp"])
    requested: dict[int, bytes] = {DhcpOption.REQUESTED_IP: IPv4Address(CLIENT_IP).packed}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(datagram(MessageType.DISCOVER, options=requested), server)
        time.sleep(0.3)
        sock.sendto(datagram(MessageType.REQUEST, options={
            **requested, DhcpOption.SERVER_ID: IPv4Address("127.0.0.1").packed}), server)
    time.sleep(0.5)  # the ACK goes to a broadcast no test can bind: the lease is stored first
    with Client("127.0.0.1", daemon.ports["tftp"]) as client:
        client.sock.close()
        client.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.sock.bind((CLIENT_IP, 0))
        client.sock.settimeout(3)
        assert len(client.get("pxelinux.0").data) == 30_000
    if shutil.which("curl") is None:
        pytest.fail("curl not found (.ci/run installs it)")
    done = subprocess.run(["curl", "-sS", "--interface", CLIENT_IP, "-o", os.devnull,
                           f"http://127.0.0.1:{daemon.ports['http']}/linux"],
                          capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_a_machines_timeline_lists_its_dhcp_exchange_and_both_files(daemon: Running) -> None:
    boot(daemon)
    status, machine = daemon.get("/api/v1/machines/52-54-00-12-34-56")
    assert status == 200, machine
    assert machine["mac"] == MAC_TEXT and machine["ip"] == CLIENT_IP
    steps = [(e["source"], e["what"], e["outcome"]) for e in machine["events"]]
    assert steps == [("dhcp", "DISCOVER", "offer"), ("dhcp", "REQUEST", "ack"),
                     ("tftp", "pxelinux.0", "complete"), ("http", "/linux", "200")]
    tftp, http = machine["events"][2:]
    assert tftp["bytes"] == 30_000 and http["bytes"] == 300_000 and http["file"] == "linux"
    assert machine["events"][1]["ip"] == CLIENT_IP
    assert daemon.get("/api/v1/machines/52:54:00:99:99:99")[0] == 404
    assert daemon.get("/api/v1/machines/not-a-mac")[0] == 400


def test_metrics_count_what_happened(daemon: Running) -> None:
    boot(daemon)
    status, text = daemon.get("/metrics")
    assert status == 200
    samples = dict(re.findall(r"^(pybootd_\S+) (\S+)$", text, re.MULTILINE))
    assert samples['pybootd_dhcp_requests_total{type="DISCOVER"}'] == "1.0"
    assert samples['pybootd_dhcp_requests_total{type="REQUEST"}'] == "1.0"
    assert samples['pybootd_dhcp_replies_total{type="OFFER"}'] == "1.0"
    assert samples['pybootd_dhcp_replies_total{type="ACK"}'] == "1.0"
    assert samples['pybootd_tftp_transfers_total{direction="read",outcome="complete"}'] == "1.0"
    assert samples["pybootd_tftp_bytes_sent_total"] == "30000.0"
    assert samples['pybootd_http_requests_total{status="200"}'] == "1.0"
    assert samples["pybootd_http_bytes_sent_total"] == "300000.0"
    assert samples['pybootd_leases{state="bound"}'] == "1.0"
    assert samples["pybootd_pool_addresses"] == "10.0"
    assert samples['pybootd_boot_phase_seconds_count{phase="discover_to_ack"}'] == "1.0"
    assert samples['pybootd_boot_phase_seconds_count{phase="ack_to_first_file"}'] == "1.0"
    assert samples['pybootd_boot_phase_seconds_count{phase="file"}'] == "2.0"
    assert "_created" not in text


def test_leases_transfers_health_and_the_page(daemon: Running) -> None:
    boot(daemon)
    status, leases = daemon.get("/api/v1/leases")
    assert status == 200
    (lease,) = leases["leases"]
    assert (lease["mac"], lease["address"], lease["state"]) == (MAC_TEXT, CLIENT_IP, "bound")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", lease["expires"])
    status, transfers = daemon.get("/api/v1/transfers")
    assert status == 200 and transfers["running"] == []
    assert [(t["file"], t["protocol"], t["outcome"], t["mac"]) for t in transfers["finished"]] \
        == [("/linux", "http", "200", MAC_TEXT), ("pxelinux.0", "tftp", "complete", MAC_TEXT)]
    assert daemon.get("/healthz") == (200, {"status": "ok", "services": {
        "dhcp": True, "tftp": True, "http": True}})
    status, page = daemon.get("/", token=None)  # the page itself holds no data
    assert status == 200 and "<title>pybootd status</title>" in page


def test_a_running_http_download_shows_its_progress(tmp_path: Path) -> None:
    """A file sent by sendfile (no byte count until it ends) still shows bytes and
    progress while it runs: a client that reads slowly keeps it under way."""
    size = 64 * 1024 * 1024
    (tmp_path / "root").mkdir()
    with open(tmp_path / "root" / "big.img", "wb") as file:
        file.truncate(size)  # sparse: no 64 MiB written to the disk
    daemon = start(tmp_path)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", daemon.ports["http"]))
            sock.sendall(b"GET /big.img HTTP/1.1\r\nHost: pybootd\r\n\r\n")
            got = 0
            for _ in range(64):  # 4 MiB read, then a pause: the rest waits on us
                got += len(sock.recv(65536))
            time.sleep(0.5)
            status, transfers = daemon.get("/api/v1/transfers")
            assert status == 200
            [running] = [t for t in transfers["running"] if t["file"] == "/big.img"]
            assert running["protocol"] == "http" and running["size"] == size
            assert 0 < running["bytes"] < size and 0 < running["progress"] < 1
            assert running["bytes"] >= got - 1024  # the headers count too, a little
    finally:
        stop(daemon)


def test_without_the_token_every_data_request_is_refused(daemon: Running) -> None:
    for path in ("/metrics", "/healthz", "/api/v1/leases", "/api/v1/machines"):
        status, body = daemon.get(path, token=None)
        assert status == 401 and "Bearer" in body["error"], path
        assert daemon.get(path, token="wrong")[0] == 401
    assert TOKEN not in daemon.log.read_text()


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Headless Debian chromium, flags as the machine notes ask (no background
    networking: the machine's network is closed), a fresh profile."""
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not found (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not found (Debian package chromium)")
    with tempfile.TemporaryDirectory(prefix="pybootd-chromium-") as profile:
        return subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout, check=False)


def test_the_status_page_in_a_real_browser_shows_the_machine_and_its_file(
        daemon: Running, tmp_path: Path) -> None:
    boot(daemon)
    url = f"http://127.0.0.1:{daemon.ports['api']}/#token={TOKEN}"
    # The page polls the API once a second: 3 s of the page's time render it.
    done = chromium("--virtual-time-budget=3000", "--dump-dom", url)
    assert done.returncode == 0, done.stderr
    dom = done.stdout
    machines = dom[dom.index('id="machines"'):dom.index("</tbody>", dom.index('id="machines"'))]
    assert MAC_TEXT in machines and CLIENT_IP in machines and "http /linux" in machines
    state = re.search(r'<div id="state"[^>]*>([^<]*)</div>', dom)
    assert state is not None and state[1].startswith("serving: dhcp, tftp, http"), state
    shot = tmp_path / "status.png"
    done = chromium("--virtual-time-budget=3000", "--window-size=1100,700",
                    f"--screenshot={shot}", url)
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr
    if os.environ.get("PYBOOTD_SCREENSHOT"):  # docs/status.png for the README
        shutil.copy(shot, os.environ["PYBOOTD_SCREENSHOT"])
