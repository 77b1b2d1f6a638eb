#!/usr/bin/env python3
"""perfdhcp against pybootd, ISC Kea and dnsmasq, side by side, in network namespaces.

Every variant (``--servers``, comma-separated; default
``pybootd,pybootd-info,kea-memfile,pybootd-pg,pybootd-pg2,kea-pgsql``) runs
alone, in namespaces of its own, with the same pool (198.51.100.10-249), the
same lease time (3600 s) and persistent leases:

``pybootd``           pybootd, SQLite lease file, ``[logger] level = warning``
``pybootd-info``      the same at ``level = info`` (the sample configs' level)
``pybootd-api``       the same as ``pybootd`` with ``[api]`` on (not by default)
``pybootd-pg``        pybootd, ``[bootp] lease_store = postgresql://...``
``pybootd-pg2``       two pybootds (198.51.100.1 and .3, one namespace and one
                      relay each) sharing one PostgreSQL database, loaded at
                      once by two perfdhcp relays with distinct MACs (half the
                      rate and half the clients each); the figure is the sum
``kea-memfile``       Kea 2.2 ``kea-dhcp4``, memfile lease store persisted to a
                      CSV file (no LFC), logging to a file at WARN
``kea-memfile-info``  the same at INFO, Kea's default level (not by default)
``kea-pgsql``         Kea with its PostgreSQL lease backend (``kea-admin db-init``)
``dnsmasq``           dnsmasq, its lease file (not by default)

Kea uses UDP sockets (all the traffic is relayed) and its defaults otherwise
(2.2: single-threaded). PostgreSQL is a throw-away cluster per variant
(tests/pgcluster.py: unix socket only, fsync and synchronous_commit off), the
same for Kea and pybootd, reached from inside the namespaces through its unix
socket folder.

perfdhcp (package kea-admin) runs as a relay (198.51.100.2; .4 for the second
pybootd-pg2 relay) with ``--clients`` simulated clients. A warm-up (2 s at
200/s, repeated while exchanges are lost, up to 4 times) leases the clients
once; its runs are printed, not counted. Then, for every target rate, perfdhcp
runs for ``--seconds`` and the script records the full 4-way exchanges per
second achieved and the share lost at each stage: DISCOVERs without an OFFER,
REQUESTs without an ACK (perfdhcp ignores a NAK: it counts as lost), and
DISCOVERs whose ACK never came. A run passes when
all three are under 2.5 % (for pybootd-pg2: on each relay); a run over the
limit is tried again up to ``--tries`` times. A variant's figure is the best
passing rate. CPU time per exchange is the DHCP server processes' (and
separately the PostgreSQL cluster's), median over the passing runs.

Usage::

    sudo python3 scripts/bench_dhcp.py [--seconds 10] [--rates 1000,2000,...]
        [--servers pybootd,kea-memfile,...] [--tries 2] [--clients 200] [--pin]

A smoke run: ``--seconds 3 --rates 500,1000 --tries 1``. Needs root,
perfdhcp, kea-dhcp4 / kea-admin (Kea variants), PostgreSQL (``*-pg*``),
dnsmasq (dnsmasq).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bench_dhcp_servers import SERVER_CPU, VARIANTS, Deployment, Relay  # noqa: E402
from dhcplab import parse_perfdhcp, perfdhcp_drop_ratio  # noqa: E402
from netlab import NetLab, netlab  # noqa: E402
from pgcluster import missing as pg_missing  # noqa: E402
from pgcluster import pg_cluster  # noqa: E402

MAX_DROPS = 0.025
WARM_UPS = 4  # warm-up runs at most (2 s at 200/s each)
STAGES = ("DISCOVER-OFFER", "REQUEST-ACK", "4-way")
DEFAULT_SERVERS = "pybootd,pybootd-info,kea-memfile,pybootd-pg,pybootd-pg2,kea-pgsql"
# --pin: the servers on CPU 0 (SERVER_CPU), perfdhcp (two threads) on the others.
# Off by default: on a two-CPU machine it confines perfdhcp.
CLIENT_CPU: list[str] = []


@dataclass
class Run:
    """One perfdhcp run (all relays at once) at one target rate."""

    target: int
    achieved: float  # 4-way exchanges/s, all relays together
    drops: dict[str, float]  # per stage (STAGES): the share lost, worst relay
    server_us: float  # DHCP servers' CPU µs per exchange
    db_us: float  # PostgreSQL's CPU µs per exchange (0 without a database)
    relays: list[float]  # exchanges/s of each relay

    @property
    def passed(self) -> bool:
        return all(ratio < MAX_DROPS for ratio in self.drops.values())


def stage_drops(stats: dict[str, dict[str, float]]) -> dict[str, float]:
    """Lost at each stage: 1 - received / sent (everything lost when nothing was sent)."""
    drops = {}
    for stage in STAGES[:2]:
        sent = stats.get(stage, {}).get("sent packets", 0.0)
        received = stats.get(stage, {}).get("received packets", 0.0)
        drops[stage] = 1.0 - received / sent if sent else 1.0
    drops["4-way"] = perfdhcp_drop_ratio(stats)
    return drops


def perfdhcp(lab: NetLab, deployment: Deployment, rate: int, seconds: float,
             clients: int) -> Run:
    """Every relay of *deployment* at once, sharing *rate* and *clients*."""
    relays = deployment.relays
    period = max(1, int(seconds))  # perfdhcp -p takes whole seconds
    each_rate, each_clients = max(1, round(rate / len(relays))), max(1, clients // len(relays))

    def argv(relay: Relay) -> list[str]:
        return [*CLIENT_CPU, "perfdhcp", "-4", "-l", relay.ifname, "-r", str(each_rate),
                "-p", str(period), "-R", str(each_clients), "-b", f"mac={relay.mac}",
                relay.server]

    server_before, db_before = deployment.server_cpu(), deployment.db_cpu()
    procs = [lab.popen(relay.ns, argv(relay), stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True) for relay in relays]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=period + 60)[0])
        except subprocess.TimeoutExpired:
            lab.stop(proc)
            outputs.append("")
    server_used = deployment.server_cpu() - server_before
    db_used = deployment.db_cpu() - db_before
    stats = [parse_perfdhcp(text) for text in outputs]
    acked = sum(s.get("REQUEST-ACK", {}).get("received packets", 0.0) for s in stats)
    per_relay = [stage_drops(s) for s in stats]
    drops = {stage: max(d[stage] for d in per_relay) for stage in STAGES}
    each = [s.get("REQUEST-ACK", {}).get("received packets", 0.0) / period for s in stats]
    return Run(rate, acked / period, drops, server_used / acked * 1e6 if acked else 0.0,
               db_used / acked * 1e6 if acked else 0.0, each)


def show(name: str, run: Run) -> str:
    drops = " ".join(f"{run.drops[stage] * 100:5.2f}" for stage in STAGES)
    db = f", db {run.db_us:5.0f}" if run.db_us else ""
    parts = f" ({' + '.join(f'{r:.0f}' for r in run.relays)})" if len(run.relays) > 1 else ""
    return (f"  {name:16} target {run.target:6d}/s: {run.achieved:7.0f} exchanges/s{parts}, "
            f"lost % (offer ack 4-way) {drops}, server CPU {run.server_us:5.0f}{db} µs/exchange")


def bench(name: str, lab: NetLab, deployment: Deployment, rates: list[int], seconds: float,
          clients: int, tries: int) -> list[Run]:
    """Every rate in turn; a run over the loss limit is tried again (up to *tries*
    times) so that a burst of load from elsewhere on the machine does not decide;
    two rates in a row over the limit end the series."""
    runs = []
    # Warm up: every client leased once (perfdhcp picks its clients at random:
    # 2 s at 200/s reach most), again while exchanges are lost (first leases
    # race between two pybootd-pg2 instances), at most WARM_UPS times.
    for _ in range(WARM_UPS):
        run = perfdhcp(lab, deployment, 200, 2, clients)
        print(show("(warm-up)", run), flush=True)
        if not any(run.drops.values()):
            break
    failures = 0
    for rate in rates:
        for _ in range(tries):
            run = perfdhcp(lab, deployment, rate, seconds, clients)
            print(show(name, run), flush=True)
            if run.passed:
                break
        runs.append(run)
        failures = 0 if run.passed else failures + 1
        if failures >= 2:
            break
    return runs


@dataclass
class Figure:
    best: Run | None  # the passing run with the most exchanges/s
    server_us: float  # medians over the passing runs (all runs when none passed)
    db_us: float

    @property
    def rate(self) -> float:
        return self.best.achieved if self.best else 0.0


def figure(runs: list[Run]) -> Figure:
    passed = [run for run in runs if run.passed]

    def median(values: list[float]) -> float:
        values = sorted(v for v in values if v)
        return values[len(values) // 2] if values else 0.0

    chosen = passed or runs
    return Figure(max(passed, key=lambda run: run.achieved, default=None),
                  median([run.server_us for run in chosen]), median([run.db_us for run in chosen]))


def log_summary(deployment: Deployment, work: Path) -> list[str]:
    """What the servers logged (line count, warnings and errors) and the leases stored."""
    lines = []
    for path in deployment.logs:
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        bad = [line for line in text if any(word in line for word in (
            "WARNING", "ERROR", "CRITICAL", "Traceback", " WARN ", " FATAL "))]
        lines.append(f"  log {path.relative_to(work)}: {len(text)} lines, "
                     f"{len(bad)} warnings or errors")
        lines.extend(f"    {line[:160]}" for line in bad[:5])
    if deployment.leases is not None:
        try:
            lines.append(f"  leases stored: {deployment.leases()}")
        except (RuntimeError, OSError, sqlite3.Error, subprocess.TimeoutExpired) as exc:
            lines.append(f"  leases stored: not read ({exc})")
    return lines


def run_variant(name: str, rates: list[int], seconds: float, clients: int,
                tries: int) -> Figure:
    needs_pg, deploy = VARIANTS[name]
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-dhcp-")))
        work.chmod(0o755)
        pg = stack.enter_context(pg_cluster()) if needs_pg else None
        lab = stack.enter_context(netlab())  # closed first: servers end before the database
        deployment = deploy(lab, work, pg)
        print(f"{name}:", flush=True)
        try:
            runs = bench(name, lab, deployment, rates, seconds, clients, tries)
        finally:
            for proc in deployment.servers:
                lab.stop(proc)
            print("\n".join(log_summary(deployment, work)), flush=True)
        return figure(runs)


def table(figures: dict[str, Figure]) -> None:
    kea = figures.get("kea-memfile")
    kea_pg = figures.get("kea-pgsql")

    def ratio(name: str, reference: Figure | None, applies: bool) -> str:
        if not applies or reference is None or not reference.rate:
            return "-"
        return f"{figures[name].rate / reference.rate:.2f}"

    print()
    print(f"4-way exchanges/s with every stage under {MAX_DROPS * 100:.1f} % lost, persistent "
          "leases; lost % at that rate; CPU µs per exchange (median of the passing runs)")
    header = (f"{'server':17} {'exchanges/s':>11} {'offer %':>8} {'ack %':>6} {'4-way %':>8} "
              f"{'server µs':>10} {'db µs':>6} {'÷ kea-memfile':>14} {'÷ kea-pgsql':>12}")
    print(header)
    print("-" * len(header))
    for name, fig in figures.items():
        drops = ([f"{fig.best.drops[stage] * 100:.2f}" for stage in STAGES] if fig.best
                 else ["-"] * 3)
        pybootd = name.startswith("pybootd")
        print(f"{name:17} {fig.rate:11.0f} {drops[0]:>8} {drops[1]:>6} {drops[2]:>8} "
              f"{fig.server_us:10.0f} {f'{fig.db_us:.0f}' if fig.db_us else '-':>6} "
              f"{ratio(name, kea, pybootd):>14} "
              f"{ratio(name, kea_pg, name.startswith('pybootd-pg')):>12}")


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: servers, namespaces and clusters removed


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="1000,2000,3000,4000,5000,6000,7000,8000,10000")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--servers", default=DEFAULT_SERVERS,
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--pin", action="store_true",
                        help="pin the DHCP servers (CPU 0) and perfdhcp (the others); "
                        "PostgreSQL is not pinned")
    parser.add_argument("--tries", type=int, default=2, help="runs per rate over the limit")
    args = parser.parse_args()
    if args.pin and (os.cpu_count() or 1) >= 2:
        cpus = os.cpu_count() or 2
        SERVER_CPU.extend(["taskset", "-c", "0"])
        CLIENT_CPU.extend(["taskset", "-c", f"1-{cpus - 1}"])
    rates = [int(r) for r in args.rates.split(",")]
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        print(f"unknown servers {', '.join(unknown)} (expected some of "
              f"{', '.join(VARIANTS)})", file=sys.stderr)
        return 2
    tools = {"perfdhcp"}
    tools |= {"kea-dhcp4"} if any(n.startswith("kea") for n in names) else set()
    tools |= {"kea-admin"} if "kea-pgsql" in names else set()
    tools |= {"dnsmasq"} if "dnsmasq" in names else set()
    for tool in sorted(tools):
        if shutil.which(tool) is None:
            print(f"needs {tool}", file=sys.stderr)
            return 2
    if any(VARIANTS[name][0] for name in names) and (why := pg_missing()):
        print(f"needs PostgreSQL: {why}", file=sys.stderr)
        return 2
    figures: dict[str, Figure] = {}
    for name in names:
        try:
            figures[name] = run_variant(name, rates, args.seconds, args.clients, args.tries)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"{name}: failed: {exc}", file=sys.stderr, flush=True)
            figures[name] = Figure(None, 0.0, 0.0)
    table(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
