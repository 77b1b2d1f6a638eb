"""Option 60/93/94/97/77/175 parsing and the boot file choice."""

from __future__ import annotations

import uuid

from dhcp_helpers import MAC_TEXT, PXE_BIOS, UUID_OPTION, UUID_TEXT, pxe_options, request, settings

from pybootd.dhcp.options import DhcpOption, MessageType
from pybootd.dhcp.pxe import (
    ClientInfo,
    client_info,
    parse_arches,
    parse_uuid,
    parse_vendor_class,
    pxe_vendor_options,
)
from pybootd.dhcp.responder import bootfile_for


def test_vendor_class() -> None:
    assert parse_vendor_class(b"PXEClient:Arch:00007:UNDI:003016") == (7, (3, 16))
    assert parse_vendor_class(b"HTTPClient:Arch:00016:UNDI:003001") == (16, (3, 1))
    assert parse_vendor_class(b"PXEClient") == (None, None)
    assert parse_vendor_class(b"PXEClient:Arch:7x:UNDI:") == (None, None)


def test_arch_list() -> None:
    assert parse_arches(bytes((0, 7, 0, 0))) == (7, 0)
    assert parse_arches(bytes((0, 7, 0))) == ()
    assert parse_arches(None) == ()


def test_uuid_is_shown_as_dmidecode_prints_it() -> None:
    """SMBIOS stores the first three fields little-endian (RFC 4578 2.3)."""
    assert parse_uuid(UUID_OPTION) == UUID_TEXT
    assert parse_uuid(UUID_OPTION[1:]) == UUID_TEXT  # some firmware omit the type
    raw = uuid.UUID(UUID_TEXT).bytes_le
    assert parse_uuid(b"\x00" + raw) == UUID_TEXT
    assert parse_uuid(b"\x00\x01") is None
    assert parse_uuid(b"\x01" + raw) is None


def test_pxe_client() -> None:
    info = client_info(request(MessageType.DISCOVER, options=pxe_options()))
    assert info.mac == MAC_TEXT
    assert info.pxe and not info.http and not info.ipxe and info.netboot
    assert info.arches == (7,) and info.arch_label == "efi-x64"
    assert info.uuid == UUID_TEXT and info.uuid_option == UUID_OPTION
    assert info.undi == (3, 16)


def test_arch_from_vendor_class_when_93_missing() -> None:
    options: dict[int, bytes] = {DhcpOption.VENDOR_CLASS: PXE_BIOS}
    info = client_info(request(MessageType.DISCOVER, options=options))
    assert info.arches == (0,) and info.uuid is None and info.pxe


def test_ipxe_and_http_clients() -> None:
    ipxe = {**pxe_options(), DhcpOption.USER_CLASS: b"iPXE"}
    assert client_info(request(MessageType.DISCOVER, options=ipxe)).ipxe
    encap = {**pxe_options(), DhcpOption.IPXE_ENCAP: bytes((177, 5, 1, 0, 0, 0, 0))}
    assert client_info(request(MessageType.DISCOVER, options=encap)).ipxe
    http = pxe_options(b"HTTPClient:Arch:00016:UNDI:003001", 16)
    info = client_info(request(MessageType.DISCOVER, options=http))
    assert info.http and not info.pxe and info.arch == 16


def test_plain_client() -> None:
    info = client_info(request(MessageType.DISCOVER))
    assert not info.netboot and info.arch is None and info.arch_label == "-"


def test_option_43() -> None:
    assert pxe_vendor_options() == bytes((6, 1, 8, 255))


def test_bootfile_choice() -> None:
    s = settings()
    assert bootfile_for(ClientInfo(MAC_TEXT, arches=(0,), pxe=True), s) == "pxelinux.0"
    assert bootfile_for(ClientInfo(MAC_TEXT, arches=(7,), pxe=True), s) == "grubx64.efi"
    assert bootfile_for(ClientInfo(MAC_TEXT, arches=(99, 9), pxe=True), s) == "grubx64.efi"
    assert bootfile_for(ClientInfo(MAC_TEXT, arches=(7,), pxe=True, ipxe=True), s) \
        == "http://198.51.100.1/boot.ipxe"
    assert bootfile_for(ClientInfo(MAC_TEXT), settings(boot_file=None)) is None


def test_http_boot_file_is_an_http_url_or_nothing() -> None:
    """pybootd runs no HTTP server: a URL as given, else [tftp] root (http) + name."""
    http = ClientInfo(MAC_TEXT, arches=(16,), http=True)
    assert bootfile_for(http, settings()) is None  # relative name, no http root
    assert bootfile_for(http, settings(http_root="https://mirror.example/nb/")) \
        == "https://mirror.example/nb/boot/shimx64.efi"
    assert bootfile_for(http, settings(bootfiles={16: "HTTP://h.example/x.efi"})) \
        == "HTTP://h.example/x.efi"
    assert bootfile_for(http, settings(bootfiles={16: "tftp://h.example/x.efi"},
                                       http_root="http://m.example/")) is None


def test_ipxe_file_of_the_architecture_before_plain_ipxe() -> None:
    s = settings(ipxe_bootfiles={7: "grubx64.efi", 0: "pxelinux.0"})
    assert bootfile_for(ClientInfo(MAC_TEXT, arches=(7,), pxe=True, ipxe=True), s) \
        == "grubx64.efi"
    assert bootfile_for(ClientInfo(MAC_TEXT, arches=(0,), pxe=True, ipxe=True), s) \
        == "pxelinux.0"
    assert bootfile_for(ClientInfo(MAC_TEXT, arches=(11,), pxe=True, ipxe=True), s) \
        == "http://198.51.100.1/boot.ipxe"
    assert bootfile_for(ClientInfo(MAC_TEXT, arches=(11,), pxe=True, ipxe=True),
                        settings(ipxe_bootfiles={7: "x"}, ipxe_bootfile=None)) == "pxelinux.0"
