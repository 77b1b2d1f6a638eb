"""The configuration: read the INI file once into typed, validated objects.

Every error reads ``FILE:LINE: section.key: what is wrong (expected ...)``.
Nothing outside this module sees the raw INI text.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path
from typing import Any, Literal

from pybootd import configvalues as v
from pybootd.dhcp.arch import BOOTFILE_NAMES, HTTP_BOOT_ARCHES, IPXE_BOOTFILE_KEY, arch_name
from pybootd.errors import ConfigError
from pybootd.ini import Entry, Section, parse_ini
from pybootd.tftp.filters import FILENAME_VAR

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# tftpd-hpa's root on Debian. Never the configuration's folder: TFTP would
# serve the configuration and the leases.
DEFAULT_ROOT = Path("/srv/tftp")


@dataclass(frozen=True)
class LoggerConfig:
    type: str = "stderr"
    level: str = "info"
    file: Path | None = None
    format: str = "text"  # text | json (one object per line)


@dataclass(frozen=True)
class DaemonConfig:
    user: str = "nobody"
    group: str | None = None
    state_dir: Path = Path("/var/lib/pybootd")
    stats_interval: float = 60.0
    shutdown_grace: float = 5.0
    workers: int = 16


@dataclass(frozen=True)
class TftpConfig:
    address: str = ""  # "" = every local address (or the DHCP server's when both run)
    address_set: bool = False
    port: int = 69
    root_path: Path | None = DEFAULT_ROOT  # a local folder ...
    root_url: str | None = None  # ... or an http(s) URL prefix
    root_set: bool = False  # False: root_path is DEFAULT_ROOT, the key was not given
    blocksize: int = 1468
    windowsize: int = 64
    timeout: float = 1.0
    retries: int = 5
    max_sessions: int = 1000
    allow_write: bool = False
    upload_dir: Path | None = None
    overwrite: bool = False
    max_upload_size: int = 1024**3
    upload_quota: int = 4 * 1024**3  # bytes upload_dir may hold in all (existing files too)
    max_client_sessions: int = 16  # concurrent transfers per client address
    cache_dir: Path | None = None
    cache_size: int = 1024**3
    http_timeout: float = 5.0
    stale_max: float = 86400.0  # seconds a cached file is served while the mirror fails
    busy_poll: int = 100  # microseconds; 0 = off (see pybootd.server.tftp_pump)


@dataclass(frozen=True)
class FilterRule:
    """``pattern = target`` of ``[filters]``; ``indirect`` for ``[path]`` targets."""

    pattern: str
    target: str
    indirect: bool
    line: int


@dataclass(frozen=True)
class BootfileEntry:
    """One ``[bootfile]`` line as written: ``key`` (lower case), the file, its line."""

    key: str
    file: str
    line: int


Gateway = IPv4Address | Literal["auto", "none"]


@dataclass(frozen=True)
class BootpConfig:
    mode: str = "server"  # "server" | "proxy"
    address: str = "0.0.0.0"
    port: int = 67
    pxe_port: int = 4011  # proxyDHCP boot service (PXE 2.1); 0 = off
    interface: str | None = None
    pool_start: IPv4Address | None = None
    pool_count: int = 50
    netmask: IPv4Address | None = None
    gateway: Gateway = "auto"
    dns: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    lease_time: int = 86400
    servername: str | None = None
    boot_file: str | None = "pxelinux.0"
    next_server: IPv4Address | None = None
    allow_simple_dhcp: bool = False
    ipxe_rom: str = "script"  # script | chainload: what an iPXE firmware gets first
    access: str = "none"  # none | mac | uuid | http
    notify: tuple[tuple[str, int], ...] = ()
    timeout: float = 1.5
    lease_file: Path | None = None  # the original pybootd's key: sqlite:///lease_file
    lease_store: str | None = None  # sqlite:///PATH or postgresql://...


@dataclass(frozen=True)
class StoreLocation:
    """Where leases live: an SQLite file (one pybootd) or a PostgreSQL database (several)."""

    kind: Literal["sqlite", "postgresql"]
    path: Path | None = None  # sqlite
    conninfo: str | None = None  # postgresql: libpq URL or key=value string, may hold a password

    @property
    def shared(self) -> bool:
        """Several pybootd instances may use it at once."""
        return self.kind == "postgresql"

    def __str__(self) -> str:
        """For logs and --check: never a password."""
        if self.path is not None:
            return str(self.path)
        return v.redact(self.conninfo or "")


@dataclass(frozen=True)
class HttpdConfig:
    """``[httpd]``: the TFTP root served over HTTP (UEFI HTTP Boot, iPXE)."""

    address: str = ""  # "" = the TFTP address (the DHCP server's when both run)
    address_set: bool = False
    port: int = 80
    tls_cert: Path | None = None  # both, or neither: HTTPS
    tls_key: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    def base_url(self, fallback_host: str) -> str:
        """``http://HOST[:PORT]/`` that DHCP hands out: HOST is ``address``
        when it names one IPv4 address, else *fallback_host* (the TFTP server)."""
        host = fallback_host
        with contextlib.suppress(ValueError):
            address = ip_address(self.address)
            if address.version == 4 and not address.is_unspecified:
                host = str(address)
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{host}{'' if self.port == default else f':{self.port}'}/"


@dataclass(frozen=True)
class ApiConfig:
    """``[api]``: the control plane (metrics, JSON, status page), apart from [httpd]."""

    address: str = "127.0.0.1"
    port: int = 9469
    token: str | None = None  # then every data request needs "Authorization: Bearer TOKEN"


@dataclass(frozen=True)
class HttpAclConfig:
    location: str = ""
    pxe: str = ""
    dhcp: str = ""


@dataclass(frozen=True)
class Config:
    path: Path
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    tftp: TftpConfig = field(default_factory=TftpConfig)
    filters: tuple[FilterRule, ...] = ()
    bootp: BootpConfig | None = None
    mac: Mapping[str, bool] = field(default_factory=dict)  # "aa:bb:..." -> allowed
    uuid: Mapping[str, bool] = field(default_factory=dict)  # upper-case UUID -> allowed
    http: HttpAclConfig | None = None
    httpd: HttpdConfig | None = None  # None: no HTTP server
    api: ApiConfig | None = None  # None: no control API
    static_dhcp: Mapping[str, IPv4Address] = field(default_factory=dict)
    bootfiles: Mapping[int, str] = field(default_factory=dict)  # option 93 value -> file
    ipxe_bootfile: str | None = None
    ipxe_bootfiles: Mapping[int, str] = field(default_factory=dict)  # ipxe-ARCH keys
    bootfile_entries: tuple[BootfileEntry, ...] = ()  # [bootfile] in file order
    lines: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def error(self, section: str, key: str | None, message: str) -> ConfigError:
        """A ConfigError pointing at ``section.key`` in this file.

        When the key is not in the file the value is a default the reader
        never wrote: the message says so and where to choose another.
        """
        line = self.lines.get((section, key or ""))
        if key is not None and line is None:
            message += f" (not set, so the default: set [{section}] {key})"
        return ConfigError(message, path=str(self.path), line=line, section=section, key=key)

    @property
    def lease_file(self) -> Path:
        """The SQLite file (the default store); see :attr:`lease_store` for PostgreSQL."""
        assert self.bootp is not None
        store = self.lease_store
        return store.path if store.path is not None else self.daemon.state_dir / "leases.sqlite"

    @property
    def lease_store(self) -> StoreLocation:
        """``[bootp] lease_store``, or ``lease_file``, or ``STATE_DIR/leases.sqlite``."""
        assert self.bootp is not None
        url = self.bootp.lease_store
        if url is None:
            return StoreLocation("sqlite", path=self.bootp.lease_file
                                 or self.daemon.state_dir / "leases.sqlite")
        scheme, _, rest = url.partition("://")
        if scheme.lower() == "sqlite":
            return StoreLocation("sqlite", path=Path(rest))
        return StoreLocation("postgresql", conninfo=url)

    @property
    def lease_store_key(self) -> tuple[str, str]:
        """The key an error about the store points at."""
        assert self.bootp is not None
        if self.bootp.lease_store is not None:
            return ("bootp", "lease_store")
        return ("bootp", "lease_file") if self.bootp.lease_file else ("daemon", "state_dir")

    @property
    def cache_dir(self) -> Path:
        return self.tftp.cache_dir or self.daemon.state_dir / "cache"


Parser = Callable[[str], Any]

_SCHEMA: dict[str, dict[str, Parser]] = {
    "logger": {
        "type": v.choice("stderr", "file", "syslog", "none"),
        "level": v.choice(*LOG_LEVELS),
        "file": v.text,
        "format": v.choice("text", "json"),
    },
    "daemon": {
        "user": v.text,
        "group": v.text,
        "state_dir": v.text,
        "stats_interval": v.duration(0.1, 86400),
        "shutdown_grace": v.duration(0, 600),
        "workers": v.integer(1, 256),
    },
    "tftp": {
        "address": v.listen_address,
        "port": v.integer(0, 65535),  # 0: any free port, named in the log (tests)
        "root": v.text,
        "blocksize": v.integer(8, 65464),  # RFC 2348 range
        "windowsize": v.integer(1, 65535),  # RFC 7440 range
        "timeout": v.duration(0.01, 255),  # RFC 2349 allows 1..255 from clients
        "retries": v.integer(0, 100),
        "max_sessions": v.integer(1, 100000),
        "allow_write": v.boolean,
        "upload_dir": v.text,
        "overwrite": v.boolean,
        "max_upload_size": v.size,
        "upload_quota": v.size,
        "max_client_sessions": v.integer(1, 100000),
        "cache_dir": v.text,
        "cache_size": v.size,
        "http_timeout": v.duration(0.1, 600),
        "stale_max": v.duration(0, 365 * 86400),
        "busy_poll": v.integer(0, 10000),
    },
    "bootp": {
        "mode": v.choice("server", "proxy"),
        "address": v.ipv4,
        "port": v.integer(0, 65535),  # 0: any free port, named in the log (tests)
        "pxe_port": v.integer(0, 65535),
        "interface": v.text,
        "pool_start": v.ipv4,
        "pool_count": v.integer(1, 65536),
        "netmask": v.netmask,
        "gateway": lambda s: s.strip().lower() if s.strip().lower() in ("none", "auto")
        else v.ipv4(s),
        "dns": v.ipv4_list,
        "domain": v.hostname,
        "lease_time": v.whole_duration(60, 2**31 - 1),
        "servername": v.hostname,
        "boot_file": v.boot_file,
        "next_server": v.ipv4,
        "allow_simple_dhcp": v.boolean,
        "ipxe_rom": v.choice("script", "chainload"),
        "access": v.choice("none", "mac", "uuid", "http"),
        "notify": v.host_port_list,
        "timeout": v.duration(0.05, 60),
        "lease_file": v.text,
        "lease_store": v.lease_store,
    },
    "http": {"location": v.http_url, "pxe": v.url_path, "dhcp": v.url_path},
    "api": {"address": v.listen_address, "port": v.integer(0, 65535), "token": v.text},
    "httpd": {
        "address": v.listen_address,
        "port": v.integer(0, 65535),  # 0: any free port, named in the log (tests)
        "tls_cert": v.text,
        "tls_key": v.text,
    },
}

# Sections whose keys are data (patterns, MACs, UUIDs, architectures).
_DATA_SECTIONS = ("filters", "mac", "uuid", "static_dhcp", "bootfile")
_ALL_SECTIONS = tuple(_SCHEMA) + _DATA_SECTIONS


class _Reader:
    """Turns parsed sections into typed values, with file:line errors."""

    def __init__(self, path: Path, sections: dict[str, Section]) -> None:
        self.path = path
        self.sections = sections
        self.lines: dict[tuple[str, str], int] = {}

    def fail(self, message: str, line: int | None, section: str, key: str | None) -> ConfigError:
        return ConfigError(message, path=str(self.path), line=line, section=section, key=key)

    def typed(self, name: str) -> dict[str, Any]:
        """Parse every key of a schema section; unknown keys are errors."""
        section = self.sections.get(name)
        if section is None:
            return {}
        schema = _SCHEMA[name]
        values: dict[str, Any] = {}
        for entry in section.entries:
            key = entry.key.lower()
            if key not in schema:
                raise self.fail(
                    f"unknown key{_hint(key, schema)} (expected one of {', '.join(schema)})",
                    entry.line,
                    name,
                    entry.key,
                )
            values[key] = self.parse(schema[key], entry, name)
            self.lines[(name, key)] = entry.line
        return values

    def parse(self, parser: Parser, entry: Entry, section: str) -> Any:
        try:
            return parser(entry.value)
        except ValueError as exc:
            raise self.fail(str(exc), entry.line, section, entry.key) from None

    def entries(self, name: str) -> list[Entry]:
        section = self.sections.get(name)
        if section is not None:
            self.lines[(name, "")] = section.line
        return section.entries if section else []

    def path_value(self, text: str) -> Path:
        """A path; relative ones are relative to the config file's folder."""
        candidate = Path(text).expanduser()
        return candidate if candidate.is_absolute() else (self.path.parent / candidate).resolve()


