#!/usr/bin/env python3
"""TFTP throughput: pybootd beside tftpd-hpa, atftpd and dnsmasq (issue 2, "Benchmark").

One run prints one table. The servers serve the same 100 MiB file from a
folder on disk (``/var/tmp``, where TFTP roots live; the file is read once
first, so the page cache is warm) to the same client, over loopback:

* one client, blksize 512, 1468 and 65464, windowsize 1, 8 and 64.
  Windowsize > 1 uses atftp, the only client here with RFC 7440 windowsize.
  Windowsize 1 uses, at each blksize, the fastest of curl, atftp and busybox
  tftp, chosen by a short calibration against tftpd-hpa at the start of the
  run (``--ws1-client`` fixes one instead); curl's start-up alone takes about
  15 ms, the others' about 2 ms. A server without windowsize (tftpd-hpa,
  dnsmasq) is not asked for it: its cell says "no ws" and its windowsize-1
  figure is the one to compare with. Before the runs, one atftp ``--trace``
  request per cell reads the server's OACK: a cell shows [bN] or [wN] where
  the server granted another blksize or windowsize than asked. Where the
  granted window (blksize x windowsize) exceeds the client's socket receive
  buffer (net.core.rmem_default), atftp drops blocks whatever the server:
  those cells (+) use the 8 MiB file and one run, and tell how a server
  recovers, not its throughput;
* dnsmasq's TFTP listens on port 69 only, so it runs in a network namespace
  of its own (loopback only) and its clients join that namespace (setns, no
  extra process); the others run on the host loopback on free high ports;
* 100 concurrent clients (blksize 1468, windowsize 1, the client that spent
  the least CPU per block against tftpd-hpa in the calibration: client
  processes share the 2 cores with the servers, so the lightest one leaves
  the most to the server) each fetching an 8 MiB file: aggregate MB/s from
  the first client started to the last one done;
* pybootd's peak RSS: VmHWM from /proc/PID/status at the end of the run.

Each figure is the best of ``--runs`` runs (best, not median: other work on
the machine only ever slows a run down). The runs are interleaved (run 1 of
every cell, then run 2 ..., the servers in a rotated order each run) so a noisy
moment does not hit one server only; the footer gives the load average.
Every received file is checked for its size, and for its sha256 on the first
run of each cell. MB/s is 10^6 bytes per second, timed around the client
process (its start-up is included, the same for every server).

``--profile`` instead runs pybootd alone for the scenarios 512/ws1,
1468/ws1, 65464/ws1, 1468/ws64 and the 100 clients: first without a profiler,
printing MB/s and the server's CPU time per DATA block from /proc (beside
tftpd-hpa's, children included, for the windowsize-1 scenarios), then under
``py-spy record --native`` (``--spy-mode python`` for Python stacks only,
without pausing pybootd), printing for the event-loop thread the top
functions by own time (syscalls and C functions included), the Python lines
that time is spent under, and what the thread pool's readers did.

Usage (as root, from the repository)::

    python3 scripts/bench_tftp.py                 # the table, about 4 to 7 minutes
    python3 scripts/bench_tftp.py --runs 3        # quicker, noisier
    python3 scripts/bench_tftp.py --profile       # where pybootd's time goes, 3-4 minutes
    python3 scripts/bench_tftp.py --pybootd-cmd "/other/venv/bin/python -m pybootd"  # A/B

Needs: curl, atftp, busybox (clients); in.tftpd (tftpd-hpa), dnsmasq
(dnsmasq-base); atftpd unpacked beside the system, because the Debian package
atftpd conflicts with tftpd-hpa; py-spy for ``--profile``. Install them with::

    apt-get install -y --no-install-recommends curl atftp busybox tftpd-hpa dnsmasq-base
    cd /tmp && apt-get download atftpd && dpkg-deb -x atftpd_*.deb /opt/atftpd && rm atftpd_*.deb
    python3 -m pip install py-spy

(``/opt/atftpd/usr/sbin/atftpd`` only needs libraries of the base system:
check with ``ldd``.) A server whose program is missing is shown as
"not available"; ``--atftpd PATH`` points at another atftpd binary.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib.util
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MIB = 1024 * 1024
BLKSIZES = (512, 1468, 65464)
WINDOWSIZES = (1, 8, 64)
DEFAULT_ATFTPD = "/opt/atftpd/usr/sbin/atftpd"
CLIENT_TIMEOUT = 120.0  # seconds one single-client transfer may take
START_TIMEOUT = 10.0  # seconds a server may take to answer its first request
WS1_CLIENTS = ("curl", "atftp", "busybox")
# pybootd-api: pybootd with its control API on (the cost of observing: issue 13).
SERVER_NAMES = ("pybootd", "pybootd-api", "tftpd-hpa", "atftpd", "dnsmasq")
PREFER_MARGIN = 1.10  # calibration keeps atftp unless another client is 10 % faster


# --- servers ------------------------------------------------------------------


@dataclass
class Server:
    name: str
    windowsize: bool  # implements RFC 7440
    note: str = ""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    available: bool = True
    why: str = ""
    netns: str | None = None  # runs in this network namespace, on its loopback

    def enter(self, nice: int = 0) -> Callable[[], None] | None:
        """A ``preexec_fn`` that moves a client into the server's namespace
        and lowers its priority by *nice*."""
        if self.netns is None and not nice:
            return None
        netns = self.netns

        def preexec() -> None:
            if netns is not None:
                _setns(netns)
            if nice:
                os.nice(nice)

        return preexec

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


CLONE_NEWNET = 0x40000000


def _setns(name: str) -> None:
    """Join network namespace *name* (``ip netns``); runs in a child before exec,
    so a client in the namespace costs no extra process (unlike ``ip netns exec``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def namespace(name: str) -> Iterator[str]:
    """A network namespace with only its loopback, removed afterwards."""
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=20, capture_output=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True, timeout=20, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=20, capture_output=True)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


