"""Real network boots: firmware in QEMU boots the Debian 12 installer from pybootd.

The acceptance of issue 4. Each test builds a namespace with a bridge
(192.0.2.1/24), starts pybootd there, and boots VMs on taps of that bridge:
SeaBIOS + iPXE ROM, OVMF's own PXE, OVMF + iPXE EFI ROM, OVMF's UEFI HTTP
Boot (with pybootd's web server, [httpd]). A boot passes when
the serial console shows the installer's kernel starting (``Linux version``)
with the ``console=ttyS0`` command line our ``[filters]`` menus give it.
Passing tests report their times (VM start to DHCP ACK, to first TFTP byte,
to kernel start) in the "network boot times" section of the summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import pytest
from netlab import require_tools

from boot.bootlab import BootNet, BootTimes, Event
from boot.fixtures import (
    GRUB,
    GRUB_CFG,
    INITRD,
    INSTALLER,
    IPXE_DIR,
    KERNEL,
    MIRROR_PATH,
    PXE_DEFAULT,
    SHIM,
    SNPONLY,
    BootFiles,
)
from boot.samples import sample_config
from boot.servers import (
    POOL_START,
    SERVER_IP,
    Dnsmasq,
    DnsmasqOptions,
    HttpMirror,
    Pybootd,
    Sections,
    merge,
    udp_sockets,
)
from boot.vm import KERNEL_MARK, Vm, required_files, wait_all, wait_kernels

pytestmark = [pytest.mark.netns, pytest.mark.boot]

Report = Callable[[str, BootTimes], None]
PXE_PROBE_LIMIT = 1.0  # seconds for a "file not found" (pxelinux tries ~9 names)
UNLISTED_WATCH = 45.0  # seconds an unlisted VM is watched, from its start
OTHER_DHCP = "192.0.2.3"  # the LAN's own DHCP server in the proxy scenario
IPXE_SCRIPT = "boot.ipxe"
API_PORT = 9469  # [api], on the server namespace's loopback
POOL = {f"192.0.2.{n}" for n in range(100, 150)}  # pool_start 192.0.2.100, 50 addresses
SHIM_PROBES = {"revocations_sku.efi", "revocations_sbat.efi", "shim_certificate_0.efi"}


def needs(*firmwares: str) -> None:
    require_tools(*(str(f) for fw in firmwares for f in required_files(fw)))


def base_config(net: BootNet, files: BootFiles) -> dict[str, dict[str, str]]:
    """What every test's pybootd.ini shares: nobody, a state folder, our menus."""
    return {
        "logger": {"level": "info"},
        "daemon": {"user": "nobody", "state_dir": str(net.workdir / "state")},
        "tftp": {"root": str(files.root)},
        "bootp": {"pool_start": POOL_START, "pool_count": "50", "lease_time": "3600"},
        "filters": {PXE_DEFAULT: str(files.pxe_cfg), GRUB_CFG: str(files.grub_cfg)},
    }


def start_pybootd(net: BootNet, files: BootFiles, extra: Sections) -> Pybootd:
    server = Pybootd(net.lab, net.ns, net.workdir, merge(base_config(net, files), extra))
    net.add(server)
    server.start()
    return server


def start_sample(net: BootNet, files: BootFiles, name: str, mirror_url: str | None = None,
                 site: Sections | None = None) -> Pybootd:
    """pybootd with ``etc/NAME`` as a user would run it (our site's values;
    *site* replaces whole sections, such as the sample's MAC addresses)."""
    config = sample_config(name, files, net.workdir / "state", mirror_url)
    config.update({section: dict(body) for section, body in (site or {}).items()})
    server = Pybootd(net.lab, net.ns, net.workdir, config)
    net.add(server)
    server.start()
    return server


def size(name: str) -> int:
    return (INSTALLER / name).stat().st_size


def booted(net: BootNet, vm: Vm, kernels: Mapping[str, float | None]) -> float:
    """The kernel time of *vm*, or fail with the packets, logs and console."""
    seconds = kernels.get(vm.spec.name)
    if seconds is None:
        pytest.fail(f"{vm.spec.name} did not reach the kernel\n{net.evidence(vm)}")
    assert "console=ttyS0" in vm.console(), net.evidence(vm)
    return seconds


