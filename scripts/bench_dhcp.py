#!/usr/bin/env python3
"""perfdhcp against pybootd and dnsmasq, side by side, in network namespaces.

Each server runs alone in namespace ``srv`` (198.51.100.1/24) with persistent
leases (pybootd: its SQLite lease file; dnsmasq: its lease file) and the same
pool; perfdhcp (package kea-admin) runs in namespace ``perf`` as a relay
(198.51.100.2) with the same simulated clients. For every target rate the
script runs perfdhcp for ``--seconds`` and records the full 4-way exchanges
per second it achieved and the share of exchanges lost (DISCOVERs sent whose
ACK never came). A server's figure is the best rate with under 2.5 % lost.

Usage: ``sudo python3 scripts/bench_dhcp.py [--seconds 10] [--rates 1000,2000,...]``
Needs root, perfdhcp and dnsmasq.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from dhcplab import parse_perfdhcp, perfdhcp_drop_ratio  # noqa: E402
from netlab import NetLab, netlab  # noqa: E402

SERVER = "198.51.100.1"
RELAY = "198.51.100.2/24"
POOL_START, POOL_END, POOL_COUNT = "198.51.100.10", "198.51.100.249", 240
MAX_DROPS = 0.025
# --pin: the server on CPU 0, perfdhcp (two threads) on the others; the same
# for both servers. Off by default: on a two-CPU machine it confines perfdhcp.
SERVER_CPU: list[str] = []
CLIENT_CPU: list[str] = []


def start_pybootd(lab: NetLab, ns: str, work: Path) -> subprocess.Popen[bytes]:
    """``pybootd -c CONFIG -p``: the real daemon, DHCP only, as user nobody."""
    config = work / "pybootd.ini"
    config.write_text(
        f"[logger]\nlevel = warning\n[daemon]\nstate_dir = {work / 'state'}\n"
        f"[bootp]\npool_start = {POOL_START}\npool_count = {POOL_COUNT}\n"
        f"allow_simple_dhcp = on\nlease_time = 3600\n"
        f"lease_file = {work / 'state' / 'leases.sqlite'}\n"
    )
    log = work / "pybootd.log"
    with open(log, "wb") as out:
        proc = lab.popen(ns, [*SERVER_CPU, sys.executable, "-m", "pybootd", "-c", str(config),
                              "-p"],
                         stdout=out, stderr=out, cwd=str(REPO))
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        if (work / "state" / "leases.sqlite").exists():
            time.sleep(0.5)  # bound and serving right after the lease file opens
            return proc
        time.sleep(0.05)
    raise RuntimeError(f"pybootd did not start: {log.read_text()}")


def start_dnsmasq(lab: NetLab, ns: str, work: Path, ifname: str) -> subprocess.Popen[bytes]:
    argv = [
        "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--no-ping",
        "--dhcp-authoritative", "--quiet-dhcp", "--log-facility=-",
        f"--interface={ifname}", "--bind-interfaces", f"--pid-file={work / 'dnsmasq.pid'}",
        f"--dhcp-range={POOL_START},{POOL_END},255.255.255.0,1h",
        f"--dhcp-leasefile={work / 'dnsmasq.leases'}", f"--dhcp-lease-max={POOL_COUNT + 10}",
    ]
    proc = lab.popen(ns, [*SERVER_CPU, *argv], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise RuntimeError("dnsmasq did not start")
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of *pid* and its threads (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def perfdhcp(lab: NetLab, ns: str, ifname: str, rate: int, seconds: float,
             clients: int, server_pid: int = 0) -> tuple[float, float, float]:
    """One run: (4-way exchanges/s achieved, share of exchanges lost, server CPU µs each)."""
    argv = [*CLIENT_CPU, "perfdhcp", "-4", "-l", ifname, "-r", str(rate), "-p",
            str(int(seconds)), "-R", str(clients), SERVER]
    before = cpu_seconds(server_pid) if server_pid else 0.0
    result = lab.run(ns, argv, timeout=seconds + 60, check=False)
    used = cpu_seconds(server_pid) - before if server_pid else 0.0
    stats = parse_perfdhcp(result.stdout)
    acked = stats.get("REQUEST-ACK", {}).get("received packets", 0.0)
    return acked / seconds, perfdhcp_drop_ratio(stats), used / acked * 1e6 if acked else 0.0


def bench(name: str, lab: NetLab, ns_perf: str, perf_if: str, rates: list[int],
          seconds: float, clients: int, tries: int,
          server_pid: int) -> list[tuple[int, float, float, float]]:
    """Every rate in turn; a run over the loss limit is tried again (up to *tries*
    times) so that a burst of load from elsewhere on the machine does not decide."""
    results = []
    perfdhcp(lab, ns_perf, perf_if, 200, 2, clients)  # warm up: every client leased once
    failures = 0
    for rate in rates:
        for _ in range(tries):
            achieved, lost, cpu = perfdhcp(lab, ns_perf, perf_if, rate, seconds, clients,
                                           server_pid)
            print(f"  {name:8} target {rate:6d}/s: {achieved:8.0f} exchanges/s, "
                  f"{lost * 100:6.2f} % lost, server CPU {cpu:5.0f} µs/exchange", flush=True)
            if lost < MAX_DROPS:
                break
        results.append((rate, achieved, lost, cpu))
        failures = failures + 1 if lost >= MAX_DROPS else 0
        if failures >= 2:
            break
    return results


def best(results: list[tuple[int, float, float, float]]) -> tuple[float, float]:
    """The best rate under the loss limit, and the server's median CPU cost per exchange."""
    rate = max((achieved for _, achieved, lost, _ in results if lost < MAX_DROPS), default=0.0)
    costs = sorted(cpu for *_, cpu in results if cpu)
    return rate, costs[len(costs) // 2] if costs else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="1000,2000,3000,4000,5000,6000,7000,8000,10000")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--servers", default="pybootd,dnsmasq")
    parser.add_argument("--pin", action="store_true", help="pin the server and perfdhcp")
    parser.add_argument("--tries", type=int, default=2, help="runs per rate over the limit")
    args = parser.parse_args()
    if args.pin and (os.cpu_count() or 1) >= 2:
        cpus = os.cpu_count() or 2
        SERVER_CPU.extend(["taskset", "-c", "0"])
        CLIENT_CPU.extend(["taskset", "-c", f"1-{cpus - 1}"])
    rates = [int(r) for r in args.rates.split(",")]
    for tool in ("perfdhcp", "dnsmasq"):
        if shutil.which(tool) is None:
            print(f"needs {tool}", file=sys.stderr)
            return 2
    table: dict[str, tuple[float, float]] = {}
    for name in args.servers.split(","):
        with netlab() as lab, tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            work.chmod(0o755)
            srv, perf = lab.ns("srv"), lab.ns("perf")
            srv_if, perf_if = lab.veth(srv, f"{SERVER}/24", perf, RELAY)
            proc = (start_pybootd(lab, srv, work) if name == "pybootd"
                    else start_dnsmasq(lab, srv, work, srv_if))
            print(f"{name}:", flush=True)
            table[name] = best(bench(name, lab, perf, perf_if, rates, args.seconds,
                                     args.clients, args.tries, proc.pid))
            lab.stop(proc)
    print()
    print(f"{'server':10} {'4-way exchanges/s (< 2.5 % lost, persistent leases)':>52} "
          f"{'server CPU µs/exchange':>24}")
    for name, (rate, cpu) in table.items():
        print(f"{name:10} {rate:52.0f} {cpu:24.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
