"""pybootd under a lossy link, 500 concurrent clients, and SIGTERM mid-transfer.

* Loss, duplication and reordering on both ends of the link (``tc netem``;
  where the kernel has no netem, as on the CI machines, a userspace relay
  that impairs the same packets): real clients in lock-step and with
  windowsize 8 still get the right sha256, one at a time and 8 at once.
* 500 transfers of 1 MiB at once from an asyncio client in the client's
  namespace (one socket per transfer): all succeed, truly concurrently;
  100 in lock-step at once, through the daemon's compiled pump.
* SIGTERM while a transfer runs: it finishes, the daemon exits 0 within the
  grace and takes no new request meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import resource
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from netlab import NetLab, wait_for
from tftp_support import (
    CLIENT_IP,
    HPA,
    MIB,
    SERVER_IP,
    ClientKind,
    Impairment,
    Pybootd,
    fetch,
    in_netns,
    lossy_link,
    ns_client,
    public_tmpdir,
    sha256_file,
    two_hosts,
    write_file,
)

from pybootd.tftp.packets import Data, Error, Opcode, Request, encode_ack, encode_request

pytestmark = [pytest.mark.netns, pytest.mark.interop]


# --- a lossy link ------------------------------------------------------------------------------
# (client, KiB): lock-step (tftp-hpa sends no options: 512-byte blocks) and windowsize 8.
# busybox and atftp ignore a repeated DATA block until their own timer fires
# (and restart that timer on every packet), so in lock-step each lost ACK
# costs them most of the server's backoff series: their files are smaller.
LOSSY_CLIENTS = [
    (HPA, 1024),
    (ClientKind("busybox-blksize1024", "busybox", blksize=1024), 512),
    (ClientKind("atftp-ws1-blksize1428", "atftp", blksize=1428), 1024),
    (ClientKind("atftp-ws8-blksize1428", "atftp", blksize=1428, windowsize=8), 4096),
    (ClientKind("atftp-ws8-blksize512", "atftp", blksize=512, windowsize=8), 2048),
]
# A short timeout keeps each loss cheap; 8 retries (10 s of backoff) outlast
# atftp's 1 s timer and end a transfer whose final ACK was lost soon enough.
LOSSY_SERVER = {"timeout": 0.02, "retries": 8}
COMPLETE = (r"read payload.bin complete(?: \(final ACK not received\))?: (\d+) bytes .*"
            r" (\d+) retransmits")


@pytest.mark.parametrize("kind,kib", LOSSY_CLIENTS, ids=lambda k: getattr(k, "name", ""))
def test_lossy_link_transfers_complete(lab: NetLab, kind: ClientKind, kib: int) -> None:
    size = kib * 1024
    with public_tmpdir("lossy") as base, lossy_link(lab, Impairment()) as link:
        if link.relay is not None:
            print(f"netem unavailable ({link.netem_failure}); userspace relay instead")
        sha = write_file(base / "root" / "payload.bin", size)
        (base / "root").chmod(0o755)
        server = Pybootd(lab, link.hosts.server, base).start(
            {"root": base / "root", **LOSSY_SERVER})
        local = base / "got"
        run = fetch(lab, link.hosts.client, kind, "payload.bin", local, size, timeout=150)
        counts = link.relay.counts if link.relay else "netem"
        assert run.returncode == 0, f"{run}\n{counts}\n{server.log()[-3000:]}"
        assert sha256_file(local) == sha, run
        done = server.wait_log(COMPLETE, timeout=15)
        print(run, done[0], counts, sep="\n")
        assert int(done[1]) == size
        if link.relay is not None:
            assert link.relay.counts["dropped"] > 0 and link.relay.counts["reordered"] > 0
            assert link.relay.counts["duplicated"] > 0
        assert int(done[2]) > 0  # the link really lost packets


@pytest.mark.parametrize("windowsize, kib", [(8, 2048), (1, 512)], ids=["ws8", "lockstep"])
def test_lossy_link_eight_transfers_at_once(lab: NetLab, windowsize: int, kib: int) -> None:
    """The asyncio client of the swarm below, 8 at once: with windowsize 8
    (RFC 7440 window restarts), and in lock-step, where reads go through
    the compiled pump and lost, duplicated and reordered ACKs and DATA are
    Python's to decide."""
    with public_tmpdir("lossy8") as base, lossy_link(lab, Impairment()) as link:
        sha = write_file(base / "root" / "payload.bin", kib * 1024)
        (base / "root").chmod(0o755)
        server = Pybootd(lab, link.hosts.server, base).start(
            {"root": base / "root", **LOSSY_SERVER})
        fetches = in_netns(link.hosts.client, lambda: asyncio.run(
            swarm(8, "payload.bin", 1468, windowsize, deadline=100, timeout=0.3)),
            timeout=120)
        assert [f.error for f in fetches] == [""] * 8, server.log()[-3000:]
        assert {f.digest.hexdigest() for f in fetches} == {sha}
        wait_for(lambda: len(re.findall(COMPLETE, server.log())) == 8, 20,
                 what="8 complete transfers in the log")
        assert " 0 retransmits" not in server.log()
        if windowsize == 1:
            assert_pump(server.log())