def served_whole(net: BootNet, vm: Vm, expected: Mapping[str, int]) -> None:
    """Each file of *expected* went to *vm* whole (every block, in order)."""
    served = net.served(vm)
    for name, length in expected.items():
        assert served.get(name) == length, (f"{name}: {served.get(name)} bytes, expected "
                                            f"{length}\n{net.evidence(vm)}")


def replies(net: BootNet, vm: Vm, kind: str, server: str = SERVER_IP) -> list[Event]:
    """DHCP replies of *kind* (OFFER, ACK) from *server* to *vm*."""
    return [e for e in net.dhcp_replies(vm) if e["type"] == kind
            and e["opt"].get("54") == server]


def not_found_promptly(net: BootNet, vm: Vm, names: list[str]) -> None:
    """Each RRQ of *names* got ERROR 1 (file not found) within PXE_PROBE_LIMIT."""
    events = net.events(vm)
    for name in names:
        rrq = next(e for e in events if e.get("op") == "RRQ" and e["file"] == name)
        error = next((e for e in events if e.get("op") == "ERROR" and e["file"] == name), None)
        assert error is not None and error["code"] == 1, f"{name}: {error}\n{net.evidence(vm)}"
        assert error["t"] - rrq["t"] < PXE_PROBE_LIMIT, f"{name}: slow not-found {error}"


def pxelinux_checks(net: BootNet, vm: Vm, files: BootFiles) -> None:
    """pxelinux.0 -> ldlinux.c32 -> ~9 probes -> our default -> kernel and initrd."""
    names = net.requested(vm)
    assert names[:2] == ["pxelinux.0", "ldlinux.c32"], names
    probes = [n for n in names if n.startswith("pxelinux.cfg/") and n != PXE_DEFAULT]
    assert len(probes) >= 8, names
    not_found_promptly(net, vm, probes)
    served_whole(net, vm, {"pxelinux.0": size("pxelinux.0"), "ldlinux.c32": size("ldlinux.c32"),
                           PXE_DEFAULT: files.pxe_cfg.stat().st_size,
                           KERNEL: size(KERNEL), INITRD: size(INITRD)})


def grub_checks(net: BootNet, vm: Vm, files: BootFiles) -> None:
    """GRUB asks absolute names: our grub.cfg (a filter), kernel and initrd arrive."""
    served_whole(net, vm, {f"/{GRUB_CFG}": files.grub_cfg.stat().st_size,
                           f"/{KERNEL}": size(KERNEL), f"/{INITRD}": size(INITRD)})


def shim_checks(net: BootNet, vm: Vm, files: BootFiles) -> None:
    """OVMF's own PXE: arch 7, shim in the BOOTP file field, shim fetches grub."""
    ack = replies(net, vm, "ACK")[-1]
    assert ack["file"] == SHIM, ack  # shim finds grub's folder from this field only
    requests = [e for e in net.events(vm) if e.get("proto") == "dhcp" and e["op"] == 1]
    assert {e["opt"].get("93") for e in requests} == {7}, requests
    probes = [n for n in net.requested(vm) if n.rpartition("/")[2] in SHIM_PROBES]
    not_found_promptly(net, vm, probes)
    served_whole(net, vm, {SHIM: size(SHIM), GRUB: size(GRUB)})
    grub_checks(net, vm, files)


# --- 1. BIOS ------------------------------------------------------------------
def test_bios_pxelinux(net: BootNet, boot_files: BootFiles, report_times: Report) -> None:
    """SeaBIOS + iPXE ROM -> DHCP -> pxelinux.0 -> ldlinux.c32 -> menu -> kernel."""
    needs("bios")
    # [bootp] boot_file defaults to pxelinux.0; [api] for the machine's timeline.
    server = start_pybootd(net, boot_files, {"api": {"port": str(API_PORT)}})
    # No [tftp] address: TFTP listens where DHCP serves, as the original did.
    tftp = {host for host, port in udp_sockets(net.lab, net.ns) if port == 69}
    assert tftp == {SERVER_IP}, tftp
    vm = net.vm("bios")
    kernel = booted(net, vm, net.boot([vm]))
    ack = replies(net, vm, "ACK")[-1]
    assert (ack["file"], ack["siaddr"]) == ("pxelinux.0", SERVER_IP), ack
    assert ack["yiaddr"] in POOL, ack
    pxelinux_checks(net, vm, boot_files)
    timeline_checks(net, vm)
    report_times("bios", net.times(vm, kernel))
    assert server.stop() == 0, f"SIGTERM: not a clean exit\n{server.log_tail()}"


