"""``pybootd --check``: can this configuration boot anything, on this host?

Loading the configuration proves it is well formed; this looks at the host.
Every finding is one line naming ``FILE:LINE: section.key:`` where there is
one, and is one of two kinds:

* an **error** (exit status 1): the daemon would fail to start or to work
  (a listen address or interface this host does not have, a user that does
  not exist, a folder it cannot write, a missing root);
* a **warning** (exit status 0): a client would get ``ERROR 1`` for a file
  the configuration names (a boot file not in the root, a missing filter
  target or ``[file]``): the operator may still add it, and the daemon
  reads files per request.

Access is judged for the account that will use the path. The lease and
cache folders are created and handed to the user before the privilege drop,
so they need only be creatable by this process (the daemon is started as
``--check`` is run). The TFTP root (read), ``upload_dir`` and the log
folder (written, the log reopened after a rotation) are used after the
drop: as root, by ``[daemon] user`` with its group only (``setgroups([])``),
judged from the owner and mode bits of the folder and of every folder above
it; this is approximate (ACLs and capabilities are not read). Root staying
root, or a daemon not started as root, is judged by ``os.access``.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from pybootd.config import Config, FilterRule
from pybootd.dhcp.arch import HTTP_BOOT_ARCHES, arch_name
from pybootd.dhcp.pxe import ClientInfo
from pybootd.dhcp.responder import bootfile_for
from pybootd.errors import ConfigError, PybootdError, TftpError
from pybootd.netif import LocalNetwork, interface_names, local_addresses
from pybootd.server.dhcp import settings_for
from pybootd.tftp.filters import FILENAME_VAR, FilterSet, Rule
from pybootd.tftp.paths import normalize_request_path


@dataclass(frozen=True)
class Account:
    """Who writes: ``uid`` None is this process (``os.access`` answers)."""

    name: str
    uid: int | None = None
    gid: int = 0


SELF = Account("the user running pybootd")


@dataclass
class Report:
    config: Config
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    store: str = ""  # what the lease store check found

    def where(self, section: str, key: str | None, line: int | None, message: str) -> str:
        """``FILE:LINE: section.key: message``, as a ConfigError reads."""
        if line is None:  # a key of the file, or a default (the error says so)
            return str(self.config.error(section, key, message))
        return str(ConfigError(message, path=str(self.config.path), line=line, section=section,
                               key=key))

    def error(self, section: str, key: str | None, message: str, line: int | None = None
              ) -> None:
        self.errors.append(self.where(section, key, line, message))

    def warn(self, section: str, key: str | None, message: str, line: int | None = None
             ) -> None:
        self.warnings.append(self.where(section, key, line, message))


def run(config: Config, dhcp: bool, tftp: bool) -> int:
    """Check, print the findings (stderr) and what would be served (stdout)."""
    report = Report(config)
    network = _check_host(report, dhcp, tftp)
    root_ok = _check_folders(report) if tftp else False
    who = _check_accounts(report)
    _check_writable(report, who, dhcp, tftp)
    if tftp:
        _check_files(report, root_ok)
    for line in report.warnings:
        print(f"pybootd: warning: {line}", file=sys.stderr)
    for line in report.errors:
        print(f"pybootd: {line}", file=sys.stderr)
    if report.errors:
        print(f"pybootd: --check: {len(report.errors)} error(s), "
              f"{len(report.warnings)} warning(s)", file=sys.stderr)
        return 1
    print(describe(config, dhcp, tftp, network))
    if report.store:
        print(f"Leases: {report.store}")
    if dhcp:
        print(boot_map(config, network))
    return 0


# --- this host: addresses, interfaces, accounts, folders -------------------

def _check_host(report: Report, dhcp: bool, tftp: bool) -> LocalNetwork | None:
    """Listen addresses and the interface exist here; then detect DHCP's network."""
    config, here = report.config, local_addresses()
    ok = True
    bootp = config.bootp
    if dhcp and bootp is not None:
        names = interface_names()
        if bootp.interface is not None and bootp.interface not in names:
            report.error("bootp", "interface", f"no interface {bootp.interface!r} on this host "
                         f"(expected one of {', '.join(names)})")
            ok = False
        listen = IPv4Address(str(bootp.address))
        if not listen.is_unspecified and str(listen) not in here:
            report.error("bootp", "address", _not_here(str(listen), here, "0.0.0.0"))
            ok = False
    if tftp and config.tftp.address and config.tftp.address not in here:
        report.error("tftp", "address", _not_here(config.tftp.address, here, "all"))
    if not (dhcp and ok):
        return None
    from pybootd.server.dhcp import detect_network

    try:
        return detect_network(config)
    except ConfigError as exc:
        report.errors.append(str(exc))
        return None


