"""Shared helpers of the TFTP interop tests: served trees, the daemon, clients.

* Files with deterministic content in world-readable temporary folders (the
  daemon drops to ``nobody``, who cannot read ``mktemp -d``'s 0700 folders).
* :class:`Pybootd`: ``python -m pybootd -t`` from a generated INI inside a
  namespace, its log in a file (a pipe would fill up and stall it), ready
  when it logs "pybootd ready", stopped with SIGTERM.
* One wrapper per real client (tftp-hpa, atftp, curl, busybox) returning
  exit status and output, and :func:`ns_client`, the strict Python client of
  ``tests/tftpclient.py`` on a socket inside the client's namespace.
* :func:`in_netns`: run a function in a thread that entered a namespace
  (every socket it opens lives there).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from netlab import REPO, NetLab, ns_socket, require_tools, sh, wait_for
from tftpclient import Client

SERVER_IP = "192.0.2.1"
CLIENT_IP = "192.0.2.10"
MIB = 1024 * 1024
T = TypeVar("T")


# --- files ----------------------------------------------------------------------
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content(size: int, seed: str) -> bytes:
    """*size* deterministic pseudo-random bytes (the same for the same seed)."""
    return random.Random(seed).randbytes(size)


def write_file(path: Path, size: int, seed: str | None = None) -> str:
    """Write deterministic content (world-readable); returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content(size, seed or path.name)
    path.write_bytes(data)
    path.chmod(0o644)
    return sha256_bytes(data)