def assert_pump(log: str) -> None:
    """The daemon runs the compiled pump (it is built here)."""
    assert "TFTP lock-step pump: epoll" in log, "the compiled pump is not running"


def test_100_lockstep_clients_at_once(lab: NetLab, enough_files: None) -> None:
    """A room of PCs booting: 100 lock-step reads at once through the pump."""
    hosts = two_hosts(lab)
    with public_tmpdir("room") as base:
        sha = write_file(base / "root" / "one-mib.bin", SWARM_FILE_SIZE)
        (base / "root").chmod(0o755)
        server = Pybootd(lab, hosts.server, base).start(
            {"root": base / "root", "max_client_sessions": 1000})  # one address here
        fetches = in_netns(hosts.client, lambda: asyncio.run(
            swarm(100, "one-mib.bin", 1468, 1, deadline=150)), timeout=180)
        failures = [f"{i}: {f.error or f'{f.size} bytes'}" for i, f in enumerate(fetches)
                    if f.error or f.size != SWARM_FILE_SIZE]
        assert not failures, f"{len(failures)} failed: {failures[:10]}\n{server.log()[-3000:]}"
        assert {f.digest.hexdigest() for f in fetches} == {sha}
        assert peak_overlap(fetches) >= 50
        log = server.log()
        assert log.count("read one-mib.bin complete") == 100
        assert_pump(log)
        assert server.stop() == 0


# --- 500 clients at once ----------------------------------------------------------------------
SWARM = 500
SWARM_FILE_SIZE = MIB


@dataclass
class Fetch(asyncio.DatagramProtocol):
    """One RRQ with blksize and windowsize (RFC 7440), retransmitting on timeout."""

    name: str
    server: tuple[str, int]
    blksize: int
    windowsize: int
    timeout: float = 1.0
    retries: int = 8
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0
    error: str = ""
    started: float = 0.0
    first_data: float = 0.0
    ended: float = 0.0
    done: asyncio.Future[None] | None = None

    def begin(self, transport: asyncio.DatagramTransport) -> None:
        loop = asyncio.get_running_loop()
        self.transport, self.done = transport, loop.create_future()
        self.peer: tuple[str, int] | None = None
        self.expected, self.since_ack, self.gap_acked, self.tries = 1, 0, False, 0
        self.granted = (512, 1)
        options = (("blksize", str(self.blksize)), ("windowsize", str(self.windowsize)))
        self.last = encode_request(Request(Opcode.RRQ, self.name, "octet", options))
        self.started = time.monotonic()
        self.timer = loop.call_later(self.timeout, self.on_timeout)
        self.transport.sendto(self.last, self.server)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.peer is None and addr[0] == self.server[0]:
            self.peer = addr
        if addr != self.peer or len(data) < 4 or self.done is None:
            return
        opcode, block = struct.unpack_from("!HH", data)
        if self.done.done():
            # Dallying (RFC 1350 section 6): our final ACK was lost, say it again.
            if opcode == Opcode.DATA and not self.error and block == (self.expected - 1) & 0xFFFF:
                self.transport.sendto(self.last, self.peer)
            return
        if opcode == Opcode.OACK:
            fields = data[2:].split(b"\0")
            values = dict(zip(fields[0::2], fields[1::2], strict=False))
            self.granted = (int(values.get(b"blksize", 512)), int(values.get(b"windowsize", 1)))
            if self.expected == 1:
                self.ack(0)
        elif opcode == Opcode.DATA:
            self.on_data(block, data[4:])
        elif opcode == Opcode.ERROR:
            self.finish(f"ERROR {block}: {data[4:-1].decode(errors='replace')}")
        if self.done.done():
            return
        self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.timeout, self.on_timeout)
        self.tries = 0

    def on_data(self, block: int, payload: bytes) -> None:
        if block != self.expected & 0xFFFF:
            if not self.gap_acked:  # say once where we are; the server restarts there
                self.ack(self.expected - 1)
                self.gap_acked = True
            return
        self.first_data = self.first_data or time.monotonic()
        self.digest.update(payload)
        self.size += len(payload)
        self.gap_acked, self.since_ack = False, self.since_ack + 1
        final = len(payload) < self.granted[0]
        if final or self.since_ack >= self.granted[1]:
            self.ack(block)
        self.expected += 1
        if final:
            self.finish()

    def ack(self, block: int) -> None:
        self.last, self.since_ack = encode_ack(block), 0
        self.transport.sendto(self.last, self.peer or self.server)

    def on_timeout(self) -> None:
        if self.done is None or self.done.done():
            return
        self.tries += 1
        if self.tries > self.retries:
            self.finish(f"timed out after {self.retries} retries at block {self.expected}")
            return
        self.transport.sendto(self.last, self.peer or self.server)
        self.timer = asyncio.get_running_loop().call_later(self.timeout, self.on_timeout)

    def finish(self, error: str = "") -> None:
        assert self.done is not None
        if self.done.done():
            return
        self.timer.cancel()
        self.error, self.ended = error, time.monotonic()
        self.done.set_result(None)

    def error_received(self, exc: Exception) -> None:
        self.finish(f"socket error: {exc}")


