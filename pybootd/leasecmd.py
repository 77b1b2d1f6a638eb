"""``pybootd leases -c FILE [--json]``: the leases of the configured store;
``pybootd db upgrade -c FILE``: create or migrate the store's schema now.

``leases`` reads the store while the daemon runs: a read-only SQLite open
(``mode=ro``, a WAL reader) without the daemon's lock, or one PostgreSQL
query, so it never stops or delays the daemon.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from pybootd.config import StoreLocation, load_config
from pybootd.dhcp.pool import Lease, LeaseState
from pybootd.errors import PybootdError
from pybootd.logsetup import printable
from pybootd.server.stores import read_store, upgrade_store

_COLUMNS = ("MAC", "ADDRESS", "STATE", "EXPIRES", "HOSTNAME", "UUID")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pybootd leases",
        description="Print the leases of the configured lease store (the daemon may run).")
    parser.add_argument("-c", "--config", metavar="FILE", required=True,
                        help="the daemon's configuration file (INI)")
    parser.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    return parser


def expiry(expires: float) -> str | None:
    """ISO 8601 in UTC; None for a BOOTP binding, which never expires (RFC 1534 2)."""
    if math.isinf(expires):
        return None
    return datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_at(lease: Lease, now: float) -> str:
    """The stored state, or ``expired`` for a binding past its end (free to reuse)."""
    if lease.state == LeaseState.BOUND and lease.expires <= now:
        return "expired"
    return str(lease.state)


def as_record(lease: Lease, now: float) -> dict[str, str | None]:
    return {"mac": lease.mac, "ip": str(lease.ip), "state": state_at(lease, now),
            "expires": expiry(lease.expires), "hostname": lease.hostname, "uuid": lease.uuid,
            "boot_file": lease.bootfile}


def table(records: list[dict[str, str | None]]) -> str:
    """Aligned columns; client-chosen text (host names) with controls escaped."""
    rows = [list(_COLUMNS)]
    for record in records:
        expires = record["expires"] or "never"
        rows.append([printable(value or "-") for value in (
            record["mac"], record["ip"], record["state"], expires, record["hostname"],
            record["uuid"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def _store_of(path: str) -> StoreLocation:
    config = load_config(path)
    if config.bootp is None:
        raise PybootdError(f"{config.path}: no [bootp] section, so no lease store "
                           "(expected the configuration of a pybootd serving DHCP)")
    if config.bootp.mode == "proxy":
        raise PybootdError(f"{config.path}: [bootp] mode = proxy hands out no addresses, "
                           "so it keeps no leases")
    return config.lease_store


def upgrade_main(argv: Sequence[str]) -> int:
    """``pybootd db upgrade -c FILE``: what a start does to the schema, now."""
    parser = argparse.ArgumentParser(
        prog="pybootd db upgrade",
        description="Create the lease store's tables, or migrate them to this pybootd's "
                    "schema (a start does it too).")
    parser.add_argument("-c", "--config", metavar="FILE", required=True,
                        help="the daemon's configuration file (INI)")
    args = parser.parse_args(list(argv))
    try:
        location = _store_of(args.config)
        before, after = upgrade_store(location)
    except PybootdError as exc:
        print(f"pybootd: {exc}", file=sys.stderr)
        return 1
    done = "up to date" if before == after else f"upgraded from version {before}"
    print(f"lease store {location}: schema version {after} ({done})")
    return 0


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        leases = read_store(_store_of(args.config))
    except PybootdError as exc:
        print(f"pybootd: {exc}", file=sys.stderr)
        return 1
    now = time.time()
    records = [as_record(lease, now) for lease in leases]
    print(json.dumps(records, indent=2) if args.json else table(records))
    return 0
