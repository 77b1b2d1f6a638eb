"""Configuration: typed values and FILE:LINE: section.key errors."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from pybootd.config import parse_config
from pybootd.errors import ConfigError

PATH = Path("/etc/pybootd/test.ini")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, PATH)
    return str(info.value)


def test_defaults() -> None:
    config = parse_config("", PATH)
    assert config.tftp.port == 69 and config.tftp.blocksize == 1468
    assert config.tftp.windowsize == 64 and config.tftp.timeout == 1.0
    assert config.tftp.root_path == Path("/etc/pybootd")
    assert config.bootp is None and config.daemon.user == "nobody"


@pytest.mark.parametrize("word", ["on", "true", "enable", "enabled", "yes", "high", "ok", "1",
                                  "ON", "Yes"])
def test_true_words(word: str) -> None:
    assert parse_config(f"[tftp]\nallow_write = {word}\nupload_dir = /tmp\n", PATH).tftp.allow_write


@pytest.mark.parametrize("word", ["off", "false", "disable", "disabled", "no", "low", "ko", "0"])
def test_false_words(word: str) -> None:
    assert not parse_config(f"[tftp]\noverwrite = {word}\n", PATH).tftp.overwrite


def test_bad_boolean_is_an_error_never_false() -> None:
    message = error_of("[tftp]\n\noverwrite = maybe\n")
    assert message.startswith("/etc/pybootd/test.ini:3: tftp.overwrite: 'maybe' is not a boolean")
    assert "expected" in message


def test_unknown_key_with_hint() -> None:
    message = error_of("[tftp]\nblksize = 512\n")
    assert message.startswith("/etc/pybootd/test.ini:2: tftp.blksize: unknown key")
    assert "did you mean 'blocksize'" in message


def test_unknown_section_with_hint() -> None:
    message = error_of("[tfpt]\n")
    assert "test.ini:1:" in message and "did you mean 'tftp'" in message


@pytest.mark.parametrize(("text", "needle"), [
    ("[tftp]\nblocksize = 7\n", "tftp.blocksize: 7 is out of range (expected 8..65464)"),
    ("[tftp]\nport = http\n", "tftp.port: 'http' is not a whole number"),
    ("[tftp]\nwindowsize = 0\n", "tftp.windowsize: 0 is out of range"),
    ("[tftp]\nroot = /a\nroot = /b\n", ":3: tftp.root: set twice (first at line 2"),
    ("key = value\n", ":1: 'key = value' is outside any section"),
    ("[tftp]\n  port = 69\n", ":2: indented line"),
    ("[tftp]\nport\n", ":2: [tftp]: 'port' is not an entry"),
    ("[bootp]\naccess = mac\npool_start = 192.0.2.10\n",
     "bootp.access: access = mac needs a [mac]"),
    ("[bootp]\n", "bootp.pool_start: missing"),
    ("[mac]\nAA-BB-CC = on\n", "mac.AA-BB-CC: 'AA-BB-CC' is not a MAC address"),
    ("[bootfile]\nefi64 = x.efi\n",
     "bootfile.efi64: unknown architecture (did you mean 'efi-x64'?)"),
    ("[tftp]\nallow_write = on\n", "tftp.allow_write: on, but no upload_dir"),
    ("[logger]\ntype = file\n", "logger.file: type = file needs a file"),
    ("[bootp]\npool_start = 192.0.2.250\npool_count = 10\nnetmask = 255.255.255.0\n",
     "bootp.pool_count: the pool ends at 192.0.3.3, outside 192.0.2.0/24"),
    ("[static_dhcp]\naa:bb:cc:dd:ee:01 = 192.0.2.5\naa:bb:cc:dd:ee:02 = 192.0.2.5\n",
     ":3: static_dhcp.aa:bb:cc:dd:ee:02: 192.0.2.5 is already reserved"),
])
def test_errors_name_file_line_section_key(text: str, needle: str) -> None:
    message = error_of(text)
    assert message.startswith("/etc/pybootd/test.ini:")
    assert needle in message


def test_sections_of_the_original_format() -> None:
    config = parse_config("""
[logger]
type = stderr
level = info

[bootp]
allow_simple_dhcp = enable
pool_start = 192.0.2.100
dns = 198.51.100.53, 198.51.100.54
boot_file = pxelinux.0
access = mac
notify = 192.0.2.5:5000 192.0.2.6:5001

[mac]
AA-BB-CC-DD-EE-FF = enable
11:22:33:44:55:66 = disable

[uuid]
4C4C4544-0042-3510-8052-B4C04F4B4E31 = enable

[tftp]
root = http://deb.example/debian/dists/bookworm/main/installer-amd64/current/images/netboot

[filters]
pxelinux.cfg/* = /etc/pybootd/pxe.cfg
startup = [dir/{filename}.cfg]

[bootfile]
bios = pxelinux.0
efi-x64 = bootnetx64.efi
16 = http://192.0.2.1/ipxe.efi
ipxe = http://192.0.2.1/boot.ipxe
""", PATH)
    assert config.bootp is not None and config.bootp.allow_simple_dhcp
    assert config.bootp.dns == (IPv4Address("198.51.100.53"), IPv4Address("198.51.100.54"))
    assert config.bootp.notify == (("192.0.2.5", 5000), ("192.0.2.6", 5001))
    assert config.mac == {"aa:bb:cc:dd:ee:ff": True, "11:22:33:44:55:66": False}
    assert config.uuid == {"4c4c4544-0042-3510-8052-b4c04f4b4e31": True}
    assert config.tftp.root_url is not None and config.tftp.root_url.endswith("/netboot/")
    assert [(r.pattern, r.target, r.indirect) for r in config.filters] == [
        ("pxelinux.cfg/*", "/etc/pybootd/pxe.cfg", False),
        ("startup", "dir/{filename}.cfg", True)]
    assert config.bootfiles[0] == "pxelinux.0"
    assert config.bootfiles[7] == config.bootfiles[9] == "bootnetx64.efi"
    assert config.bootfiles[16] == "http://192.0.2.1/ipxe.efi"
    assert config.ipxe_bootfile == "http://192.0.2.1/boot.ipxe"


def test_relative_paths_are_relative_to_the_config_folder() -> None:
    config = parse_config("[tftp]\nroot = boot\n[daemon]\nstate_dir = ./state\n", PATH)
    assert config.tftp.root_path == Path("/etc/pybootd/boot")
    assert config.daemon.state_dir == Path("/etc/pybootd/state")


def test_sizes() -> None:
    config = parse_config("[tftp]\ncache_size = 2G\nmax_upload_size = 512k\n", PATH)
    assert config.tftp.cache_size == 2 * 1024**3
    assert config.tftp.max_upload_size == 512 * 1024
