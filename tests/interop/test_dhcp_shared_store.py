"""Two pybootd instances on one PostgreSQL lease store, with real clients.

Topology (network namespaces, 192.0.2.0/24 only): namespace ``sw`` holds a
bridge; ``a`` runs instance A (192.0.2.1) and ``b`` instance B (192.0.2.2);
every client (udhcpc, dhclient, perfdhcp) has a namespace of its own with a
veth on the bridge. Both instances serve the same pool from one database
(``pg_url``: a unix socket, which a namespace reaches like any file).

What is checked is what a client, an operator or the database shows: the
addresses the clients configured, the rows of ``pybootd_leases`` (and which
instance wrote them), the instances' log lines.

1. A dies (SIGKILL); its udhcpc and dhclient clients keep their addresses
   from B; a new client gets none of A's addresses.
2. perfdhcp broadcasts at both instances (B's cable flapping): no address is
   ACKed to two MACs, one held row per MAC, and no commit fails.
3. The database stops for 5 s under load: ERROR lines (few), pybootd keeps
   running and serves again, and every logged ACK is in the database.
4. An OFFER is held in the database before it is sent, so the other instance
   offers another address to the next client.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from dhcplab import CLIENT_SCRIPT, REPO, Prober, events, parse_perfdhcp
from netlab import NetLab, require_tools, wait_for
from pgcluster import PgCluster

from pybootd.dhcp.options import DhcpOption, MessageType

pytestmark = [pytest.mark.netns, pytest.mark.interop]

A_IP, B_IP, PERF_IP = "192.0.2.1", "192.0.2.2", "192.0.2.3"
POOL_START, POOL_COUNT = IPv4Address("192.0.2.10"), 240  # .10 to .249, both instances
LEASE_TIME = 3600  # longer than any test: no lease ends while one runs

# "2025-01-02 03:04:05,678 DEBUG   pybootd.dhcp: MAC [ciaddr] [via giaddr]: REQUEST -> ACK IP"
_TIME = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
_PEER = _TIME + r" \S+\s+pybootd\.dhcp: ([0-9a-f:]{17})[^:\n]*: "
ACK = re.compile(_PEER + r"REQUEST -> ACK (\S+)")
RELEASE = re.compile(_PEER + r"RELEASE -> RELEASE (\S+)")
STORE_ERROR = re.compile(r"^" + _TIME + r" ERROR .*lease store.*not written", re.MULTILINE)


def stamp(text: str) -> float:
    """A log line's time (local, as logging writes it) in seconds since the epoch."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def in_pool(ip: str) -> bool:
    return POOL_START <= IPv4Address(ip) < POOL_START + POOL_COUNT


# --- the database -------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    mac: str
    state: str
    server: str
    expires: float


class Leases:
    """The rows of ``pybootd_leases`` in the test's database, read with psql."""

    def __init__(self, pg_server: PgCluster, pg_url: str) -> None:
        self.pg = pg_server
        self.db = urlsplit(pg_url).path.lstrip("/")

    def rows(self) -> dict[str, Row]:
        """``{ip: Row}``: every row pybootd wrote."""
        out = self.pg.psql("SELECT ip, coalesce(mac, ''), state, coalesce(server, ''), "
                           "expires FROM pybootd_leases ORDER BY ip", db=self.db)
        rows: dict[str, Row] = {}
        for line in out.splitlines():
            ip, mac, state, server, expires = line.split("|")
            rows[str(IPv4Address(int(ip)))] = Row(mac, state, server, float(expires))
        return rows

    def query(self, sql: str) -> list[str]:
        return [line for line in self.pg.psql(sql, db=self.db).splitlines() if line]