def _not_here(address: str, here: set[str], wildcard: str) -> str:
    return (f"{address} is not an address of this host, so it cannot be bound (expected one "
            f"of {', '.join(sorted(here))}, or {wildcard} for every address)")


def _check_folders(report: Report) -> bool:
    """The local root (and upload_dir) exist: the TFTP service's own start check."""
    from pybootd.server.tftp import check_folders

    try:
        check_folders(report.config)
    except ConfigError as exc:
        report.errors.append(str(exc))
        return False
    return True


def _check_accounts(report: Report) -> Account:
    """``[daemon] user`` and ``group`` exist; who writes after the privilege drop."""
    daemon = report.config.daemon
    try:
        entry = pwd.getpwnam(daemon.user)
    except KeyError:
        report.error("daemon", "user", f"no such user {daemon.user!r} on this host "
                     "(expected an existing account, or root)")
        return SELF
    gid = entry.pw_gid
    if daemon.group is not None:
        try:
            gid = grp.getgrnam(daemon.group).gr_gid
        except KeyError:
            report.error("daemon", "group", f"no such group {daemon.group!r} on this host "
                         "(expected an existing group)")
    # Not root: nothing is dropped. Root staying root: os.access is exact.
    if os.geteuid() != 0 or entry.pw_uid == 0:
        return SELF
    return Account(f"user {daemon.user}", entry.pw_uid, gid)


def _check_writable(report: Report, who: Account, dhcp: bool, tftp: bool) -> None:
    config = report.config
    bootp = config.bootp
    # pybootd creates these before the drop and hands them to the user.
    if dhcp and bootp is not None and bootp.mode == "server":
        key = config.lease_store_key
        if config.lease_store.path is not None:
            _creatable(report, *key, config.lease_store.path.parent)
        _check_lease_store(report, key)
    if tftp and config.tftp.root_url:
        key = ("tftp", "cache_dir") if config.tftp.cache_dir else ("daemon", "state_dir")
        _creatable(report, *key, config.cache_dir)
    upload = config.tftp.upload_dir
    if tftp and config.tftp.allow_write and upload is not None and upload.is_dir() \
            and not _can_write(upload, who):
        report.error("tftp", "upload_dir", f"{upload} is not writable by {who.name} "
                     "(expected a folder the daemon's user may write)")
    root = config.tftp.root_path
    if tftp and config.tftp.root_url is None and root is not None and root.is_dir() \
            and not _can_read_folder(root, who):
        report.error("tftp", "root", f"{root} cannot be read by {who.name}, who serves it "
                     "(expected a folder that user may read, and enter from /)")
    _check_log_file(report, who)


def _check_lease_store(report: Report, key: tuple[str, str]) -> None:
    """What the daemon's start would refuse (an empty, foreign or damaged file, an
    unreachable database, a newer schema): read-only, without the daemon's lock,
    so it runs beside a running daemon (ExecStartPre)."""
    from pybootd.server.stores import check_store

    try:
        report.store = check_store(report.config.lease_store)
    except PybootdError as exc:
        report.error(*key, str(exc))


def _creatable(report: Report, section: str, key: str, folder: Path) -> None:
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        report.error(section, key, f"{existing} is not a folder (expected a folder for "
                     f"{folder})")
    elif not _can_write(existing, SELF):
        what = "" if existing == folder else f", so {folder} cannot be created"
        report.error(section, key, f"{existing} is not writable by {SELF.name}{what} "
                     "(expected a folder pybootd may write, see [daemon] state_dir)")


def _check_log_file(report: Report, who: Account) -> None:
    log = report.config.logger
    if log.type != "file" or log.file is None:
        return
    folder = log.file.parent
    if not folder.is_dir():
        report.error("logger", "file", f"the folder {folder} does not exist "
                     "(expected an existing folder for the log file)")
        return
    target = log.file if log.file.exists() else folder
    if not _can_write(target, SELF):
        report.error("logger", "file", f"{target} is not writable by {SELF.name} "
                     "(expected a log file, or a folder, pybootd may write)")
    elif who.uid is not None and not _can_write(folder, who):
        report.warn("logger", "file", f"{folder} is not writable by {who.name}: the log "
                    "cannot be reopened after a rotation (expected a folder that user may "
                    "write, or logrotate's create or copytruncate)")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _can_write(path: Path, who: Account) -> bool:
    """Whether *who* may write *path* (and enter it, for a folder)."""
    folder = path.is_dir()
    if who.uid is None:
        return os.access(path, os.W_OK | (os.X_OK if folder else 0))
    need = (stat.S_IWOTH | stat.S_IXOTH) if folder else stat.S_IWOTH
    return _reachable(path, who) and _mode_allows(path, who, need)


