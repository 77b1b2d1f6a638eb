#!/usr/bin/env python3
"""HTTP under load: pybootd's [httpd] beside Python's http.server and nginx.

Every server serves the same file (``--size`` MiB, default 40: a Debian
initrd's size class) from the same folder on loopback; ``--clients`` curl
processes (default 100) fetch it at once, each server fresh, the servers
alternated run by run. Printed per server: the aggregate throughput (the
best of ``--runs``) and the server's CPU time per MiB sent (its utime +
stime from /proc over the run; nginx: its master and workers).

While pybootd is under load, its other services must keep answering: a
probe makes a whole DHCP exchange (DISCOVER, OFFER, REQUEST, ACK, relayed
through 127.0.0.1 so the replies can be read on loopback: needs root to bind
port 67) and a TFTP fetch of a small file, during every run; the slowest of
each is printed (target: under 1 s).

Usage: ``python3 scripts/bench_http.py [--clients 100] [--size 40] [--runs 3]``
(nginx from Debian's nginx-light, if installed; http.server always).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from tftpclient import Client  # noqa: E402

from pybootd.dhcp.options import DhcpOption, MessageType  # noqa: E402
from pybootd.dhcp.packet import DhcpPacket, encode_packet, parse_packet_untrusted  # noqa: E402

HOST = "127.0.0.1"
HTTP_PORT, TFTP_PORT, DHCP_PORT = 18080, 16969, 16767
RELAY_PORT = 67  # where a DHCP server answers a relay (RFC 2131 section 4.1)
CURL_TIMEOUT = 600
PROBE_EVERY = 0.5  # seconds between the probes during a run
MIB = 1024 * 1024


@dataclass
class Run:
    seconds: float
    cpu: float  # server CPU seconds over the run
    failed: int  # curl processes that did not get the whole file
    probes: dict[str, list[float]] = field(default_factory=dict)


# --- the servers ----------------------------------------------------------------------

class Server:
    name = ""

    def __init__(self, work: Path, root: Path) -> None:
        self.work, self.root = work, root
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        assert self.proc is not None
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                  text=True, timeout=10, check=False).stdout.split()
        return [self.proc.pid, *map(int, children)]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


class Pybootd(Server):
    name = "pybootd"

    def start(self) -> None:
        config = self.work / "pybootd.ini"
        state = self.work / "state"
        shutil.rmtree(state, ignore_errors=True)
        config.write_text(
            f"[logger]\nlevel = warning\n[daemon]\nstate_dir = {state}\nuser = root\n"
            f"[bootp]\naddress = {HOST}\nport = {DHCP_PORT}\npool_start = 127.0.0.100\n"
            f"pool_count = 50\nallow_simple_dhcp = on\n"
            f"[tftp]\naddress = {HOST}\nport = {TFTP_PORT}\nroot = {self.root}\n"
            f"[httpd]\nport = {HTTP_PORT}\n")
        log = open(self.work / "pybootd.log", "wb")  # noqa: SIM115 (the process keeps it)
        self.proc = subprocess.Popen([sys.executable, "-m", "pybootd", "-c", str(config)],
                                     stdout=log, stderr=log, cwd=REPO)
        wait_http(self.proc)


class StdlibServer(Server):
    name = "http.server"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", HOST, "--directory",
             str(self.root), str(HTTP_PORT)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        wait_http(self.proc)


class Nginx(Server):
    name = "nginx"

    def start(self) -> None:
        conf = self.work / "nginx.conf"
        conf.write_text(
            f"daemon off; worker_processes 1; pid {self.work / 'nginx.pid'};\n"
            f"error_log {self.work / 'nginx.err'};\n"
            "events { worker_connections 4096; }\n"
            f"http {{ access_log off; sendfile on; tcp_nopush on; keepalive_timeout 75;\n"
            f"  client_body_temp_path {self.work}; proxy_temp_path {self.work};\n"
            f"  fastcgi_temp_path {self.work}; uwsgi_temp_path {self.work};\n"
            f"  scgi_temp_path {self.work};\n"
            f"  server {{ listen {HOST}:{HTTP_PORT}; root {self.root}; }} }}\n")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(self.work)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.proc)


def wait_http(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, HTTP_PORT), 0.2):
            return
        time.sleep(0.1)
    raise SystemExit("server did not listen within 20 s")


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


# --- the probes: DHCP and TFTP during the load ------------------------------------------

def dhcp_exchange(relay: socket.socket, n: int) -> float:
    """Seconds for DISCOVER -> OFFER -> REQUEST -> ACK, relayed through HOST."""
    mac = bytes((2, 0, 0, 0, n >> 8 & 0xFF, n & 0xFF))
    started = time.monotonic()
    offer = _ask(relay, mac, MessageType.DISCOVER, {}, n)
    opts: dict[int, bytes] = {DhcpOption.REQUESTED_IP: offer.yiaddr.packed,
            DhcpOption.SERVER_ID: offer.options[DhcpOption.SERVER_ID]}
    _ask(relay, mac, MessageType.REQUEST, opts, n)
    return time.monotonic() - started


def _ask(relay: socket.socket, mac: bytes, kind: MessageType, opts: dict[int, bytes],
         xid: int) -> DhcpPacket:
    packet = DhcpPacket(op=1, xid=xid, chaddr=mac, giaddr=IPv4Address(HOST),
                        options={DhcpOption.MESSAGE_TYPE: bytes((kind,)), **opts}, dhcp=True)
    relay.sendto(encode_packet(packet), (HOST, DHCP_PORT))
    while True:
        reply = parse_packet_untrusted(relay.recv(4096))
        if reply.xid == xid:
            return reply


def tftp_fetch(name: str) -> float:
    started = time.monotonic()
    with Client(HOST, TFTP_PORT, timeout=5) as client:
        client.get(name)
    return time.monotonic() - started


@contextlib.contextmanager
def probing(enabled: bool, probes: dict[str, list[float]]) -> Iterator[None]:
    """Probe DHCP and TFTP every PROBE_EVERY seconds until the block ends."""
    if not enabled:
        yield
        return
    stop = threading.Event()
    relay = _relay_socket()

    def loop() -> None:
        for n in range(1, 10**6):
            if stop.wait(PROBE_EVERY):
                return
            _probe(probes, "tftp", lambda: tftp_fetch("small.txt"))
            if relay is not None:
                _probe(probes, "dhcp", lambda: dhcp_exchange(relay, n))  # noqa: B023

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)
        if relay is not None:
            relay.close()


def _relay_socket() -> socket.socket | None:
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        relay.bind((HOST, RELAY_PORT))
    except OSError as exc:
        print(f"# DHCP probe off: cannot bind {HOST}:{RELAY_PORT} ({exc.strerror})")
        relay.close()
        return None
    relay.settimeout(5)
    return relay


def _probe(probes: dict[str, list[float]], name: str, probe: Callable[[], float]) -> None:
    try:
        probes.setdefault(name, []).append(probe())
    except (OSError, Exception) as exc:  # a timeout is a result: the service did not answer
        print(f"# {name} probe failed: {exc}")
        probes.setdefault(name, []).append(float("inf"))


# --- one run -------------------------------------------------------------------------

def run_once(server: Server, clients: int, size: int, probe: bool) -> Run:
    server.start()
    try:
        url = f"http://{HOST}:{HTTP_PORT}/initrd.gz"
        subprocess.run(["curl", "-sS", "-o", "/dev/null", url], timeout=CURL_TIMEOUT,
                       check=True)  # warm: page cache, first request
        pids = server.pids()
        cpu_before = cpu_seconds(pids)
        probes: dict[str, list[float]] = {}
        started = time.monotonic()
        with probing(probe, probes):
            procs = [subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w",
                                       "%{size_download}", url], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL) for _ in range(clients)]
            sizes = []
            for proc in procs:
                out, _ = proc.communicate(timeout=CURL_TIMEOUT)
                sizes.append(int(out or b"0") if proc.returncode == 0 else -1)
        seconds = time.monotonic() - started
        cpu = cpu_seconds(pids) - cpu_before
        return Run(seconds, cpu, sum(1 for s in sizes if s != size), probes)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--size", type=int, default=40, help="MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--servers", default="pybootd,http.server,nginx")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl not found")
    kinds: dict[str, type[Server]] = {"pybootd": Pybootd, "http.server": StdlibServer,
                                      "nginx": Nginx}
    names = [n for n in args.servers.split(",") if n]
    if "nginx" in names and shutil.which("nginx") is None:
        print("# nginx not found (Debian: nginx-light): left out")
        names.remove("nginx")
    size = args.size * MIB
    with tempfile.TemporaryDirectory(prefix="pybootd-bench-http-") as tmp:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        (root / "initrd.gz").write_bytes(os.urandom(size))
        (root / "small.txt").write_bytes(b"x" * 4096)
        os.chmod(tmp, 0o755)
        results: dict[str, list[Run]] = {n: [] for n in names}
        for i in range(args.runs):
            for name in names if i % 2 == 0 else names[::-1]:
                run = run_once(kinds[name](work, root), args.clients, size, name == "pybootd")
                results[name].append(run)
                mbs = args.clients * size / run.seconds / 1e6
                print(f"# run {i + 1} {name:<11} {run.seconds:7.2f} s {mbs:8.1f} MB/s "
                      f"cpu {run.cpu:6.2f} s{f', {run.failed} failed' if run.failed else ''}")
        report(results, args.clients, size)
    return 0


def report(results: dict[str, list[Run]], clients: int, size: int) -> None:
    mib = clients * size / MIB
    print(f"\n{clients} concurrent curl x {size // MIB} MiB on loopback, best of "
          f"{len(next(iter(results.values())))} runs")
    print(f"{'server':<12} {'MB/s':>8} {'CPU ms/MiB':>11} {'failed':>7}")
    best: dict[str, float] = {}
    for name, runs in results.items():
        top = min(runs, key=lambda r: r.seconds)
        best[name] = clients * size / top.seconds / 1e6
        print(f"{name:<12} {best[name]:8.1f} {top.cpu / mib * 1000:11.2f} "
              f"{sum(r.failed for r in runs):7d}")
    if "pybootd" in best:
        for other in (n for n in best if n != "pybootd"):
            print(f"pybootd / {other}: {best['pybootd'] / best[other]:.2f}x throughput")
        probes: dict[str, list[float]] = {}
        for run in results["pybootd"]:
            for name, values in run.probes.items():
                probes.setdefault(name, []).extend(values)
        for name, values in sorted(probes.items()):
            worst = max(values)
            print(f"pybootd {name.upper()} during the load: {len(values)} probes, slowest "
                  f"{worst:.3f} s ({'PASS' if worst < 1.0 else 'FAIL'}: < 1 s)")


if __name__ == "__main__":
    sys.exit(main())