PYBOOTD_CMD = [sys.executable, "-m", "pybootd"]  # --pybootd-cmd replaces it (A/B tests)


def server_argv(server: Server, root: Path, work: Path, atftpd: str) -> list[str] | None:
    """The command line that runs *server* in the foreground, or None if missing."""
    port = server.port
    if server.name in ("pybootd", "pybootd-api"):
        ini = work / f"{server.name}.ini"
        api = f"[api]\nport = {free_udp_port()}\n" if server.name == "pybootd-api" else ""
        ini.write_text(
            "[logger]\nlevel = warning\n"
            f"[daemon]\nuser = root\nstate_dir = {work / (server.name + '-state')}\n"
            f"[tftp]\naddress = {HOST}\nport = {port}\nroot = {root}\n"
            "blocksize = 65464\nwindowsize = 64\nmax_sessions = 1000\n"
            "max_client_sessions = 1000\n" + api)  # every client runs on this one host
        return [*PYBOOTD_CMD, "-t", "-c", str(ini)]
    if server.name == "tftpd-hpa":
        exe = shutil.which("in.tftpd")
        if exe is None:
            return None
        # --secure chroots into the root; the default user (nobody) reads it.
        return [exe, "--foreground", "--listen", "--address", f"{HOST}:{port}",
                "--blocksize", "65464", "--secure", str(root)]
    if server.name == "atftpd":
        if not os.access(atftpd, os.X_OK):
            return None
        return [atftpd, "--daemon", "--no-fork", "--port", str(port), "--bind-address", HOST,
                "--user", "root", "--group", "root", "--maxthread", "1000",
                "--logfile", str(work / "atftpd.syslog"), str(root)]
    if server.name == "dnsmasq":
        # dnsmasq's TFTP listens on port 69 only: it runs in its own namespace.
        exe = shutil.which("dnsmasq")
        if exe is None:
            return None
        return [exe, "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
                "--enable-tftp", f"--tftp-root={root}",
                f"--listen-address={HOST}", "--bind-interfaces", "--tftp-max=1000",
                f"--pid-file={work / 'dnsmasq.pid'}", f"--log-facility={work / 'dnsmasq.syslog'}"]
    raise ValueError(server.name)


def start_server(server: Server, root: Path, work: Path, atftpd: str) -> None:
    server.port = 69 if server.netns else free_udp_port()
    argv = server_argv(server, root, work, atftpd)
    if argv is None:
        server.available, server.why = False, "not available"
        return
    server.log = work / f"{server.name}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with server.log.open("wb") as log:
        # Its own session: stop_server() ends the group this script started
        # (tftpd-hpa forks one child per transfer), and nothing else.
        server.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, preexec_fn=server.enter())
    probe = work / "probe.out"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "1", "-o", str(probe),
             f"tftp://{HOST}:{server.port}/ready.txt"],
            capture_output=True, timeout=5, preexec_fn=server.enter())
        if result.returncode == 0 and probe.read_bytes() == b"ready\n":
            return
        time.sleep(0.2)
    stop_server(server)
    tail = server.log.read_text(errors="replace")[-300:].strip()
    server.available, server.why = False, f"did not start ({tail or 'no output'})"


def stop_server(server: Server) -> None:
    proc = server.proc
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def pump_state() -> str:
    """Whether pybootd serves lock-step blocks from its compiled module."""
    if os.environ.get("PYBOOTD_NO_LOCKSTEP_PUMP"):
        return "the event loop alone (PYBOOTD_NO_LOCKSTEP_PUMP is set)"
    sys.path.insert(0, str(REPO))
    try:
        found = importlib.util.find_spec("pybootd._pump") is not None
    except ModuleNotFoundError:
        found = False
    finally:
        sys.path.remove(str(REPO))
    if not found:
        return "the event loop alone (pybootd._pump is not built)"
    return "compiled pump (pybootd._pump), epoll"


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size of *pid* in MB (10^6 bytes), from VmHWM."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 / 1e6 if match else None


# --- clients ------------------------------------------------------------------


def client_argv(client: str, port: int, remote: str, local: Path, blksize: int,
                windowsize: int) -> list[str]:
    if client == "curl":
        assert windowsize == 1, "curl has no windowsize option"
        return ["curl", "-sS", "--max-time", str(int(CLIENT_TIMEOUT)), "--tftp-blksize",
                str(blksize), "-o", str(local), f"tftp://{HOST}:{port}/{remote}"]
    if client == "atftp":
        argv = ["atftp", "--option", f"blksize {blksize}"]
        if windowsize > 1:
            argv += ["--option", f"windowsize {windowsize}"]
        return [*argv, "-g", "-r", remote, "-l", str(local), HOST, str(port)]
    if client == "busybox":
        assert windowsize == 1, "busybox tftp has no windowsize option"
        return ["busybox", "tftp", "-b", str(blksize), "-g", "-r", remote, "-l", str(local),
                HOST, str(port)]
    raise ValueError(client)


