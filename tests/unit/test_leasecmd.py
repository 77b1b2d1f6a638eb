"""``pybootd leases -c FILE [--json]`` on a lease file written by the store."""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from pybootd import cli
from pybootd.dhcp.pool import PERMANENT, Lease, LeaseState
from pybootd.server.leasestore import LeaseStore

UUID = "4C4C4544-0042-3510-8051-B4C04F4D3132"
EXPIRES = 2_000_000_000.0  # 2033-05-18T03:33:20Z


def _config(tmp_path: Path, bootp: str = "[bootp]\npool_start = 198.51.100.100\n") -> Path:
    config = tmp_path / "pybootd.ini"
    config.write_text(f"[daemon]\nstate_dir = {tmp_path / 'state'}\n{bootp}")
    return config


@pytest.fixture
def running_store(tmp_path: Path) -> LeaseStore:
    """The daemon's store, open (and locked) while the command reads."""
    store = LeaseStore(tmp_path / "state" / "leases.sqlite")
    store.write([
        Lease(IPv4Address("198.51.100.100"), "52:54:00:12:34:56", LeaseState.BOUND, EXPIRES,
              True, "pc1", UUID),
        Lease(IPv4Address("198.51.100.101"), "52:54:00:00:00:02", LeaseState.BOUND, PERMANENT),
        Lease(IPv4Address("198.51.100.102"), None, LeaseState.DECLINED, EXPIRES),
        Lease(IPv4Address("198.51.100.103"), "52:54:00:00:00:04", LeaseState.BOUND,
              time.time() - 60, False, "evil\x1b[2Jname"),
    ], time.time())
    return store


def test_table_while_the_daemon_holds_the_file(tmp_path: Path, running_store: LeaseStore,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["leases", "-c", str(_config(tmp_path))]) == 0
    running_store.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MAC", "ADDRESS", "STATE", "EXPIRES", "HOSTNAME", "UUID"]
    assert lines[1].split() == ["52:54:00:12:34:56", "198.51.100.100", "bound",
                                "2033-05-18T03:33:20Z", "pc1", UUID]
    assert lines[2].split() == ["52:54:00:00:00:02", "198.51.100.101", "bound", "never", "-",
                                "-"]
    assert lines[3].split()[:3] == ["-", "198.51.100.102", "declined"]
    assert lines[4].split()[2] == "expired"
    assert "evil\\x1b[2Jname" in lines[4]  # a client-chosen name cannot drive the terminal
    assert len(lines) == 5


def test_json_list(tmp_path: Path, running_store: LeaseStore,
                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["leases", "-c", str(_config(tmp_path)), "--json"]) == 0
    running_store.close()
    records = json.loads(capsys.readouterr().out)
    assert records[0] == {"mac": "52:54:00:12:34:56", "ip": "198.51.100.100", "state": "bound",
                          "expires": "2033-05-18T03:33:20Z", "hostname": "pc1", "uuid": UUID,
                          "boot_file": None}
    assert records[1]["expires"] is None  # BOOTP: never expires
    assert [r["state"] for r in records] == ["bound", "bound", "declined", "expired"]
    assert records[3]["hostname"] == "evil\x1b[2Jname"


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert cli.main(["leases", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert err == (f"pybootd: no lease file {tmp_path / 'state' / 'leases.sqlite'} (expected "
                   "the [bootp] lease_file or STATE_DIR/leases.sqlite of a pybootd that has "
                   "run)\n")
    no_bootp = _config(tmp_path, "[tftp]\nport = 6969\n")
    assert cli.main(["leases", "-c", str(no_bootp)]) == 1
    assert capsys.readouterr().err == (f"pybootd: {no_bootp}: no [bootp] section, so no lease "
                                       "store (expected the configuration of a pybootd serving "
                                       "DHCP)\n")
    assert cli.main(["leases", "-c", str(tmp_path / "nope.ini")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "configuration file not found" in err
