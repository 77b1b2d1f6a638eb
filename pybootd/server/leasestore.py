"""Leases on disk: one SQLite file, one row per address.

Durability choice: ``journal_mode=WAL`` with ``synchronous=NORMAL``. Every
batch of acknowledged leases is committed *before* its ACKs are sent. In WAL
mode a commit appends the pages to the ``-wal`` file with ``write()``; with
``synchronous=NORMAL`` SQLite skips the fsync at commit (it syncs only at
checkpoints). The written bytes are in the kernel's page cache as soon as
``write()`` returns, so a crash of the process (``kill -9``, an exception, the
OOM killer) loses nothing that was acknowledged: the next open replays the
WAL. Only a crash of the whole machine (power loss, kernel panic) can lose the
last commits, which is the cost of keeping fsync off the per-packet path.
Clients that lost their lease that way simply get a NAK or a new OFFER.

A BOOTP binding never expires (RFC 1534 section 2): its ``expires`` is
stored as SQLite's REAL infinity (``Inf``), read back as ``float("inf")``.

The service groups the leases acknowledged while a commit is running into the
next commit (group commit), so the cost per ACK falls as the load rises.

All methods are blocking: call them through ``Runtime.blocking`` (one at a
time; the connection is shared between the pool's threads, never used by two
at once).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path

from pybootd.dhcp.pool import Lease, LeaseState

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    ip INTEGER PRIMARY KEY,      -- IPv4 address as an integer
    mac TEXT,                    -- aa:bb:cc:dd:ee:ff, NULL when quarantined or orphaned
    state TEXT NOT NULL,         -- bound | free | declined
    expires REAL NOT NULL,       -- seconds since the epoch; Inf for BOOTP (permanent)
    pxe INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_mac ON leases(mac);
"""


class LeaseStore:
    """The SQLite lease file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        self._db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        self._db.executescript(_SCHEMA)
        if version == 0:
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # A first write creates the -wal and -shm files now, while we may
        # still be root, and the open connection keeps them after a
        # privilege drop.
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("COMMIT")

    def load(self) -> list[Lease]:
        rows = self._db.execute("SELECT ip, mac, state, expires, pxe FROM leases").fetchall()
        leases = []
        for ip, mac, state, expires, pxe in rows:
            try:
                leases.append(Lease(IPv4Address(ip), mac, LeaseState(state), float(expires),
                                    bool(pxe)))
            except ValueError:
                continue  # a row written by hand; skip it rather than refuse to start
        return leases

    def write(self, leases: Iterable[Lease], now: float) -> None:
        """Store *leases* in one transaction (one WAL append, no fsync)."""
        rows = [(int(lease.ip), lease.mac, str(lease.state), lease.expires, int(lease.pxe), now)
                for lease in leases]
        if not rows:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO leases (ip, mac, state, expires, pxe, updated) "
                "VALUES (?, ?, ?, ?, ?, ?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