@dataclass
class Payload:
    name: str
    size: int
    sha256: str


def make_payload(root: Path, name: str, size: int) -> Payload:
    """A file of *size* random bytes: no two blocks alike, so a misplaced one shows."""
    path = root / name
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for offset in range(0, size, MIB):
            chunk = os.urandom(min(MIB, size - offset))
            out.write(chunk)
            digest.update(chunk)
    path.chmod(0o644)
    return Payload(name, size, digest.hexdigest())


def fetch(client: str, server: Server, payload: Payload, out: Path, blksize: int,
          windowsize: int, verify: bool, timeout: float = CLIENT_TIMEOUT) -> float | str:
    """Seconds one transfer took, or why it failed."""
    out.unlink(missing_ok=True)
    argv = client_argv(client, server.port, payload.name, out, blksize, windowsize)
    began = time.perf_counter()
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout,
                                preexec_fn=server.enter())
    except subprocess.TimeoutExpired:
        return "timeout"
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        return f"{client} exit {result.returncode}"
    got = out.stat().st_size if out.exists() else -1
    if got != payload.size:
        return f"size {got}"
    if verify and sha256_file(out) != payload.sha256:
        return "sha256 mismatch"
    return elapsed


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_many(client: str, server: Server, payload: Payload, outdir: Path, clients: int,
               blksize: int, timeout: float, nice: int = 0) -> float | str:
    """Seconds for *clients* client processes started at once to all finish."""
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    began = time.perf_counter()
    try:
        for i in range(clients):
            argv = client_argv(client, server.port, payload.name, outdir / str(i), blksize, 1)
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          preexec_fn=server.enter(nice)))
        failed = 0
        for proc in procs:
            left = max(0.1, timeout - (time.perf_counter() - began))
            if proc.wait(timeout=left) != 0:
                failed += 1
        elapsed = time.perf_counter() - began
    except subprocess.TimeoutExpired:
        return "timeout"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    sizes = [p.stat().st_size for p in outdir.iterdir()]
    short = clients - sum(1 for s in sizes if s == payload.size)
    if failed or short:
        return f"{max(failed, short)}/{clients} failed"
    if sha256_file(outdir / "0") != payload.sha256:
        return "sha256 mismatch"
    return elapsed


# --- the benchmark ------------------------------------------------------------


@dataclass
class Cell:
    size: int = 0  # bytes one run transfers
    times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skip: str = ""
    mark: str = ""  # footnote sign
    note: str = ""  # what the server granted, where it is not what was asked
    granted: dict[str, int] = field(default_factory=dict)

    def add(self, got: float | str) -> None:
        if isinstance(got, float):
            self.times.append(got)
        else:
            self.errors.append(got)

    @property
    def mbps(self) -> float | None:
        return self.size / min(self.times) / 1e6 if self.times else None

    def text(self) -> str:
        if self.skip:
            return self.skip
        if self.mbps is None:
            return self.errors[0] if self.errors else "-"
        return f"{self.mbps:.1f}{self.note}{'*' if self.errors else ''}{self.mark}"


Row = tuple[int, int, str]  # blksize, windowsize, client


def rows(ws1_clients: dict[int, str], blksizes: tuple[int, ...] = BLKSIZES,
         windowsizes: tuple[int, ...] = WINDOWSIZES) -> list[Row]:
    return [(bs, ws, ws1_clients[bs] if ws == 1 else "atftp")
            for ws in windowsizes for bs in blksizes]


@dataclass
class Calibration:
    """Per blksize, against the reference server: the fastest windowsize-1
    client (for the single-client rows) and the one that spends the least CPU
    per transfer (for the concurrent test: there the clients share the cores
    with the server, so the lightest one leaves the most to the server and the
    figure measures servers, not clients)."""

    fastest: dict[int, str]
    lightest: dict[int, str]
    report: list[str]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def calibrate(server: Server, payload: Payload, out: Path, blksizes: tuple[int, ...],
              runs: int) -> Calibration:
    """The fastest and the lightest windowsize-1 clients at each blksize."""
    candidates = [c for c in WS1_CLIENTS if shutil.which(c)]
    chosen: dict[int, str] = {}
    lightest: dict[int, str] = {}
    report: list[str] = []
    for bs in blksizes:
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for _ in range(runs):
            for client in candidates:  # interleaved: noise hits every client alike
                before = _children_cpu()
                got = fetch(client, server, payload, out, bs, 1, verify=False, timeout=60.0)
                used = _children_cpu() - before
                if isinstance(got, float):
                    best[client] = min(best.get(client, got), got)
                    cpu[client] = min(cpu.get(client, used), used)
        if not best:
            chosen[bs] = lightest[bs] = "atftp"
            report.append(f"{bs}: every client failed, atftp")
            continue
        lightest[bs] = min(cpu, key=lambda c: cpu[c])
        blocks = payload.size // bs + 1
        # atftp (the client of the windowsize rows) unless another is clearly faster:
        # under load, best-of-3 differences of a few per cent are noise.
        fastest = min(best, key=lambda c: best[c])
        keep = "atftp" in best and best["atftp"] <= best[fastest] * PREFER_MARGIN
        chosen[bs] = "atftp" if keep else fastest
        report.append(f"{bs}: " + ", ".join(
            f"{c} {payload.size / best[c] / 1e6:.1f} MB/s {1e6 * cpu[c] / blocks:.1f} us/blk"
            for c in sorted(best, key=lambda c: best[c])))
    return Calibration(chosen, lightest, report)


