"""Builders for DHCP unit tests."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pybootd.dhcp.options import DhcpOption, MessageType
from pybootd.dhcp.packet import BOOTREQUEST, DhcpPacket, encode_packet, parse_packet_untrusted
from pybootd.dhcp.responder import Settings

SERVER = IPv4Address("198.51.100.1")
NETWORK = IPv4Network("198.51.100.0/24")
MAC = bytes.fromhex("525400123456")
MAC_TEXT = "52:54:00:12:34:56"
PXE_BIOS = b"PXEClient:Arch:00000:UNDI:002001"
PXE_EFI = b"PXEClient:Arch:00007:UNDI:003016"
# SMBIOS byte order of 4C4C4544-0042-3510-8051-B4C04F4D3132 (first 3 fields LE),
# shown the way dmidecode prints it: upper case
UUID_TEXT = "4C4C4544-0042-3510-8051-B4C04F4D3132"
UUID_OPTION = bytes.fromhex("00" "44454c4c" "4200" "1035" "8051b4c04f4d3132")


def request(kind: MessageType | None, *, mac: bytes = MAC, options: dict[int, bytes] | None = None,
            **fields: Any) -> DhcpPacket:
    """A request as it would arrive (encoded, then parsed)."""
    opts: dict[int, bytes] = {}
    if kind is not None:
        opts[DhcpOption.MESSAGE_TYPE] = bytes((kind,))
    opts.update(options or {})
    packet = DhcpPacket(op=BOOTREQUEST, xid=0x1234, chaddr=mac, options=opts,
                        dhcp=kind is not None or bool(options), **fields)
    return parse_packet_untrusted(encode_packet(packet))


def pxe_options(vendor: bytes = PXE_EFI, arch: int = 7, uuid: bool = True) -> dict[int, bytes]:
    opts: dict[int, bytes] = {
        DhcpOption.VENDOR_CLASS: vendor,
        DhcpOption.CLIENT_ARCH: arch.to_bytes(2, "big"),
        DhcpOption.CLIENT_NDI: bytes((1, 3, 16)),
        DhcpOption.PARAM_REQUEST_LIST: bytes((1, 3, 6, 43, 60, 66, 67, 97)),
    }
    if uuid:
        opts[DhcpOption.CLIENT_UUID] = UUID_OPTION
    return opts


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "server_id": SERVER, "network": NETWORK, "next_server": SERVER,
        "gateway": SERVER, "dns": (IPv4Address("198.51.100.53"),), "domain": "lab.example",
        "lease_time": 3600, "servername": "bootsrv", "boot_file": "pxelinux.0",
        "bootfiles": {7: "grubx64.efi", 9: "grubx64.efi", 16: "boot/shimx64.efi"},
        "ipxe_bootfile": "http://198.51.100.1/boot.ipxe", "allow_simple_dhcp": True,
    }
    values.update(overrides)
    return Settings(**values)
