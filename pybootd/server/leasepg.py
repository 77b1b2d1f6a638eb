"""Leases in PostgreSQL, shared by several pybootd instances (``[bootp] lease_store``).

The database is the source of truth for who holds an address; each
instance's :class:`~pybootd.dhcp.pool.LeasePool` is a cache of it that
decides, and the database accepts or refuses each decision:

* one row per address (the primary key), and one held (offered or bound)
  row per MAC (a partial unique index): no address is ever held for two
  MACs, by one instance or by two;
* an OFFER is written before it is sent (a hold of ``offer_hold`` seconds),
  so two instances never offer one address to two MACs (RFC 2131 4.3.1);
  a REQUEST is committed before its ACK, as with SQLite;
* every write goes through ``pybootd_claim()``, one statement that takes an
  address only when no other MAC holds it and the MAC holds no other, keeps a
  binding that an instance that had not seen it tries to replace by an
  offer, and ends a hold (release, an offer the client did not take) only
  when this instance wrote it or it has ended. A refused write returns the
  row that won: the service adopts it into its pool and decides again;
* :meth:`PostgresStore.changes` reads what the other instances wrote
  (a sequence number per write), so that a client of a dead instance is
  known here when it renews or rebinds (RFC 2131 4.3.2, INIT-REBOOT).

Connections come from psycopg's pool, with short timeouts: when the
database is unreachable a commit fails within ``timeout`` seconds (no reply
is sent, nothing is acknowledged), and the pool reconnects by itself.

The schema is created and migrated by pybootd (``pybootd_schema`` holds the
version), on start and by ``pybootd db upgrade -c FILE``, under an advisory
lock, so two instances starting together migrate once.

All methods are blocking: call them in the lease store's thread.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from pybootd.config import StoreLocation
from pybootd.dhcp.pool import Lease, LeaseState
from pybootd.errors import LeaseStoreError

log = logging.getLogger("pybootd.dhcp")


class _Relay(logging.Handler):
    """psycopg's own lines (its pool's reconnection attempts) into pybootd's log, one
    line each, at DEBUG: the ERROR line of the failed commit says what matters."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("lease store: %s", " ".join(record.getMessage().split()))


_psycopg_log = logging.getLogger("psycopg")
_psycopg_log.addHandler(_Relay())
_psycopg_log.propagate = False

SCHEMA_VERSION = 1
_LOCK_KEY = 0x7079_626F  # pg_advisory_xact_lock: one migration at a time ("pybo")
# changes() reads again from where it stood this many calls ago: a write takes
# its sequence number before it commits, and no transaction lasts longer than
# the statement and connection timeouts (a few seconds).
_REREAD_CALLS = 8
_RETRIES = 3  # a batch that two instances' transactions deadlocked on is run again
_COLUMNS = "ip, mac, state, expires, pxe, hostname, uuid, bootfile"
_MIGRATIONS: dict[int, str] = {
    1: """
CREATE SEQUENCE pybootd_lease_seq;
CREATE TABLE pybootd_leases (
    ip bigint PRIMARY KEY CHECK (ip >= 0 AND ip < 4294967296),  -- IPv4 as an integer
    mac text,                 -- aa:bb:cc:dd:ee:ff; NULL when quarantined or orphaned
    state text NOT NULL CHECK (state IN ('offered', 'bound', 'free', 'declined')),
    expires double precision NOT NULL,  -- seconds since the epoch; Infinity for BOOTP
    pxe boolean NOT NULL DEFAULT false,
    updated double precision NOT NULL,
    hostname text,            -- option 12 of the last REQUEST (RFC 2132 3.14)
    uuid text,                -- option 97 (RFC 4578 2.3)
    bootfile text,            -- the boot file of the last ACK
    server text,              -- the instance that wrote the row (its server identifier)
    seq bigint NOT NULL DEFAULT nextval('pybootd_lease_seq')
);
CREATE UNIQUE INDEX pybootd_leases_held_mac ON pybootd_leases (mac)
    WHERE state IN ('offered', 'bound');
CREATE INDEX pybootd_leases_seq ON pybootd_leases (seq);
CREATE FUNCTION pybootd_claim(p_ip bigint, p_mac text, p_state text, p_expires float8,
        p_pxe boolean, p_now float8, p_hostname text, p_uuid text, p_bootfile text,
        p_server text)
    RETURNS SETOF pybootd_leases LANGUAGE plpgsql AS $$
DECLARE
    taking boolean := p_state IN ('offered', 'bound');
    written integer;
BEGIN
    IF taking THEN
        -- The MAC's ended holds elsewhere become affinities; a live one wins.
        UPDATE pybootd_leases SET state = 'free', seq = nextval('pybootd_lease_seq')
            WHERE mac = p_mac AND ip <> p_ip AND state IN ('offered', 'bound')
              AND expires <= p_now;
        RETURN QUERY SELECT * FROM pybootd_leases
            WHERE mac = p_mac AND ip <> p_ip AND state IN ('offered', 'bound');
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    BEGIN
        INSERT INTO pybootd_leases AS l
                (ip, mac, state, expires, pxe, updated, hostname, uuid, bootfile, server)
            VALUES (p_ip, p_mac, p_state, p_expires, p_pxe, p_now, p_hostname, p_uuid,
                    p_bootfile, p_server)
            ON CONFLICT (ip) DO UPDATE SET mac = EXCLUDED.mac, state = EXCLUDED.state,
                expires = EXCLUDED.expires, pxe = EXCLUDED.pxe, updated = EXCLUDED.updated,
                hostname = EXCLUDED.hostname, uuid = EXCLUDED.uuid,
                bootfile = EXCLUDED.bootfile, server = EXCLUDED.server,
                seq = nextval('pybootd_lease_seq')
            WHERE NOT (l.state <> 'free' AND l.expires > p_now AND (
                (taking AND l.mac IS DISTINCT FROM p_mac)  -- another MAC's hold
                OR (p_state = 'offered' AND l.state = 'bound')  -- keep the binding
                OR (NOT taking AND l.server IS DISTINCT FROM p_server)));  -- not ours
        GET DIAGNOSTICS written = ROW_COUNT;
    EXCEPTION WHEN unique_violation THEN  -- the MAC took another address meanwhile
        RETURN QUERY SELECT * FROM pybootd_leases
            WHERE mac = p_mac AND ip <> p_ip AND state IN ('offered', 'bound');
        RETURN;
    END;
    IF written = 0 AND taking THEN
        RETURN QUERY SELECT * FROM pybootd_leases
            WHERE ip = p_ip AND mac IS DISTINCT FROM p_mac;
    END IF;
END $$;
""",
}


