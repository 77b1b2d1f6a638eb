"""Real DHCP clients against pybootd in network namespaces.

busybox udhcpc, ISC dhclient and dhcpcd each: get an address in the pool,
renew, release, and get the same address again after pybootd restarts.
``kill -9`` right after an ACK loses no lease.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from dhcplab import POOL_START, DhcpLab, events, lab_session, wait_event
from netlab import NetLab, require_tools, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.interop]


@pytest.fixture
def dlab(lab: NetLab, tmp_path: Path) -> Iterator[DhcpLab]:
    with lab_session(lab, tmp_path / "dhcp") as d:
        yield d


def in_pool(ip: str) -> bool:
    start = IPv4Address(POOL_START)
    return start <= IPv4Address(ip) < start + 50


def stored(d: DhcpLab, mac: str, state: str, timeout: float = 10) -> str:
    """Wait until the lease file holds *mac* in *state*; returns its address."""

    def check() -> str | None:
        entry = d.stored_leases().get(mac)
        return entry[0] if entry and entry[1] == state else None

    result: str = wait_for(check, timeout, what=f"{mac} {state} in the lease file")
    return result


def restart(d: DhcpLab, sig: int = signal.SIGTERM) -> None:
    d.stop_server(sig)
    d.start_server()


# --- busybox udhcpc -----------------------------------------------------------
def start_udhcpc(d: DhcpLab, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    ns, ifname = d.client(name) if name not in d.clients else d.clients[name]
    script, log = d.script(name)
    proc = d.lab.popen(ns, ["udhcpc", "-f", "-i", ifname, "-s", str(script),
                            "-t", "10", "-T", "1", "-A", "1"])
    return proc, log


def test_udhcpc_lease_renew_release_restart(dlab: DhcpLab) -> None:
    require_tools("udhcpc")
    proc, log = start_udhcpc(dlab, "udhcpc")
    ip = wait_event(log, "bound").split()[1]
    assert in_pool(ip)
    assert dlab.address_of("udhcpc") == ip
    mac = dlab.mac_of("udhcpc")
    assert stored(dlab, mac, "bound") == ip

    seen = len(events(log))
    os.kill(proc.pid, signal.SIGUSR1)  # busybox: renew now (unicast REQUEST)
    assert wait_event(log, "renew", after=seen).split()[1] == ip
    assert "REQUEST -> ACK" in dlab.server_log().split(f"{mac} {ip}")[-1]

    os.kill(proc.pid, signal.SIGUSR2)  # busybox: release
    assert stored(dlab, mac, "free") == ip

    restart(dlab)
    seen = len(events(log))
    os.kill(proc.pid, signal.SIGUSR1)  # from "released": a fresh DISCOVER
    assert wait_event(log, "bound", after=seen).split()[1] == ip


def test_kill9_right_after_ack_loses_no_lease(dlab: DhcpLab) -> None:
    require_tools("udhcpc")
    _, log = start_udhcpc(dlab, "first")
    ip = wait_event(log, "bound").split()[1]
    assert dlab.server is not None
    restart(dlab, signal.SIGKILL)  # the ACK was sent after the commit: it must be there
    mac = dlab.mac_of("first")
    assert dlab.stored_leases()[mac] == (ip, "bound")
    _, other = start_udhcpc(dlab, "second")
    assert wait_event(other, "bound").split()[1] != ip


# --- ISC dhclient -------------------------------------------------------------
def dhclient(d: DhcpLab, name: str, *flags: str, background: bool = False) -> Any:
    ns, ifname = d.clients[name]
    files = ["-sf", str(d.workdir / f"{name}.sh"), "-lf", str(d.workdir / f"{name}.leases"),
             "-pf", str(d.workdir / f"{name}.pid")]
    argv = ["dhclient", "-4", "-v", *flags, *files, ifname]
    if background:
        return d.lab.popen(ns, ["dhclient", "-d", "-4", "-v", *files, ifname])
    return d.lab.run(ns, argv, timeout=30, check=False)


def test_dhclient_lease_renew_release_restart(dlab: DhcpLab) -> None:
    require_tools("dhclient")
    dlab.client("dhcl")
    _, log = dlab.script("dhcl")
    proc = dhclient(dlab, "dhcl", background=True)
    ip = wait_event(log, "BOUND").split()[1]
    assert in_pool(ip)
    mac = dlab.mac_of("dhcl")
    assert stored(dlab, mac, "bound") == ip

    # dhclient has no "renew now": stop it (-x keeps the lease) and start it
    # again on its lease file, which is an INIT-REBOOT REQUEST.
    dhclient(dlab, "dhcl", "-x")
    proc.wait(timeout=15)
    seen = len(events(log))
    proc = dhclient(dlab, "dhcl", background=True)
    assert wait_event(log, "REBOOT", after=seen).split()[1] == ip

    result = dhclient(dlab, "dhcl", "-r")  # release, and stop the running one
    proc.wait(timeout=15)
    assert result.returncode == 0, result.stderr
    assert stored(dlab, mac, "free") == ip

    restart(dlab)
    (dlab.workdir / "dhcl.leases").unlink(missing_ok=True)  # forget it: DISCOVER
    seen = len(events(log))
    dhclient(dlab, "dhcl", background=True)
    assert wait_event(log, "BOUND", after=seen).split()[1] == ip


# --- dhcpcd -------------------------------------------------------------------
def start_dhcpcd(d: DhcpLab, name: str) -> subprocess.Popen[bytes]:
    """dhcpcd in its own mount namespace, with tmpfs over its state folders."""
    ns, ifname = d.clients[name]
    script = d.workdir / f"{name}.sh"
    shell = ("mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib/dhcpcd && "
             f"exec dhcpcd -B -4 -A -L -f /dev/null -c {script} {ifname}")
    return d.lab.popen(ns, ["unshare", "-m", "sh", "-c", shell])


def dhcpcd_control(d: DhcpLab, proc: subprocess.Popen[bytes], name: str, flag: str) -> None:
    """``dhcpcd -n`` / ``-k`` inside the client's mount namespace."""
    _, ifname = d.clients[name]
    result = d.lab.run(None, ["nsenter", "-t", str(proc.pid), "-m", "-n", "dhcpcd", "-4", flag,
                              ifname], timeout=20, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dhcpcd_lease_renew_release_restart(dlab: DhcpLab) -> None:
    require_tools("dhcpcd", "nsenter", "unshare")
    dlab.client("dhcpcd")
    _, log = dlab.script("dhcpcd")
    proc = start_dhcpcd(dlab, "dhcpcd")
    ip = wait_event(log, "BOUND").split()[1]
    assert in_pool(ip)
    mac = dlab.mac_of("dhcpcd")
    assert stored(dlab, mac, "bound") == ip

    seen = len(events(log))
    dhcpcd_control(dlab, proc, "dhcpcd", "-n")  # rebind: REQUEST for the same address
    line = wait_for(
        lambda: next((e for e in events(log)[seen:] if e.split()[0] in
                      ("RENEW", "REBIND", "REBOOT", "BOUND")), None), 30, what="renewal")
    assert line.split()[1] == ip

    os.kill(proc.pid, signal.SIGALRM)  # dhcpcd(8): release and exit (what -k sends)
    assert stored(dlab, mac, "free") == ip
    dlab.lab.stop(proc)

    restart(dlab)
    seen = len(events(log))
    start_dhcpcd(dlab, "dhcpcd")  # fresh tmpfs: no lease kept, a DISCOVER
    assert wait_event(log, "BOUND", after=seen).split()[1] == ip
