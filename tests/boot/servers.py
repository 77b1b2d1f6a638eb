"""The servers of a boot test, each a process inside the server namespace.

* :class:`Pybootd`: ``python -m pybootd -c FILE`` from this checkout; ready
  when it sends ``READY=1`` to ``NOTIFY_SOCKET`` (the systemd protocol the
  unit in ``etc/pybootd.service`` relies on);
* :class:`Dnsmasq`: the reference server, full PXE + TFTP, the HTTP chains
  (boot files as ``http://`` URLs, no TFTP) or addresses only;
* :class:`HttpMirror`: ``python -m http.server`` over a mirror-like folder
  (or over dnsmasq's tree, the web server of the reference HTTP chains).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab import REPO, NetLab, wait_for

SERVER_IP = "192.0.2.1"
SERVER_CIDR = f"{SERVER_IP}/24"
POOL_START = "192.0.2.100"
POOL_END = "192.0.2.149"
HTTP_PORT = 8080
START_LIMIT = 20.0
MIRROR_HTTP = Path(__file__).resolve().parent / "mirror_http.py"

Sections = Mapping[str, Mapping[str, str]]


def ini_text(sections: Sections) -> str:
    """``{"bootp": {"mode": "proxy"}}`` -> INI text."""
    return "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
                   for name, values in sections.items())


def merge(base: Sections, extra: Sections) -> dict[str, dict[str, str]]:
    """*base* with the keys of *extra* added or replaced, section by section."""
    merged = {name: dict(values) for name, values in base.items()}
    for name, values in extra.items():
        merged.setdefault(name, {}).update(values)
    return merged


def udp_sockets(lab: NetLab, ns: str) -> set[tuple[str, int]]:
    """(local address, port) of every bound UDP socket in *ns* (``ss -Hlun``)."""
    out = lab.run(ns, ["ss", "-Hlun"], check=False).stdout
    bound = set()
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4:
            host, _, port = words[3].rpartition(":")
            if port.isdigit():
                bound.add((host.split("%")[0], int(port)))
    return bound


def listening_udp(lab: NetLab, ns: str) -> set[int]:
    return {port for _, port in udp_sockets(lab, ns)}


def listening_tcp(lab: NetLab, ns: str) -> set[int]:
    out = lab.run(ns, ["ss", "-Hltn"], check=False).stdout
    return {int(w[3].rpartition(":")[2]) for w in (line.split() for line in out.splitlines())
            if len(w) >= 4 and w[3].rpartition(":")[2].isdigit()}


class Process:
    """A server process with its output in ``WORKDIR/NAME.log``."""

    name = "server"

    def __init__(self, lab: NetLab, ns: str, workdir: Path) -> None:
        self.lab, self.ns, self.workdir = lab, ns, workdir
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def spawn(self, argv: list[str], **kw: Any) -> None:
        with self.log_path.open("ab") as log:
            self.proc = self.lab.popen(self.ns, argv, stdout=log, stderr=subprocess.STDOUT,
                                       **kw)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server has used (``ip netns exec`` execs it)."""
        if not self.alive():
            return None
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_ready(self, ready: Any, timeout: float = START_LIMIT) -> None:
        def check() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.proc and self.proc.returncode})"
                                     f":\n{self.log_tail()}")
            return bool(ready())

        try:
            wait_for(check, timeout, interval=0.05, what=f"{self.name} to be ready")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.lab.stop(self.proc)


class Pybootd(Process):
    """pybootd from this checkout, configured by *sections*."""

    name = "pybootd"

    def __init__(self, lab: NetLab, ns: str, workdir: Path, sections: Sections,
                 args: Iterable[str] = ()) -> None:
        super().__init__(lab, ns, workdir)
        self.sections = sections
        self.args = list(args)
        self.config = workdir / "pybootd.ini"
        self.notify_path = workdir / "notify.sock"
        self.notify: socket.socket | None = None
        self.messages: list[str] = []

    def start(self) -> None:
        self.config.write_text(ini_text(self.sections))
        os.chmod(self.config, 0o644)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        os.chmod(self.notify_path, 0o777)  # pybootd says READY=1 after dropping to nobody
        self.notify.setblocking(False)
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path),
               "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.spawn([sys.executable, "-m", "pybootd", "-c", str(self.config), *self.args],
                   env=env, cwd=str(REPO))
        self.wait_ready(lambda: "READY=1" in self.read_notify())

    def read_notify(self) -> str:
        assert self.notify is not None
        try:
            while True:
                self.messages.append(self.notify.recv(4096).decode(errors="replace"))
        except BlockingIOError:
            pass
        return "\n".join(self.messages)

    def stop(self) -> int | None:
        code = super().stop()
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        return code


@dataclass
class DnsmasqOptions:
    """What dnsmasq serves: PXE + TFTP from *root*; with *http_url* (a web
    server's folder, ending in ``/``) the HTTP chains and no TFTP; else
    addresses only."""

    interface: str
    root: Path | None = None
    bios_file: str = "pxelinux.0"
    efi_file: str = "debian-installer/amd64/bootnetx64.efi"
    http_url: str | None = None
    ipxe_script: str = "boot.ipxe"  # under http_url: what iPXE gets
    http_file: str = "snponly.efi"  # under http_url: what UEFI HTTP Boot gets
    extra: list[str] = field(default_factory=list)