class PostgresStore:
    """The shared lease table, reached through a small psycopg connection pool."""

    shared = True  # several instances: offers are held here, others' writes are read

    def __init__(self, location: StoreLocation, server: str, *, timeout: float = 2.0) -> None:
        assert location.conninfo is not None
        self.location = location
        self.server = server
        self._horizon = 0  # the highest sequence number read by changes()
        self._horizons: deque[int] = deque([0], maxlen=_REREAD_CALLS)  # one per call
        self._adopted: dict[int, int] = {}  # ip -> seq of the foreign rows already handed out
        self._pool = ConnectionPool(
            location.conninfo, min_size=1, max_size=2, timeout=timeout, open=False,
            name="pybootd-leases",
            kwargs={"connect_timeout": max(1, math.ceil(timeout)),
                    "options": f"-c statement_timeout={int(timeout * 1000)}",
                    "application_name": f"pybootd {server}"})
        try:
            self._pool.open(wait=True, timeout=timeout * 2)
            with self._pool.connection() as conn:
                migrate(conn)
        except (PoolTimeout, psycopg.Error) as exc:
            self._pool.close()
            why = _why_unreachable(location, timeout) if isinstance(exc, PoolTimeout) else None
            raise LeaseStoreError(f"lease store {location}: {why or describe(exc)} (expected a "
                                  "reachable PostgreSQL database this user may write)") from None

    def load(self) -> list[Lease]:
        with self._pool.connection() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS}, seq FROM pybootd_leases ORDER BY ip")
            found = rows.fetchall()
        self._horizon = max((row[-1] for row in found), default=0)
        self._horizons = deque([self._horizon], maxlen=_REREAD_CALLS)
        return [lease for row in found if (lease := _lease(row[:-1])) is not None]

    def commit(self, groups: Sequence[Sequence[Lease]], now: float) -> list[tuple[Lease, ...]]:
        """Write every group in one transaction; per group, the rows that refused it.

        Two instances' batches that claim the same MACs in opposite orders
        deadlock; PostgreSQL aborts one of them, which runs again.
        """
        for attempt in range(1, _RETRIES + 1):
            try:
                return self._commit(groups, now)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES:
                    raise
                log.debug("lease store: a batch of %d deadlocked with another instance's; "
                          "again", len(groups))
        raise AssertionError("unreachable")

    def _commit(self, groups: Sequence[Sequence[Lease]], now: float) -> list[tuple[Lease, ...]]:
        conflicts: list[tuple[Lease, ...]] = []
        with self._pool.connection() as conn, conn.pipeline():
            cursors = [[conn.execute(
                "SELECT " + _COLUMNS + " FROM pybootd_claim(%s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s)", (int(lease.ip), lease.mac, str(lease.state), lease.expires,
                                lease.pxe, now, lease.hostname, lease.uuid, lease.bootfile,
                                self.server))
                for lease in group] for group in groups]
            for group in cursors:
                won = [_lease(row) for cursor in group for row in cursor.fetchall()]
                conflicts.append(tuple(lease for lease in won if lease is not None))
        return conflicts

    def changes(self) -> list[Lease]:
        """What the other instances wrote since the last call (each row once)."""
        since = self._horizons[0]
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS}, seq FROM pybootd_leases WHERE seq > %s "
                "AND server IS DISTINCT FROM %s ORDER BY seq", (since, self.server)).fetchall()
        fresh = []
        for row in rows:
            ip, seq = row[0], row[-1]
            self._horizon = max(self._horizon, seq)
            if self._adopted.get(ip) == seq:
                continue
            self._adopted[ip] = seq
            lease = _lease(row[:-1])
            if lease is not None:
                fresh.append(lease)
        self._horizons.append(self._horizon)
        return fresh

    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            return schema_version(conn)

    def close(self) -> None:
        self._pool.close(timeout=2.0)