def _can_read_folder(path: Path, who: Account) -> bool:
    """Whether *who* may list and enter the folder *path* (the TFTP root)."""
    if who.uid is None:
        return os.access(path, os.R_OK | os.X_OK)
    need = stat.S_IROTH | stat.S_IXOTH
    return _reachable(path, who) and _mode_allows(path, who, need)


def _reachable(path: Path, who: Account) -> bool:
    """Every folder above *path* lets *who* through (``mktemp -d`` makes 0700 ones)."""
    return all(_mode_allows(parent, who, stat.S_IXOTH) for parent in path.absolute().parents)


def _mode_allows(path: Path, who: Account, need: int) -> bool:
    """The owner, group or other bits that apply to *who* hold *need* (``S_I?OTH``)."""
    info = path.stat()
    if info.st_uid == who.uid:
        bits = info.st_mode >> 6
    elif info.st_gid == who.gid:
        bits = info.st_mode >> 3
    else:
        bits = info.st_mode
    return bits & need == need


# --- the files clients will ask for -----------------------------------------

def _check_files(report: Report, root_ok: bool) -> None:
    """Boot files and fixed filter targets exist (a full URL is not checked)."""
    config = report.config
    root = config.tftp.root_path if root_ok and config.tftp.root_url is None else None
    filters = _filter_set(config)
    if root is not None:
        for entry in config.bootfile_entries:
            _check_boot_file(report, root, filters, ("bootfile", entry.key), entry.file)
        if config.bootp is not None and config.bootp.boot_file:
            _check_boot_file(report, root, filters, ("bootp", "boot_file"),
                             config.bootp.boot_file)
    for rule in config.filters:
        _check_target(report, root, rule)


def _filter_set(config: Config) -> FilterSet:
    return FilterSet([Rule(r.pattern, r.target, r.indirect, r.line) for r in config.filters])


def _check_boot_file(report: Report, root: Path, filters: FilterSet, key: tuple[str, str],
                     name: str) -> None:
    if "://" in name:
        return
    try:
        path = normalize_request_path(name)
    except TftpError as exc:
        report.error(*key, f"{name!r} can never be served ({exc.message}) "
                     "(expected a path inside the root)")
        return
    match = filters.match(path)
    if match is None:
        if not _in_root(root, path):
            report.warn(*key, f"{name} is not a file in the root {root}: clients would get "
                        "ERROR 1 (expected the file there, or a [filters] rule)")
        return
    if match.rule.indirect or FILENAME_VAR not in match.rule.target:
        return  # a [file], or one fixed file: checked as a filter target
    target = match.target
    if not _target_exists(root, target):
        report.warn(*key, f"{name} is served as {target} ([filters] line {match.rule.line}), "
                    "which does not exist: clients would get ERROR 1 (expected that file)")


def _check_target(report: Report, root: Path | None, rule: FilterRule) -> None:
    """A target without ``{filename}`` names one file: it must be there."""
    if FILENAME_VAR in rule.target:
        return
    if rule.indirect:
        path = Path(rule.target)
        path = path if path.is_absolute() else report.config.path.parent / path
        if not path.is_file():
            report.warn("filters", rule.pattern, f"the [file] {path} does not exist: "
                        "matching requests would get ERROR 1 (expected that file)", rule.line)
        return
    absolute = rule.target.startswith("/")
    if (absolute or root is not None) and not _target_exists(root, rule.target):
        where = "" if absolute else f" in the root {root}"
        report.warn("filters", rule.pattern, f"{rule.target}{where} does not exist: "
                    "matching requests would get ERROR 1 (expected that file)", rule.line)


def _target_exists(root: Path | None, target: str) -> bool:
    if target.startswith("/"):
        return Path(target).is_file()
    if root is None:
        return True  # served from an HTTP root: not checked
    try:
        return _in_root(root, normalize_request_path(target))
    except TftpError:
        return False


def _in_root(root: Path, relative: str) -> bool:
    """A regular file that, symlinks followed, stays in the root (as the server checks)."""
    path = (root / relative).resolve()
    return path.is_file() and path.is_relative_to(root.resolve())