def timeline_checks(net: BootNet, vm: Vm) -> None:
    """[api]: the machine's timeline, in order: its DHCP exchange, then each
    file pxelinux loaded (the probes in between refused), with durations."""
    answer = net.lab.run(net.ns, ["curl", "-sS", "--max-time", "10",
                                  f"http://127.0.0.1:{API_PORT}/api/v1/machines/{vm.mac}"])
    events = json.loads(answer.stdout)["events"]
    dhcp = [(e["what"], e["outcome"]) for e in events if e["source"] == "dhcp"]
    assert dhcp[:2] == [("DISCOVER", "offer"), ("REQUEST", "ack")], dhcp
    files = [e for e in events if e["source"] == "tftp" and e["outcome"] == "complete"]
    assert [e["what"] for e in files] == ["pxelinux.0", "ldlinux.c32", PXE_DEFAULT, KERNEL,
                                          INITRD], events
    assert all(e["seconds"] > 0 and e["bytes"] > 0 for e in files), files
    first_file = events.index(files[0])
    assert all(e["source"] == "dhcp" for e in events[:first_file]), events


# --- 2. UEFI ------------------------------------------------------------------
def test_bios_and_uefi_from_one_server(net: BootNet, boot_files: BootFiles,
                                       report_times: Report) -> None:
    """One pybootd, one config (etc/uefi-bios.ini): a BIOS VM gets pxelinux.0
    while a UEFI VM (OVMF's own PXE, virtio-net) gets shim -> grubx64.efi ->
    GRUB -> kernel."""
    needs("bios", "uefi")
    start_sample(net, boot_files, "uefi-bios.ini")
    bios, uefi = net.vm("bios"), net.vm("uefi")
    kernels = net.boot([bios, uefi])
    times = {vm.spec.name: net.times(vm, booted(net, vm, kernels)) for vm in (bios, uefi)}
    pxelinux_checks(net, bios, boot_files)
    shim_checks(net, uefi, boot_files)
    report_times("bios, same server", times[bios.spec.name])
    report_times("uefi own PXE + shim", times[uefi.spec.name])


def test_uefi_ipxe_rom_grub(net: BootNet, boot_files: BootFiles, report_times: Report) -> None:
    """OVMF running the iPXE EFI ROM (e1000) boots grubx64.efi directly (shim
    rejects grub fetched through iPXE, whose TFTP never reports the size):
    etc/uefi-bios.ini's ``ipxe-efi-x64``, while efi-x64 stays shim."""
    needs("uefi-ipxe")
    start_sample(net, boot_files, "uefi-bios.ini")
    vm = net.vm("uefi-ipxe")
    kernel = booted(net, vm, net.boot([vm]))
    ack = replies(net, vm, "ACK")[-1]
    assert ack["file"] == GRUB and ack["opt"].get("60") == "PXEClient", ack
    served_whole(net, vm, {GRUB: size(GRUB)})
    grub_checks(net, vm, boot_files)
    report_times("uefi iPXE ROM + grub", net.times(vm, kernel))


# --- 3. Debian mirror over HTTP -----------------------------------------------
def test_debian_mirror_http_root(net: BootNet, boot_files: BootFiles,
                                 report_times: Report) -> None:
    """etc/debian-mirror.ini: root = http://.../netboot/ of a mirror (a local
    web server laid out like one); pxelinux.cfg/default is a local file."""
    needs("bios")
    mirror = HttpMirror(net.lab, net.ns, net.workdir, boot_files.mirror)
    net.add(mirror)
    mirror.start()
    server = start_sample(net, boot_files, "debian-mirror.ini",
                          mirror_url=f"{mirror.url}debian/")
    vm = net.vm("bios")
    kernel = booted(net, vm, net.boot([vm]))
    pxelinux_checks(net, vm, boot_files)
    fetched = {path.removeprefix(f"/{MIRROR_PATH}/") for path in mirror.requests()}
    assert {"pxelinux.0", "ldlinux.c32", KERNEL, INITRD} <= fetched, mirror.log_tail()
    assert PXE_DEFAULT not in fetched, "the local filter was bypassed"
    report_times("bios from HTTP mirror (cold cache)", net.times(vm, kernel))
    assert server.stop() == 0, f"SIGTERM: not a clean exit\n{server.log_tail()}"


