"""``pybootd --check``: what cannot boot is found before a PC tries.

Every test runs the command line as a user would and reads what it prints.
DHCP runs on loopback, like pybootd.ini.sample (pool on 127.0.0.100).
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import pybootd.config
from pybootd.cli import main

ME = pwd.getpwuid(os.geteuid()).pw_name  # no privilege drop: writability is ours
NOT_HERE = "198.51.100.77"  # TEST-NET-2: on no interface of a test host


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str],
          *args: str) -> tuple[int, str, str, Path]:
    """``pybootd -c FILE --check``: status, stdout, stderr, the file."""
    path = tmp_path / "pybootd.ini"
    path.write_text(text)
    status = main(["-c", str(path), "--check", *args])
    out, err = capsys.readouterr()
    return status, out, err, path


def line_of(path: Path, start: str) -> int:
    """The number of the first line of *path* that starts with *start*."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith(start):
            return number
    raise AssertionError(start)


@pytest.fixture
def public() -> Iterator[Path]:
    """A folder anyone may enter (pytest's tmp_path is inside a 0700 one)."""
    folder = Path(tempfile.mkdtemp(prefix="pybootd-check-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    for name in ("pxelinux.0", "efi/bootnetx64.efi", "efi/grubx64.efi", "boot.ipxe",
                 "menu.cfg"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    return folder


def config(root: Path | str, tmp_path: Path, *, bootp: str = "", tftp: str = "", rest: str = "",
           daemon: str = "") -> str:
    return (f"[daemon]\nuser = {ME}\nstate_dir = {tmp_path / 'state'}\n{daemon}"
            "[bootp]\npool_start = 127.0.0.100\npool_count = 10\naddress = 127.0.0.1\n"
            f"port = 6767\n{bootp}"
            f"[tftp]\naddress = 127.0.0.1\nport = 6969\nroot = {root}\n{tftp}{rest}")


# --- the boot file map, and a config that boots -------------------------------------

def test_good_config_prints_the_boot_file_map(root: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err, _ = check(tmp_path, config(root, tmp_path, rest=(
        "[bootfile]\nbios = pxelinux.0\nefi-x64 = efi/bootnetx64.efi\n"
        "ipxe-efi-x64 = efi/grubx64.efi\nipxe = boot.ipxe\n"
        "[filters]\npxelinux.cfg/* = menu.cfg\n")), capsys)
    assert status == 0 and err == ""
    assert "boot files (option 93 architecture -> file):\n" \
           "  bios (0) -> pxelinux.0\n" \
           "  efi-x64 (7) -> efi/bootnetx64.efi\n" \
           "  efi-bc (9) -> efi/bootnetx64.efi\n" \
           "  ipxe-efi-x64 (7) -> efi/grubx64.efi\n" \
           "  ipxe-efi-bc (9) -> efi/grubx64.efi\n" \
           "  ipxe -> boot.ipxe\n" \
           "  default -> pxelinux.0\n" in out
    assert f"TFTP: root {root} on 127.0.0.1 port 6969" in out


def test_map_shows_what_a_filter_serves(root: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "undionly.kpxe").write_bytes(b"x")
    status, out, err, path = check(tmp_path, config(root, tmp_path, rest=(
        f"[bootfile]\nbios = undionly.kpxe\n[filters]\nundionly.kpxe = "
        f"{tmp_path / 'undionly.kpxe'}\n")), capsys)
    line = line_of(path, "undionly.kpxe =")
    assert status == 0 and err == ""
    assert (f"  bios (0) -> undionly.kpxe (served as {tmp_path / 'undionly.kpxe'}, "
            f"[filters] line {line})") in out


# --- boot files and filter targets: warnings ---------------------------------------------

def test_missing_boot_file_is_a_warning(root: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err, path = check(tmp_path, config(root, tmp_path, rest=(
        "[bootfile]\nbios = pxelinux.0\nefi-x64 = shimx64.efi\n"
        "16 = http://192.0.2.1/ipxe.efi\n")), capsys)
    assert status == 0 and "OK" in out
    line = line_of(path, "efi-x64")
    assert err == (f"pybootd: warning: {path}:{line}: bootfile.efi-x64: shimx64.efi is not a "
                   f"file in the root {root}: clients would get ERROR 1 (expected the file "
                   "there, or a [filters] rule)\n")  # the URL is not checked


def test_default_boot_file_missing_says_it_is_the_default(
        root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "pxelinux.0").unlink()
    status, _, err, path = check(tmp_path, config(root, tmp_path), capsys)
    assert status == 0
    assert (f"pybootd: warning: {path}: bootp.boot_file: pxelinux.0 is not a file in the "
            f"root {root}") in err
    assert "(not set, so the default: set [bootp] boot_file)" in err


def test_boot_file_through_a_filename_filter(root: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    text = config(root, tmp_path, rest=("[bootfile]\nefi-x64 = grubx64.efi\nbios = x.kpxe\n"
                                        "[filters]\n*.efi = efi/{filename}\n"))
    status, _, err, path = check(tmp_path, text, capsys)
    assert status == 0
    assert "grubx64.efi" not in err  # efi/grubx64.efi is in the root
    assert f"bootfile.bios: x.kpxe is not a file in the root {root}" in err
    (root / "efi" / "grubx64.efi").unlink()
    status, _, err, path = check(tmp_path, text, capsys)
    line = line_of(path, "*.efi")
    assert status == 0
    assert (f"bootfile.efi-x64: grubx64.efi is served as efi/grubx64.efi ([filters] line "
            f"{line}), which does not exist: clients would get ERROR 1") in err


def test_fixed_filter_targets_must_exist(root: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "here.cfg").write_text("menu.cfg\n")
    status, _, err, path = check(tmp_path, config(root, tmp_path, rest=(
        f"[filters]\npxelinux.cfg/default = {tmp_path / 'gone.cfg'}\n"
        "grub/grub.cfg = grub/missing.cfg\n"
        "startup = [gone/startup.cfg]\n"
        "other = [here.cfg]\n"
        "menu = menu.cfg\n"
        "*.efi = efi/{filename}\n")), capsys)
    assert status == 0
    assert (f"pybootd: warning: {path}:{line_of(path, 'pxelinux.cfg')}: "
            f"filters.pxelinux.cfg/default: {tmp_path / 'gone.cfg'} does not exist: matching "
            "requests would get ERROR 1 (expected that file)") in err
    assert (f"{path}:{line_of(path, 'grub/')}: filters.grub/grub.cfg: grub/missing.cfg in "
            f"the root {root} does not exist") in err
    assert (f"{path}:{line_of(path, 'startup')}: filters.startup: the [file] "
            f"{tmp_path / 'gone' / 'startup.cfg'} does not exist") in err
    assert err.count("warning") == 3  # here.cfg, menu.cfg exist; {filename} is not checked


def test_absolute_targets_are_checked_with_an_http_root(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = config("http://mirror.example/netboot/", tmp_path, rest=(
        f"[bootfile]\nbios = pxelinux.0\n[filters]\nmenu = {tmp_path / 'gone.cfg'}\n"
        "other = not-checked.cfg\n"))
    status, _, err, _ = check(tmp_path, text, capsys)
    assert status == 0
    assert f"filters.menu: {tmp_path / 'gone.cfg'} does not exist" in err
    assert "pxelinux.0" not in err and "not-checked" not in err  # on the mirror


# --- placeholders and escapes: configuration errors, for the daemon too --------------------

@pytest.mark.parametrize(("target", "needle"), [
    ("efi/{filname}", "filters.*.efi: unknown placeholder {filname} (did you mean "
     "'{filename}'?) (expected {filename}, the requested name)"),
    ("../{filename}", "filters.*.efi: '../{filename}' has a '..' component, which could "
     "leave the root (expected a path inside the root, or an absolute path)"),
])
def test_bad_targets_fail_check_and_start(root: Path, tmp_path: Path, target: str, needle: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err, path = check(tmp_path, config(root, tmp_path, rest=(
        f"[filters]\n*.efi = {target}\n")), capsys)
    assert status == 1 and out == ""
    assert err == f"pybootd: {path}:{line_of(path, '*.efi')}: {needle}\n"
    assert main(["-c", str(path), "-t"]) == 1
    assert needle in capsys.readouterr().err


# --- this host: addresses, interface, accounts, folders -------------------------------------

@pytest.mark.parametrize(("section", "key", "value", "needle"), [
    ("tftp", "address", NOT_HERE, f"tftp.address: {NOT_HERE} is not an address of this host, "
     "so it cannot be bound (expected one of "),
    ("bootp", "address", NOT_HERE, f"bootp.address: {NOT_HERE} is not an address of this "
     "host"),
    ("bootp", "interface", "nosuch0", "bootp.interface: no interface 'nosuch0' on this host "
     "(expected one of "),
    ("daemon", "group", "no-such-group-pybootd", "daemon.group: no such group "
     "'no-such-group-pybootd' on this host (expected an existing group)"),
])
def test_host_errors(root: Path, tmp_path: Path, section: str, key: str, value: str,
                     needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = config(root, tmp_path).replace(f"[{section}]\n", f"[{section}]\n{key} = {value}\n")
    text = text.replace(f"{key} = 127.0.0.1\n", "")  # the address set above replaces it
    status, out, err, path = check(tmp_path, text, capsys)
    assert status == 1 and "OK" not in out
    assert f"pybootd: {path}:{line_of(path, key + ' =')}: {needle}" in err
    assert err.endswith("pybootd: --check: 1 error(s), 0 warning(s)\n")


def test_missing_user_is_an_error(root: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    text = config(root, tmp_path).replace(f"user = {ME}", "user = no-such-user-pybootd")
    status, _, err, path = check(tmp_path, text, capsys)
    assert status == 1
    assert (f"pybootd: {path}:2: daemon.user: no such user 'no-such-user-pybootd' on this "
            "host (expected an existing account, or root)") in err


def test_wildcard_and_loopback_addresses_pass(root: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    text = config(root, tmp_path).replace("[tftp]\naddress = 127.0.0.1", "[tftp]\naddress = all")
    status, out, err, _ = check(tmp_path, text, capsys)
    assert status == 0 and err == "" and "TFTP: root" in out


def test_state_dir_that_cannot_be_created(root: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("")
    text = config(root, tmp_path, daemon=f"state_dir = {tmp_path / 'a-file' / 'state'}\n")
    text = text.replace(f"state_dir = {tmp_path / 'state'}\n", "")
    status, _, err, path = check(tmp_path, text, capsys)
    assert status == 1
    assert (f"pybootd: {path}:{line_of(path, 'state_dir')}: daemon.state_dir: "
            f"{tmp_path / 'a-file'} is not a folder (expected a folder for "
            f"{tmp_path / 'a-file' / 'state'})") in err


@pytest.mark.parametrize("content", [b"", b"not a database at all\n"], ids=["empty", "garbage"])
def test_lease_file_the_start_would_refuse_is_an_error(
        root: Path, tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    """--check is the unit's ExecStartPre: it finds what the start would refuse,
    read-only and without the running daemon's lock."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "leases.sqlite").write_bytes(content)
    status, _, err, path = check(tmp_path, config(root, tmp_path), capsys)
    assert status == 1
    assert (f"pybootd: {path}:{line_of(path, 'state_dir')}: daemon.state_dir: lease file "
            f"{tmp_path / 'state' / 'leases.sqlite'} ") in err
    assert "move it aside to start with no leases" in err


def test_a_good_lease_file_passes(root: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pybootd.server.leasestore import LeaseStore

    (tmp_path / "state").mkdir()
    LeaseStore(tmp_path / "state" / "leases.sqlite").close()
    status, _, err, _ = check(tmp_path, config(root, tmp_path), capsys)
    assert status == 0, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder")
def test_state_dir_not_writable(root: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    text = config(root, tmp_path).replace(str(tmp_path / "state"), str(locked / "state"))
    status, _, err, _ = check(tmp_path, text, capsys)
    assert status == 1
    assert (f"daemon.state_dir: {locked} is not writable by the user running pybootd, so "
            f"{locked / 'state'} cannot be created") in err


def test_upload_dir_writable_by_the_daemon_user(public: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """As root the daemon writes as [daemon] user (mode bits); otherwise as itself."""
    root = public / "root"
    root.mkdir(mode=0o755)
    uploads = public / "uploads"
    uploads.mkdir(mode=0o755)
    uploads.chmod(0o755)
    user = "nobody" if os.geteuid() == 0 else ME
    who = "user nobody" if os.geteuid() == 0 else "the user running pybootd"
    if os.geteuid() != 0:
        uploads.chmod(0o555)
    text = config(root, tmp_path, tftp=f"allow_write = on\nupload_dir = {uploads}\n")
    status, _, err, path = check(tmp_path, text.replace(f"user = {ME}", f"user = {user}"),
                                 capsys)
    assert status == 1
    assert (f"pybootd: {path}:{line_of(path, 'upload_dir')}: tftp.upload_dir: {uploads} is "
            f"not writable by {who} (expected a folder the daemon's user may write)") in err
    if os.geteuid() == 0:
        os.chown(uploads, pwd.getpwnam("nobody").pw_uid, -1)
    else:
        uploads.chmod(0o755)
    assert check(tmp_path, text.replace(f"user = {ME}", f"user = {user}"), capsys)[0] == 0


def test_log_file_folder_must_exist(root: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "no-folder" / "pybootd.log"
    status, _, err, path = check(tmp_path, config(root, tmp_path, rest=(
        f"[logger]\ntype = file\nfile = {log}\n")), capsys)
    assert status == 1
    assert (f"pybootd: {path}:{line_of(path, 'file =')}: logger.file: the folder "
            f"{log.parent} does not exist (expected an existing folder for the log file)") in err


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop happens only as root")
def test_log_folder_the_daemon_user_cannot_write_is_a_warning(
        public: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = public / "root"
    root.mkdir(mode=0o755)
    logs = public / "logs"
    logs.mkdir(mode=0o755)
    text = config(root, tmp_path, rest=f"[logger]\ntype = file\nfile = {logs / 'p.log'}\n")
    status, _, err, _ = check(tmp_path, text.replace(f"user = {ME}", "user = nobody"), capsys)
    assert status == 0
    assert (f"logger.file: {logs} is not writable by user nobody: the log cannot be reopened "
            "after a rotation") in err


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop happens only as root")
def test_root_the_daemon_user_cannot_read_is_an_error(
        public: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """mktemp -d makes 0700 folders: nobody cannot serve from them."""
    private = public / "private"
    private.mkdir(mode=0o700)
    root = private / "root"
    root.mkdir(mode=0o755)
    text = config(root, tmp_path).replace(f"user = {ME}", "user = nobody")
    text = text.replace(f"state_dir = {tmp_path / 'state'}", f"state_dir = {public / 'state'}")
    status, _, err, path = check(tmp_path, text, capsys)
    assert status == 1
    assert (f"pybootd: {path}:{line_of(path, 'root =')}: tftp.root: {root} cannot be read by "
            "user nobody, who serves it (expected a folder that user may read, and enter "
            "from /)") in err
    private.chmod(0o755)
    assert check(tmp_path, text, capsys)[0] == 0


# --- the root: never the configuration's folder ---------------------------------------------

def test_default_root_is_named_and_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    default = tmp_path / "srv-tftp"  # stands for /srv/tftp, which this host may have
    monkeypatch.setattr(pybootd.config, "DEFAULT_ROOT", default)
    text = f"[daemon]\nuser = {ME}\n[tftp]\naddress = 127.0.0.1\nport = 6969\n"
    status, out, err, path = check(tmp_path, text, capsys)
    assert status == 1 and out == ""
    assert err.startswith(f"pybootd: {path}: tftp.root: {default} does not exist (expected an "
                          "existing folder) (not set, so the default: set [tftp] root)\n")
    default.mkdir()
    status, out, err, path = check(tmp_path, text, capsys)
    assert status == 0 and err == ""
    assert f"TFTP: root {default} (the default: [tftp] root is not set) on 127.0.0.1" in out


def test_daemon_without_root_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    default = tmp_path / "srv-tftp"
    monkeypatch.setattr(pybootd.config, "DEFAULT_ROOT", default)
    path = tmp_path / "pybootd.ini"
    path.write_text(f"[daemon]\nuser = {ME}\n[tftp]\naddress = 127.0.0.1\nport = 6969\n")
    assert main(["-c", str(path), "-t"]) == 1
    assert (f"pybootd: {path}: tftp.root: {default} does not exist (expected an existing "
            "folder) (not set, so the default: set [tftp] root)") in capsys.readouterr().err


def test_check_prints_the_url_each_http_boot_client_gets(
        root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err, _ = check(tmp_path, config(root, tmp_path, rest=(
        "[httpd]\nport = 8080\n[bootfile]\nefi-x64 = efi/grubx64.efi\nipxe = boot.ipxe\n")),
        capsys)
    assert status == 0 and err == ""
    assert "HTTP: the TFTP root over http on 127.0.0.1 port 8080" in out
    assert "  HTTP boot http-x64 (16) -> http://127.0.0.1:8080/efi/grubx64.efi\n" in out
    assert out.endswith("  iPXE (generic) -> http://127.0.0.1:8080/boot.ipxe\n")


def test_check_names_the_api_and_refuses_it_open_to_the_network(
        root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err, _ = check(tmp_path, config(root, tmp_path, rest=(
        "[api]\nport = 9469\ntoken = secret-value\n")), capsys)
    assert status == 0 and "API: metrics, JSON and status page on 127.0.0.1 port 9469, " \
        "token required" in out
    assert "secret-value" not in out + err
    status, out, err, path = check(tmp_path, config(root, tmp_path, rest=(
        "[api]\nport = 9469\naddress = 0.0.0.0\n")), capsys)
    assert status == 1 and f"{path}:{line_of(path, 'address = 0.0.0.0')}: api.token: " \
        "0.0.0.0 is reachable from the network, and [api] has no token" in err
