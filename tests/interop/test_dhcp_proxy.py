"""proxyDHCP (``mode = proxy``) next to dnsmasq handing out the addresses.

The PXE client gets two OFFERs for one DISCOVER: dnsmasq's with an address,
pybootd's with none but PXEClient, option 43 and the boot file; then asks
pybootd's boot service on port 4011 (PXE 2.1) and gets an ACK with the file.
A plain DHCP client hears only dnsmasq.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from dhcplab import DhcpLab, Prober, lab_session
from netlab import NetLab, require_tools

from pybootd.dhcp.options import DhcpOption, MessageType

pytestmark = [pytest.mark.netns, pytest.mark.interop]

PXE: dict[int, bytes] = {DhcpOption.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016",
       DhcpOption.CLIENT_ARCH: bytes((0, 7)),
       DhcpOption.CLIENT_UUID: bytes.fromhex("0044454c4c4200103580" "51b4c04f4d3132")}
PROXY = IPv4Address("198.51.100.1")
MAIN = IPv4Address("198.51.100.3")
BROADCAST = 0x8000  # RFC 2131 flags: reply by broadcast


@pytest.fixture
def dlab(lab: NetLab, tmp_path: Path) -> Iterator[DhcpLab]:
    require_tools("dnsmasq")
    with lab_session(lab, tmp_path / "dhcp", start=False) as d:
        d.write_config(bootp={"mode": "proxy", "boot_file": "pxelinux.0"},
                       bootfile={"efi-x64": "grubx64.efi"})
        text = (d.workdir / "pybootd.ini").read_text().replace(
            "pool_start = 198.51.100.100\n", "")
        (d.workdir / "pybootd.ini").write_text(text)
        d.start_server()
        yield d


def test_proxy_offer_and_boot_service(dlab: DhcpLab) -> None:
    ns_main, if_main = dlab.client("main")
    dlab.lab.run(ns_main, ["ip", "addr", "add", f"{MAIN}/24", "dev", if_main])
    dnsmasq = dlab.lab.popen(ns_main, [
        "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--no-ping",
        "--dhcp-range=198.51.100.150,198.51.100.199,255.255.255.0,1h",
        f"--dhcp-leasefile={dlab.workdir / 'dnsmasq.leases'}", f"--interface={if_main}",
        "--bind-interfaces", f"--pid-file={dlab.workdir / 'dnsmasq.pid'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    assert dnsmasq.poll() is None
    ns, ifname = dlab.client("probe")
    p = Prober(ns, ifname)
    mac = bytes((2, 0, 0, 0, 0, 1))
    xid = p.send(MessageType.DISCOVER, mac, PXE, flags=BROADCAST)  # no address yet
    offers = {packet.options.get(DhcpOption.SERVER_ID): packet
              for x, packet in p.collect_all(3.0) if x == xid}
    assert set(offers) == {PROXY.packed, MAIN.packed}, offers
    proxy = offers[PROXY.packed]
    assert proxy.yiaddr == IPv4Address(0)
    assert proxy.options[DhcpOption.VENDOR_CLASS] == b"PXEClient"
    assert proxy.options[DhcpOption.VENDOR_SPECIFIC] == bytes((6, 1, 8, 255))
    assert proxy.options[DhcpOption.CLIENT_UUID] == PXE[DhcpOption.CLIENT_UUID]
    assert proxy.file == b"grubx64.efi" and proxy.siaddr == PROXY
    address = offers[MAIN.packed].yiaddr
    assert IPv4Address("198.51.100.150") <= address <= IPv4Address("198.51.100.199")

    # The client took dnsmasq's address; it asks the boot service (port 4011).
    dlab.lab.run(ns, ["ip", "addr", "add", f"{address}/24", "dev", ifname])
    boot = p.send(MessageType.REQUEST, mac, PXE, to=(str(PROXY), 4011), ciaddr=address)
    acks = [packet for x, packet in p.collect_all(2.0) if x == boot]
    assert len(acks) == 1
    assert acks[0].message_type == MessageType.ACK and acks[0].file == b"grubx64.efi"

    plain = p.send(MessageType.DISCOVER, bytes((2, 0, 0, 0, 0, 2)), flags=BROADCAST)
    servers = {packet.options.get(DhcpOption.SERVER_ID) for x, packet in p.collect_all(2.0)
               if x == plain}
    assert servers == {MAIN.packed}
    p.close()