# --- 4. proxyDHCP -------------------------------------------------------------
def test_proxy_dhcp_next_to_dnsmasq(net: BootNet, boot_files: BootFiles,
                                    report_times: Report) -> None:
    """dnsmasq (another host) hands out addresses only; pybootd in proxy mode
    (etc/proxy.ini) answers the PXE clients with their boot files and serves
    them by TFTP. QEMU's BIOS ROM is iPXE, so it gets the iPXE script.

    UEFI goes through iPXE (ipxe.efi, then the script): GRUB 2.06 (Debian 12)
    reads only the firmware's DHCPACK, whose next-server is the other DHCP
    server, and ignores the proxy offer, so shim -> GRUB cannot boot next to
    another DHCP server (Fedora carries a GRUB patch for it; Debian does not).
    """
    needs("bios", "uefi")
    require_tools("dnsmasq")
    ns, ifname = net.peer_host("lan", f"{OTHER_DHCP}/24")
    other = Dnsmasq(net.lab, ns, net.workdir, DnsmasqOptions(ifname))
    net.add(other)
    other.start()
    start_sample(net, boot_files, "proxy.ini")
    bios, uefi = net.vm("bios"), net.vm("uefi")
    kernels = net.boot([bios, uefi])
    for vm in (bios, uefi):
        booted(net, vm, kernels)
        proxy_checks(net, vm)
        chain_checks(net, vm, proxy=True)
        report_times(f"{vm.spec.firmware} via proxyDHCP", net.times(vm, kernels[vm.spec.name]))
    assert net.completed(uefi).count("ipxe.efi") == 1, net.requested(uefi)


def proxy_checks(net: BootNet, vm: Vm) -> None:
    """The address came from the other server; pybootd allocated nothing."""
    assert replies(net, vm, "ACK", OTHER_DHCP), net.evidence(vm)
    ours = [e for e in net.dhcp_replies(vm) if e["opt"].get("54") == SERVER_IP]
    assert ours, f"pybootd never answered\n{net.evidence(vm)}"
    for reply in ours:
        assert reply["yiaddr"] == "0.0.0.0", reply
        assert reply["opt"].get("60") == "PXEClient" and reply["file"], reply


# --- 5. iPXE chainload --------------------------------------------------------
def test_ipxe_chainload(net: BootNet, boot_files: BootFiles, report_times: Report) -> None:
    """etc/ipxe-chainload.ini: the firmware gets iPXE (undionly.kpxe / ipxe.efi);
    that iPXE asks again (option 77/175) and gets the [bootfile] ipxe script,
    never iPXE again.

    QEMU's BIOS NIC ROM is iPXE itself: with ``ipxe_rom = chainload`` its own
    exchange still gets undionly.kpxe, which starts and asks again. OVMF's
    own PXE is not iPXE: it gets ipxe.efi. Both VMs show the whole chain.
    """
    needs("bios", "uefi")
    start_sample(net, boot_files, "ipxe-chainload.ini")
    bios, uefi = net.vm("bios"), net.vm("uefi")
    kernels = net.boot([bios, uefi])
    for vm, loader in ((bios, "undionly.kpxe"), (uefi, "ipxe.efi")):
        booted(net, vm, kernels)
        chain_checks(net, vm, loader=loader)
        assert net.completed(vm).count(loader) == 1, net.requested(vm)
        report_times(f"{vm.spec.firmware} iPXE chain", net.times(vm, kernels[vm.spec.name]))
    assert net.requested(bios)[:2] == ["undionly.kpxe", IPXE_SCRIPT], net.requested(bios)


