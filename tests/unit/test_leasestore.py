"""The lease file: one pybootd per file, damaged files refused, schema 3 (host name,
UUID, boot file)."""

from __future__ import annotations

import os
import sqlite3
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from pybootd.dhcp.pool import PERMANENT, Lease, LeaseState
from pybootd.server.leasestore import (
    SCHEMA_VERSION,
    LeaseFileError,
    LeaseStore,
    check_lease_file,
    is_fatal,
    read_leases,
)

UUID = "4C4C4544-0042-3510-8051-B4C04F4D3132"
PAGE = 4096  # SQLite's default page size


def _lease(i: int, **kw: object) -> Lease:
    values: dict[str, object] = {"ip": IPv4Address("198.51.100.0") + i,
                                 "mac": f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
                                 "state": LeaseState.BOUND, "expires": 2e9}
    values.update(kw)
    return Lease(**values)  # type: ignore[arg-type]


def _filled(path: Path, count: int = 300) -> None:
    """A real lease file of several pages, closed (so checkpointed into the file)."""
    store = LeaseStore(path)
    store.write([_lease(i % 250 + 1, mac=f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
                        hostname=f"host-{i}-" + "x" * 40) for i in range(count)], 1.0)
    store.close()


def test_a_second_store_on_the_same_file_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite"
    first = LeaseStore(path)
    with pytest.raises(LeaseFileError) as info:
        LeaseStore(path)
    assert str(info.value).startswith(
        f"lease file {path} is in use by another pybootd (pid {os.getpid()})")
    first.close()
    LeaseStore(path).close()  # released with the process's descriptor


def test_empty_file_is_refused_not_read_as_no_leases(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite"
    path.write_bytes(b"")
    with pytest.raises(LeaseFileError) as info:
        LeaseStore(path)
    assert str(info.value) == (
        f"lease file {path} is empty (0 bytes): every lease it held is lost; move it aside to "
        "start with no leases (machines may then be offered addresses that others still hold)")
    assert path.stat().st_size == 0  # left as found, for the operator to look at


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite"
    path.write_text("192.0.2.10 52:54:00:12:34:56\n")
    with pytest.raises(LeaseFileError, match=rf"^lease file {path} is not an SQLite database; "
                                              "move it aside"):
        LeaseStore(path)


def test_a_corrupted_page_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite"
    _filled(path)
    assert path.stat().st_size > 4 * PAGE
    with path.open("r+b") as file:
        file.seek(2 * PAGE)  # a page of the table, not the header
        file.write(b"\xa5" * PAGE)
    with pytest.raises(LeaseFileError) as info:
        LeaseStore(path)
    message = str(info.value)
    assert message.startswith(f"lease file {path} is damaged (")
    assert message.endswith("move it aside to start with no leases (machines may then be "
                            "offered addresses that others still hold)")
    assert "\n" not in message


def test_schema_1_file_is_migrated_and_keeps_its_leases(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE leases (ip INTEGER PRIMARY KEY, mac TEXT, state TEXT NOT NULL,
            expires REAL NOT NULL, pxe INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL);
        CREATE INDEX leases_mac ON leases(mac);
        PRAGMA user_version=1;
    """)
    db.execute("INSERT INTO leases VALUES (?, ?, 'bound', 2e9, 1, 1.0)",
               (int(IPv4Address("198.51.100.10")), "02:00:00:00:00:01"))
    db.commit()
    db.close()
    store = LeaseStore(path)
    assert store.load() == [Lease(IPv4Address("198.51.100.10"), "02:00:00:00:00:01",
                                  LeaseState.BOUND, 2e9, True)]
    store.write([_lease(11, hostname="pc11", uuid=UUID, bootfile="pxelinux.0")], 2.0)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()
    assert [(str(lease.ip), lease.hostname, lease.uuid, lease.bootfile)
            for lease in read_leases(path)] == [
        ("198.51.100.10", None, None, None), ("198.51.100.11", "pc11", UUID, "pxelinux.0")]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=7")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(LeaseFileError, match="schema version 7, written by a newer pybootd"):
        LeaseStore(path)


def test_host_name_uuid_and_bootp_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite"
    store = LeaseStore(path)
    leases = [_lease(1, hostname="pc1\x1b[2J", uuid=UUID, pxe=True),
              _lease(2, expires=PERMANENT), _lease(3, mac=None, state=LeaseState.DECLINED)]
    store.write(leases, 1.0)
    assert store.load() == leases
    store.close()


def test_reader_sees_commits_while_the_store_is_open(tmp_path: Path) -> None:
    """``pybootd leases`` reads while the daemon holds the file (and its lock)."""
    path = tmp_path / "leases.sqlite"
    store = LeaseStore(path)
    store.write([_lease(5, hostname="pc5")], 1.0)
    assert [lease.hostname for lease in read_leases(path)] == ["pc5"]
    store.write([_lease(6)], 2.0)
    assert len(read_leases(path)) == 2
    store.close()


def test_reader_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(LeaseFileError, match=r"^no lease file .*missing\.sqlite \(expected"):
        read_leases(tmp_path / "missing.sqlite")
    (tmp_path / "empty.sqlite").write_bytes(b"")
    with pytest.raises(LeaseFileError, match="is empty"):
        read_leases(tmp_path / "empty.sqlite")


def test_which_run_time_failures_are_fatal(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite"
    _filled(path)
    store = LeaseStore(path)
    with path.open("r+b") as file:
        for offset in range(PAGE, path.stat().st_size, PAGE):
            file.seek(offset)
            file.write(os.urandom(PAGE))
    with open(f"{path}-shm", "r+b") as shm:
        shm.write(bytes(136))  # the WAL index header: the store must read the file again
    with pytest.raises(sqlite3.DatabaseError) as info:
        store.write([_lease(251)], 2.0)
    assert is_fatal(info.value)  # "database disk image is malformed"
    store.close()
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5  # SQLITE_BUSY
    assert not is_fatal(locked)


def test_check_lease_file_for_check(tmp_path: Path) -> None:
    """``--check`` (ExecStartPre) can refuse what the start would, without the lock."""
    path = tmp_path / "leases.sqlite"
    check_lease_file(path)  # none yet: a first start creates it
    _filled(path)
    store = LeaseStore(path)  # the daemon runs: --check reads beside it
    check_lease_file(path)
    store.close()
    with path.open("r+b") as file:
        file.seek(2 * PAGE)
        file.write(b"\xa5" * PAGE)
    with pytest.raises(LeaseFileError, match=rf"^lease file {path} is damaged \(quick_check: "):
        check_lease_file(path)
