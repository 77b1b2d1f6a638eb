"""perfdhcp (kea-admin) against pybootd: 20 s at 500 exchanges/s.

perfdhcp acts as a relay (giaddr = its address, replies to giaddr:67), so it
sits in the pool's network. 200 simulated clients share a 240-address pool:
each must keep its own address, and no address may go to two MACs.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

import pytest
from dhcplab import REPO, parse_perfdhcp, perfdhcp_drop_ratio
from netlab import NetLab, require_tools, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.interop]

# Every ACK, repeats included, is logged at debug (at info only the first per client).
ACK = re.compile(r"pybootd\.dhcp: ([0-9a-f:]{17}) via \S+: REQUEST -> ACK (\S+)")


def test_perfdhcp_500_per_second_for_20s(lab: NetLab, tmp_path: Path) -> None:
    require_tools("perfdhcp")
    tmp_path.chmod(0o755)
    config = tmp_path / "pybootd.ini"
    config.write_text(
        f"[logger]\nlevel = debug\n[daemon]\nstate_dir = {tmp_path / 'state'}\n"
        "[bootp]\npool_start = 198.51.100.10\npool_count = 240\nallow_simple_dhcp = on\n"
        f"lease_file = {tmp_path / 'state' / 'leases.sqlite'}\n"
    )
    srv, perf = lab.ns("srv"), lab.ns("perf")
    _, perf_if = lab.veth(srv, "198.51.100.1/24", perf, "198.51.100.2/24")
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        server = lab.popen(srv, [sys.executable, "-m", "pybootd", "-c", str(config), "-p"],
                           stdout=log, stderr=log, cwd=str(REPO))
    wait_for(lambda: "pybootd ready" in log_path.read_text(), 20, what="pybootd start")
    result = lab.run(perf, ["perfdhcp", "-4", "-l", perf_if, "-r", "500", "-p", "20",
                            "-R", "200", "198.51.100.1"], timeout=60, check=False)
    lab.stop(server)
    print(result.stdout)
    stats = parse_perfdhcp(result.stdout)
    assert stats["DISCOVER-OFFER"]["sent packets"] >= 9000, result.stdout + result.stderr
    assert stats["DISCOVER-OFFER"]["drops ratio"] < 1.0
    assert stats["REQUEST-ACK"]["drops ratio"] < 1.0
    assert perfdhcp_drop_ratio(stats) < 0.01

    owner: dict[str, str] = {}
    address: dict[str, str] = {}
    for mac, ip in ACK.findall(log_path.read_text()):
        assert owner.setdefault(ip, mac) == mac, f"{ip} given to {owner[ip]} and {mac}"
        assert address.setdefault(mac, ip) == ip, f"{mac} got {address[mac]} and {ip}"
    assert len(owner) > 100
    with sqlite3.connect(str(tmp_path / "state" / "leases.sqlite")) as db:
        twice = db.execute("SELECT mac FROM leases WHERE mac IS NOT NULL "
                           "GROUP BY mac HAVING COUNT(*) > 1").fetchall()
        stored = dict(db.execute("SELECT mac, ip FROM leases WHERE state = 'bound'"))
    assert twice == []
    assert len(stored) == len(address)  # every acknowledged client is in the lease file