def rmem_default() -> int:
    try:
        return int(Path("/proc/sys/net/core/rmem_default").read_text())
    except (OSError, ValueError):
        return 212992


def client_limited(blksize: int, windowsize: int) -> bool:
    """atftp keeps the default receive buffer: a window larger than it overflows
    (UdpRcvbufErrors), and the figure measures the client's losses, not the server."""
    return windowsize > 1 and blksize * windowsize > rmem_default()


def probe_options(server: Server, blksize: int, windowsize: int, out: Path) -> dict[str, int]:
    """The options *server* grants (its OACK), asked by atftp as in the row."""
    argv = ["atftp", "--trace", "--option", f"blksize {blksize}"]
    if windowsize > 1:
        argv += ["--option", f"windowsize {windowsize}"]
    argv += ["-g", "-r", "ready.txt", "-l", str(out), HOST, str(server.port)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                preexec_fn=server.enter())
    except subprocess.TimeoutExpired:
        return {}
    match = re.search(r"received OACK <([^>]*)>", result.stdout + result.stderr)
    if match is None:
        return {}  # no OACK: the server ignored every option (512, lock-step)
    return {name.strip(): int(value) for name, value in
            re.findall(r"(\w+): (\d+)", match.group(1))}


@contextlib.contextmanager
def running(servers: list[Server], root: Path, work: Path, atftpd: str) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        try:
            for server in servers:
                if server.name == "dnsmasq":
                    server.netns = stack.enter_context(namespace(f"bench-tftp-{os.getpid()}"))
                start_server(server, root, work, atftpd)
            yield
        finally:
            for server in servers:
                stop_server(server)


def make_servers(names: list[str]) -> list[Server]:
    catalogue = {
        "pybootd": Server("pybootd", True),
        "pybootd-api": Server("pybootd-api", True),
        "tftpd-hpa": Server("tftpd-hpa", False),
        "atftpd": Server("atftpd", True),
        "dnsmasq": Server("dnsmasq", False,
                          note="dnsmasq runs in a namespace of its own (its TFTP port is "
                               "69), on that namespace's loopback"),
    }
    return [catalogue[name] for name in names]


def prepare_root(work: Path, size: int, many_size: int) -> tuple[Path, Payload, Payload]:
    root = work / "root"
    root.mkdir()
    for folder in (work, root):
        folder.chmod(0o755)  # tftpd-hpa reads as nobody
    (root / "ready.txt").write_text("ready\n")
    (root / "ready.txt").chmod(0o644)
    big = make_payload(root, "big.bin", size)
    small = make_payload(root, "small.bin", many_size)
    return root, big, small