def dnsmasq_http_chain(url: str, script: str, http_file: str) -> list[str]:
    """dnsmasq options of the reference HTTP chains (no TFTP at all).

    * iPXE (the BIOS NIC ROM, or snponly.efi once HTTP Boot started it) says
      so with option 175: it gets the iPXE script's URL, and fetches the
      kernel and initrd the script names from the same web folder.
    * UEFI HTTP Boot firmware sends option 60 ``HTTPClient:Arch:00016`` and
      takes only an offer that answers option 60 ``HTTPClient`` with a URL
      in the boot file: it gets snponly.efi (iPXE on the firmware's network
      driver). Debian 12's GRUB, loaded this way, fetches no grub.cfg.
    * Everyone else is a PXE client: option 60 ``PXEClient`` and option 43
      (boot the file), as in the TFTP setup, so that iPXE does not wait for
      a proxyDHCP offer.
    dhcp-vendorclass matches a prefix of option 60; the two dhcp-boot lines
    are made exclusive, so that their order does not matter (snponly.efi's
    iPXE is no HTTP Boot client, but a BIOS iPXE ROM could send both).
    """
    return ["--dhcp-match=set:ipxe,175", "--dhcp-vendorclass=set:httpboot,HTTPClient",
            "--dhcp-option-force=tag:httpboot,60,HTTPClient",
            "--dhcp-option-force=tag:!httpboot,60,PXEClient",
            "--dhcp-option-force=tag:!httpboot,43,06:01:08:ff",
            f"--dhcp-boot=tag:ipxe,{url}{script}",
            f"--dhcp-boot=tag:!ipxe,tag:httpboot,{url}{http_file}"]


class Dnsmasq(Process):
    """dnsmasq 2.90, the reference the benchmark compares pybootd with."""

    name = "dnsmasq"

    def __init__(self, lab: NetLab, ns: str, workdir: Path, options: DnsmasqOptions) -> None:
        super().__init__(lab, ns, workdir)
        self.options = options

    def argv(self) -> list[str]:
        o = self.options
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                f"--interface={o.interface}", "--bind-interfaces", "--no-ping",
                f"--dhcp-range={POOL_START},{POOL_END},255.255.255.0,1h",
                f"--dhcp-leasefile={self.workdir / 'dnsmasq.leases'}", "--pid-file=",
                "--log-dhcp", f"--log-facility={self.workdir / 'dnsmasq.events'}"]
        if o.root is not None:
            # What a PXE-aware server answers (and pybootd does): option 60
            # PXEClient and option 43 "boot the file" (PXE 2.1 section 2.2).
            # Without them iPXE waits ~3 s for a proxyDHCP offer, which would
            # handicap dnsmasq in the benchmark.
            argv += ["--dhcp-option-force=60,PXEClient", "--dhcp-option-force=43,06:01:08:ff",
                     "--dhcp-match=set:efi64,option:client-arch,7",
                     f"--dhcp-boot=tag:efi64,{o.efi_file}",
                     f"--dhcp-boot=tag:!efi64,{o.bios_file}",
                     "--enable-tftp", f"--tftp-root={o.root}"]
        elif o.http_url is not None:
            argv += dnsmasq_http_chain(o.http_url, o.ipxe_script, o.http_file)
        return argv + o.extra

    def start(self) -> None:
        self.spawn(self.argv())
        ports = {67, 69} if self.options.root is not None else {67}
        self.wait_ready(lambda: ports <= listening_udp(self.lab, self.ns))

    def log(self) -> str:
        events = self.workdir / "dnsmasq.events"
        text = events.read_text(errors="replace") if events.exists() else ""
        return super().log() + text


class HttpMirror(Process):
    """A static web server over *docroot* on 192.0.2.1:8080 (logs every GET);
    *delay* seconds before each answer make it a far mirror."""

    name = "http"

    def __init__(self, lab: NetLab, ns: str, workdir: Path, docroot: Path,
                 delay: float = 0.0, port: int = HTTP_PORT) -> None:
        super().__init__(lab, ns, workdir)
        self.docroot, self.delay, self.port = docroot, delay, port

    @property
    def url(self) -> str:
        return f"http://{SERVER_IP}:{self.port}/"

    def start(self) -> None:
        self.spawn([sys.executable, str(MIRROR_HTTP), str(self.docroot), "--bind", SERVER_IP,
                    "--port", str(self.port), "--delay", str(self.delay)],
                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.wait_ready(lambda: self.port in listening_tcp(self.lab, self.ns))

    def requests(self) -> list[str]:
        """Paths fetched, in order."""
        return [line.split('"GET ', 1)[1].split(" ", 1)[0]
                for line in self.log().splitlines() if '"GET ' in line]