def chain_checks(net: BootNet, vm: Vm, proxy: bool = False, loader: str | None = None) -> None:
    """Every iPXE request got the script, but the firmware's own exchange,
    which got *loader* if given; the script came once; kernel and initrd."""
    requests = [e for e in net.events(vm) if e.get("proto") == "dhcp" and e["op"] == 1]
    ipxe_xids = {e["xid"] for e in requests if e["opt"].get("77") == "iPXE" or "175" in e["opt"]}
    assert ipxe_xids, f"iPXE never asked\n{net.evidence(vm)}"
    firmware_xid = requests[0]["xid"]
    ours = [e for e in net.dhcp_replies(vm) if e["opt"].get("54") == SERVER_IP
            and (proxy or e["type"] == "ACK")]
    for reply in ours:
        if loader is not None and reply["xid"] == firmware_xid:
            assert reply["file"] == loader, reply
        elif reply["xid"] in ipxe_xids:
            assert reply["file"] == IPXE_SCRIPT, reply
    assert net.completed(vm).count(IPXE_SCRIPT) == 1, net.requested(vm)
    served_whole(net, vm, {KERNEL: size(KERNEL), INITRD: size(INITRD)})


# --- 6. access control --------------------------------------------------------
STATIC_IP = "192.0.2.20"


def test_access_mac(net: BootNet, boot_files: BootFiles, report_times: Report) -> None:
    """etc/access-mac.ini (access = mac): the listed VM boots, at its
    [static_dhcp] address; the unlisted one, started at the same moment, gets
    no offer and no file while it is watched."""
    needs("bios")
    listed, unlisted = net.vm("bios", "listed"), net.vm("bios", "unlisted")
    start_sample(net, boot_files, "access-mac.ini",
                 site={"mac": {listed.mac: "enable"}, "static_dhcp": {listed.mac: STATIC_IP}})
    net.start([listed, unlisted])
    kernel = booted(net, listed, wait_kernels([listed]))
    late = wait_all([unlisted], KERNEL_MARK, UNLISTED_WATCH)[unlisted.spec.name]
    assert late is None and KERNEL_MARK not in unlisted.console(), net.evidence(unlisted)
    assert replies(net, listed, "ACK")[-1]["yiaddr"] == STATIC_IP, net.evidence(listed)
    discovers = [e for e in net.events(unlisted) if e.get("type") == "DISCOVER"]
    assert discovers, f"the unlisted VM never asked\n{net.evidence(unlisted)}"
    assert not net.dhcp_replies(unlisted), net.evidence(unlisted)
    assert not net.requested(unlisted), net.evidence(unlisted)
    report_times("listed MAC", net.times(listed, kernel))


# --- 7. HTTP (pybootd's [httpd]) --------------------------------------------
def http_urls(server: Pybootd, name: str) -> set[str]:
    """The URL of *name* on pybootd's web server, as DHCP may give it (the
    port may be left out when it is 80)."""
    port = int(server.sections.get("httpd", {}).get("port", "80"))
    urls = {f"http://{SERVER_IP}:{port}/{name}"}
    return urls | {f"http://{SERVER_IP}/{name}"} if port == 80 else urls


def http_whole(net: BootNet, vm: Vm, server: Pybootd, expected: Mapping[str, int]) -> None:
    """Each path of *expected* reached *vm* whole over HTTP from pybootd, and
    no request of the VM got an error."""
    port = int(server.sections.get("httpd", {}).get("port", "80"))
    statuses = net.http_statuses(vm)
    assert statuses, f"no HTTP response reached the VM\n{net.evidence(vm)}"
    for status in statuses:
        assert status["src"] == f"{SERVER_IP}:{port}", status
        assert status["code"] < 400, f"{status}\n{net.evidence(vm)}"
    served = net.http_served(vm)
    for path, length in expected.items():
        assert served.get(path) == length, (f"{path}: {served.get(path)} bytes over HTTP, "
                                            f"expected {length}\n{net.evidence(vm)}")


def no_tftp(net: BootNet) -> None:
    """Not one TFTP packet crossed the VMs' taps: the watcher saw no datagram
    to or from port 69, and tshark finds no TFTP in the capture (which holds
    every UDP datagram and the HTTP requests whole)."""
    packets = net.tftp_packets()
    assert not packets, f"TFTP on the wire: {packets[:5]}\n{net.evidence()}"
    for pcap in net.stop_watchers():
        found = net.lab.run(None, ["tshark", "-n", "-r", str(pcap), "-Y",
                                   "tftp || udp.port == 69"], timeout=120).stdout
        assert not found.strip(), f"tshark found TFTP in {pcap}:\n{found[:2000]}"
        gets = net.lab.run(None, ["tshark", "-n", "-r", str(pcap), "-Y", "http.request"],
                           timeout=120).stdout
        assert len(gets.splitlines()) >= 3, f"{pcap}: tshark sees no HTTP requests:\n{gets}"