def bench(args: argparse.Namespace, work: Path) -> int:
    size, many_size = args.size * MIB, args.many_size * MIB
    root, big, small = prepare_root(work, size, many_size)
    servers = make_servers(args.servers)
    many = {s.name: Cell(small.size * args.clients) for s in servers}
    out = work / "out.bin"
    began = time.monotonic()
    rss: float | None = None
    calibration: list[str] = []
    with running(servers, root, work, args.atftpd):
        live = [s for s in servers if s.available]
        for server in servers:
            state = f"port {server.port}" if server.available else server.why
            print(f"# {server.name}: {state}", file=sys.stderr)
        if not live:
            print("no server started", file=sys.stderr)
            return 1
        if args.ws1_client == "auto":
            reference = next((s for s in live if s.name == "tftpd-hpa"), live[0])
            calibrated = calibrate(reference, small, out, args.blksizes,
                                   args.calibration_runs)
            ws1, light = calibrated.fastest, calibrated.lightest
            calibration = [f"ws1 client: the fastest against {reference.name} "
                           f"({small.size // MIB} MiB, best of {args.calibration_runs}; "
                           f"atftp unless another is {PREFER_MARGIN - 1:.0%} faster) "
                           f"at each blksize; the {args.clients} concurrent clients: the "
                           f"one with the least CPU per block (client processes' "
                           f"rusage), {'; '.join(calibrated.report)}"]
            print(f"# {calibration[0]}", file=sys.stderr)
        else:
            ws1 = light = dict.fromkeys(args.blksizes, args.ws1_client)
        table: dict[Row, dict[str, Cell]] = {}
        for bs, ws, client in rows(ws1, args.blksizes, args.windowsizes):
            cells: dict[str, Cell] = {}
            for server in servers:
                cell = cells[server.name] = Cell(big.size)
                if ws > 1 and not server.windowsize:
                    cell.skip = "no ws"
                    continue
                if not server.available:
                    continue
                # What the server grants decides whether atftp can keep up.
                granted = probe_options(server, bs, ws, work / "probe.out")
                cell.granted = granted
                gbs, gws = granted.get("blksize", 512), granted.get("windowsize", 1)
                if gbs != bs:
                    cell.note = f"[b{gbs}]"
                elif gws != ws:
                    cell.note = f"[w{gws}]"
                if client_limited(gbs, gws):
                    cell.size, cell.mark = small.size, "+"
            table[bs, ws, client] = cells
        for run in range(args.runs):
            order = live[run % len(live):] + live[:run % len(live)]  # no server always first
            for (bs, ws, client), cells in table.items():
                for server in order:
                    cell = cells[server.name]
                    limited = bool(cell.mark)
                    if cell.skip or (limited and run >= args.limited_runs):
                        continue
                    got = fetch(client, server, small if limited else big, out, bs, ws,
                                verify=run == 0, timeout=60.0 if limited else CLIENT_TIMEOUT)
                    cell.add(got)
                    print(f"# run {run + 1} {server.name:9} bs {bs:5} ws {ws:2} {client:7} "
                          f"{_fmt(got, cell.size)} {cell.note}", file=sys.stderr)
        many_client = args.many_client or light.get(args.many_blksize, "atftp")
        for run in range(args.many_runs):
            for server in live[run % len(live):] + live[:run % len(live)]:
                cell = many[server.name]
                cell.add(fetch_many(many_client, server, small, work / "many", args.clients,
                                    args.many_blksize, args.many_timeout, args.client_nice))
                print(f"# run {run + 1} {server.name:9} {args.clients} clients "
                      f"{_fmt((cell.times + cell.errors)[-1], cell.size)}", file=sys.stderr)
        pybootd = next((s for s in live if s.name == "pybootd"), None)
        if pybootd is not None:
            rss = vm_hwm_mb(pybootd.pid)
    elapsed = time.monotonic() - began
    args.many_client = many_client
    print_table(args, servers, table, many, big, small, rss, elapsed, calibration)
    return 0


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _fmt(got: float | str, size: int) -> str:
    return f"{got:7.3f} s {size / got / 1e6:8.1f} MB/s" if isinstance(got, float) else got


def print_table(args: argparse.Namespace, servers: list[Server],
                table: dict[Row, dict[str, Cell]], many: dict[str, Cell],
                big: Payload, small: Payload, rss: float | None, elapsed: float,
                calibration: list[str]) -> None:
    names = [s.name for s in servers]
    unavailable = {s.name: s.why for s in servers if not s.available}
    width = 13
    print(f"TFTP read throughput, MB/s (10^6 B/s), best of {args.runs} runs; "
          f"{big.size // MIB} MiB file in {args.workdir}, one client, loopback")
    head = f"{'blksize':>7} {'ws':>3} {'client':<8}" + "".join(f"{n:>{width}}" for n in names)
    print(head + f"{'pybootd/hpa':>{width}}")
    print("-" * (len(head) + width))

    def value(cells: dict[str, Cell], name: str) -> float | None:
        return None if name in unavailable or name not in cells else cells[name].mbps

    for (bs, ws, client), cells in table.items():
        line = f"{bs:>7} {ws:>3} {client:<8}"
        for name in names:
            line += f"{'n/a' if name in unavailable else cells[name].text():>{width}}"
        pb, hpa = value(cells, "pybootd"), value(cells, "tftpd-hpa")
        ratio = f"{pb / hpa:.2f}x" if pb and hpa else ""
        print(line + f"{ratio:>{width}}")
    print("-" * (len(head) + width))
    niced = f", clients at nice {args.client_nice}" if args.client_nice else ""
    print(f"{args.clients} concurrent clients x {small.size // MIB} MiB, blksize "
          f"{args.many_blksize}, windowsize 1, aggregate MB/s, best of {args.many_runs}{niced}")
    agg = f"{args.many_blksize:>7} {1:>3} {args.many_client:<8}"
    for name in names:
        agg += f"{'n/a' if name in unavailable else many[name].text():>{width}}"
    pb_many, hpa_many = value(many, "pybootd"), value(many, "tftpd-hpa")
    print(agg + f"{f'{pb_many / hpa_many:.2f}x' if pb_many and hpa_many else '':>{width}}")
    print(f"pybootd peak RSS (VmHWM at the end of the run): "
          f"{f'{rss:.1f} MB' if rss is not None else 'unknown'}")
    print(f"pybootd's lock-step path: {pump_state()}")
    for name, why in unavailable.items():
        print(f"{name}: {why}")
    for server in servers:
        if server.note and server.available:
            print(f"note: {server.note}")
    print("no ws: the server has no windowsize (RFC 7440): compare with its ws 1 row.")
    print("[bN], [wN]: the server granted blksize N, windowsize N (not what was asked)")
    if any(c.mark for cells in table.values() for c in cells.values()):
        print(f"+ : client-limited, {small.size // MIB} MiB file, best of "
              f"{min(args.limited_runs, args.runs)}: a granted window of blksize x windowsize "
              "bytes "
              f"overflows atftp's receive buffer (net.core.rmem_default = {rmem_default()}), "
              "so this measures recovery from the client's drops, not throughput.")
    print("* : some runs failed (best of the others shown)")
    for line in calibration:
        print(line)
    print()
    print_targets(table, many, rss, args.clients)
    print(f"\none run took {elapsed:.0f} s; load average at the start {args.load_before}, "
          f"at the end {_load()} (2 cores: other work slows the figures down)")