# --- what would be served ------------------------------------------------------

def describe(config: Config, dhcp: bool, tftp: bool,
             network: LocalNetwork | None = None) -> str:
    """What would be served (*network*: the one DHCP detected)."""
    lines = [f"configuration {config.path}: OK"]
    if network is not None:
        lines.append(f"DHCP: serves {network} (server address {network.address})")
    if dhcp:
        lines.append(_describe_dhcp(config))
    if tftp:
        lines.extend(_describe_tftp(config, network))
    if tftp and config.httpd is not None:
        h = config.httpd
        where = h.address or config.tftp.address or (
            str(network.address) if network is not None else "all addresses")
        lines.append(f"HTTP: the TFTP root over {h.scheme} on {where} port {h.port}")
    if config.api is not None:
        a = config.api
        lines.append(f"API: metrics, JSON and status page on {a.address} port {a.port}, "
                     f"{'token required' if a.token else 'no token (loopback only)'}")
    return "\n".join(lines)


def _describe_dhcp(config: Config) -> str:
    bootp = config.bootp
    assert bootp is not None
    if bootp.mode == "proxy":
        return (f"DHCP: proxy mode on port {bootp.port} and {bootp.pxe_port}, "
                "no addresses handed out")
    assert bootp.pool_start is not None
    last = bootp.pool_start + (bootp.pool_count - 1)
    return (f"DHCP: pool {bootp.pool_start}-{last} ({bootp.pool_count} addresses),"
            f" boot file {bootp.boot_file}, access {bootp.access}, "
            f"lease {bootp.lease_time}s")


def _describe_tftp(config: Config, network: LocalNetwork | None) -> list[str]:
    t = config.tftp
    root = str(t.root_url or t.root_path)
    if not t.root_set:
        root += " (the default: [tftp] root is not set)"
    where = t.address or (str(network.address) if network is not None and
                          not t.address_set else "all addresses")
    lines = [f"TFTP: root {root} on {where} port {t.port}, "
             f"blksize<={t.blocksize} windowsize<={t.windowsize}, "
             f"uploads {'to ' + str(t.upload_dir) if t.allow_write else 'off'}"]
    for rule in config.filters:
        target = f"[{rule.target}]" if rule.indirect else rule.target
        lines.append(f"  filter {rule.pattern} -> {target}")
    return lines


def boot_map(config: Config, network: LocalNetwork | None = None) -> str:
    """The boot file of each architecture, with what a filter serves instead,
    and the URL each UEFI HTTP Boot architecture (and iPXE) is given."""
    filters = _filter_set(config)
    lines = ["boot files (option 93 architecture -> file):"]
    for arch, name in sorted(config.bootfiles.items()):
        lines.append(_map_line(f"{arch_name(arch)} ({arch})", name, filters))
    for arch, name in sorted(config.ipxe_bootfiles.items()):
        lines.append(_map_line(f"ipxe-{arch_name(arch)} ({arch})", name, filters))
    if config.ipxe_bootfile:
        lines.append(_map_line("ipxe", config.ipxe_bootfile, filters))
    if config.bootp is not None and config.bootp.boot_file:
        lines.append(_map_line("default", config.bootp.boot_file, filters))
    if network is not None:
        lines.extend(_http_urls(config, network))
    return "\n".join(lines)


def _http_urls(config: Config, network: LocalNetwork) -> list[str]:
    """What DHCP answers a UEFI HTTP Boot client of each architecture, and
    iPXE: the responder's own choice, from the DHCP service's own settings."""
    settings = settings_for(config, network)
    lines = []
    for arch in sorted(HTTP_BOOT_ARCHES):
        url = bootfile_for(ClientInfo("", arches=(arch,), http=True), settings)
        if url is not None:
            lines.append(f"  HTTP boot {arch_name(arch)} ({arch}) -> {url}")
    if config.ipxe_bootfile is not None:
        lines.append(f"  iPXE (generic) -> {bootfile_for(ClientInfo('', ipxe=True), settings)}")
    return lines


def _map_line(label: str, name: str, filters: FilterSet) -> str:
    line = f"  {label} -> {name}"
    try:
        match = None if "://" in name else filters.match(normalize_request_path(name))
    except TftpError:
        match = None
    if match is not None:
        target = f"[{match.target}]" if match.rule.indirect else match.target
        line += f" (served as {target}, [filters] line {match.rule.line})"
    return line
