"""The DHCP servers ``scripts/bench_dhcp.py`` compares, each started in network
namespaces it creates (tests/netlab.py) with the same pool, lease time and
persistent lease store, and the CPU time they and their database use.

A *deployment* is one variant running: the servers' processes, and the
perfdhcp relays (namespace, interface, server address, base MAC) that load
them. Every variant but ``pybootd-pg2`` is one server in namespace ``srv``
(198.51.100.1) and one relay in ``perf`` (198.51.100.2); ``pybootd-pg2`` adds
a second pair, ``srv2`` (198.51.100.3) and ``perf2`` (198.51.100.4), whose
pybootd shares the first one's PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from netlab import NetLab  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

POOL_START, POOL_END, POOL_COUNT = "198.51.100.10", "198.51.100.249", 240
LEASE_TIME = 3600
# (server, relay) address pairs: one per server instance, each on its own link.
PAIRS = [("198.51.100.1", "198.51.100.2"), ("198.51.100.3", "198.51.100.4")]
# perfdhcp -b mac=...: the base of each relay's simulated clients; -R randomizes
# the last octets only, so the second octet keeps the relays' clients apart.
MACS = ["00:0c:01:02:03:04", "00:0c:02:02:03:04"]
# --pin: a prefix (taskset -c 0) for every DHCP server; PostgreSQL is not pinned.
SERVER_CPU: list[str] = []
_START_TIMEOUT = 30.0


@dataclass
class Relay:
    """One perfdhcp relay: where it runs and whom it loads."""

    ns: str
    ifname: str
    server: str
    mac: str


@dataclass
class Deployment:
    """One variant running: its servers, their logs, the relays, the database."""

    relays: list[Relay] = field(default_factory=list)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    db: PgCluster | None = None
    leases: Callable[[], str] | None = None  # a line about the leases in the database

    def server_cpu(self) -> float:
        return sum(cpu_seconds(proc.pid) for proc in self.servers)

    def db_cpu(self) -> float:
        return cluster_cpu(self.db) if self.db is not None else 0.0


# --- CPU accounting ----------------------------------------------------------
def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time of *pid* and its threads (``/proc/PID/stat``);
    with *children*, also of its children that have ended."""
    fields = _stat(pid)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def cluster_cpu(pg: PgCluster) -> float:
    """CPU time of a PostgreSQL cluster: the postmaster, its running children
    (backends, WAL writer, checkpointer...) and those that have ended."""
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile: now in the postmaster's children's time
    return total


# --- starting and waiting ----------------------------------------------------
def wait_bound(lab: NetLab, ns: str, proc: subprocess.Popen[bytes], logs: list[Path],
               what: str) -> None:
    """Wait until *proc* has bound UDP port 67 in *ns* (it serves from then on:
    every server opens its lease store before it binds)."""
    deadline = time.monotonic() + _START_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        listing = lab.run(ns, ["ss", "-Hulnp"], timeout=10).stdout
        if any(":67 " in line and f"pid={proc.pid}," in line for line in listing.splitlines()):
            time.sleep(0.3)
            return
        time.sleep(0.1)
    text = "".join(path.read_text(errors="replace")[-3000:] for path in logs if path.exists())
    raise RuntimeError(f"{what} did not start (exit status {proc.poll()}):\n{text}")


def links(lab: NetLab, count: int) -> list[tuple[str, str, Relay]]:
    """*count* (server namespace, server interface, relay) triples, each a veth pair."""
    found = []
    for index, (server, relay) in enumerate(PAIRS[:count]):
        suffix = str(index + 1) if index else ""
        srv, perf = lab.ns(f"srv{suffix}"), lab.ns(f"perf{suffix}")
        names = (lab.ifname(f"vs{suffix}"), lab.ifname(f"vp{suffix}")) if index else None
        srv_if, perf_if = lab.veth(srv, f"{server}/24", perf, f"{relay}/24", names=names)
        found.append((srv, srv_if, Relay(perf, perf_if, server, MACS[index])))
    return found