def _factory(protocol: Fetch) -> Callable[[], Fetch]:
    return lambda: protocol


async def swarm(count: int, name: str, blksize: int, windowsize: int, deadline: float,
                timeout: float = 1.0) -> list[Fetch]:
    """*count* transfers, every socket opened first, then every RRQ sent at once."""
    loop = asyncio.get_running_loop()
    fetches = [Fetch(name, (SERVER_IP, 69), blksize, windowsize, timeout)
               for _ in range(count)]
    transports = []
    for one in fetches:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        sock.bind((CLIENT_IP, 0))
        transport, _ = await loop.create_datagram_endpoint(_factory(one), sock=sock)
        transports.append(transport)
    try:
        for one, transport in zip(fetches, transports, strict=True):
            one.begin(transport)
        await asyncio.wait_for(asyncio.gather(*(f.done for f in fetches if f.done)), deadline)
        await asyncio.sleep(min(4 * timeout, 2.0))  # dally for lost final ACKs
    finally:
        for transport in transports:
            transport.close()
    return fetches


def peak_overlap(fetches: list[Fetch]) -> int:
    """The most transfers that were receiving data at the same moment."""
    events = sorted([(f.first_data, 1) for f in fetches if f.first_data]
                    + [(f.ended, -1) for f in fetches if f.first_data])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.fixture
def enough_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * SWARM + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_500_clients_at_once(lab: NetLab, enough_files: None) -> None:
    hosts = two_hosts(lab)
    with public_tmpdir("swarm") as base:
        sha = write_file(base / "root" / "one-mib.bin", SWARM_FILE_SIZE)
        (base / "root").chmod(0o755)
        server = Pybootd(lab, hosts.server, base).start(
            {"root": base / "root", "max_sessions": 1000, "max_client_sessions": 1000,
             "timeout": 1.0})
        start = time.monotonic()
        fetches = in_netns(hosts.client, lambda: asyncio.run(
            swarm(SWARM, "one-mib.bin", 1468, 16, deadline=150)), timeout=180)
        elapsed = time.monotonic() - start
        failures = [f"{i}: {f.error or f'{f.size} bytes'}" for i, f in enumerate(fetches)
                    if f.error or f.size != SWARM_FILE_SIZE]
        assert not failures, f"{len(failures)} failed: {failures[:10]}\n{server.log()[-3000:]}"
        assert {f.digest.hexdigest() for f in fetches} == {sha}
        overlap = peak_overlap(fetches)
        log = server.log()
        print(f"{SWARM} x 1 MiB in {elapsed:.1f}s "
              f"({SWARM * SWARM_FILE_SIZE / elapsed / 1e6:.0f} MB/s), "
              f"peak {overlap} receiving at once, {log.count('retransmits')} transfers logged")
        assert log.count("read one-mib.bin complete") == SWARM
        assert "refused" not in log
        assert overlap >= SWARM // 2, f"only {overlap} transfers overlapped"
        assert server.stop() == 0


