#!/usr/bin/env python3
"""Capture real DHCP requests as test vectors (``tests/vectors/dhcp/*.bin``).

Runs pybootd's DHCP service in a network namespace, captures the bridge with
``dumpcap``, and drives real clients through their lease cycle: busybox
udhcpc, ISC dhclient, dhcpcd, and firmware in QEMU (iPXE BIOS ROM, iPXE EFI
ROM under OVMF, OVMF's own EDK2 PXE stack). Each client request (UDP from
port 68) is written as ``CLIENT-NN-TYPE.bin``; ``tshark`` extracts the UDP
payloads. Needs root; addresses are 198.51.100.0/24 inside namespaces only.

Usage: ``sudo python3 scripts/capture_dhcp_vectors.py [--qemu] [--out DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from dhcplab import DhcpLab, wait_event  # noqa: E402
from netlab import netlab  # noqa: E402

from pybootd.dhcp.packet import parse_packet_untrusted  # noqa: E402

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
IPXE_ROMS = Path("/usr/lib/ipxe/qemu")
# The SMBIOS system UUID given to every VM; the firmware sends it in option 97
# and the codec tests check it reads back as dmidecode prints it.
VM_UUID = "4c4c4544-0042-3510-8051-b4c04f4d3132"


def run_clients(d: DhcpLab) -> None:
    """udhcpc, dhclient and dhcpcd: get, renew, release."""
    ns, ifname = d.client("udhcpc")
    script, log = d.script("udhcpc")
    proc = d.lab.popen(ns, ["udhcpc", "-f", "-i", ifname, "-s", str(script), "-t", "5",
                            "-T", "1", "-V", "udhcp 1.35.0"])
    wait_event(log, "bound")
    os.kill(proc.pid, signal.SIGUSR1)
    wait_event(log, "renew")
    os.kill(proc.pid, signal.SIGUSR2)
    wait_event(log, "deconfig", after=2)
    d.lab.stop(proc)

    ns, ifname = d.client("dhcl")
    script, log = d.script("dhcl")
    files = ["-sf", str(script), "-lf", str(d.workdir / "dhcl.leases"),
             "-pf", str(d.workdir / "dhcl.pid")]
    proc = d.lab.popen(ns, ["dhclient", "-d", "-4", *files, ifname])
    wait_event(log, "BOUND")
    d.lab.run(ns, ["dhclient", "-4", "-r", *files, ifname], timeout=30, check=False)
    d.lab.stop(proc)

    ns, ifname = d.client("dhcpcd")
    script, log = d.script("dhcpcd")
    shell = ("mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib/dhcpcd && "
             f"exec dhcpcd -B -4 -A -L -f /dev/null -c {script} {ifname}")
    proc = d.lab.popen(ns, ["unshare", "-m", "sh", "-c", shell])
    wait_event(log, "BOUND")
    d.lab.run(None, ["nsenter", "-t", str(proc.pid), "-m", "-n", "dhcpcd", "-4", "-k", ifname],
              timeout=20, check=False)
    d.lab.stop(proc)


def run_qemu(d: DhcpLab, name: str, device: str, firmware: list[str], seconds: float) -> None:
    """Boot a VM from the network for *seconds*: its DHCP requests are what we want."""
    tap = d.lab.tap(d.server_ns, f"t{name[:5]}{d.lab.tag}"[:15], d.bridge)
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
            "-boot", "n", "-uuid", VM_UUID,
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", device, *firmware, "-serial", "none", "-monitor", "none"]
    proc = d.lab.popen(d.server_ns, argv, stdout=subprocess.DEVNULL)
    time.sleep(seconds)
    d.lab.stop(proc, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "vectors" / "dhcp")
    parser.add_argument("--qemu", action="store_true", help="also boot iPXE/OVMF in QEMU")
    parser.add_argument("--qemu-seconds", type=float, default=40.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with netlab() as lab, tempfile.TemporaryDirectory() as tmp:
        d = DhcpLab(lab, Path(tmp) / "dhcp")
        d.setup()
        d.write_config(bootp={"boot_file": "pxelinux.0"},
                       bootfile={"efi-x64": "grubx64.efi", "ipxe": "boot.ipxe"})
        d.start_server()
        pcap = Path(tmp) / "dhcp.pcapng"
        capture = lab.popen(d.server_ns, ["dumpcap", "-q", "-i", d.bridge, "-f",
                                          "udp port 67 or udp port 68", "-w", str(pcap)])
        time.sleep(2)
        run_clients(d)
        if args.qemu:
            vars_copy = Path(tmp) / "OVMF_VARS.fd"
            shutil.copy(OVMF_VARS, vars_copy)
            ovmf = ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,file={vars_copy}"]
            run_qemu(d, "ipxe", f"e1000,netdev=n0,romfile={IPXE_ROMS / 'pxe-e1000.rom'}", [],
                     args.qemu_seconds)
            run_qemu(d, "ipxeefi", f"e1000,netdev=n0,romfile={IPXE_ROMS / 'efi-e1000.rom'}",
                     ovmf, args.qemu_seconds * 2)
            shutil.copy(OVMF_VARS, vars_copy)
            run_qemu(d, "edk2", "virtio-net-pci,netdev=n0,romfile=", ovmf,
                     args.qemu_seconds * 2)
        time.sleep(1)
        lab.stop(capture, signal.SIGINT)
        fields = lab.run(None, ["tshark", "-r", str(pcap), "-T", "fields", "-e", "eth.src",
                                "-e", "udp.srcport", "-e", "udp.payload"], timeout=60).stdout
        d.stop_server()
        names = {d.mac_of(n): n for n in d.clients}
        count: dict[str, int] = {}
        for line in fields.splitlines():
            words = line.split("\t")
            if len(words) != 3 or words[1] != "68" or not words[2]:
                continue
            data = bytes.fromhex(words[2].replace(":", ""))
            packet = parse_packet_untrusted(data)
            client = names.get(words[0]) or _firmware_name(packet)
            kind = packet.message_type.name.lower() if packet.message_type else "bootp"
            count[client] = count.get(client, 0) + 1
            path = args.out / f"{client}-{count[client]:02d}-{kind}.bin"
            path.write_bytes(data)
            print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    return 0


def _firmware_name(packet: object) -> str:
    from pybootd.dhcp.pxe import client_info

    assert hasattr(packet, "options")
    info = client_info(packet)  # type: ignore[arg-type]
    if info.ipxe:
        return f"ipxe-{info.arch_label}"
    if info.http:
        return f"edk2-http-{info.arch_label}"
    if info.pxe:
        return f"edk2-pxe-{info.arch_label}" if info.arch else "pxe-bios"
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
