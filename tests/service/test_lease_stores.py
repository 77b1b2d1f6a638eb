"""The lease stores, SQLite and PostgreSQL, against real servers (a throw-away cluster).

Both backends keep what was committed; the PostgreSQL one is shared, so it
also refuses what would give one address to two MACs, whichever instance
asks, and tells each instance what the others wrote.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from pgcluster import PgCluster

from pybootd import cli
from pybootd.config import StoreLocation
from pybootd.dhcp.pool import PERMANENT, Lease, LeasePool, LeaseState
from pybootd.errors import LeaseStoreError
from pybootd.server.leasepg import SCHEMA_VERSION, PostgresStore
from pybootd.server.stores import Store, check_store, open_store, read_store, upgrade_store

NOW = 1_800_000_000.0
NET = IPv4Network("198.51.100.0/24")
IP = IPv4Address("198.51.100.10")
M1, M2 = "02:00:00:00:00:01", "02:00:00:00:00:02"
UUID = "4C4C4544-0042-3510-8051-B4C04F4D3132"


def _pg(url: str) -> StoreLocation:
    return StoreLocation("postgresql", conninfo=url)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> StoreLocation:
    if request.param == "sqlite":
        return StoreLocation("sqlite", path=tmp_path / "leases.sqlite")
    return _pg(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(location: StoreLocation) -> Iterator[Store]:
    opened = open_store(location, "198.51.100.1")
    yield opened
    opened.close()


def _bound(ip: IPv4Address, mac: str, **kw: object) -> Lease:
    values: dict[str, object] = {"ip": ip, "mac": mac, "state": LeaseState.BOUND,
                                 "expires": NOW + 3600}
    values.update(kw)
    return Lease(**values)  # type: ignore[arg-type]


def test_what_is_committed_is_loaded_again(location: StoreLocation, store: Store) -> None:
    leases = [_bound(IP, M1, hostname="node-1", uuid=UUID, pxe=True, bootfile="pxelinux.0"),
              _bound(IP + 1, M2, expires=PERMANENT),  # BOOTP: never expires (RFC 1534 2)
              Lease(IP + 2, None, LeaseState.DECLINED, NOW + 600)]
    assert store.commit([leases[:1], leases[1:]], NOW) == [(), ()]
    store.close()
    again = open_store(location, "198.51.100.1")
    try:
        assert sorted(again.load(), key=lambda lease: lease.ip) == leases
        assert again.schema_version() >= 1
    finally:
        again.close()
    assert sorted(read_store(location), key=lambda lease: lease.ip) == leases


def test_check_and_upgrade_report_the_schema_version(location: StoreLocation) -> None:
    assert upgrade_store(location)[1] >= 1
    assert upgrade_store(location)[0] == upgrade_store(location)[1]  # up to date
    assert str(location) in check_store(location)


# --- PostgreSQL: several instances, one table ----------------------------------

@pytest.fixture
def pair(pg_url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    a = PostgresStore(_pg(pg_url), "198.51.100.1")
    b = PostgresStore(_pg(pg_url), "198.51.100.2")
    yield a, b
    a.close()
    b.close()


def _offer(ip: IPv4Address, mac: str) -> Lease:
    return Lease(ip, mac, LeaseState.OFFERED, NOW + 30)


def test_an_address_held_by_one_instance_is_refused_to_the_other(
        pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = pair
    assert a.commit([[_offer(IP, M1)]], NOW) == [()]
    assert b.commit([[_offer(IP, M2)]], NOW) == [(_offer(IP, M1),)]  # the row that won
    assert b.commit([[_bound(IP, M2)]], NOW) == [(_offer(IP, M1),)]
    # The hold ends: the address is free for anyone.
    assert b.commit([[_offer(IP, M2)]], NOW + 31) == [()]


def test_a_mac_holds_one_address_across_instances(
        pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = pair
    assert a.commit([[_bound(IP, M1)]], NOW) == [()]
    # B never saw M1's lease and offers it another address: refused, with the lease.
    assert b.commit([[_offer(IP + 5, M1)]], NOW) == [(_bound(IP, M1),)]
    # B offering M1 its own address keeps A's binding (no downgrade to a hold).
    assert b.commit([[_offer(IP, M1)]], NOW) == [()]
    assert read_store(a.location) == [_bound(IP, M1)]
    # B's renewal of it (a REBIND after A died) is accepted.
    assert b.commit([[_bound(IP, M1, expires=NOW + 7200)]], NOW + 60) == [()]
    assert read_store(a.location) == [_bound(IP, M1, expires=NOW + 7200)]


def test_an_instance_ends_only_its_own_holds(pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = pair
    assert a.commit([[_bound(IP, M1)]], NOW) == [()]
    # The REQUEST named A: B ends its offer, which must not end A's binding.
    assert b.commit([[Lease(IP, M1, LeaseState.FREE, NOW)]], NOW) == [()]
    assert read_store(a.location) == [_bound(IP, M1)]
    assert a.commit([[Lease(IP, M1, LeaseState.FREE, NOW)]], NOW) == [()]
    assert read_store(a.location) == [Lease(IP, M1, LeaseState.FREE, NOW)]


def test_each_instance_reads_what_the_other_wrote_once(
        pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = pair
    assert b.changes() == []
    a.commit([[_bound(IP, M1)], [_offer(IP + 1, M2)]], NOW)
    assert b.changes() == [_bound(IP, M1), _offer(IP + 1, M2)]
    assert b.changes() == []  # each row once
    assert a.changes() == []  # its own rows are not news
    b.commit([[Lease(IP + 3, None, LeaseState.DECLINED, NOW + 600)]], NOW)
    assert a.changes() == [Lease(IP + 3, None, LeaseState.DECLINED, NOW + 600)]


def test_two_pools_on_one_store_never_bind_an_address_to_two_macs(
        pair: tuple[PostgresStore, PostgresStore]) -> None:
    """Both instances answer every DISCOVER and REQUEST of 40 clients (a pool of
    30), in random order, adopting the rows that refuse them, as the service does."""
    stores = pair
    pools = [LeasePool(NET, IP, 30, 3600, shared=True) for _ in stores]
    rng = random.Random(7)
    macs = [f"02:00:00:00:01:{i:02x}" for i in range(40)]
    acked: dict[str, IPv4Address] = {}
    now = NOW
    for _ in range(400):
        now += 0.5
        mac = rng.choice(macs)
        i = rng.randrange(2)
        pool, store = pools[i], stores[i]
        for _attempt in range(3):
            lease = pool.offer(mac, None, now)
            if lease is None:
                break
            won = store.commit([pool.take_dirty()], now)[0]
            if won:
                pool.adopt(won)
                continue
            bound = pool.request(mac, lease.ip, now)
            if bound is None:
                break
            won = store.commit([pool.take_dirty()], now)[0]
            if won:
                pool.adopt(won)
                continue
            acked[mac] = bound.ip
            break
        if rng.random() < 0.3:
            pools[1 - i].adopt(stores[1 - i].changes())
    rows = read_store(stores[0].location)
    held = [lease for lease in rows if lease.state == LeaseState.BOUND and lease.expires > now]
    assert len({lease.ip for lease in held}) == len(held)
    assert len({lease.mac for lease in held}) == len(held)
    assert len(acked) >= 25
    by_ip = {lease.ip: lease.mac for lease in held}
    # Every client's last ACK still stands, or its lease ended.
    for mac, ip in acked.items():
        assert by_ip.get(ip) in (mac, None)


def test_commands_work_on_postgresql(pg_url: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "pybootd.ini"
    config.write_text("[bootp]\npool_start = 198.51.100.10\n"
                      f"lease_store = {pg_url}\n")
    assert cli.main(["db", "upgrade", "-c", str(config)]) == 0
    assert capsys.readouterr().out == (f"lease store {pg_url}: schema version "
                                       f"{SCHEMA_VERSION} (upgraded from version 0)\n")
    assert cli.main(["db", "upgrade", "-c", str(config)]) == 0
    assert capsys.readouterr().out.endswith(f"schema version {SCHEMA_VERSION} (up to date)\n")
    store = PostgresStore(_pg(pg_url), "198.51.100.1")
    store.commit([[_bound(IP, M1, hostname="node-1")]], time.time())
    store.close()
    assert cli.main(["leases", "-c", str(config), "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert (record["mac"], record["ip"], record["state"], record["hostname"]) == (
        M1, str(IP), "bound", "node-1")


def test_a_password_is_never_printed(pg_server: PgCluster, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://pybootd:s3cret@/nodb?host={tmp_path}"  # no server there
    config = tmp_path / "pybootd.ini"
    config.write_text(f"[bootp]\npool_start = 198.51.100.10\nlease_store = {url}\n")
    assert cli.main(["leases", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "s3cret" not in err
    assert err.startswith(f"pybootd: lease store postgresql://pybootd:***@/nodb?host={tmp_path}: ")


def test_an_unreachable_database_fails_fast_and_is_found_again(
        pg_server: PgCluster, pg_url: str) -> None:
    store = PostgresStore(_pg(pg_url), "198.51.100.1")
    try:
        assert store.commit([[_bound(IP, M1)]], NOW) == [()]
        pg_server.stop()
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 (psycopg's or the pool's)
            store.commit([[_bound(IP + 1, M2)]], NOW)
        assert time.monotonic() - started < 5.0  # not the DHCP client's whole patience
        pg_server.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert store.commit([[_bound(IP + 1, M2)]], NOW) == [()]
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert sorted(read_store(store.location), key=lambda lease: lease.ip) == [
            _bound(IP, M1), _bound(IP + 1, M2)]
    finally:
        store.close()


def test_a_store_that_cannot_be_reached_at_start_says_so(tmp_path: Path) -> None:
    location = _pg(f"postgresql://postgres@/pybootd?host={tmp_path}")
    started = time.monotonic()
    with pytest.raises(LeaseStoreError) as info:
        PostgresStore(location, "198.51.100.1")
    assert time.monotonic() - started < 10
    assert str(info.value).startswith(f"lease store {location}: ")