def write_text(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(0o644)
    return path


@contextlib.contextmanager
def public_tmpdir(prefix: str) -> Iterator[Path]:
    """A 0755 temporary folder (readable by the daemon's ``nobody``), removed after."""
    folder = Path(tempfile.mkdtemp(prefix=f"pybootd-{prefix}-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def public_dirs(*folders: Path) -> None:
    """Make folders (and their files) readable by anyone."""
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)


# --- topology -------------------------------------------------------------------
@dataclass
class Hosts:
    """A server namespace and client namespaces joined on 192.0.2.0/24."""

    lab: NetLab
    server: str
    client: str
    links: list[tuple[str, str]] = field(default_factory=list)  # (server if, client if)


def two_hosts(lab: NetLab) -> Hosts:
    """Server 192.0.2.1/24 and client 192.0.2.10/24 over one veth pair."""
    server, client = lab.ns("tsrv"), lab.ns("tcli")
    link = lab.veth(server, f"{SERVER_IP}/24", client, f"{CLIENT_IP}/24")
    return Hosts(lab, server, client, [link])


# --- the daemon -----------------------------------------------------------------
def ini_text(sections: dict[str, dict[str, Any] | Sequence[tuple[str, str]]]) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        items = values.items() if isinstance(values, dict) else values
        lines.extend(f"{key} = {value}" for key, value in items)
        lines.append("")
    return "\n".join(lines)


class Pybootd:
    """``python -m pybootd -t -c FILE`` inside namespace *ns*."""

    def __init__(self, lab: NetLab, ns: str, workdir: Path, name: str = "pybootd") -> None:
        self.lab = lab
        self.ns = ns
        self.config_path = workdir / f"{name}.ini"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self, tftp: dict[str, Any], *, filters: Sequence[tuple[str, str]] = (),
              daemon: dict[str, Any] | None = None, debug: bool = False,
              logger: dict[str, Any] | None = None, ready_timeout: float = 20) -> Pybootd:
        """Start and wait until ready. With a *logger* of ``type = file``, pass
        ``file = <self.log_path>`` so that the helpers read what it writes."""
        settings = {"address": SERVER_IP, "port": 69, **tftp}
        sections: dict[str, Any] = {"tftp": settings, "logger": logger or {"level": "info"}}
        if filters:
            sections["filters"] = list(filters)
        if daemon:
            sections["daemon"] = daemon
        write_text(self.config_path, ini_text(sections))
        argv = [sys.executable, "-m", "pybootd", "-t", "-c", str(self.config_path)]
        with self.log_path.open("ab") as log:
            self.proc = self.lab.popen(self.ns, [*argv, *(["-d"] if debug else [])],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.wait_log("pybootd ready", timeout=ready_timeout)
        return self

    # --- the log ----------------------------------------------------------------
    def log(self, since: int = 0) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[since:].decode("utf-8", "replace")

    def mark(self) -> int:
        """A position in the log; ``log(since=mark)`` reads what came after it."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_log(self, pattern: str, timeout: float = 10, since: int = 0) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            match = regex.search(self.log(since))
            if match is None and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"pybootd exited ({self.proc.returncode}) before "
                                     f"logging {pattern!r}:\n{self.log()[-3000:]}")
            return match

        try:
            result: re.Match[str] = wait_for(found, timeout, what=f"log line {pattern!r}")
        except TimeoutError:
            raise AssertionError(f"no log line {pattern!r} within {timeout}s:\n"
                                 f"{self.log(since)[-3000:]}") from None
        return result

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        return self.lab.stop(self.proc, signal.SIGTERM, timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# --- real clients -----------------------------------------------------------------
@dataclass
class Run:
    returncode: int
    output: str
    seconds: float

    def __str__(self) -> str:
        return f"exit {self.returncode} after {self.seconds:.2f}s: {self.output.strip()}"


@dataclass(frozen=True)
class ClientKind:
    """One real TFTP client program, with the options it is given."""

    name: str
    tool: str
    blksize: int | None = None
    windowsize: int | None = None
    atftp_options: tuple[str, ...] = ()  # more ``--option`` values, as given (atftp only)

    def argv(self, host: str, remote: str, local: Path, size: int | None = None,
             mode: str = "octet") -> list[str]:
        if self.tool == "tftp":  # tftp-hpa: no options at all, 512-byte blocks
            hpa_mode = "ascii" if mode == "netascii" else "binary"
            return ["tftp", host, "-m", hpa_mode, "-c", "get", remote, str(local)]
        if self.tool == "atftp":
            opts: list[str] = []
            for option, value in (("blksize", self.blksize), ("windowsize", self.windowsize)):
                if value is not None:
                    opts += ["--option", f"{option} {value}"]
            for extra in self.atftp_options:
                opts += ["--option", extra]
            return ["atftp", *opts, "--tftp-timeout", "1", "-g", "-r", remote, "-l", str(local),
                    host]
        if self.tool == "curl":
            return ["curl", "-sS", "--max-time", "60", *self._curl_options(size),
                    f"tftp://{host}/{remote}", "-o", str(local)]
        if self.tool == "busybox":
            block = ["-b", str(self.blksize)] if self.blksize else []
            return ["busybox", "tftp", *block, "-g", "-r", remote, "-l", str(local), host]
        raise ValueError(self.tool)

    def _curl_options(self, size: int | None) -> list[str]:
        if size == 0:
            # curl 7.88 fails on an empty file when options are negotiated
            # (whatever the server): field notes.
            return ["--tftp-no-options"]
        return ["--tftp-blksize", str(self.blksize)] if self.blksize else []

    def require(self) -> None:
        require_tools(self.tool)


HPA = ClientKind("tftp-hpa", "tftp")
ATFTP = ClientKind("atftp", "atftp")
ATFTP_WS8 = ClientKind("atftp-ws8", "atftp", windowsize=8)
ATFTP_BIG = ClientKind("atftp-blksize1428", "atftp", blksize=1428)
# atftp 0.8's way to ask for the size: the RRQ carries tsize=enable (field notes).
ATFTP_TSIZE = ClientKind("atftp-tsize-enable", "atftp", blksize=1468,
                         atftp_options=("tsize enable",))
CURL = ClientKind("curl", "curl")
CURL_BIG = ClientKind("curl-blksize1468", "curl", blksize=1468)
BUSYBOX = ClientKind("busybox", "busybox")
BUSYBOX_BIG = ClientKind("busybox-blksize1024", "busybox", blksize=1024)
ALL_CLIENTS = (HPA, ATFTP, ATFTP_WS8, ATFTP_BIG, CURL, CURL_BIG, BUSYBOX, BUSYBOX_BIG)


def fetch(lab: NetLab, ns: str, kind: ClientKind, remote: str, local: Path,
          size: int | None = None, mode: str = "octet", timeout: float = 120,
          host: str = SERVER_IP) -> Run:
    """Run one client to completion; the caller checks the file and the output."""
    kind.require()
    with contextlib.suppress(FileNotFoundError):
        local.unlink()
    start = time.monotonic()
    result = lab.run(ns, kind.argv(host, remote, local, size, mode), timeout=timeout,
                     check=False)
    return Run(result.returncode, result.stdout + result.stderr, time.monotonic() - start)


def hpa_put(lab: NetLab, ns: str, local: Path, remote: str, timeout: float = 60,
            host: str = SERVER_IP, mode: str = "binary") -> Run:
    require_tools("tftp")
    start = time.monotonic()
    result = lab.run(ns, ["tftp", host, "-m", mode, "-c", "put", str(local), remote],
                     timeout=timeout, check=False)
    return Run(result.returncode, result.stdout + result.stderr, time.monotonic() - start)


def client_error(kind: ClientKind, run: Run) -> int | None:
    """The TFTP error code a client reported, if it shows one."""
    patterns = {
        "tftp": r"Error code (\d+):",
        "busybox": r"server error: \((\d+)\)",
    }
    if kind.tool == "curl":
        # CURLE_TFTP_NOTFOUND 68, CURLE_TFTP_PERM 69, CURLE_TFTP_ILLEGAL 71, ...
        return {68: 1, 69: 2, 71: 4}.get(run.returncode)
    if kind.tool == "atftp":
        # atftp prints only the server's message ("error received from server
        # <...>"), not the code: read it from pybootd's wording.
        match = re.search(r"error received from server <(file not found|access violation)",
                          run.output)
        return {"file not found": 1, "access violation": 2}[match[1]] if match else None
    match = re.search(patterns[kind.tool], run.output)
    return int(match.group(1)) if match else None


# --- a client inside a namespace, in this process -----------------------------------
@contextlib.contextmanager
def ns_client(ns: str, host: str = SERVER_IP, port: int = 69,
              timeout: float = 3.0) -> Iterator[Client]:
    """tests/tftpclient.Client whose socket lives in namespace *ns*."""
    client = Client("127.0.0.1", port, timeout)
    client.sock.close()
    client.sock = ns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
    client.sock.settimeout(timeout)
    client.sock.bind(("0.0.0.0", 0))
    client.server = (host, port)
    try:
        yield client
    finally:
        client.close()


def in_netns(ns: str, func: Callable[[], T], timeout: float) -> T:
    """Run *func* in a thread that entered namespace *ns*; its sockets live there."""
    libc = ctypes.CDLL(None, use_errno=True)
    outcome: list[Any] = []

    def body() -> None:
        try:
            with open(f"/run/netns/{ns}", "rb") as handle:
                if libc.setns(handle.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                    raise OSError(ctypes.get_errno(), f"setns({ns}) failed")
            outcome.append((True, func()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=body, name=f"in-{ns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive() or not outcome:
        raise TimeoutError(f"work in namespace {ns} still running after {timeout}s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


# --- an HTTP mirror in the server's namespace ------------------------------------------
# http.server's own handler (its log lines, Last-Modified, 304, 404), with an
# optional pause between pieces of a body.
_MIRROR = """
import functools, http.server, sys, time
address, port, directory, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])