def print_targets(table: dict[Row, dict[str, Cell]], many: dict[str, Cell],
                  rss: float | None, clients: int) -> None:
    def mbps(bs: int, ws: int, name: str) -> float | None:
        cells = next((c for (b, w, _), c in table.items() if (b, w) == (bs, ws)), None)
        return cells[name].mbps if cells and name in cells else None

    def agg(name: str) -> float | None:
        return many[name].mbps if name in many else None

    checks: list[tuple[str, float | None, float | None, float, bool]] = [
        ("ws1 bs512   >= 1.0x tftpd-hpa bs512", mbps(512, 1, "pybootd"),
         mbps(512, 1, "tftpd-hpa"), 1.0, False),
        ("ws1 bs1468  >= 1.0x tftpd-hpa bs1468", mbps(1468, 1, "pybootd"),
         mbps(1468, 1, "tftpd-hpa"), 1.0, False),
        ("ws1 bs65464 >= 0.8x tftpd-hpa bs65464", mbps(65464, 1, "pybootd"),
         mbps(65464, 1, "tftpd-hpa"), 0.8, False),
        ("ws64 bs1468 >= 5.0x tftpd-hpa ws1 bs1468", mbps(1468, 64, "pybootd"),
         mbps(1468, 1, "tftpd-hpa"), 5.0, False),
        ("ws64 bs1468 >  1.0x atftpd ws64 bs1468", mbps(1468, 64, "pybootd"),
         mbps(1468, 64, "atftpd"), 1.0, True),
        (f"{clients} clients >= 1.0x tftpd-hpa aggregate", agg("pybootd"), agg("tftpd-hpa"),
         1.0, False),
    ]
    print("Targets (ratios from this run)")
    for label, ours, theirs, want, strict in checks:
        if ours is None or theirs is None:
            print(f"  {label:44} n/a")
            continue
        ratio = ours / theirs
        ok = ratio > want if strict else ratio >= want
        print(f"  {label:44} {ratio:6.2f}x  {'PASS' if ok else 'FAIL'}")
    if rss is None:
        print(f"  {'pybootd peak RSS < 150 MB':44} n/a")
    else:
        print(f"  {'pybootd peak RSS < 150 MB':44} {rss:6.1f} MB "
              f"{'PASS' if rss < 150 else 'FAIL'}")


# --- profile ------------------------------------------------------------------

IDLE_LEAVES = ("epoll_wait",)
GIL_WAIT = "GIL wait (pthread_cond_timedwait)"  # take_gil() is inlined: its cond wait shows


@dataclass
class Profile:
    """py-spy ``--format raw --threads --idle --native`` samples of some threads."""

    stacks: Counter[tuple[str, ...]]

    @classmethod
    def load(cls, path: Path, thread: str = "MainThread") -> Profile:
        stacks: Counter[tuple[str, ...]] = Counter()
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            frames = tuple(stack.split(";"))
            if not frames or not re.match(rf"thread \(\d+\): {re.escape(thread)}", frames[0]):
                continue
            stacks[frames[1:]] += int(count)
        return cls(stacks)

    @property
    def total(self) -> int:
        return sum(self.stacks.values())

    def idle(self) -> int:
        return sum(n for s, n in self.stacks.items() if _leaf(s).startswith(IDLE_LEAVES))

    def own(self) -> Counter[str]:
        """Samples per innermost named frame (function, no line number)."""
        own: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            leaf = _leaf(stack)
            if not leaf.startswith(IDLE_LEAVES):
                own[GIL_WAIT if leaf.startswith("pthread_cond_timedwait") else
                    _function(leaf)] += n
        return own

    def python_lines(self) -> Counter[str]:
        """Samples per innermost Python frame with its line (C calls included)."""
        lines: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            if _leaf(stack).startswith(IDLE_LEAVES):
                continue
            frame = next((f for f in reversed(stack) if _is_python(f)), "?")
            lines[frame] += n
        return lines

    def workers(self) -> tuple[int, Counter[str]]:
        """Samples where a pool thread was not waiting for work, and their leaves."""
        busy: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            if any("SimpleQueue_get" in f for f in stack):
                continue
            leaf = _leaf(stack)
            busy[GIL_WAIT if leaf.startswith("pthread_cond_timedwait") else
                 _function(leaf)] += n
        return sum(busy.values()), busy


def _leaf(stack: tuple[str, ...]) -> str:
    """The innermost frame with a name (unnamed libc addresses folded into the caller)."""
    for frame in reversed(stack):
        if not frame.startswith("0x"):
            return frame
    return stack[-1] if stack else "?"


