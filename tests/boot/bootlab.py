"""A boot network: the server namespace, its bridge, a packet watcher and VMs.

``192.0.2.1/24`` on a bridge in namespace ``srv``; each VM is a QEMU process in
that namespace attached to its own tap on the bridge. :class:`Watcher` runs
``sniff.py`` on the bridge, so every DHCP, TFTP and HTTP packet between the VMs
and the servers is seen once, with its time; :meth:`BootNet.times` turns them
into the times a user feels (VM start to DHCP ACK, to first TFTP or HTTP byte,
to kernel).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netlab import NetLab

from boot.fixtures import open_dir
from boot.servers import SERVER_CIDR, SERVER_IP, Process
from boot.vm import Vm, VmSpec, wait_kernels

SNIFF = Path(__file__).resolve().parent / "sniff.py"
WATCHER_START = 10.0  # seconds
Event = dict[str, Any]
HTTP_DETAILS = ("code", "content-length", "range", "bytes", "seconds", "short")


class Watcher:
    """``sniff.py`` on the taps of some VMs: DHCP/TFTP/HTTP events as dicts, a pcap."""

    def __init__(self, lab: NetLab, ns: str, taps: list[str], workdir: Path, name: str) -> None:
        self.events_path = workdir / f"{name}.jsonl"
        self.pcap = workdir / f"{name}.pcap"
        self.proc = lab.popen(ns, [sys.executable, str(SNIFF), *taps, "--events",
                                   str(self.events_path), "--pcap", str(self.pcap)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], WATCHER_START)
        line = self.proc.stdout.readline().decode(errors="replace") if readable else ""
        if line.strip() != "ready":
            raise AssertionError(f"packet watcher did not start in {WATCHER_START:g} s: {line}")

    def stop(self, lab: NetLab) -> None:
        """SIGTERM: the watcher flushes its pcap and exits (SIGKILL would lose
        the pcap's buffered tail)."""
        lab.stop(self.proc, signal.SIGTERM, timeout=10)

    def events(self) -> list[Event]:
        try:
            lines = self.events_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.endswith("}")]


@dataclass(frozen=True)
class BootTimes:
    """Seconds from VM start; None when it never happened."""

    dhcp_ack: float | None
    first_tftp: float | None
    kernel: float | None
    # the initrd's transfer alone: TFTP RRQ to last block, or HTTP GET to last byte
    initrd: float | None = None
    # its sum of ACK -> next DATA (TFTP), or of the time the web server owed
    # data with all it sent acknowledged (HTTP): the server's share
    initrd_server: float | None = None
    answers: float | None = None  # sum over the requests of request -> first answer
    first_http: float | None = None  # the first HTTP response header to the VM
    discover: float | None = None  # the VM's first DHCP DISCOVER: its firmware is up

    @property
    def after_discover(self) -> float | None:
        """Kernel start minus the first DISCOVER: the boot without the
        firmware's own start, which the servers have no part in (under TCG
        it moves by a second from one VM to the next)."""
        if self.kernel is None or self.discover is None:
            return None
        return self.kernel - self.discover

    def text(self) -> str:
        def fmt(value: float | None) -> str:
            return "never" if value is None else f"{value:.1f} s"

        http = "" if self.first_http is None else f"first HTTP byte {fmt(self.first_http)}, "
        return (f"DHCP ACK {fmt(self.dhcp_ack)}, first TFTP byte {fmt(self.first_tftp)}, "
                f"{http}kernel {fmt(self.kernel)} (initrd transfer {fmt(self.initrd)}, "
                f"server's share {fmt(self.initrd_server)})")


def to_vm(event: Event, mac: str) -> bool:
    """A packet addressed to the VM with this MAC (by chaddr or Ethernet)."""
    return event.get("eth_dst") == mac or (event.get("proto") == "dhcp"
                                           and event.get("op") == 2 and event.get("mac") == mac)


def from_vm(event: Event, mac: str) -> bool:
    return event.get("eth_src") == mac