def ipxe_acks(net: BootNet, vm: Vm) -> list[Event]:
    """pybootd's ACKs to the exchanges in which iPXE asked (option 175 or 77)."""
    requests = [e for e in net.events(vm) if e.get("proto") == "dhcp" and e["op"] == 1]
    xids = {e["xid"] for e in requests if e["opt"].get("77") == "iPXE" or "175" in e["opt"]}
    assert xids, f"iPXE never asked\n{net.evidence(vm)}"
    return [e for e in replies(net, vm, "ACK") if e["xid"] in xids]


def test_uefi_http_boot(net: BootNet, boot_files: BootFiles, report_times: Report) -> None:
    """etc/uefi-http.ini: OVMF's own UEFI HTTP Boot (PXE off, virtio-net) gets
    snponly.efi's URL on pybootd's web server; that iPXE asks again (option
    175) and gets boot.ipxe's URL; the script, kernel and initrd come over
    HTTP. Not one TFTP packet on the wire."""
    needs("uefi-http")
    require_tools("tshark")
    server = start_sample(net, boot_files, "uefi-http.ini")
    vm = net.vm("uefi-http")
    kernel = booted(net, vm, net.boot([vm]))
    requests = [e for e in net.events(vm) if e.get("proto") == "dhcp" and e["op"] == 1]
    firmware = [e for e in requests if e["opt"].get("60", "").startswith("HTTPClient")]
    assert firmware, f"the firmware never asked as an HTTP Boot client\n{net.evidence(vm)}"
    assert {e["opt"].get("93") for e in firmware} == {16}, firmware
    firmware_acks = [e for e in replies(net, vm, "ACK")
                     if e["xid"] in {f["xid"] for f in firmware}]
    assert firmware_acks, f"no ACK to the HTTP Boot client\n{net.evidence(vm)}"
    for ack in firmware_acks:
        # HTTP Boot takes only an answer with option 60 HTTPClient and a URL
        assert ack["file"] in http_urls(server, SNPONLY), ack
        assert ack["opt"].get("60") == "HTTPClient", ack
    acks = ipxe_acks(net, vm)
    assert acks and all(a["file"] in http_urls(server, IPXE_SCRIPT) for a in acks), acks
    http_whole(net, vm, server, {f"/{SNPONLY}": (IPXE_DIR / SNPONLY).stat().st_size,
                                 f"/{IPXE_SCRIPT}": boot_files.ipxe_script.stat().st_size,
                                 f"/{KERNEL}": size(KERNEL), f"/{INITRD}": size(INITRD)})
    report_times("uefi HTTP Boot -> snponly.efi -> iPXE", net.times(vm, kernel))
    no_tftp(net)
    assert server.stop() == 0, f"SIGTERM: not a clean exit\n{server.log_tail()}"


def test_bios_ipxe_over_http(net: BootNet, boot_files: BootFiles,
                             report_times: Report) -> None:
    """etc/bios-ipxe-http.ini: SeaBIOS + the iPXE ROM asks as iPXE and gets
    boot.ipxe's URL on pybootd's web server (the default ipxe_rom = script);
    the script, kernel and initrd come over HTTP, and no TFTP at all."""
    needs("bios")
    require_tools("tshark")
    server = start_sample(net, boot_files, "bios-ipxe-http.ini")
    vm = net.vm("bios")
    kernel = booted(net, vm, net.boot([vm]))
    acks = ipxe_acks(net, vm)
    assert acks and all(a["file"] in http_urls(server, IPXE_SCRIPT) for a in acks), acks
    assert acks[-1]["yiaddr"] in POOL, acks[-1]
    assert [r.split()[1] for r in net.http_requests(vm)][:1] == [f"/{IPXE_SCRIPT}"], \
        net.http_requests(vm)
    http_whole(net, vm, server, {f"/{IPXE_SCRIPT}": boot_files.ipxe_script.stat().st_size,
                                 f"/{KERNEL}": size(KERNEL), f"/{INITRD}": size(INITRD)})
    report_times("bios iPXE over HTTP", net.times(vm, kernel))
    no_tftp(net)
    assert server.stop() == 0, f"SIGTERM: not a clean exit\n{server.log_tail()}"