def _hint(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_config(path: str | Path) -> Config:
    """Read and validate *path*. Raises :class:`ConfigError`."""
    config_path = Path(path)
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("configuration file not found", path=str(config_path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration ({exc.strerror or exc}): expected "
                          "-c FILE, a readable INI file", path=str(config_path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read the configuration (byte {exc.object[exc.start]:#x} at "
                          f"offset {exc.start} is not UTF-8): save it as UTF-8 text",
                          path=str(config_path)) from None
    return parse_config(text, config_path)


def parse_config(text: str, path: Path) -> Config:
    """Validate INI *text* as if read from *path*."""
    sections = parse_ini(text, str(path))
    reader = _Reader(path.absolute(), sections)
    for name, section in sections.items():
        if name not in _ALL_SECTIONS:
            raise ConfigError(
                f"unknown section [{name}]{_hint(name, _ALL_SECTIONS)} "
                f"(expected one of {', '.join(_ALL_SECTIONS)})",
                path=str(path),
                line=section.line,
            )
    logger = _logger(reader)
    daemon = _daemon(reader)
    tftp = _tftp(reader)
    bootp = _bootp(reader, daemon)
    bootfiles, ipxe, ipxe_files = _bootfiles(reader, tftp.root_url)
    entries = tuple(BootfileEntry(e.key.strip().lower(), e.value, e.line)
                    for e in reader.entries("bootfile"))
    config = Config(
        path=reader.path,
        logger=logger,
        daemon=daemon,
        tftp=tftp,
        filters=_filters(reader),
        bootp=bootp,
        mac=_acl(reader, "mac", v.mac),
        uuid=_acl(reader, "uuid", v.uuid),
        http=_http(reader),
        httpd=_httpd(reader),
        api=_api(reader),
        static_dhcp=_static(reader),
        bootfiles=bootfiles,
        ipxe_bootfile=ipxe,
        ipxe_bootfiles=ipxe_files,
        bootfile_entries=entries,
        lines=reader.lines,
    )
    _cross_check(config, reader)
    return config


def _logger(reader: _Reader) -> LoggerConfig:
    values = reader.typed("logger")
    if "file" in values:
        values["file"] = reader.path_value(values["file"])
    logger = LoggerConfig(**values)
    if logger.type == "file" and logger.file is None:
        raise reader.fail(
            "type = file needs a file (expected file = /var/log/pybootd.log)",
            reader.lines.get(("logger", "type")),
            "logger",
            "file",
        )
    return logger


def _daemon(reader: _Reader) -> DaemonConfig:
    values = reader.typed("daemon")
    if "state_dir" in values:
        values["state_dir"] = reader.path_value(values["state_dir"])
    return DaemonConfig(**values)


def _tftp(reader: _Reader) -> TftpConfig:
    values = reader.typed("tftp")
    values["root_set"] = "root" in values
    root = values.pop("root", str(DEFAULT_ROOT))
    if root.lower().startswith(("http://", "https://")):
        values["root_url"] = v.http_url(root).rstrip("/") + "/"
        values["root_path"] = None
    else:
        values["root_path"] = reader.path_value(root)
    for key in ("upload_dir", "cache_dir"):
        if key in values:
            values[key] = reader.path_value(values[key])
    values["address_set"] = "address" in values
    return TftpConfig(**values)


def _filters(reader: _Reader) -> tuple[FilterRule, ...]:
    rules = []
    for entry in reader.entries("filters"):
        target = entry.value.strip()
        if not target:
            raise reader.fail(
                "empty target (expected a path, {filename} or [file])",
                entry.line,
                "filters",
                entry.key,
            )
        indirect = target.startswith("[") and target.endswith("]")
        if indirect:
            target = target[1:-1].strip()
            if not target:
                raise reader.fail(
                    "empty [file] (expected [path/to/file])", entry.line, "filters", entry.key
                )
        _check_target(reader, entry, target, indirect)
        rules.append(FilterRule(entry.key, target, indirect, entry.line))
    return tuple(rules)


_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def _check_target(reader: _Reader, entry: Entry, target: str, indirect: bool) -> None:
    """``{filename}`` is the only placeholder; a served relative target stays in the root."""
    for match in _PLACEHOLDER.finditer(target):
        if match.group() != FILENAME_VAR:
            hint = _hint(match.group(), [FILENAME_VAR])
            raise reader.fail(f"unknown placeholder {match.group()}{hint} (expected "
                              f"{FILENAME_VAR}, the requested name)", entry.line, "filters",
                              entry.key)
    # An indirection file is the administrator's, found from the config's
    # folder; a served target is a request path, and the server refuses "..".
    if not indirect and not target.startswith("/") and ".." in re.split(r"[/\\]", target):
        raise reader.fail(f"{target!r} has a '..' component, which could leave the root "
                          "(expected a path inside the root, or an absolute path)",
                          entry.line, "filters", entry.key)


def _bootp(reader: _Reader, daemon: DaemonConfig) -> BootpConfig | None:
    if "bootp" not in reader.sections:
        return None
    values = reader.typed("bootp")
    if "lease_file" in values:
        values["lease_file"] = reader.path_value(values["lease_file"])
    if "lease_file" in values and "lease_store" in values:
        raise reader.fail("set together with lease_file (expected one of them: lease_file is "
                          "the older name of lease_store = sqlite:///PATH)",
                          reader.lines.get(("bootp", "lease_store")), "bootp", "lease_store")
    bootp = BootpConfig(**values)
    if bootp.mode == "server" and bootp.pool_start is None:
        raise reader.fail(
            "missing (expected pool_start = the first address to hand out, "
            "or mode = proxy next to another DHCP server)",
            reader.sections["bootp"].line,
            "bootp",
            "pool_start",
        )
    if bootp.pool_start is not None and int(bootp.pool_start) + bootp.pool_count > 2**32:
        raise reader.fail(
            "the pool runs past 255.255.255.255 (expected a smaller pool_count)",
            reader.lines.get(("bootp", "pool_count")),
            "bootp",
            "pool_count",
        )
    return bootp


def _acl(reader: _Reader, name: str, key_parser: Parser) -> dict[str, bool]:
    acl: dict[str, bool] = {}
    for entry in reader.entries(name):
        try:
            key = key_parser(entry.key)
        except ValueError as exc:
            raise reader.fail(str(exc), entry.line, name, entry.key) from None
        acl[key] = reader.parse(v.boolean, entry, name)
    return acl


def _http(reader: _Reader) -> HttpAclConfig | None:
    if "http" not in reader.sections:
        return None
    return HttpAclConfig(**reader.typed("http"))


def _httpd(reader: _Reader) -> HttpdConfig | None:
    if "httpd" not in reader.sections:
        return None
    values = reader.typed("httpd")
    for key in ("tls_cert", "tls_key"):
        if key in values:
            values[key] = reader.path_value(values[key])
    values["address_set"] = "address" in values
    httpd = HttpdConfig(**values)
    if (httpd.tls_cert is None) != (httpd.tls_key is None):
        given, missing = ("tls_cert", "tls_key") if httpd.tls_key is None else (
            "tls_key", "tls_cert")
        raise reader.fail(f"{given} without {missing} (expected both, for HTTPS, or neither)",
                          reader.lines.get(("httpd", given)), "httpd", missing)
    return httpd


def _api(reader: _Reader) -> ApiConfig | None:
    if "api" not in reader.sections:
        return None
    values = reader.typed("api")
    if "port" not in values:
        raise reader.fail("missing (expected port = 9469, say: [api] needs its own port)",
                          reader.sections["api"].line, "api", "port")
    if "address" in values and not values["address"]:
        values["address"] = "0.0.0.0"  # "all"
    api = ApiConfig(**values)
    if api.token is None and not ip_address(api.address).is_loopback:
        raise reader.fail(
            f"{api.address} is reachable from the network, and [api] has no token (expected "
            "token = a long random string, or address = 127.0.0.1)",
            reader.lines.get(("api", "address")), "api", "token")
    return api


def _static(reader: _Reader) -> dict[str, IPv4Address]:
    static: dict[str, IPv4Address] = {}
    owners: dict[IPv4Address, str] = {}
    for entry in reader.entries("static_dhcp"):
        try:
            mac = v.mac(entry.key)
        except ValueError as exc:
            raise reader.fail(str(exc), entry.line, "static_dhcp", entry.key) from None
        address = reader.parse(v.ipv4, entry, "static_dhcp")
        if address in owners:
            raise reader.fail(
                f"{address} is already reserved for {owners[address]} "
                "(expected one address per MAC)",
                entry.line,
                "static_dhcp",
                entry.key,
            )
        static[mac] = address
        owners[address] = mac
    return static


_IPXE_PREFIX = IPXE_BOOTFILE_KEY + "-"


class _ArchFiles:
    """Boot files by option 93 value, from ``[bootfile]`` keys in file order.

    A name's first architecture is named explicitly, the others are implied
    (``efi-x64`` implies ``efi-bc``): an explicit one overrides an implied one
    whatever the order; the same architecture named twice is an error.
    """

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader
        self.files: dict[int, str] = {}
        self.explicit: dict[int, int] = {}  # architecture -> line

    def put(self, arches: tuple[int, ...], value: str, entry: Entry) -> None:
        first, *implied = arches
        if first in self.explicit:
            raise self.reader.fail(
                f"architecture {first} ({arch_name(first)}) is already set at line "
                f"{self.explicit[first]} (expected one file per architecture)",
                entry.line, "bootfile", entry.key)
        self.files[first] = value
        self.explicit[first] = entry.line
        for arch in implied:
            if arch not in self.explicit and arch not in self.files:
                self.files[arch] = value


def _arches_of(name: str) -> tuple[int, ...] | None:
    """``efi-x64`` -> (7, 9); ``16`` -> (16,); anything else -> None."""
    if name in BOOTFILE_NAMES:
        return tuple(int(arch) for arch in BOOTFILE_NAMES[name])
    if name.isdigit() and int(name) < 65536:
        return (int(name),)
    return None


def _bootfiles(reader: _Reader, root_url: str | None
               ) -> tuple[dict[int, str], str | None, dict[int, str]]:
    """``[bootfile]``: files by architecture, the iPXE file, iPXE files by architecture."""
    files, ipxe_files = _ArchFiles(reader), _ArchFiles(reader)
    ipxe = None
    for entry in reader.entries("bootfile"):
        key = entry.key.strip().lower()
        value = reader.parse(v.boot_file, entry, "bootfile")
        reader.lines[("bootfile", key)] = entry.line
        if key == IPXE_BOOTFILE_KEY:
            ipxe = value
            continue
        is_ipxe = key.startswith(_IPXE_PREFIX)
        arches = _arches_of(key[len(_IPXE_PREFIX):] if is_ipxe else key)
        if arches is None:
            raise _unknown_arch(reader, entry, key, is_ipxe)
        _check_http_url(reader, entry, arches, value, root_url)
        (ipxe_files if is_ipxe else files).put(arches, value, entry)
    return files.files, ipxe, ipxe_files.files


def _unknown_arch(reader: _Reader, entry: Entry, key: str, is_ipxe: bool) -> ConfigError:
    names = list(BOOTFILE_NAMES)
    if is_ipxe:
        choices = [_IPXE_PREFIX + name for name in names]
        expected = f"ipxe-ARCH, ARCH an option 93 number or one of {', '.join(names)}"
    else:
        choices = [*names, IPXE_BOOTFILE_KEY]
        expected = (f"an option 93 number or one of {', '.join(choices)}, "
                    "or ipxe-ARCH for iPXE clients of that architecture")
    return reader.fail(f"unknown architecture{_hint(key, choices)} (expected {expected})",
                       entry.line, "bootfile", entry.key)


def _check_http_url(reader: _Reader, entry: Entry, arches: tuple[int, ...], value: str,
                    root_url: str | None) -> None:
    """UEFI HTTP boot gets ``root_url`` + a relative name: it must fit the file field."""
    if root_url is None or not set(arches) & HTTP_BOOT_ARCHES or "://" in value:
        return
    size = len((root_url + value.lstrip("/")).encode())
    if size > v.BOOT_FILE_MAX:
        raise reader.fail(
            f"[tftp] root + this name is {size} bytes long (expected at most "
            f"{v.BOOT_FILE_MAX} bytes: the URL goes into the BOOTP file field)",
            entry.line, "bootfile", entry.key)


def _cross_check(config: Config, reader: _Reader) -> None:
    """Rules that span keys or sections."""
    tftp = config.tftp
    if tftp.allow_write and tftp.upload_dir is None:
        raise config.error(
            "tftp", "allow_write", "on, but no upload_dir (expected upload_dir = /srv/uploads)"
        )
    bootp = config.bootp
    if bootp is None:
        return
    needs = {"mac": config.mac, "uuid": config.uuid}
    if bootp.access in needs and f"{bootp.access}" not in reader.sections:
        raise config.error(
            "bootp",
            "access",
            f"access = {bootp.access} needs a [{bootp.access}] section "
            f"(expected entries such as {'AA-BB-CC-DD-EE-FF' if bootp.access == 'mac' else 'UUID'}"
            " = enable)",
        )
    if bootp.access == "http" and (config.http is None or not config.http.location):
        raise config.error(
            "bootp", "access", "access = http needs [http] location (expected an http:// URL)"
        )
    if bootp.pool_start is not None and bootp.netmask is not None:
        network = IPv4Network(f"{bootp.pool_start}/{bootp.netmask}", strict=False)
        last = bootp.pool_start + (bootp.pool_count - 1)
        if last not in network:
            raise config.error(
                "bootp",
                "pool_count",
                f"the pool ends at {last}, outside {network} (expected a pool inside the network)",
            )
