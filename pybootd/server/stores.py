"""The lease store the pool writes through: SQLite (one pybootd) or PostgreSQL (several).

:class:`Store` is what :class:`~pybootd.server.dhcp.DhcpService` needs; the
SQLite file (:mod:`pybootd.server.leasestore`) and the PostgreSQL table
(:mod:`pybootd.server.leasepg`) implement it. Every method blocks: the
service calls them in the lease store's own thread.

The functions below serve the commands (``pybootd leases``, ``pybootd db
upgrade``, ``--check``); they open the store for a moment and never take the
SQLite lock, so they run beside a running daemon.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pybootd.config import StoreLocation
from pybootd.dhcp.pool import Lease
from pybootd.errors import LeaseStoreError


class Store(Protocol):
    shared: bool  # other processes write too: offers are held in the store, changes read

    def load(self) -> list[Lease]:
        """Every stored lease (at start)."""

    def commit(self, groups: Sequence[Sequence[Lease]], now: float) -> list[tuple[Lease, ...]]:
        """Store the groups (one per reply) in one transaction, before the replies
        leave; for each group, the stored leases that refused it (none: written)."""

    def changes(self) -> list[Lease]:
        """Leases the other processes wrote since the last call."""

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


def open_store(location: StoreLocation, server: str) -> Store:
    """Open (and create or migrate) the store; *server* names this instance's rows."""
    if location.path is not None:
        from pybootd.server.leasestore import LeaseStore

        return LeaseStore(location.path)
    from pybootd.server.leasepg import PostgresStore

    return PostgresStore(location, server)


def read_store(location: StoreLocation) -> list[Lease]:
    """The stored leases, read-only, beside a running daemon."""
    if location.path is not None:
        from pybootd.server.leasestore import read_leases

        return read_leases(location.path)
    from pybootd.server import leasepg

    return leasepg.read_leases(location)


def check_store(location: StoreLocation) -> str:
    """What ``--check`` says of the store; raises :class:`LeaseStoreError`."""
    if location.path is not None:
        from pybootd.server.leasestore import check_lease_file

        check_lease_file(location.path)
        return f"SQLite file {location}" + ("" if location.path.exists() else
                                            " (created at the first start)")
    from pybootd.server import leasepg

    with leasepg.connect(location) as conn:
        version = leasepg.schema_version(conn)
    if version > leasepg.SCHEMA_VERSION:
        raise LeaseStoreError(f"lease store {location} has schema version {version}, written "
                              f"by a newer pybootd (this one knows up to "
                              f"{leasepg.SCHEMA_VERSION})")
    state = "up to date" if version == leasepg.SCHEMA_VERSION else (
        f"upgraded to {leasepg.SCHEMA_VERSION} at the first start")
    return f"PostgreSQL {location}: reachable, schema version {version} ({state})"


def upgrade_store(location: StoreLocation) -> tuple[int, int]:
    """Create or migrate the schema now; (version before, version after)."""
    if location.path is not None:
        from pybootd.server import leasestore

        before = leasestore.stored_version(location.path)
        leasestore.LeaseStore(location.path).close()  # opening migrates
        return before, leasestore.SCHEMA_VERSION
    from pybootd.server import leasepg

    return leasepg.upgrade(location)


def is_fatal(exc: BaseException) -> bool:
    """A failure a retry cannot cure (a damaged SQLite file, a failing disk).

    A database that is unreachable or slow is not: the next commit may work.
    """
    from pybootd.server import leasestore

    if isinstance(exc, LeaseStoreError):
        return False
    return leasestore.is_fatal(exc) and not _is_postgres_error(exc)


def describe_store_error(exc: BaseException) -> str:
    """One line for the log (libpq's messages span several)."""
    if _is_postgres_error(exc):
        from pybootd.server.leasepg import describe

        return describe(exc)
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_postgres_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("psycopg", "psycopg_pool"))