# --- the network and the instances --------------------------------------------
@dataclass
class Instance:
    """One pybootd (``-p``: DHCP only) in a namespace of its own."""

    lab: NetLab
    name: str
    ns: str
    ifname: str
    address: str
    config: Path
    log_path: Path
    proc: subprocess.Popen[Any] | None = None

    def start(self, timeout: float = 20) -> None:
        with open(self.log_path, "ab") as sink:
            self.proc = self.lab.popen(
                self.ns, [sys.executable, "-m", "pybootd", "-c", str(self.config), "-p"],
                stdout=sink, stderr=sink, cwd=str(REPO))
        deadline = time.monotonic() + timeout
        while "pybootd ready" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pybootd {self.name} did not start:\n{self.log()}")
            time.sleep(0.05)

    def send(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        return self.lab.stop(self.proc, sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def acks(self) -> list[tuple[float, str, str]]:
        """``(time, mac, ip)`` of every ACK this instance logged, in order."""
        return [(stamp(t), mac, ip) for t, mac, ip in ACK.findall(self.log())]

    def releases(self) -> list[tuple[float, str, str]]:
        return [(stamp(t), mac, ip) for t, mac, ip in RELEASE.findall(self.log())]

    def summary(self) -> str:
        """The counts the service logs when it stops."""
        return next((line for line in self.log().splitlines() if "DHCP stopped" in line), "")


class Site:
    """A bridge in namespace ``sw``; pybootd instances and clients on it."""

    def __init__(self, lab: NetLab, workdir: Path, pg_url: str) -> None:
        self.lab = lab
        self.workdir = workdir
        self.pg_url = pg_url
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)  # pybootd drops to nobody; its state dir is below
        self.sw = lab.ns("sw")
        self.bridge = lab.bridge(self.sw, f"br{lab.tag}"[:15], None)
        self.clients: dict[str, tuple[str, str]] = {}  # name -> (namespace, interface)
        self.ports: dict[str, str] = {}  # role -> its veth's end on the bridge
        self.instances: list[Instance] = []

    def port(self, role: str, cidr: str | None) -> tuple[str, str]:
        """A namespace with one interface on the bridge: (namespace, interface)."""
        ns = self.lab.ns(role)
        inside = f"i{role[:4]}{self.lab.tag}"[:15]
        outside = f"o{role[:4]}{self.lab.tag}"[:15]
        self.lab.veth(ns, cidr, self.sw, None, names=(inside, outside))
        self.lab.run(self.sw, ["ip", "link", "set", outside, "master", self.bridge])
        self.ports[role] = outside
        return ns, inside

    def link(self, role: str, state: str) -> None:
        """Unplug (``down``) or plug back (``up``) *role*'s cable from the bridge."""
        self.lab.run(self.sw, ["ip", "link", "set", self.ports[role], state])

    def instance(self, name: str, address: str) -> Instance:
        """Instance *name* serving from *address*, started and ready."""
        ns, ifname = self.port(name, f"{address}/24")
        folder = self.workdir / name
        folder.mkdir()
        folder.chmod(0o755)
        config = folder / "pybootd.ini"
        # No [bootp] address: a socket bound to a unicast address gets no
        # broadcast (README); interface picks the LAN, whose address is the
        # server identifier.
        config.write_text(textwrap.dedent(f"""\
            [logger]
            level = debug
            [daemon]
            state_dir = {folder / "state"}
            [bootp]
            interface = {ifname}
            pool_start = {POOL_START}
            pool_count = {POOL_COUNT}
            allow_simple_dhcp = on
            lease_time = {LEASE_TIME}
            lease_store = {self.pg_url}
            """))
        instance = Instance(self.lab, name, ns, ifname, address, config, folder / "server.log")
        self.instances.append(instance)
        instance.start()
        assert f"({ifname} 192.0.2.0/24)" in instance.log(), instance.log()
        return instance

    # --- clients ----------------------------------------------------------------
    def client(self, name: str) -> tuple[str, str]:
        if name not in self.clients:
            self.clients[name] = self.port(name, None)
        return self.clients[name]

    def script(self, name: str) -> Path:
        """The hook script of client *name*; its events go to ``NAME.events``."""
        script = self.workdir / f"{name}.sh"
        if not script.exists():
            (self.workdir / f"{name}.events").write_text("")
            script.write_text(textwrap.dedent(CLIENT_SCRIPT.format(
                log=self.workdir / f"{name}.events")))
            script.chmod(0o755)
        return script

    def events(self, name: str) -> Path:
        return self.workdir / f"{name}.events"

    def mac_of(self, name: str) -> str:
        ns, ifname = self.clients[name]
        return self.lab.run(ns, ["cat", f"/sys/class/net/{ifname}/address"]).stdout.strip()

    def udhcpc(self, name: str, *flags: str) -> subprocess.Popen[Any]:
        ns, ifname = self.client(name)
        return self.lab.popen(ns, ["udhcpc", "-f", "-i", ifname, "-s", str(self.script(name)),
                                   "-t", "20", "-T", "1", "-A", "1", *flags])

    def dhclient(self, name: str, *flags: str, background: bool = False) -> Any:
        ns, ifname = self.client(name)
        files = ["-sf", str(self.script(name)), "-lf", str(self.workdir / f"{name}.leases"),
                 "-pf", str(self.workdir / f"{name}.pid")]
        if background:
            return self.lab.popen(ns, ["dhclient", "-d", "-4", "-v", *files, ifname])
        return self.lab.run(ns, ["dhclient", "-4", "-v", *flags, *files, ifname], timeout=30,
                            check=False)

    def print_logs(self) -> None:
        for instance in self.instances:
            print(f"--- pybootd {instance.name} ({instance.address}), last lines ---")
            print("\n".join(instance.log().splitlines()[-150:]))


@pytest.fixture
def site(lab: NetLab, tmp_path: Path, pg_url: str) -> Iterator[Site]:
    the_site = Site(lab, tmp_path / "site", pg_url)
    try:
        yield the_site
    finally:
        the_site.print_logs()


@pytest.fixture
def leases(pg_server: PgCluster, pg_url: str) -> Leases:
    return Leases(pg_server, pg_url)


def bound_event(site: Site, name: str, words: tuple[str, ...], after: int,
                timeout: float = 30) -> str:
    """The address of client *name*'s first event among *words* past line *after*."""

    def found() -> str | None:
        for line in events(site.events(name))[after:]:
            if line.split()[0] in words:
                return line.split()[1]
        return None

    ip: str = wait_for(found, timeout, what=f"{name}: one of {words}")
    return ip


# --- 1. one instance dies; its clients keep their addresses at the other ------
def test_two_instances_share_one_store_and_survive_one_death(
        site: Site, leases: Leases) -> None:
    require_tools("udhcpc", "dhclient")
    a = site.instance("a", A_IP)
    b = site.instance("b", B_IP)

    # B is frozen while the clients get their leases: A answers them, and B,
    # when thawed, finds their DISCOVERs and REQUESTs (naming A) in its socket,
    # as a slow peer would. It must not take anything from A's clients.
    b.send(signal.SIGSTOP)
    try:
        udhcpc = site.udhcpc("udhcpc")
        site.client("dhcl")
        dhclient = site.dhclient("dhcl", background=True)
        x = bound_event(site, "udhcpc", ("bound",), 0)
        y = bound_event(site, "dhcl", ("BOUND",), 0)
    finally:
        b.send(signal.SIGCONT)
    mac_x, mac_y = site.mac_of("udhcpc"), site.mac_of("dhcl")
    assert x != y and in_pool(x) and in_pool(y), (x, y)
    rows = leases.rows()
    assert (rows[x].mac, rows[x].state, rows[x].server) == (mac_x, "bound", A_IP)
    assert (rows[y].mac, rows[y].state, rows[y].server) == (mac_y, "bound", A_IP)

    # B read what was left in its socket and what A wrote (every second):
    # both bindings still stand as A wrote them.
    wait_for(lambda: b.log().count("DISCOVER") >= 2, 10, what="B answering the old DISCOVERs")
    time.sleep(2.5)  # two reads of the others' writes
    rows = leases.rows()
    assert (rows[x].mac, rows[x].state, rows[x].server) == (mac_x, "bound", A_IP)
    assert (rows[y].mac, rows[y].state, rows[y].server) == (mac_y, "bound", A_IP)
    held_by_a = {ip for ip, row in rows.items() if row.server == A_IP
                 and row.state in ("bound", "offered")}

    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    dead = time.monotonic()

    # udhcpc, started again asking for its address (-r): DISCOVER, B's OFFER,
    # REQUEST naming B. dhclient, started again on its lease file: INIT-REBOOT.
    site.lab.stop(udhcpc)  # SIGTERM: no release (no -R)
    seen = len(events(site.events("udhcpc")))
    site.udhcpc("udhcpc", "-r", x)
    assert bound_event(site, "udhcpc", ("bound",), seen) == x
    site.dhclient("dhcl", "-x")  # stop, keeping the lease
    dhclient.wait(timeout=15)
    seen = len(events(site.events("dhcl")))
    site.dhclient("dhcl", background=True)
    assert bound_event(site, "dhcl", ("REBOOT", "BOUND", "RENEW", "REBIND"), seen) == y
    print(f"both clients kept their addresses from B {time.monotonic() - dead:.1f}s after "
          "A died")

    rows = leases.rows()  # committed before the ACKs left
    assert (rows[x].mac, rows[x].state, rows[x].server) == (mac_x, "bound", B_IP)
    assert (rows[y].mac, rows[y].state, rows[y].server) == (mac_y, "bound", B_IP)
    assert (mac_x, x) in {(mac, ip) for _, mac, ip in b.acks()}
    assert (mac_y, y) in {(mac, ip) for _, mac, ip in b.acks()}

    # A client that comes after A's death gets none of A's addresses.
    site.udhcpc("late")
    z = bound_event(site, "late", ("bound",), 0)
    assert in_pool(z) and z not in held_by_a, (z, held_by_a)
    rows = leases.rows()
    assert (rows[z].mac, rows[z].state, rows[z].server) == (site.mac_of("late"), "bound", B_IP)
    assert b.proc is not None and b.proc.poll() is None


# --- 2. perfdhcp's broadcasts reach both instances ----------------------------
def no_address_acked_to_two_macs(instances: list[Instance]) -> dict[str, str]:
    """Merge the instances' ACK and RELEASE lines by time; fail when an address is
    ACKed to a MAC while another MAC's lease of it (ACKed, neither released nor
    ended) is live, or a MAC is ACKed a second address while its first is live.
    Returns ``{ip: mac}`` of the last ACKs."""
    lines = sorted([(t, "ack", mac, ip, i.name) for i in instances for t, mac, ip in i.acks()]
                   + [(t, "release", mac, ip, i.name) for i in instances
                      for t, mac, ip in i.releases()])
    holder: dict[str, tuple[str, float, str]] = {}  # ip -> (mac, until, instance)
    address: dict[str, str] = {}  # mac -> ip
    for when, what, mac, ip, name in lines:
        if what == "release":
            if holder.get(ip, ("",))[0] == mac:
                del holder[ip]
                address.pop(mac, None)
            continue
        other = holder.get(ip)
        if other is not None and other[0] != mac:
            # A log line is written after its commit: allow their clocks' slack.
            assert other[1] < when - 1.0, (
                f"{ip} ACKed to {mac} by {name} while {other[0]}'s lease from {other[2]} "
                f"lasts until {other[1]:.3f} (now {when:.3f})")
        mine = address.get(mac)
        if mine is not None and mine != ip and holder.get(mine, ("",))[0] == mac:
            raise AssertionError(f"{mac} ACKed {ip} by {name} while it holds {mine}")
        holder[ip] = (mac, when + LEASE_TIME, name)
        address[mac] = ip
    return {ip: mac for ip, (mac, _, _) in holder.items()}


def test_perfdhcp_at_both_instances_binds_no_address_to_two_macs(
        site: Site, leases: Leases) -> None:
    require_tools("perfdhcp")
    a = site.instance("a", A_IP)
    b = site.instance("b", B_IP)
    perf_ns, perf_if = site.port("perf", f"{PERF_IP}/24")
    # No server address: perfdhcp broadcasts (as a relay: giaddr is its own
    # address), both instances OFFER, it REQUESTs the first OFFER's server.
    out = site.workdir / "perfdhcp.out"
    with out.open("wb") as sink:
        perf = site.lab.popen(perf_ns, ["perfdhcp", "-4", "-l", perf_if, "-r", "300", "-p",
                                        "10", "-R", "200"], stdout=sink,
                              stderr=subprocess.DEVNULL)
    # Seeing the same requests in the same order, the two instances decide
    # alike. B loses its cable now and then while new clients still come
    # (perfdhcp picks each MAC at random among 200): it misses exchanges, and
    # decides from a view up to a second old, which the database must correct.
    try:
        for _ in range(10):
            site.link("b", "down")
            time.sleep(0.2)
            site.link("b", "up")
            time.sleep(0.3)
    finally:
        site.link("b", "up")
    perf.wait(timeout=60)
    time.sleep(1.0)  # the last commits and log lines
    a.stop()
    b.stop()
    report = out.read_text(errors="replace")
    print(report)
    print(f"A: {a.summary()}\nB: {b.summary()}")
    stats = parse_perfdhcp(report)
    sent = stats["DISCOVER-OFFER"]["sent packets"]
    acked = stats["REQUEST-ACK"]["received packets"]
    print(f"perfdhcp: {sent:.0f} DISCOVERs, {acked:.0f} ACKs ({acked / max(sent, 1):.0%})")
    assert sent >= 2000, report

    last = no_address_acked_to_two_macs([a, b])
    per_instance = {i.name: len(i.acks()) for i in (a, b)}
    print(f"ACK lines: {per_instance}; {len(last)} addresses bound")
    assert all(per_instance.values()), per_instance  # both instances served
    assert acked >= 0.8 * sent, (acked, sent)
    assert sum(per_instance.values()) >= acked  # perfdhcp takes one ACK per exchange

    rows = leases.rows()
    # One held (offered or bound) row per MAC, in the database.
    twice = leases.query("SELECT mac FROM pybootd_leases WHERE state IN ('offered', 'bound') "
                         "GROUP BY mac HAVING count(*) > 1")
    assert twice == []
    # Every address's last ACK stands in the database, to that MAC.
    wrong = {ip: (mac, rows.get(ip)) for ip, mac in last.items()
             if ip not in rows or (rows[ip].mac, rows[ip].state) != (mac, "bound")}
    assert not wrong, wrong
    servers = {row.server for row in rows.values() if row.state == "bound"}
    assert servers == {A_IP, B_IP}, servers
    # The database was up all along: contention is settled by refused claims
    # (decided again), never by a commit that fails and withholds its replies.
    errors = [f"{i.name}: {line}" for i in (a, b) for line in i.log().splitlines()
              if " ERROR " in line]
    assert not errors, "\n".join(errors[:5])


# --- 3. the database goes away for a while ------------------------------------
def test_database_restart_under_load_loses_no_acknowledged_lease(
        site: Site, leases: Leases, pg_server: PgCluster) -> None:
    require_tools("perfdhcp", "udhcpc")
    a = site.instance("a", A_IP)
    perf_ns, perf_if = site.port("perf", f"{PERF_IP}/24")
    out = site.workdir / "perfdhcp.out"
    with out.open("wb") as sink:
        perf = site.lab.popen(perf_ns, ["perfdhcp", "-4", "-l", perf_if, "-r", "200", "-p", "20",
                                        "-R", "200", A_IP], stdout=sink, stderr=sink)
    stopped = restarted = 0.0
    try:
        wait_for(lambda: len(leases.rows()) >= 50, 15, interval=0.2,
                 what="50 leases stored under load")
        stopped = time.time()
        pg_server.stop()
        time.sleep(5)
        pg_server.start()
        restarted = time.time()
    finally:
        try:
            pg_server.psql("SELECT 1", db="postgres")
        except (RuntimeError, subprocess.TimeoutExpired):
            with contextlib.suppress(RuntimeError):
                pg_server.stop("immediate")
            pg_server.start()
    perf.wait(timeout=60)
    print(out.read_text(errors="replace"))
    print(f"database down from {stopped:.3f} to {restarted:.3f}")

    # The instance lived through it: still the first process, still serving.
    assert a.proc is not None and a.proc.poll() is None
    assert a.log().count("pybootd ready") == 1
    site.udhcpc("after")
    fresh = bound_event(site, "after", ("bound",), 0)
    assert in_pool(fresh)
    assert leases.rows()[fresh].mac == site.mac_of("after")

    log = a.log()
    errors = [stamp(t) for t in STORE_ERROR.findall(log)]
    print(f"{len(errors)} 'lease store not written' ERROR lines")
    assert errors, log[-5000:]
    assert len(errors) <= 30  # rate-limited, not one per withheld reply
    assert all(stopped - 1 <= t <= restarted + 15 for t in errors), (stopped, restarted, errors)
    # Everything else the outage made pybootd (and psycopg's pool) write is bounded too.
    loud = [line for line in log.splitlines() if not line[:4].isdigit()
            or " ERROR " in line or " WARNING " in line or " CRITICAL " in line]
    print(f"{len(loud)} lines at WARNING and above or not pybootd's:", *loud[:40], sep="\n  ")
    assert len(loud) <= 60
    acks = a.acks()
    assert any(t > restarted for t, _, _ in acks)  # serving again, not only the new client
    stats = parse_perfdhcp(out.read_text(errors="replace"))
    print(f"perfdhcp: {stats.get('DISCOVER-OFFER', {}).get('sent packets', 0):.0f} DISCOVERs, "
          f"{stats.get('REQUEST-ACK', {}).get('received packets', 0):.0f} ACKs; "
          f"{len(acks)} ACK lines")

    # Nothing acknowledged was lost: each ACKed address is bound to its MAC.
    a.stop()
    print(a.summary())
    rows = leases.rows()
    acked = {(mac, ip) for _, mac, ip in acks}
    lost = {(mac, ip, rows.get(ip)) for mac, ip in acked
            if ip not in rows or (rows[ip].mac, rows[ip].state) != (mac, "bound")}
    assert not lost, lost
    assert len({ip for _, ip in acked}) == len({mac for mac, _ in acked}) == len(acked)


# --- 4. an OFFER is held in the store before it leaves ------------------------
def offers(prober: Prober, mac: bytes, seconds: float = 2.0) -> list[tuple[str, str]]:
    """DISCOVER from *mac*: the ``(server identifier, offered address)`` of each OFFER."""
    xid = prober.send(MessageType.DISCOVER, mac)
    return [(str(packet.address_option(DhcpOption.SERVER_ID)), str(packet.yiaddr))
            for got, packet in prober.collect_all(seconds) if got == xid
            and packet.options.get(DhcpOption.MESSAGE_TYPE) == bytes((MessageType.OFFER,))]


def test_an_offer_is_held_in_the_store_before_it_leaves(site: Site, leases: Leases) -> None:
    """leasepg: "an OFFER is written before it is sent (a hold of offer_hold seconds), so
    two instances never offer one address to two MACs (RFC 2131 4.3.1)". Before 26b88d2
    the responder dropped the hold: no row, and B offered A's address to another MAC."""
    a = site.instance("a", A_IP)
    site.instance("b", B_IP)
    prober = Prober(*site.client("probe"))
    first, second = bytes.fromhex("020000000a01"), bytes.fromhex("020000000a02")
    try:
        site.link("b", "down")  # B does not see the first DISCOVER
        got = offers(prober, first)
        assert [server for server, _ in got] == [A_IP], got
        x = got[0][1]
        row = leases.rows().get(x)
        site.link("b", "up")
        time.sleep(2.5)  # B reads what A wrote (every second)
        a.send(signal.SIGSTOP)  # only B answers the second client
        try:
            again = offers(prober, second)
        finally:
            a.send(signal.SIGCONT)
    finally:
        prober.close()
    assert [server for server, _ in again] == [B_IP], again
    held = None if row is None else (row.mac, row.state, row.server)
    assert (held, again[0][1] != x) == (("02:00:00:00:0a:01", "offered", A_IP), True), (
        f"A offered {x} to 02:00:00:00:0a:01, stored as {held}; within A's 30 s hold, "
        f"B offered {again[0][1]} to 02:00:00:00:0a:02")
