"""Network namespaces for tests that cross a network.

Every test host lives in a namespace this module creates and always removes,
even when the test fails. Addresses come only from the documentation ranges
192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24 (RFC 5737).

Outside CI a missing requirement (root, a tool) skips the test with the
reason; under CI=true it fails it, because CI must run every interop test.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def unavailable(reason: str) -> None:
    """Skip (outside CI) or fail (under CI=true) for a missing requirement."""
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root to create network namespaces")
    if shutil.which("ip") is None:
        unavailable("needs iproute2 (ip)")


def require_tools(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None and not Path(name).exists():
            unavailable(f"needs {name} (see .ci/run for the Debian package)")


def sh(argv: Sequence[str], timeout: float = 20,
       check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=check
    )


class NetLab:
    """Namespaces, links and processes of one test; ``close()`` undoes all."""

    def __init__(self) -> None:
        self.tag = f"{os.getpid() % 100000}{next(_counter)}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.files: list[Path] = []

    # --- topology -----------------------------------------------------------
    def ns(self, role: str) -> str:
        """Create namespace ``pbt<role><tag>`` with loopback up; returns its name."""
        name = f"pbt-{role}-{self.tag}"
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        resolv = Path("/etc/netns") / name / "resolv.conf"
        resolv.parent.mkdir(parents=True, exist_ok=True)
        resolv.write_text("# test namespace: no DNS\n")
        self.run(name, ["ip", "link", "set", "lo", "up"])
        return name

    def ifname(self, role: str) -> str:
        return f"{role}{self.tag}"[:15]

    def veth(self, ns_a: str, cidr_a: str | None, ns_b: str, cidr_b: str | None,
             names: tuple[str, str] | None = None) -> tuple[str, str]:
        """A veth pair between two namespaces; returns the two interface names."""
        a, b = names or (self.ifname("va"), self.ifname("vb"))
        sh(["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b,
            "netns", ns_b])
        for ns, ifc, cidr in ((ns_a, a, cidr_a), (ns_b, b, cidr_b)):
            if cidr:
                self.run(ns, ["ip", "addr", "add", cidr, "dev", ifc])
            self.run(ns, ["ip", "link", "set", ifc, "up"])
        return a, b

    def bridge(self, ns: str, name: str, cidr: str | None) -> str:
        """A bridge that forwards at once (no STP, no learning delay, no snooping)."""
        self.run(ns, ["ip", "link", "add", name, "type", "bridge", "stp_state", "0",
                      "forward_delay", "0", "mcast_snooping", "0"])
        if cidr:
            self.run(ns, ["ip", "addr", "add", cidr, "dev", name])
        self.run(ns, ["ip", "link", "set", name, "up"])
        return name

    def tap(self, ns: str, name: str, bridge: str) -> str:
        """A persistent tap enslaved to *bridge* and up before QEMU attaches."""
        self.run(ns, ["ip", "tuntap", "add", "dev", name, "mode", "tap"])
        self.run(ns, ["ip", "link", "set", name, "master", bridge])
        self.run(ns, ["ip", "link", "set", name, "up"])
        return name

    # --- processes ----------------------------------------------------------
    def argv(self, ns: str | None, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)

    def run(self, ns: str | None, argv: Sequence[str], timeout: float = 20,
            check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run to completion inside *ns*, with a timeout."""
        return subprocess.run(self.argv(ns, argv), capture_output=True, text=True,
                              timeout=timeout, check=check, **kw)

    def popen(self, ns: str | None, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a background process in *ns*; ``close()`` kills it."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen(self.argv(ns, argv), start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
             timeout: float = 10) -> int:
        """Signal one of our processes and wait for it (SIGKILL after *timeout*)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        return proc.returncode

    def tmpfile(self, path: Path) -> Path:
        self.files.append(path)
        return path

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc, signal.SIGKILL, timeout=5)
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
        for ns in reversed(self.namespaces):
            # Kill anything still running in the namespace that we started.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True, timeout=10).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        for path in self.files:
            with contextlib.suppress(OSError):
                path.unlink()


def wait_for(predicate: Any, timeout: float, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll *predicate* until it returns a true value or *timeout* passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def netlab() -> Iterator[NetLab]:
    require_root()
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()


def ns_socket(ns: str, family: int = 2, kind: int = 2) -> Any:
    """A socket created inside namespace *ns* (it stays there whoever uses it).

    ``setns`` switches only the calling thread, so a short-lived thread moves
    into the namespace, creates the socket and ends; the test then serves or
    reads it from any thread (an HTTP server or a UDP listener "inside" a
    namespace, without a subprocess).
    """
    import ctypes
    import socket
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    result: list[Any] = []

    def make() -> None:
        try:
            with open(f"/run/netns/{ns}", "rb") as handle:
                if libc.setns(handle.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                    raise OSError(ctypes.get_errno(), f"setns({ns}) failed")
            result.append(socket.socket(family, kind))
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join(10)
    if not result or isinstance(result[0], OSError):
        raise result[0] if result else TimeoutError("ns_socket thread hung")
    return result[0]
