"""[api] with real peers, in namespaces: udhcpc gets a lease from pybootd,
then fetches a file by TFTP (busybox tftp) and one by HTTP (curl) from the
address it got; the API, asked from the server's namespace, shows the
machine's DHCP exchange and both files, and /metrics counts them."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dhcplab import DhcpLab, lab_session, wait_event
from netlab import NetLab, require_tools

pytestmark = [pytest.mark.netns, pytest.mark.interop]

SERVER = "198.51.100.1"
API_PORT = 9469
HTTP_PORT = 8080


@pytest.fixture
def dlab(lab: NetLab, tmp_path: Path) -> Iterator[DhcpLab]:
    require_tools("udhcpc", "busybox", "curl")
    with lab_session(lab, tmp_path / "api", start=False) as d:
        root = d.workdir / "root"
        root.mkdir()
        (root / "pxelinux.0").write_bytes(os.urandom(40_000))
        (root / "linux").write_bytes(os.urandom(2_000_000))
        # user = root: pytest's tmp_path is a 0700 folder the service user cannot enter.
        d.write_config(daemon={"user": "root"}, tftp={"root": str(root)},
                       httpd={"port": str(HTTP_PORT)}, api={"port": str(API_PORT)})
        d.start_server(only=())
        yield d


def api(d: DhcpLab, path: str) -> Any:
    done = d.lab.run(d.server_ns, ["curl", "-sS", "--max-time", "10",
                                   f"http://127.0.0.1:{API_PORT}{path}"], timeout=15)
    return done.stdout if path == "/metrics" else json.loads(done.stdout)


def test_a_real_client_s_boot_as_the_api_shows_it(dlab: DhcpLab) -> None:
    ns, ifname = dlab.client("pc1")
    script, events = dlab.script("pc1")
    proc = dlab.lab.popen(ns, ["udhcpc", "-f", "-i", ifname, "-s", str(script),
                               "-t", "10", "-T", "1", "-A", "1"])
    try:
        ip = wait_event(events, "bound").split()[1]
        out = dlab.workdir / "got"
        dlab.lab.run(ns, ["busybox", "tftp", "-g", "-r", "pxelinux.0", "-l", str(out),
                          SERVER], timeout=30)
        assert out.stat().st_size == 40_000
        dlab.lab.run(ns, ["curl", "-sS", "--max-time", "30", "-o", str(out),
                          f"http://{SERVER}:{HTTP_PORT}/linux"], timeout=40)
        assert out.stat().st_size == 2_000_000
    finally:
        dlab.lab.stop(proc)
    mac = dlab.mac_of("pc1")
    machine = api(dlab, f"/api/v1/machines/{mac}")
    assert machine["ip"] == ip
    steps = [(e["source"], e["what"], e["outcome"]) for e in machine["events"]]
    assert steps[:4] == [("dhcp", "DISCOVER", "offer"), ("dhcp", "REQUEST", "ack"),
                         ("tftp", "pxelinux.0", "complete"), ("http", "/linux", "200")], steps
    metrics = api(dlab, "/metrics")
    samples = dict(re.findall(r"^(pybootd_\S+) (\S+)$", metrics, re.MULTILINE))
    assert samples['pybootd_dhcp_replies_total{type="ACK"}'] == "1.0"
    assert samples['pybootd_tftp_transfers_total{direction="read",outcome="complete"}'] == "1.0"
    assert samples['pybootd_http_requests_total{status="200"}'] == "1.0"
    assert samples["pybootd_http_bytes_sent_total"] == "2e+06"
    leases = api(dlab, "/api/v1/leases")["leases"]
    assert [(lease["mac"], lease["address"], lease["state"]) for lease in leases] == [
        (mac, ip, "bound")]
