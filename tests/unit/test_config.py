"""Configuration: typed values and FILE:LINE: section.key errors."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

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
    # Never the configuration's folder: that would serve pybootd.ini and the leases.
    assert config.tftp.root_path == Path("/srv/tftp") and not config.tftp.root_set
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
    ("[bootfile]\nipxe-efi64 = x.efi\n",
     ":2: bootfile.ipxe-efi64: unknown architecture (did you mean 'ipxe-efi-x64'?)"),
    ("[bootfile]\nipxe-zzzzzz = x.efi\n",
     ":2: bootfile.ipxe-zzzzzz: unknown architecture (expected ipxe-ARCH"),
    ("[bootfile]\nefi-bc = a.efi\n9 = b.efi\n",
     ":3: bootfile.9: architecture 9 (efi-bc) is already set at line 2"),
    ("[bootfile]\nefi-x64 = a.efi\n7 = b.efi\n",
     ":3: bootfile.7: architecture 7 (efi-x64) is already set at line 2"),
    ("[bootfile]\nipxe-bios = a\nipxe-0 = b\n",
     ":3: bootfile.ipxe-0: architecture 0 (bios) is already set at line 2"),
    (f"[bootp]\npool_start = 192.0.2.10\nboot_file = {'b' * 128}\n",
     ":3: bootp.boot_file: the name is 128 bytes long (expected at most 127 bytes"),
    (f"[bootfile]\nbios = pxelinux.0\nefi-x64 = {'e' * 100}/{'x' * 27}.efi\n",
     ":3: bootfile.efi-x64: the name is 132 bytes long (expected at most 127 bytes"),
    (f"[bootfile]\nipxe = http://{'h' * 120}/boot.ipxe\n",
     ":2: bootfile.ipxe: the name is 137 bytes long"),
    (f"[tftp]\nroot = http://mirror.example/{'d' * 95}/\n[bootfile]\nhttp-x64 = shimx64.efi\n",
     ":4: bootfile.http-x64: [tftp] root + this name is 129 bytes long"),
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
    assert config.uuid == {"4C4C4544-0042-3510-8052-B4C04F4B4E31": True}  # as dmidecode prints
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


@pytest.mark.parametrize("order", ["group first", "explicit first"])
def test_explicit_architecture_overrides_the_one_a_group_implies(order: str) -> None:
    lines = ["efi-x64 = grubx64.efi", "efi-bc = ebc.efi"]
    if order == "explicit first":
        lines.reverse()
    config = parse_config("[bootfile]\n" + "\n".join(lines) + "\n", PATH)
    assert config.bootfiles == {7: "grubx64.efi", 9: "ebc.efi"}


def test_ipxe_files_per_architecture() -> None:
    config = parse_config("""