def test_over_max_sessions_is_server_busy_then_served(lab: NetLab) -> None:
    """60 at once for 20 slots: a request gets "server busy" when every slot
    is taken, or takes the slot of a transfer whose client had not answered
    yet (that one gets "server busy" then). Refusals are logged at most 10
    per 10 s, then counted."""
    hosts = two_hosts(lab)
    with public_tmpdir("busy") as base:
        sha = write_file(base / "root" / "one-mib.bin", MIB)
        (base / "root").chmod(0o755)
        server = Pybootd(lab, hosts.server, base).start(
            {"root": base / "root", "max_sessions": 20, "max_client_sessions": 1000})
        fetches = in_netns(hosts.client, lambda: asyncio.run(
            swarm(60, "one-mib.bin", 512, 1, deadline=60)), timeout=90)
        busy = [f for f in fetches if f.error]
        served = [f for f in fetches if not f.error]
        assert {f.error for f in busy} <= {"ERROR 0: server busy"}, {f.error for f in busy}
        assert busy and len(served) >= 20, (len(busy), len(served))
        assert {f.digest.hexdigest() for f in served} == {sha}
        log = server.log()
        refused, evicted = log.count("sessions running"), log.count("evicted for a new request")
        assert refused + evicted >= 1 and refused <= 10 and evicted <= 10, (refused, evicted)
        again = in_netns(hosts.client, lambda: asyncio.run(
            swarm(20, "one-mib.bin", 1468, 8, deadline=60)), timeout=90)
        assert [f.error for f in again] == [""] * 20


# --- SIGTERM while a transfer runs -------------------------------------------------------------
GRACE = 15  # [daemon] shutdown_grace of the SIGTERM test


@pytest.mark.parametrize("count", [1, 2], ids=["one", "two"])
def test_sigterm_lets_the_running_transfers_finish(lab: NetLab, count: int) -> None:
    """One transfer or two, through the compiled pump."""
    hosts = two_hosts(lab)
    with public_tmpdir("sigterm") as base:
        size = 24 * MIB  # about 1.5 s at blksize 512 in lock-step
        sha = write_file(base / "root" / "kernel.bin", size)
        (base / "root").chmod(0o755)
        # The grace is raised from its default (5 s) so that a loaded machine,
        # where this transfer can take seconds, still lets it finish in time.
        server = Pybootd(lab, hosts.server, base).start(
            {"root": base / "root"}, daemon={"shutdown_grace": GRACE})
        kind = ClientKind("curl-blksize512", "curl", blksize=512)
        locals_ = [base / f"got{i}" for i in range(count)]
        clients = []
        for local in locals_:
            since = len(server.log())
            clients.append(lab.popen(hosts.client, kind.argv(SERVER_IP, "kernel.bin", local, size)))
            server.wait_log(rf"{CLIENT_IP}:\d+: RRQ kernel.bin", since=since)
        time.sleep(0.2)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        server.wait_log(rf"waiting up to {GRACE}s for {count} transfer\(s\) to finish",
                        timeout=5)
        with ns_client(hosts.client, timeout=0.5) as late, pytest.raises(socket.timeout):
            late.get("kernel.bin")  # no longer accepting: no answer at all
        status = server.proc.wait(timeout=GRACE + 5)
        exited = time.monotonic() - signalled
        for client, local in zip(clients, locals_, strict=True):
            output, _ = client.communicate(timeout=30)
            assert client.returncode == 0, output
            assert sha256_file(local) == sha
        assert status == 0, server.log()
        assert exited < GRACE + 0.5, f"exit {exited:.2f}s after SIGTERM"
        assert server.log().count("read kernel.bin complete") == count
        assert_pump(server.log())


@pytest.mark.parametrize("count", [1, 2], ids=["one", "two"])
def test_sigterm_grace_over_tells_every_running_transfer(lab: NetLab, count: int) -> None:
    """Clients still reading when the grace ends (slow firmware: 3 blocks,
    then silence) each get ERROR 0 "server shutting down", and each transfer
    gets its log line, before the process ends."""
    hosts = two_hosts(lab)
    with public_tmpdir("cut") as base:
        write_file(base / "root" / "kernel.bin", 4 * MIB)
        (base / "root").chmod(0o755)
        server = Pybootd(lab, hosts.server, base).start(
            {"root": base / "root", "timeout": 1.0}, daemon={"shutdown_grace": 1})
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(ns_client(hosts.client)) for _ in range(count)]
            for client in clients:
                client.request("kernel.bin")
                block = 0
                while block < 3:
                    packet, tid = client.receive()
                    assert isinstance(packet, Data)
                    block = packet.block
                    client.sock.sendto(encode_ack(block), tid)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(timeout=10) == 0
            for client in clients:
                for _ in range(10):  # retransmissions of block 4 may come first
                    packet, _ = client.receive()
                    if isinstance(packet, Error):
                        break
                assert isinstance(packet, Error) and packet.message == "server shutting down"
        log = server.log()
        assert log.count("read kernel.bin failed") == count, log[-3000:]
        assert log.count("(server shutting down)") == count, log[-3000:]


def test_sigterm_when_idle_exits_at_once(lab: NetLab) -> None:
    hosts = two_hosts(lab)
    with public_tmpdir("idle") as base:
        (base / "root").mkdir(mode=0o755)
        server = Pybootd(lab, hosts.server, base).start({"root": base / "root"})
        start = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - start < 2

