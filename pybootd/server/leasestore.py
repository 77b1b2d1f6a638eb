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

One pybootd per lease file: an exclusive ``flock`` on ``FILE.lock`` (which
holds the pid) is taken before the database is opened and held while the
process lives. A file that would lose leases silently is refused at open: an
empty file (0 bytes), one that is not SQLite, or one that fails ``PRAGMA
quick_check``. :func:`read_leases` reads the file while the daemon runs
(``mode=ro``, a WAL reader; it takes no lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address
from pathlib import Path

from pybootd.dhcp.pool import Lease, LeaseState
from pybootd.errors import LeaseStoreError

SCHEMA_VERSION = 3  # 2: hostname and uuid of bound leases; 3: the boot file of the last ACK
_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    ip INTEGER PRIMARY KEY,      -- IPv4 address as an integer
    mac TEXT,                    -- aa:bb:cc:dd:ee:ff, NULL when quarantined or orphaned
    state TEXT NOT NULL,         -- bound | free | declined
    expires REAL NOT NULL,       -- seconds since the epoch; Inf for BOOTP (permanent)
    pxe INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    hostname TEXT,               -- option 12 of the client's last REQUEST (RFC 2132 3.14)
    uuid TEXT,                   -- option 97 as dmidecode prints it (RFC 4578 2.3)
    bootfile TEXT                -- the boot file of the last ACK
);
CREATE INDEX IF NOT EXISTS leases_mac ON leases(mac);
"""
_ADDED = {2: ("hostname", "uuid"), 3: ("bootfile",)}  # columns each schema version added
_SQLITE_MAGIC = b"SQLite format 3\0"  # the first 16 bytes of every SQLite file
_MOVE_ASIDE = ("move it aside to start with no leases (machines may then be offered "
               "addresses that others still hold)")
# Run-time failures that a retry cannot cure (sqlite3.h primary result codes):
# the store must not go on "serving" without storing (see is_fatal).
_FATAL_CODES = frozenset({
    8,  # SQLITE_READONLY
    10,  # SQLITE_IOERR
    11,  # SQLITE_CORRUPT
    14,  # SQLITE_CANTOPEN
    26,  # SQLITE_NOTADB
})


class LeaseFileError(LeaseStoreError):
    """The lease file cannot be used: damaged, locked by another process, unreadable."""


def is_fatal(exc: BaseException) -> bool:
    """A store failure that persists (damage, I/O error), not a transient one (locked)."""
    if not isinstance(exc, sqlite3.Error):
        return isinstance(exc, OSError)
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc)
    return (code & 0xFF) in _FATAL_CODES


class LeaseStore:
    """The SQLite lease file, locked for this process's life."""

    shared = False  # one process: offers stay in memory, nobody else writes

    def commit(self, groups: Sequence[Sequence[Lease]], now: float) -> list[tuple[Lease, ...]]:
        """Store every group in one transaction; no conflicts (no other writer)."""
        self.write([lease for group in groups for lease in group], now)
        return [() for _ in groups]

    def changes(self) -> list[Lease]:
        return []  # the lock keeps every other writer out

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = _take_lock(path)
        try:
            self._db = _open(path)
        except BaseException:
            os.close(self._lock)
            raise

    def load(self) -> list[Lease]:
        return _rows(self._db)

    def write(self, leases: Iterable[Lease], now: float) -> None:
        """Store *leases* in one transaction (one WAL append, no fsync)."""
        rows = [(int(lease.ip), lease.mac, str(lease.state), lease.expires, int(lease.pxe), now,
                 lease.hostname, lease.uuid, lease.bootfile) for lease in leases]
        if not rows:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO leases (ip, mac, state, expires, pxe, updated, "
                "hostname, uuid, bootfile) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database and release the lock; a second call does nothing."""
        if self._lock < 0:
            return
        self._db.close()
        os.close(self._lock)  # the lock goes with the descriptor
        self._lock = -1


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _take_lock(path: Path) -> int:
    """An exclusive, non-blocking flock beside *path*: one pybootd per lease file.

    The lock is on a file of its own (not the database, whose descriptors
    SQLite manages), holds our pid for the error message of a second
    instance, and is released by the kernel however the process ends.
    """
    lock = lock_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise LeaseFileError(f"cannot create the lock file {lock}: {exc.strerror} (expected "
                             "a folder pybootd can write, see [daemon] state_dir)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise LeaseFileError(f"lease file {path} is in use by another pybootd (pid {holder}) "
                             "(expected one pybootd per lease file: stop the other one, or "
                             "give this one its own [daemon] state_dir)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _check_file(path: Path) -> None:
    """Refuse an existing file that SQLite would silently treat as empty or fail on later."""
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return  # a new store
    except OSError as exc:
        raise LeaseFileError(f"cannot read lease file {path}: {exc.strerror}") from None
    if not head:
        raise LeaseFileError(f"lease file {path} is empty (0 bytes): every lease it held is "
                             f"lost; {_MOVE_ASIDE}")
    if head != _SQLITE_MAGIC:
        raise LeaseFileError(f"lease file {path} is not an SQLite database; {_MOVE_ASIDE}")


def _open(path: Path) -> sqlite3.Connection:
    _check_file(path)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves.
    db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None,
                         check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        _quick_check(db, path)
        _migrate(db, path)
        # A first write creates the -wal and -shm files now, while we may
        # still be root, and the open connection keeps them after a
        # privilege drop.
        db.execute("BEGIN IMMEDIATE")
        db.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        db.close()
        if is_fatal(exc):
            raise LeaseFileError(f"lease file {path} is damaged ({exc}); {_MOVE_ASIDE}") from None
        raise
    except BaseException:
        db.close()
        raise
    return db


def _quick_check(db: sqlite3.Connection, path: Path) -> None:
    """``PRAGMA quick_check``: a damaged page found now, not at the first ACK."""
    problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        found = " ".join("; ".join(problems).split())  # one line, whatever SQLite says
        raise LeaseFileError(f"lease file {path} is damaged (quick_check: {found[:300]}); "
                             f"{_MOVE_ASIDE}")


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Create the table, or bring an older one to :data:`SCHEMA_VERSION`."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LeaseFileError(f"lease file {path} has schema version {version}, written by a "
                             f"newer pybootd (this one reads up to {SCHEMA_VERSION})")
    db.executescript(_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(leases)")}
    for added in _ADDED.values():
        for column in added:
            if column not in columns:  # ALTER keeps every row (NULL in the new column)
                db.execute(f"ALTER TABLE leases ADD COLUMN {column} TEXT")
    if version != SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _rows(db: sqlite3.Connection) -> list[Lease]:
    columns = {row[1] for row in db.execute("PRAGMA table_info(leases)")}
    extra = "".join(f", {c}" if c in columns else ", NULL"
                    for c in ("hostname", "uuid", "bootfile"))
    rows = db.execute(f"SELECT ip, mac, state, expires, pxe{extra} FROM leases ORDER BY ip")
    leases = []
    for ip, mac, state, expires, pxe, hostname, uuid, bootfile in rows.fetchall():
        try:
            leases.append(Lease(IPv4Address(ip), mac, LeaseState(state), float(expires),
                                bool(pxe), hostname, uuid, bootfile))
        except (ValueError, TypeError):
            continue  # a row written by hand; skip it rather than refuse to start
    return leases


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A WAL reader that takes no lock and writes nothing (``mode=ro``)."""
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)


def check_lease_file(path: Path) -> None:
    """For ``--check``: what the daemon's start would refuse, read-only, no lock.

    A missing file is fine (a first start creates it). Raises
    :class:`LeaseFileError` naming the file and what to do.
    """
    if not path.exists():
        return
    _check_file(path)
    try:
        db = _connect_read_only(path)
        try:
            _quick_check(db, path)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise LeaseFileError(f"lease file {path} is damaged ({exc}); {_MOVE_ASIDE}") from None
    except sqlite3.Error as exc:
        raise LeaseFileError(f"cannot read lease file {path}: {exc}") from None


def read_leases(path: Path) -> list[Lease]:
    """The leases of *path*, read-only, while the daemon runs (a WAL reader, no lock).

    Raises :class:`LeaseFileError` when there is no such file or it is not
    a lease store.
    """
    if not path.exists():
        raise LeaseFileError(f"no lease file {path} (expected the [bootp] lease_file or "
                             "STATE_DIR/leases.sqlite of a pybootd that has run)")
    _check_file(path)
    try:
        db = _connect_read_only(path)
    except sqlite3.Error as exc:
        raise LeaseFileError(f"cannot open lease file {path}: {exc}") from None
    try:
        return _rows(db)
    except sqlite3.Error as exc:
        raise LeaseFileError(f"cannot read lease file {path}: {exc}") from None
    finally:
        db.close()


def stored_version(path: Path) -> int:
    """The schema version of *path* (0: no file yet), read-only."""
    if not path.exists():
        return 0
    _check_file(path)
    try:
        db = _connect_read_only(path)
        try:
            return int(db.execute("PRAGMA user_version").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise LeaseFileError(f"cannot read lease file {path}: {exc}") from None