[bootfile]
efi-x64 = ipxe.efi
IPXE-EFI-X64 = debian-installer/amd64/grubx64.efi
ipxe-bios = pxelinux.0
ipxe-11 = arm.ipxe
ipxe = boot.ipxe
""", PATH)
    assert config.bootfiles == {7: "ipxe.efi", 9: "ipxe.efi"}
    assert config.ipxe_bootfiles == {7: "debian-installer/amd64/grubx64.efi",
                                     9: "debian-installer/amd64/grubx64.efi",
                                     0: "pxelinux.0", 11: "arm.ipxe"}
    assert config.ipxe_bootfile == "boot.ipxe"


def test_boot_file_of_127_bytes_fits() -> None:
    name = "b" * 127
    config = parse_config(f"[bootp]\npool_start = 192.0.2.10\nboot_file = {name}\n"
                          f"[bootfile]\nbios = {name}\n", PATH)
    assert config.bootp is not None and config.bootp.boot_file == name
    assert config.bootfiles[0] == name


def test_uuid_keys_any_case_read_as_dmidecode_prints_them() -> None:
    config = parse_config("[uuid]\n4c4c4544-0042-3510-8052-b4c04f4b4e31 = on\n", PATH)
    assert config.uuid == {"4C4C4544-0042-3510-8052-B4C04F4B4E31": True}


# --- inline comments and quotes ---------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    # the README's own line
    ("[bootp]\npool_start = 192.0.2.10\nallow_simple_dhcp = enable   ; plain clients too\n",
     lambda c: c.bootp.allow_simple_dhcp is True),
    ("[bootp]\npool_start = 192.0.2.10 # first address\nboot_file = pxelinux.0 ; BIOS\n",
     lambda c: (str(c.bootp.pool_start), c.bootp.boot_file) == ("192.0.2.10", "pxelinux.0")),
    ("[tftp]  ; the TFTP server\nport = 6969\t; tab before the comment\n",
     lambda c: c.tftp.port == 6969),
    ("[filters]\npxelinux.cfg/* = menu.cfg   ; every probe\n",
     lambda c: c.filters[0].target == "menu.cfg"),
    ("[filters]\nstartup = [dir/{filename}.cfg] # indirection\n",
     lambda c: (c.filters[0].target, c.filters[0].indirect) == ("dir/{filename}.cfg", True)),
    ("[mac]\nAA-BB-CC-DD-EE-FF = enable ; lab PC\n",
     lambda c: c.mac == {"aa:bb:cc:dd:ee:ff": True}),
    ("[bootfile]\nbios = undionly.kpxe # iPXE first\n",
     lambda c: c.bootfiles[0] == "undionly.kpxe"),
    ("[static_dhcp]\naa:bb:cc:dd:ee:01 = 192.0.2.5 ; printer\n",
     lambda c: str(c.static_dhcp["aa:bb:cc:dd:ee:01"]) == "192.0.2.5"),
    # "#" or ";" with no whitespace before it is part of the value
    ("[bootfile]\nipxe = http://192.0.2.1/boot.ipxe#frag\n",
     lambda c: c.ipxe_bootfile == "http://192.0.2.1/boot.ipxe#frag"),
    ("[bootfile]\nbios = a;b#c\n", lambda c: c.bootfiles[0] == "a;b#c"),
    # quotes keep what they hold, comment characters and spaces included
    ('[bootfile]\nbios = "odd ; name #1" ; a comment\n',
     lambda c: c.bootfiles[0] == "odd ; name #1"),
    ("[filters]\nx = 'dir #2/{filename}'\n", lambda c: c.filters[0].target == "dir #2/{filename}"),
])
def test_inline_comments_and_quotes(text: str, want: Any) -> None:
    assert want(parse_config(text, PATH))


@pytest.mark.parametrize(("text", "needle"), [
    ('[bootfile]\nbios = "pxelinux.0\n', ':2: bootfile.bios: no closing " in \'"pxelinux.0\''),
    ("[bootfile]\nbios = 'a' b\n", ":2: bootfile.bios: 'b' after the closing '"),
    # a comment is not a value: the key is empty
    ("[bootp]\npool_start = 192.0.2.10\nboot_file =   ; none\n", ":3: bootp.boot_file: empty"),
])
def test_quote_and_comment_errors(text: str, needle: str) -> None:
    message = error_of(text)
    assert message.startswith("/etc/pybootd/test.ini:") and needle in message, message


# --- durations -------------------------------------------------------------------

@pytest.mark.parametrize(("value", "seconds"), [
    ("3600", 3600), ("1h", 3600), ("30m", 1800), ("90s", 90), ("2d", 172800),
    ("1h30m", 5400), ("1h 30m", 5400), ("1.5h", 5400), ("1d2h3m4s", 93784), ("90S", 90),
])
def test_lease_time_with_units(value: str, seconds: int) -> None:
    config = parse_config(f"[bootp]\npool_start = 192.0.2.10\nlease_time = {value}\n", PATH)
    assert config.bootp is not None and config.bootp.lease_time == seconds
    assert isinstance(config.bootp.lease_time, int)


@pytest.mark.parametrize(("section", "key", "value", "seconds"), [
    ("daemon", "stats_interval", "5m", 300.0),
    ("daemon", "shutdown_grace", "1m30s", 90.0),
    ("daemon", "shutdown_grace", "2.5", 2.5),
    ("tftp", "timeout", "500ms", 0.5),
    ("tftp", "http_timeout", "10s", 10.0),
    ("tftp", "stale_max", "1d", 86400.0),
    ("bootp", "timeout", "1.5s", 1.5),
])
def test_every_seconds_key_takes_units(section: str, key: str, value: str,
                                       seconds: float) -> None:
    text = f"[{section}]\n{key} = {value}\n"
    if section == "bootp":
        text += "pool_start = 192.0.2.10\n"
    config = parse_config(text, PATH)
    assert getattr(getattr(config, section), key) == seconds


@pytest.mark.parametrize(("text", "needle"), [
    ("[bootp]\npool_start = 192.0.2.10\nlease_time = 1x\n",
     ":3: bootp.lease_time: '1x' is not a duration (expected seconds, or numbers with units "
     "d, h, m, s, ms in that order, e.g. 90, 1h30m; 60s (1m)..2147483647s)"),
    ("[bootp]\npool_start = 192.0.2.10\nlease_time = 30s\n",
     ":3: bootp.lease_time: 30s is out of range (expected 60s (1m)..2147483647s)"),
    ("[bootp]\npool_start = 192.0.2.10\nlease_time = 90.5s\n",
     ":3: bootp.lease_time: 90.5s is 90.5 seconds (expected whole seconds)"),
    ("[bootp]\npool_start = 192.0.2.10\nlease_time = 30m1h\n",
     ":3: bootp.lease_time: '30m1h' is not a duration"),
    ("[daemon]\nshutdown_grace = 11m\n",
     ":2: daemon.shutdown_grace: 11m is out of range (expected 0s..600s (10m))"),
    ("[tftp]\ntimeout = soon\n", ":2: tftp.timeout: 'soon' is not a duration"),
    ("[tftp]\nstale_max = 1y\n", ":2: tftp.stale_max: '1y' is not a duration"),
])
def test_duration_errors(text: str, needle: str) -> None:
    message = error_of(text)
    assert message.startswith("/etc/pybootd/test.ini:") and needle in message, message


# --- filter targets ----------------------------------------------------------------

@pytest.mark.parametrize(("target", "needle"), [
    ("efi/{filname}", "filters.*.efi: unknown placeholder {filname} (did you mean "
     "'{filename}'?) (expected {filename}, the requested name)"),
    ("efi/{file}", "unknown placeholder {file} (did you mean '{filename}'?)"),
    ("[dir/{name}.cfg]", "unknown placeholder {name}"),
    ("../{filename}", "filters.*.efi: '../{filename}' has a '..' component, which could "
     "leave the root"),
    ("efi/../../etc/{filename}", "has a '..' component"),
])
def test_filter_target_errors(target: str, needle: str) -> None:
    message = error_of(f"[filters]\n*.efi = {target}\n")
    assert message.startswith("/etc/pybootd/test.ini:2: ") and needle in message, message


def test_filter_targets_the_administrator_chose_may_use_dotdot() -> None:
    """An absolute target or an indirection file is the administrator's, not a client's."""
    config = parse_config("[filters]\na = /srv/pub/../boot/{filename}\nb = [../menus/b.cfg]\n",
                          PATH)
    assert [r.target for r in config.filters] == ["/srv/pub/../boot/{filename}",
                                                  "../menus/b.cfg"]


# --- [httpd] ---------------------------------------------------------------------

def test_httpd_section_turns_http_on_with_defaults() -> None:
    assert parse_config("", PATH).httpd is None
    httpd = parse_config("[httpd]\n", PATH).httpd
    assert httpd is not None and httpd.port == 80 and httpd.scheme == "http"
    assert httpd.base_url("192.0.2.1") == "http://192.0.2.1/"  # the TFTP server's address
    own = parse_config("[httpd]\naddress = 192.0.2.9\nport = 8080\n", PATH).httpd
    assert own is not None and own.base_url("192.0.2.1") == "http://192.0.2.9:8080/"


def test_httpd_tls_needs_both_files() -> None:
    tls = parse_config("[httpd]\nport = 443\ntls_cert = c.pem\ntls_key = k.pem\n", PATH).httpd
    assert tls is not None and tls.scheme == "https"
    assert tls.tls_cert == Path("/etc/pybootd/c.pem")
    assert tls.base_url("192.0.2.1") == "https://192.0.2.1/"
    assert error_of("[httpd]\ntls_cert = c.pem\n") == (
        "/etc/pybootd/test.ini:2: httpd.tls_key: tls_cert without tls_key (expected both, "
        "for HTTPS, or neither)")


def test_httpd_bad_values_say_what_is_expected() -> None:
    assert error_of("[httpd]\nport = 80x\n") == (
        "/etc/pybootd/test.ini:2: httpd.port: '80x' is not a whole number (expected 0..65535)")
    assert "httpd.tls: unknown key (did you mean 'tls_key'?)" in error_of("[httpd]\ntls = on\n")
    assert "unknown section [htttpd] (did you mean 'httpd'?)" in error_of("[htttpd]\n")


def test_lease_store_urls() -> None:
    base = "[daemon]\nstate_dir = /var/lib/x\n[bootp]\npool_start = 198.51.100.10\n"
    default = parse_config(base, Path("/etc/pybootd.ini"))
    assert (default.lease_store.kind, default.lease_store.path) == (
        "sqlite", Path("/var/lib/x/leases.sqlite"))
    alias = parse_config(base + "lease_file = l.sqlite\n", Path("/etc/pybootd.ini"))
    assert alias.lease_store.path == Path("/etc/l.sqlite") and not alias.lease_store.shared
    sqlite = parse_config(base + "lease_store = sqlite:///srv/leases.db\n", Path("/etc/p.ini"))
    assert sqlite.lease_store.path == Path("/srv/leases.db")
    pg = parse_config(base + "lease_store = postgresql://pybootd:pw@db/pybootd?sslmode=require\n",
                      Path("/etc/p.ini"))
    assert pg.lease_store.shared and pg.lease_store.path is None
    assert str(pg.lease_store) == "postgresql://pybootd:***@db/pybootd?sslmode=require"


@pytest.mark.parametrize(("line", "message"), [
    ("lease_store = mysql://db/x", "5: bootp.lease_store: 'mysql://db/x' is not a lease store "
     "URL (expected sqlite:///PATH or postgresql://USER@HOST/DATABASE, e.g. "
     "postgresql:///pybootd?host=/run/postgresql)"),
    ("lease_store = sqlite://leases.db", "5: bootp.lease_store: 'sqlite://leases.db' names no "
     "absolute path (expected sqlite:///PATH, three slashes before an absolute path)"),
    ("lease_file = a.db\nlease_store = sqlite:///b.db", "6: bootp.lease_store: set together "
     "with lease_file (expected one of them: lease_file is the older name of lease_store = "
     "sqlite:///PATH)"),
])
def test_lease_store_errors(line: str, message: str) -> None:
    text = f"[daemon]\nstate_dir = /x\n[bootp]\npool_start = 198.51.100.10\n{line}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("/etc/p.ini"))
    assert str(info.value) == f"/etc/p.ini:{message}"