def start_pybootd(lab: NetLab, ns: str, work: Path, *, address: str, level: str,
                  store: str | None = None, api: bool = False,
                  ) -> tuple[subprocess.Popen[bytes], Path]:
    """``pybootd -c CONFIG -p``: the real daemon, DHCP only, as user nobody.
    *store*: a ``[bootp] lease_store`` URL; None: the SQLite ``lease_file``.
    *api*: with ``[api]`` on (loopback port 9180 of its namespace)."""
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    state = work / "state"
    lease = f"lease_store = {store}" if store else f"lease_file = {state / 'leases.sqlite'}"
    config = work / "pybootd.ini"
    config.write_text(
        f"[logger]\nlevel = {level}\n[daemon]\nstate_dir = {state}\n"
        f"[bootp]\naddress = {address}\npool_start = {POOL_START}\n"
        f"pool_count = {POOL_COUNT}\nallow_simple_dhcp = on\nlease_time = {LEASE_TIME}\n"
        f"{lease}\n" + ("[api]\nport = 9180\n" if api else ""))
    log = work / "pybootd.log"
    with open(log, "wb") as out:
        proc = lab.popen(ns, [*SERVER_CPU, sys.executable, "-m", "pybootd", "-c", str(config),
                              "-p"], stdout=out, stderr=out, cwd=str(REPO))
    wait_bound(lab, ns, proc, [log], f"pybootd ({config})")
    return proc, log


def start_kea(lab: NetLab, ns: str, work: Path, ifname: str, *, severity: str,
              database: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Path]:
    """``kea-dhcp4 -c CONFIG`` on *ifname* (UDP sockets: all the traffic is
    relayed), the same pool and lifetime, logging to a file at *severity*."""
    log, out = work / "kea.log", work / "kea.out"
    config = {"Dhcp4": {
        "interfaces-config": {"interfaces": [ifname], "dhcp-socket-type": "udp"},
        "lease-database": database,
        "valid-lifetime": LEASE_TIME,
        "subnet4": [{"id": 1, "subnet": "198.51.100.0/24",
                     "pools": [{"pool": f"{POOL_START} - {POOL_END}"}]}],
        "loggers": [{"name": "kea-dhcp4", "severity": severity,
                     "output_options": [{"output": str(log)}]}],
    }}
    path = work / "kea-dhcp4.json"
    path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ, KEA_PIDFILE_DIR=str(work), KEA_LOCKFILE_DIR=str(work))
    with open(out, "wb") as stream:
        proc = lab.popen(ns, [*SERVER_CPU, "kea-dhcp4", "-c", str(path)], stdout=stream,
                         stderr=stream, env=env)
    wait_bound(lab, ns, proc, [out, log], f"kea-dhcp4 ({path})")
    return proc, log


def kea_database(pg: PgCluster, name: str = "kea") -> dict[str, Any]:
    """A Kea lease database in *pg* (``kea-admin db-init pgsql``), reached through
    the cluster's unix socket folder given as ``host`` (libpq takes a folder)."""
    pg.createdb(name)
    done = subprocess.run(["kea-admin", "db-init", "pgsql", "-u", pg.user, "-n", name,
                           "-h", str(pg.socket_dir)],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"kea-admin db-init failed: {done.stdout}{done.stderr}")
    return {"type": "postgresql", "name": name, "host": str(pg.socket_dir), "user": pg.user}