def _function(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def _is_python(frame: str) -> bool:
    return bool(re.search(r"\.py:\d+\)$|<frozen [^>]+>:\d+\)$", frame))


def print_profile(title: str, raw: Path, top: int) -> None:
    profile = Profile.load(raw)
    total = profile.total
    if not total:
        print(f"\n== {title}: no samples")
        return
    idle = profile.idle()
    busy = total - idle
    print(f"\n== {title}: {total} samples of the event-loop thread, "
          f"{100 * idle / total:.0f}% idle in epoll_wait, "
          f"{100 * busy / total:.0f}% busy")
    print(f"  top {top} by own time (% of all samples | % of busy samples)")
    for name, n in profile.own().most_common(top):
        print(f"  {100 * n / total:5.1f}% {100 * n / max(busy, 1):5.1f}%  {name}")
    print(f"  top {top} Python lines (innermost Python frame, C calls under it included)")
    for name, n in profile.python_lines().most_common(top):
        print(f"  {100 * n / total:5.1f}% {100 * n / max(busy, 1):5.1f}%  {name}")
    working, leaves = Profile.load(raw, thread="pybootd_").workers()
    print(f"  pool threads (reads from the file): {working} busy samples, "
          f"{100 * working / total:.1f}% of the event-loop thread's; "
          + ", ".join(f"{name} {n}" for name, n in leaves.most_common(3)))


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of *pid*, every thread, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """CPU time a server process and its children (tftpd-hpa forks one per
    transfer) spend during a ``with`` block: children are polled every 20 ms,
    so the last 20 ms of a child's life may be missed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seconds = 0.0
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            for child in self._children():
                used = _cpu_seconds(child)
                if used is not None:
                    self._last[child] = used

    def __enter__(self) -> CpuWatch:
        self._start = _cpu_seconds(self.pid) or 0.0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        own = (_cpu_seconds(self.pid) or self._start) - self._start
        self.seconds = own + sum(self._last.values())


def measure_cpu(server: Server, action: Callable[[Server], float | str], runs: int,
                ) -> tuple[float | str, float]:
    """Best time of *runs* runs of *action*, and the server's CPU seconds in that run."""
    best: tuple[float | str, float] = ("no run", 0.0)
    for _ in range(runs):
        with CpuWatch(server.pid) as watch:
            got = action(server)
        if isinstance(got, float) and (not isinstance(best[0], float) or got < best[0]):
            best = (got, watch.seconds)
        elif not isinstance(best[0], float):
            best = (got, 0.0)
    return best


def profile(args: argparse.Namespace, work: Path) -> int:
    spy = shutil.which("py-spy")
    if spy is None:
        print("py-spy not found (python3 -m pip install py-spy)", file=sys.stderr)
        return 1
    size, many_size = args.size * MIB, args.many_size * MIB
    root, big, small = prepare_root(work, size, many_size)
    pybootd = Server("pybootd", True)
    servers = [pybootd] + [s for s in make_servers(["tftpd-hpa"]) if args.compare]
    out = work / "out.bin"
    ws1 = "atftp" if args.ws1_client == "auto" else args.ws1_client
    many_client = args.many_client or ws1

    def single(bs: int, ws: int, client: str) -> Scenario:
        return Scenario(f"bs {bs} ws {ws} ({client})", size, size // bs + 1,
                        lambda s: fetch(client, s, big, out, bs, ws, False), ws == 1)

    scenarios = [
        single(512, 1, ws1), single(1468, 1, ws1), single(65464, 1, ws1),
        single(1468, 64, "atftp"),
        Scenario(f"{args.clients} clients x {args.many_size} MiB, bs {args.many_blksize} "
                 f"ws 1 ({many_client})", many_size * args.clients,
                 (many_size // args.many_blksize + 1) * args.clients,
                 lambda s: fetch_many(many_client, s, small, work / "many", args.clients,
                                      args.many_blksize, args.many_timeout, args.client_nice),
                 True),
    ]
    with running(servers, root, work, args.atftpd):
        if not pybootd.available:
            print(f"pybootd: {pybootd.why}", file=sys.stderr)
            return 1
        print(f"pybootd profile: py-spy {args.rate} Hz, {args.spy_mode} stacks. Each scenario "
              f"runs {args.profile_runs}x without py-spy first (best shown, with the server's "
              "CPU time from /proc: utime+stime, children included), then under py-spy, "
              f"repeated for at least {args.profile_seconds:g} s. In native mode py-spy "
              "pauses pybootd for each sample, which slows it down: the /proc CPU time is "
              "the undisturbed figure, the samples say where busy time goes.")
        for i, scenario in enumerate(scenarios):
            print(f"\n# {scenario.title}")
            for server in servers:
                if not server.available or (server.name != "pybootd" and not scenario.compare):
                    continue
                got, cpu = measure_cpu(server, scenario.action, args.profile_runs)
                if isinstance(got, float):
                    print(f"  {server.name:9} {_fmt(got, scenario.size)}, CPU {cpu:.2f} s "
                          f"({100 * cpu / got:.0f}% of one core), "
                          f"{1e6 * cpu / scenario.blocks:.1f} us per block")
                else:
                    print(f"  {server.name:9} {got}")
            raw = work / f"profile{i}.txt"
            spy_log = (work / f"py-spy{i}.log").open("wb")
            mode = ["--native"] if args.spy_mode == "native" else ["--nonblocking"]
            recorder = subprocess.Popen(
                [spy, "record", "--pid", str(pybootd.pid), "--rate", str(args.rate),
                 "--format", "raw", "--idle", "--threads", *mode, "--output", str(raw)],
                stdin=subprocess.DEVNULL, stdout=spy_log, stderr=subprocess.STDOUT)
            try:
                _wait_for_text(work / f"py-spy{i}.log", "Sampling process", 10.0)
                results: list[float | str] = []
                began = time.monotonic()
                while len(results) < args.profile_runs or (
                        time.monotonic() - began < args.profile_seconds and len(results) < 50):
                    results.append(scenario.action(pybootd))
            finally:
                recorder.send_signal(signal.SIGINT)  # py-spy writes its output on ^C
                try:
                    recorder.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    recorder.kill()
                    recorder.wait()
                spy_log.close()
            shown = [r for r in results if not isinstance(r, float)] + sorted(
                r for r in results if isinstance(r, float))[:3]
            print(f"  under py-spy, {len(results)} runs, best: "
                  f"{', '.join(_fmt(r, scenario.size) for r in shown)}")
            if raw.exists():
                print_profile(scenario.title, raw, args.top)
            else:
                print((work / f"py-spy{i}.log").read_text(errors="replace"))
        rss = vm_hwm_mb(pybootd.pid)
    print(f"\npybootd peak RSS: {rss:.1f} MB" if rss else "")
    return 0


def _wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if text in path.read_text(errors="replace"):
                return
        time.sleep(0.05)


@dataclass
class Scenario:
    title: str
    size: int  # bytes per run
    blocks: int  # DATA blocks per run
    action: Callable[[Server], float | str]
    compare: bool  # also run it against tftpd-hpa (no windowsize there)


# --- main ---------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per cell (best is shown)")
    parser.add_argument("--size", type=int, default=100, help="MiB, single-client file")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients")
    parser.add_argument("--many-size", type=int, default=8, help="MiB each concurrent client")
    parser.add_argument("--many-blksize", type=int, default=1468,
                        help="blksize of the concurrent clients")
    parser.add_argument("--many-runs", type=int, default=3)
    parser.add_argument("--client-nice", type=int, default=0,
                        help="nice value of the concurrent clients (they share the 2 cores "
                             "with the server; 0 = same priority)")
    parser.add_argument("--many-client", choices=WS1_CLIENTS,
                        help="client of the concurrent test (default: the ws1 one)")
    parser.add_argument("--limited-runs", type=int, default=1,
                        help="runs of the client-limited cells (+)")
    parser.add_argument("--many-timeout", type=float, default=180.0)
    parser.add_argument("--ws1-client", choices=("auto", *WS1_CLIENTS), default="auto",
                        help="client of the windowsize-1 rows (auto: the fastest, measured)")
    parser.add_argument("--calibration-runs", type=int, default=3)
    parser.add_argument("--blksizes", default=",".join(map(str, BLKSIZES)),
                        help="comma-separated blksizes of the single-client rows")
    parser.add_argument("--windowsizes", default=",".join(map(str, WINDOWSIZES)),
                        help="comma-separated windowsizes of the single-client rows")
    parser.add_argument("--servers", default="pybootd,tftpd-hpa,atftpd,dnsmasq",
                        help="comma-separated subset of " + ",".join(SERVER_NAMES))
    parser.add_argument("--atftpd", default=DEFAULT_ATFTPD, help="atftpd binary")
    parser.add_argument("--pybootd-cmd", metavar="CMD",
                        help="run pybootd as CMD -t -c INI (default: this python -m pybootd), "
                             "e.g. another checkout's interpreter and module")
    parser.add_argument("--workdir", default="/var/tmp",
                        help="where the files go (default /var/tmp: a disk file system; "
                             "on tmpfs pybootd cannot read with RWF_NOWAIT and uses its "
                             "thread pool for every chunk)")
    parser.add_argument("--profile", action="store_true",
                        help="profile pybootd under py-spy instead of the table")
    parser.add_argument("--profile-runs", type=int, default=2)
    parser.add_argument("--profile-seconds", type=float, default=5.0,
                        help="--profile: repeat a scenario under py-spy for at least this long")
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="--profile: do not measure tftpd-hpa's CPU per block alongside")
    parser.add_argument("--spy-mode", choices=("native", "python"), default="native",
                        help="--profile: native stacks (syscalls and C functions show, but "
                             "py-spy pauses pybootd per sample) or Python only (nonblocking)")
    parser.add_argument("--rate", type=int, default=100,
                        help="py-spy samples per second (each pauses pybootd: keep it low)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (server logs, raw profiles)")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.blksizes = tuple(int(v) for v in args.blksizes.split(",") if v.strip())
    args.windowsizes = tuple(int(v) for v in args.windowsizes.split(",") if v.strip())
    unknown = set(args.servers) - set(SERVER_NAMES)
    if unknown:
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    missing = [c for c in ("curl", "atftp") if shutil.which(c) is None]
    if missing:
        parser.error(f"missing client(s): {', '.join(missing)}")
    if args.pybootd_cmd:
        PYBOOTD_CMD[:] = shlex.split(args.pybootd_cmd)
    args.load_before = _load()
    work = Path(tempfile.mkdtemp(prefix="bench_tftp.", dir=args.workdir))
    try:
        return profile(args, work) if args.profile else bench(args, work)
    finally:
        if args.keep:
            for payload in ("big.bin", "small.bin"):
                (work / "root" / payload).unlink(missing_ok=True)
            shutil.rmtree(work / "many", ignore_errors=True)
            print(f"logs and profiles kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
