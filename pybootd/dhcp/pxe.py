"""What a request says about the client: PXE, UEFI HTTP boot, iPXE, UUID.

Sans-IO. Option values from the network are untrusted: a malformed optional
value is treated as absent, never raised.

References: PXE 2.1 specification (option 60 "PXEClient:Arch:xxxxx:UNDI:yyyzzz",
option 43 sub-options), RFC 4578 (options 93, 94, 97), UEFI 2.x section 24.7
(HTTP boot, vendor class "HTTPClient"), iPXE (option 77 "iPXE", option 175).
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass

from pybootd.dhcp.arch import HTTP_BOOT_ARCHES, arch_name
from pybootd.dhcp.options import DhcpOption
from pybootd.dhcp.packet import DhcpPacket

PXE_CLIENT = b"PXEClient"
HTTP_CLIENT = b"HTTPClient"
IPXE_USER_CLASS = b"iPXE"

# PXE 2.1 table 2-1: PXE_DISCOVERY_CONTROL (sub-option 6); bit 3 (value 8)
# means "download the boot file named in the reply, skip boot server discovery".
PXE_DISCOVERY_CONTROL = 6
DISCOVERY_USE_BOOTFILE = 8


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """The client as described by its request options."""

    mac: str
    uuid: str | None = None  # as dmidecode prints it (upper case)
    uuid_option: bytes | None = None  # option 97 as received, to echo
    arches: tuple[int, ...] = ()  # option 93, most preferred first
    vendor_class: bytes | None = None  # option 60 as received
    pxe: bool = False  # option 60 starts with "PXEClient"
    http: bool = False  # option 60 starts with "HTTPClient" (UEFI HTTP boot)
    ipxe: bool = False  # option 77 "iPXE" or option 175 present
    undi: tuple[int, int] | None = None  # (major, minor) from option 60 or 94

    @property
    def arch(self) -> int | None:
        return self.arches[0] if self.arches else None

    @property
    def arch_label(self) -> str:
        return arch_name(self.arch) if self.arch is not None else "-"

    @property
    def netboot(self) -> bool:
        """A firmware boot request (PXE or HTTP boot), not an OS's plain DHCP."""
        return self.pxe or self.http


def parse_vendor_class(raw: bytes) -> tuple[int | None, tuple[int, int] | None]:
    """``PXEClient:Arch:00007:UNDI:003016`` -> (7, (3, 16)); missing parts -> None."""
    parts = raw.split(b":")
    arch = undi = None
    for i in range(1, len(parts) - 1):
        word, value = parts[i], parts[i + 1]
        if word == b"Arch" and len(value) == 5 and value.isdigit():
            arch = int(value)
        elif word == b"UNDI" and len(value) == 6 and value.isdigit():
            undi = (int(value[:3]), int(value[3:]))
    return arch, undi


def parse_arches(raw: bytes | None) -> tuple[int, ...]:
    """Option 93: a list of 16-bit architecture types (RFC 4578 section 2.1)."""
    if raw is None or not raw or len(raw) % 2:
        return ()
    return tuple(int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2))


def parse_uuid(raw: bytes | None) -> str | None:
    """Option 97 -> the UUID as dmidecode prints it (RFC 4578 section 2.3).

    Type 0 then 16 bytes in SMBIOS order: the first three fields are stored
    little-endian (SMBIOS 2.6 section 7.2.1), which ``UUID(bytes_le=...)`` reads.
    dmidecode prints upper-case hex digits (``4C4C4544-0042-3510-8051-B4C04F4D3132``).
    """
    if raw is None:
        return None
    if len(raw) == 17 and raw[0] == 0:
        raw = raw[1:]
    if len(raw) != 16:
        return None
    return str(uuidlib.UUID(bytes_le=raw)).upper()


def client_info(packet: DhcpPacket) -> ClientInfo:
    """Everything pybootd needs to know about the sender of *packet*."""
    opts = packet.options
    vendor = opts.get(DhcpOption.VENDOR_CLASS)
    pxe = vendor is not None and vendor.startswith(PXE_CLIENT)
    http = vendor is not None and vendor.startswith(HTTP_CLIENT)
    arches = parse_arches(opts.get(DhcpOption.CLIENT_ARCH))
    undi = None
    if vendor is not None and (pxe or http):
        vendor_arch, undi = parse_vendor_class(vendor)
        if not arches and vendor_arch is not None:
            arches = (vendor_arch,)
    ndi = opts.get(DhcpOption.CLIENT_NDI)
    if undi is None and ndi is not None and len(ndi) == 3 and ndi[0] == 1:
        undi = (ndi[1], ndi[2])  # RFC 4578 section 2.2: type 1 = UNDI
    user_class = opts.get(DhcpOption.USER_CLASS, b"")
    ipxe = IPXE_USER_CLASS in user_class or DhcpOption.IPXE_ENCAP in opts
    uuid_raw = opts.get(DhcpOption.CLIENT_UUID)
    uuid = parse_uuid(uuid_raw)
    return ClientInfo(
        mac=packet.mac,
        uuid=uuid,
        uuid_option=uuid_raw if uuid is not None else None,
        arches=arches,
        vendor_class=vendor,
        pxe=pxe,
        http=http or any(a in HTTP_BOOT_ARCHES for a in arches[:1]),
        ipxe=ipxe,
        undi=undi,
    )


def pxe_vendor_options() -> bytes:
    """Option 43 for a PXE client: discovery control = 8, then END (PXE 2.1 2.2.5)."""
    return bytes((PXE_DISCOVERY_CONTROL, 1, DISCOVERY_USE_BOOTFILE, 255))