def start_dnsmasq(lab: NetLab, ns: str, work: Path,
                  ifname: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = work / "dnsmasq.log"
    argv = [
        "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--no-ping",
        "--dhcp-authoritative", "--quiet-dhcp", "--log-facility=-",
        f"--interface={ifname}", "--bind-interfaces", f"--pid-file={work / 'dnsmasq.pid'}",
        f"--dhcp-range={POOL_START},{POOL_END},255.255.255.0,{LEASE_TIME}",
        f"--dhcp-leasefile={work / 'dnsmasq.leases'}", f"--dhcp-lease-max={POOL_COUNT + 10}",
    ]
    with open(log, "wb") as out:
        proc = lab.popen(ns, [*SERVER_CPU, *argv], stdout=out, stderr=out)
    wait_bound(lab, ns, proc, [log], "dnsmasq")
    return proc, log


# --- the variants ------------------------------------------------------------
def _pybootd(level: str, *, pg: bool = False, instances: int = 1, api: bool = False,
             ) -> Callable[[NetLab, Path, PgCluster | None], Deployment]:
    def deploy(lab: NetLab, work: Path, db: PgCluster | None) -> Deployment:
        store = db.url if pg and db is not None else None
        found = Deployment(db=db if pg else None)
        for index, (srv, _, relay) in enumerate(links(lab, instances)):
            proc, log = start_pybootd(lab, srv, work / f"pybootd{index + 1}",
                                      address=relay.server, level=level, store=store,
                                      api=api)
            found.servers.append(proc)
            found.logs.append(log)
            found.relays.append(relay)
        if db is not None and pg:
            found.leases = lambda: db.psql(
                "SELECT string_agg(state || ' ' || n || ' by ' || server, ', ') FROM (SELECT "
                "state, server, count(*) n FROM pybootd_leases GROUP BY state, server "
                "ORDER BY server, state) s").strip()
        else:
            found.leases = lambda: sqlite_leases(work / "pybootd1" / "state" / "leases.sqlite")
        return found
    return deploy


def _kea(severity: str, *, pg: bool = False
         ) -> Callable[[NetLab, Path, PgCluster | None], Deployment]:
    def deploy(lab: NetLab, work: Path, db: PgCluster | None) -> Deployment:
        if pg:
            assert db is not None
            database = kea_database(db)
        else:
            database = {"type": "memfile", "persist": True,
                        "name": str(work / "kea-leases.csv"), "lfc-interval": 0}
        [(srv, srv_if, relay)] = links(lab, 1)
        proc, log = start_kea(lab, srv, work, srv_if, severity=severity, database=database)
        found = Deployment([relay], [proc], [log], db if pg else None)
        if db is not None and pg:
            found.leases = lambda: "state " + db.psql(
                "SELECT string_agg(state || ': ' || n, ', ') FROM (SELECT state, count(*) n "
                "FROM lease4 GROUP BY state ORDER BY state) s", db="kea").strip()
        else:
            found.leases = lambda: csv_leases(work / "kea-leases.csv")
        return found
    return deploy


def sqlite_leases(path: Path) -> str:
    """pybootd's SQLite lease file: rows by state."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                            timeout=5)) as db:
        rows = db.execute("SELECT state, count(*) FROM leases GROUP BY state ORDER BY state")
        return ", ".join(f"{state} {count}" for state, count in rows) + f" (in {path.name})"


def csv_leases(path: Path) -> str:
    """Kea's memfile CSV: lease records appended (one per write, no LFC) and addresses."""
    rows = path.read_text().splitlines()[1:] if path.exists() else []
    return (f"{len(rows)} records for {len({row.split(',')[0] for row in rows})} addresses "
            f"(in {path.name})")


def _dnsmasq(lab: NetLab, work: Path, db: PgCluster | None) -> Deployment:
    [(srv, srv_if, relay)] = links(lab, 1)
    proc, log = start_dnsmasq(lab, srv, work, srv_if)
    return Deployment([relay], [proc], [log])


# name -> (needs a PostgreSQL cluster, start it in a NetLab and a work folder)
VARIANTS: dict[str, tuple[bool, Callable[[NetLab, Path, PgCluster | None], Deployment]]] = {
    "pybootd": (False, _pybootd("warning")),
    "pybootd-info": (False, _pybootd("info")),
    "pybootd-api": (False, _pybootd("warning", api=True)),  # the cost of [api] (not default)
    "pybootd-pg": (True, _pybootd("warning", pg=True)),
    "pybootd-pg2": (True, _pybootd("warning", pg=True, instances=2)),
    "kea-memfile": (False, _kea("WARN")),
    "kea-memfile-info": (False, _kea("INFO")),
    "kea-pgsql": (True, _kea("WARN", pg=True)),
    "dnsmasq": (False, _dnsmasq),
}