class BootNet:
    """Topology, watcher, servers and VMs of one boot test."""

    def __init__(self, lab: NetLab, workdir: Path, accel: str) -> None:
        self.lab, self.accel = lab, accel
        self.workdir = open_dir(workdir)
        self.ns = lab.ns("srv")
        self.bridge = lab.bridge(self.ns, lab.ifname("br"), SERVER_CIDR)
        self.watchers: list[Watcher] = []
        self.servers: list[Process] = []
        self.vms: list[Vm] = []

    @property
    def server_ip(self) -> str:
        return SERVER_IP

    def add(self, server: Process) -> Process:
        self.servers.append(server)
        return server

    def vm(self, firmware: str, name: str | None = None) -> Vm:
        """A VM (not started yet) on a new tap; MACs 52:54:00:00:02:NN."""
        index = len(self.vms) + 1
        tap = self.lab.tap(self.ns, f"vmtap{index}", self.bridge)  # names are per namespace
        spec = VmSpec(name or f"vm{index}-{firmware}", firmware, f"52:54:00:00:02:{index:02x}",
                      tap, self.workdir)
        vm = Vm(self.lab, self.ns, spec, self.accel)
        self.vms.append(vm)
        return vm

    def peer_host(self, role: str, cidr: str) -> tuple[str, str]:
        """Another host on the LAN: a namespace with a veth into the bridge."""
        ns = self.lab.ns(role)
        inside, outside = self.lab.ifname(f"{role[:3]}i"), self.lab.ifname(f"{role[:3]}o")
        self.lab.veth(ns, cidr, self.ns, None, names=(inside, outside))
        self.lab.run(self.ns, ["ip", "link", "set", outside, "master", self.bridge])
        return ns, inside

    def start(self, vms: list[Vm]) -> None:
        """Watch the taps of *vms*, then start them (the VM start is time zero)."""
        name = f"packets-{len(self.watchers) + 1}"
        self.watchers.append(Watcher(self.lab, self.ns, [vm.spec.tap for vm in vms],
                                     self.workdir, name))
        for vm in vms:
            vm.start()

    def boot(self, vms: list[Vm], timeout: float | None = None) -> dict[str, float | None]:
        """Start *vms* at once; seconds from each start to its kernel (None: never)."""
        self.start(vms)
        return wait_kernels(vms, timeout)

    def stop_watchers(self) -> list[Path]:
        """Stop the packet watchers (so their pcaps are complete); their pcaps."""
        for watcher in self.watchers:
            watcher.stop(self.lab)
        return [watcher.pcap for watcher in self.watchers]

    # --- what happened ------------------------------------------------------
    def events(self, vm: Vm | None = None) -> list[Event]:
        found = sorted((e for w in self.watchers for e in w.events()), key=lambda e: e["t"])
        if vm is None:
            return found
        return [e for e in found if to_vm(e, vm.mac) or from_vm(e, vm.mac)
                or (e.get("proto") == "dhcp" and e.get("mac") == vm.mac)]

    def times(self, vm: Vm, kernel: float | None) -> BootTimes:
        def first(match: Any) -> float | None:
            for event in self.events(vm):
                if match(event):
                    return float(event["t"]) - vm.started
            return None

        ack = first(lambda e: e.get("proto") == "dhcp" and e.get("type") == "ACK"
                    and to_vm(e, vm.mac))
        data = first(lambda e: e.get("op") == "DATA1" and to_vm(e, vm.mac))
        http = first(lambda e: e.get("proto") == "http" and e.get("op") == "STATUS"
                     and to_vm(e, vm.mac))
        discover = first(lambda e: e.get("proto") == "dhcp" and e.get("type") == "DISCOVER"
                         and from_vm(e, vm.mac))
        initrd = [e for e in self.events(vm)
                  if e.get("op") == "DONE" and e["file"].endswith("initrd.gz")]
        if not initrd:
            return BootTimes(ack, data, kernel, answers=self.answer_waits(vm), first_http=http,
                             discover=discover)
        return BootTimes(ack, data, kernel, initrd[-1]["seconds"], initrd[-1]["server_s"],
                         self.answer_waits(vm), http, discover)

    def answer_waits(self, vm: Vm) -> float:
        """The time the VM waited for the first answer to each of its TFTP and
        HTTP requests (HTTP: request line -> response header)."""
        pending: dict[str, float] = {}
        total = 0.0
        for e in self.events(vm):
            if e.get("op") == "RRQ":
                pending[e["src"]] = float(e["t"])
            elif e.get("op") in ("OACK", "ERROR", "DATA1") and e["dst"] in pending:
                total += float(e["t"]) - pending.pop(e["dst"])
            elif e.get("proto") == "http" and e.get("op") == "STATUS":
                total += float(e["wait"])
        return total

    def requested(self, vm: Vm) -> list[str]:
        """TFTP file names the VM asked for, in order."""
        return [e["file"] for e in self.events(vm) if e.get("op") == "RRQ"]

    def completed(self, vm: Vm) -> list[str]:
        """Files whose transfer to the VM completed, once per transfer."""
        return [e["file"] for e in self.events(vm)
                if e.get("op") == "DONE" and e.get("proto") == "tftp"]

    def served(self, vm: Vm) -> dict[str, int]:
        """Files whose transfer to the VM completed, and their sizes."""
        return {e["file"]: e["bytes"] for e in self.events(vm)
                if e.get("op") == "DONE" and e.get("proto") == "tftp"}

    def tftp_packets(self, vm: Vm | None = None) -> list[Event]:
        """Every TFTP packet seen (a transfer starts with a request to port 69,
        which the watcher always reports)."""
        return [e for e in self.events(vm) if e.get("proto") == "tftp"
                or (e.get("proto") == "udp" and 69 in ports(e))]

    def http_requests(self, vm: Vm) -> list[str]:
        """``METHOD PATH`` of each HTTP request the VM sent, in order."""
        return [f"{e['op']} {e['file']}" for e in self.events(vm)
                if e.get("proto") == "http" and e["op"] not in ("STATUS", "DONE")]

    def http_served(self, vm: Vm) -> dict[str, int]:
        """Paths whose whole body (status 200) reached the VM, and their sizes."""
        return {e["file"]: e["bytes"] for e in self.events(vm)
                if e.get("proto") == "http" and e["op"] == "DONE" and e["code"] == 200
                and not e.get("short")}

    def http_statuses(self, vm: Vm) -> list[Event]:
        return [e for e in self.events(vm) if e.get("proto") == "http" and e["op"] == "STATUS"]

    def dhcp_replies(self, vm: Vm) -> list[Event]:
        return [e for e in self.events(vm) if e.get("proto") == "dhcp" and e.get("op") == 2]

    # --- evidence for a failure ---------------------------------------------
    def packet_lines(self, vm: Vm | None = None) -> Iterator[str]:
        base = vm.started if vm is not None else 0.0
        for e in self.events(vm):
            t = float(e["t"]) - base
            if e.get("proto") == "dhcp":
                opts = " ".join(f"{k}={v}" for k, v in e.get("opt", {}).items())
                yield (f"{t:8.3f} DHCP {e['type']:8} {e['src']} -> {e['dst']} mac={e['mac']} "
                       f"yiaddr={e['yiaddr']} siaddr={e['siaddr']} file={e['file']!r} {opts}")
            elif e.get("proto") == "tftp":
                extra = {k: e[k] for k in ("options", "code", "message", "bytes", "seconds",
                                           "size") if k in e}
                yield (f"{t:8.3f} TFTP {e['op']:5} {e['src']} -> {e['dst']} "
                       f"{e.get('file', '')!r} {extra or ''}")
            elif e.get("proto") == "http":
                info = {k: e[k] for k in HTTP_DETAILS if k in e}
                yield (f"{t:8.3f} HTTP {e['op']:6} {e['src']} -> {e['dst']} "
                       f"{e.get('file', '')!r} {info or ''}")
            else:
                yield f"{t:8.3f} {e}"

    def evidence(self, vm: Vm | None = None, packets: int = 60) -> str:
        lines = list(self.packet_lines(vm))
        pcaps = ", ".join(w.pcap.name for w in self.watchers)
        parts = [f"work folder: {self.workdir} (pcap: {pcaps})",
                 f"--- packets ({len(lines)}, last {packets}) ---", *lines[-packets:]]
        for server in self.servers:
            parts += [f"--- {server.name} log (tail) ---", server.log_tail()]
        for each in [vm] if vm is not None else self.vms:
            parts += [f"--- {each.spec.name} serial console (tail) ---", each.console_tail()]
        return "\n".join(parts)

    def close(self) -> None:
        for vm in self.vms:
            vm.stop()
        for server in reversed(self.servers):
            server.stop()


def ports(event: Event) -> set[int]:
    """The UDP or TCP ports of an event's ``src`` and ``dst`` (``ip:port``)."""
    return {int(event[k].rpartition(":")[2]) for k in ("src", "dst") if k in event}


def keep_artifacts() -> bool:
    return os.environ.get("PYBOOTD_BOOT_KEEP", "") not in ("", "0")