def describe(exc: BaseException) -> str:
    """One line for an operator; libpq's messages may span several."""
    if isinstance(exc, PoolTimeout):
        return "unreachable (no connection within the timeout)"
    return " ".join(str(exc).split()) or type(exc).__name__


def _why_unreachable(location: StoreLocation, timeout: float) -> str | None:
    """libpq's own reason, which the pool's timeout hides (no server, a refused login)."""
    assert location.conninfo is not None
    try:
        psycopg.connect(location.conninfo, connect_timeout=max(1, math.ceil(timeout))).close()
    except psycopg.Error as exc:
        return describe(exc)
    return None


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The version of the schema in *conn*'s database; 0 when pybootd never ran there."""
    found = conn.execute("SELECT to_regclass('pybootd_schema') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM pybootd_schema").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Bring the schema to :data:`SCHEMA_VERSION`; (before, after)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        before = schema_version(conn)
        if before > SCHEMA_VERSION:
            raise LeaseStoreError(f"the lease store has schema version {before}, written by a "
                                  f"newer pybootd (this one knows up to {SCHEMA_VERSION})")
        conn.execute("CREATE TABLE IF NOT EXISTS pybootd_schema (version integer NOT NULL)")
        for version in range(before + 1, SCHEMA_VERSION + 1):
            conn.execute(_MIGRATIONS[version])
            conn.execute("INSERT INTO pybootd_schema (version) VALUES (%s)", (version,))
    return before, SCHEMA_VERSION


def connect(location: StoreLocation, timeout: float = 5.0) -> psycopg.Connection[Any]:
    """One connection for a command (leases, db upgrade, --check)."""
    assert location.conninfo is not None
    try:
        return psycopg.connect(location.conninfo, connect_timeout=max(1, math.ceil(timeout)),
                               autocommit=True, application_name="pybootd")
    except psycopg.Error as exc:
        raise LeaseStoreError(f"lease store {location}: {describe(exc)}") from None


def upgrade(location: StoreLocation) -> tuple[int, int]:
    """``pybootd db upgrade``: :func:`migrate` on a connection of its own."""
    with connect(location) as conn:
        conn.autocommit = False
        try:
            return migrate(conn)
        except psycopg.Error as exc:
            raise LeaseStoreError(f"lease store {location}: {describe(exc)}") from None


def read_leases(location: StoreLocation) -> list[Lease]:
    with connect(location) as conn:
        if schema_version(conn) == 0:
            raise LeaseStoreError(f"lease store {location} holds no pybootd leases (schema "
                                  "version 0: expected a database a pybootd has used, or run "
                                  "pybootd db upgrade -c FILE)")
        try:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM pybootd_leases ORDER BY ip").fetchall()
        except psycopg.Error as exc:
            raise LeaseStoreError(f"lease store {location}: {describe(exc)}") from None
    return [lease for row in rows if (lease := _lease(row)) is not None]


def _lease(row: Sequence[Any]) -> Lease | None:
    ip, mac, state, expires, pxe, hostname, uuid, bootfile = row
    try:
        return Lease(IPv4Address(ip), mac, LeaseState(state), float(expires), bool(pxe),
                     hostname, uuid, bootfile)
    except (ValueError, TypeError):
        return None  # a row written by hand; skip it rather than stop