class Handler(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, source, outputfile):
        while piece := source.read(256 * 1024):
            outputfile.write(piece)
            time.sleep(delay)

handler = functools.partial(Handler, directory=directory)
http.server.ThreadingHTTPServer((address, port), handler).serve_forever()
"""

class HttpMirror:
    """``python -m http.server`` in *ns*: one log line per request, as a mirror logs."""

    def __init__(self, lab: NetLab, ns: str, directory: Path, log_path: Path,
                 address: str = "127.0.0.1", port: int = 8080) -> None:
        self.lab, self.ns, self.directory = lab, ns, directory
        self.address, self.port = address, port
        self.log_path = log_path
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    def start(self, chunk_delay: float = 0.0) -> HttpMirror:
        """Serve; *chunk_delay* seconds between 256 KiB pieces makes a slow mirror."""
        argv = [sys.executable, "-u", "-c", _MIRROR, self.address, str(self.port),
                str(self.directory), str(chunk_delay)]
        with self.log_path.open("ab") as log:
            self.proc = self.lab.popen(self.ns, argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._listening, 10, what="the HTTP mirror to listen")
        return self

    def _listening(self) -> bool:
        probe = ns_socket(self.ns, socket.AF_INET, socket.SOCK_STREAM)
        with probe:
            probe.settimeout(1)
            status: int = probe.connect_ex((self.address, self.port))
        return status == 0

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc, signal.SIGTERM, timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def gets(self, path: str, status: int | None = None) -> int:
        """How many ``GET /path`` requests it logged (with *status*, if given)."""
        code = str(status) if status else r"\d+"
        pattern = rf'"GET /{re.escape(path)} HTTP/1\.[01]" {code} '
        return len(re.findall(pattern, self.log()))


# --- a lossy link -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Impairment:
    """What ``tc netem`` is asked for, on both ends of the link."""

    loss: float = 5.0  # percent
    duplicate: float = 1.0  # percent
    reorder: float = 25.0  # netem: percent of packets sent at once, overtaking delayed ones
    delay_ms: float = 2.0
    held: float = 3.0  # TunRelay: percent of packets held back and overtaken by the next

    def netem_args(self) -> list[str]:
        return ["loss", f"{self.loss}%", "duplicate", f"{self.duplicate}%",
                "delay", f"{self.delay_ms}ms", "reorder", f"{self.reorder}%", "50%"]


@dataclass
class LossyLink:
    hosts: Hosts
    relay: TunRelay | None  # None: the kernel's netem does the damage
    netem_failure: str  # why netem could not be used, if it could not


@contextlib.contextmanager
def lossy_link(lab: NetLab, impairment: Impairment) -> Iterator[LossyLink]:
    """Server and client over a veth pair with netem on both ends.

    Where the kernel has no netem (``CONFIG_NET_SCH_NETEM`` unset and no
    module), the hosts are joined by a pair of tun devices and a
    :class:`TunRelay` that drops, duplicates and reorders the same shares of
    packets in both directions; ``netem_failure`` then says why. (The CI
    machines' kernel is such a kernel: no netem, no modules folder; the relay
    impairs the very same packets.)
    """
    hosts = two_hosts(lab)
    if shutil.which("modprobe"):
        sh(["modprobe", "sch_netem"], check=False)  # where netem is a module
    failure = ""
    for ns, ifname in zip((hosts.server, hosts.client), hosts.links[0], strict=True):
        result = lab.run(ns, ["tc", "qdisc", "add", "dev", ifname, "root", "netem",
                              *impairment.netem_args()], check=False)
        if result.returncode != 0:
            failure = f"tc qdisc add dev {ifname} root netem: {result.stderr.strip()}"
            break
    if not failure:
        yield LossyLink(hosts, None, "")
        return
    server, client = lab.ns("lsrv"), lab.ns("lcli")
    relay = TunRelay(lab, server, f"{SERVER_IP}/24", client, f"{CLIENT_IP}/24", impairment)
    try:
        yield LossyLink(Hosts(lab, server, client, [relay.names]), relay, failure)
    finally:
        relay.stop()


TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


class TunRelay:
    """Userspace netem: IP packets between tun devices in two namespaces.

    Each direction drops, duplicates and holds back (reorders) packets at the
    given rates, from a fixed seed; a thread of this process does the work
    until :meth:`stop`.
    """

    HOLD = 0.003  # a held packet goes after the next one, or after this long

    def __init__(self, lab: NetLab, ns_a: str, cidr_a: str, ns_b: str, cidr_b: str,
                 impairment: Impairment, seed: int = 7) -> None:
        self.impairment = impairment
        self.random = random.Random(seed)
        self.names = (lab.ifname("ta"), lab.ifname("tb"))
        self.fds = [self._tun(lab, ns_a, self.names[0], cidr_a),
                    self._tun(lab, ns_b, self.names[1], cidr_b)]
        self.counts = {"forwarded": 0, "dropped": 0, "duplicated": 0, "reordered": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tun-relay", daemon=True)
        self._thread.start()

    @staticmethod
    def _tun(lab: NetLab, ns: str, name: str, cidr: str) -> int:
        lab.run(ns, ["ip", "tuntap", "add", "dev", name, "mode", "tun"])

        def attach() -> int:
            import fcntl
            import struct

            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
            return fd

        fd = in_netns(ns, attach, timeout=10)
        lab.run(ns, ["ip", "addr", "add", cidr, "dev", name])
        lab.run(ns, ["ip", "link", "set", name, "up"])
        return fd

    def _run(self) -> None:
        import select

        held: list[tuple[float, int, bytes]] = []  # (due, output fd, packet)
        while not self._stop.is_set():
            readable, _, _ = select.select(self.fds, [], [], self.HOLD / 2)
            now = time.monotonic()
            for fd in readable:
                packet = os.read(fd, 70000)
                out = self.fds[1] if fd == self.fds[0] else self.fds[0]
                self._forward(out, packet, held, now)
            for item in [h for h in held if h[0] <= now]:
                held.remove(item)
                self._write(item[1], item[2])

    def _forward(self, out: int, packet: bytes, held: list[tuple[float, int, bytes]],
                 now: float) -> None:
        rate = self.random.random() * 100
        imp = self.impairment
        if rate < imp.loss:
            self.counts["dropped"] += 1
            return
        if rate < imp.loss + imp.held:
            self.counts["reordered"] += 1
            held.append((now + self.HOLD, out, packet))
            return
        self._write(out, packet)
        for item in [h for h in held if h[1] == out]:
            held.remove(item)
            self._write(out, item[2])
        if self.random.random() * 100 < imp.duplicate:
            self.counts["duplicated"] += 1
            self._write(out, packet)

    def _write(self, fd: int, packet: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(fd, packet)
            self.counts["forwarded"] += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
