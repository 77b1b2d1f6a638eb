"""Real TFTP clients against ``pybootd -t`` across a veth pair.

tftp-hpa, atftp (lock-step, windowsize 8, large blocks), curl and busybox
fetch files of 0, 511, 512, 513 bytes and 1 MiB; 40 MiB at blksize 512 (the
block number rolls over past 65535: tftp-hpa, curl, atftp) and 100 MiB at
blksize 65464 (curl, atftp, busybox) arrive with the same sha256; atftp
0.8's ``--option "tsize enable"`` gets its file and the size; netascii
is converted on the wire and back; every way out of the root is refused:
a name that climbs out with ERROR 2, a symlink out of the root with what a
missing file gets (ERROR 1, nothing told of what lies outside);
``[filters]`` rename requests; uploads
obey ``allow_write``, ``overwrite`` and ``max_upload_size``.

One daemon (dropped to ``nobody``, as in production) serves the read-only
tests of this module; the upload tests start their own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netlab import NetLab, netlab, wait_for
from tftp_support import (
    ALL_CLIENTS,
    ATFTP,
    ATFTP_TSIZE,
    CLIENT_IP,
    CURL,
    HPA,
    MIB,
    ClientKind,
    Hosts,
    Pybootd,
    client_error,
    content,
    fetch,
    hpa_put,
    ns_client,
    public_tmpdir,
    sha256_bytes,
    sha256_file,
    two_hosts,
    write_file,
    write_text,
)
from tftpclient import TftpFailure, encode

from pybootd.tftp.packets import Data, Error, Oack, encode_ack

pytestmark = [pytest.mark.netns, pytest.mark.interop]

SMALL_SIZES = {"empty.bin": 0, "s511.bin": 511, "s512.bin": 512, "s513.bin": 513,
               "one-mib.bin": MIB}
ROLLOVER = "forty-mib.bin"  # 40 MiB: 81920 blocks of 512
HUGE = "hundred-mib.bin"  # 100 MiB at blksize 65464
SIZES = {**SMALL_SIZES, ROLLOVER: 40 * MIB, HUGE: 100 * MIB}
# A text with LF, a lone CR, CR LF, a NUL and no final newline, longer than a
# few blocks so that conversions fall across block boundaries.
TEXT = (b"".join(b"line %d: kernel /vmlinuz root=/dev/ram0 \r quiet\n" % i for i in range(150))
        + b"dos\r\nnul\0byte\rend")
SECRET = "host-secret-" + "x" * 20


@dataclass
class Served:
    lab: NetLab
    hosts: Hosts
    server: Pybootd
    root: Path
    outside: Path  # beside the root: must never be served
    downloads: Path
    sha: dict[str, str]


def build_root(base: Path) -> tuple[Path, dict[str, str]]:
    root = base / "root"
    sha = {name: write_file(root / name, size) for name, size in SIZES.items()}
    write_text(root / "text.txt", TEXT)
    sha["sub/file"] = write_file(root / "sub" / "file", 3000)
    sha["etc/passwd"] = write_file(root / "etc" / "passwd", 77)  # a decoy inside the root
    (root / "inside-link").symlink_to(root / "sub" / "file")
    (root / "relative-link").symlink_to("sub/file")
    (root / "outside-link").symlink_to(base / "outside" / "secret")
    (root / "relative-escape").symlink_to("../outside/secret")
    (root / "passwd-link").symlink_to("/etc/passwd")
    (root / "etc-dir").symlink_to("/etc")
    # [filters] material
    sha["store/legacy/vmlinuz"] = write_file(root / "store" / "legacy" / "vmlinuz", 4000)
    sha["store/first-a"] = write_file(root / "store" / "first-a", 10)
    sha["store/first-b"] = write_file(root / "store" / "first-b", 20)
    sha["menus/menu.cfg"] = write_file(root / "menus" / "menu.cfg", 600)
    root.chmod(0o755)
    for folder in ("sub", "etc", "store", "store/legacy", "menus"):
        (root / folder).chmod(0o755)
    return root, sha


def filters(admin: Path) -> list[tuple[str, str]]:
    return [
        ("pxelinux.cfg/*", str(admin / "default.cfg")),  # an admin's file outside the root
        ("legacy/*", "store/{filename}"),
        ("menu.cfg", f"[{admin / 'indirect.txt'}]"),
        ("first/?", "store/first-a"),
        ("first/*", "store/first-b"),
        # ("evil/*", "../{filename}") is refused when the configuration loads.
    ]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with netlab() as lab, public_tmpdir("clients") as base:
        root, sha = build_root(base)
        outside = base / "outside"
        write_text(outside / "secret", SECRET)
        admin = base / "admin"
        sha["admin-default"] = write_file(admin / "default.cfg", 321)
        write_text(admin / "indirect.txt", "# the name to serve\nmenus/{filename}\n")
        for folder in (outside, admin):
            folder.chmod(0o755)
        downloads = base / "downloads"
        downloads.mkdir()
        hosts = two_hosts(lab)
        server = Pybootd(lab, hosts.server, base).start(
            {"root": root, "blocksize": 65464, "windowsize": 64, "timeout": 0.5},
            filters=filters(admin))
        try:
            yield Served(lab, hosts, server, root, outside, downloads, sha)
        finally:
            status = server.stop()
            print(server.log()[-20000:])
        assert status == 0, f"pybootd exited {status} on SIGTERM"


def get(s: Served, kind: ClientKind, remote: str, size: int | None = None,
        mode: str = "octet", timeout: float = 120) -> tuple[Path, str]:
    """Fetch with a real client; returns the local file and the client's report."""
    local = s.downloads / f"{kind.name}-{remote.replace('/', '_')}"
    run = fetch(s.lab, s.hosts.client, kind, remote, local, size, mode, timeout)
    assert run.returncode == 0, f"{kind.name} {remote}: {run}"
    assert local.exists(), f"{kind.name} {remote}: no file; {run}"
    return local, str(run)


def granted(s: Served, remote: str, since: int) -> str:
    """The RRQ log line of *remote* (what the server granted)."""
    return s.server.wait_log(rf"{CLIENT_IP}:\d+: RRQ {re.escape(remote)} .*", since=since)[0]


# --- sizes and clients ----------------------------------------------------------------
@pytest.mark.parametrize("name", list(SMALL_SIZES))
@pytest.mark.parametrize("kind", ALL_CLIENTS, ids=lambda k: k.name)
def test_small_files(served: Served, kind: ClientKind, name: str) -> None:
    local, report = get(served, kind, name, SMALL_SIZES[name])
    assert local.stat().st_size == SMALL_SIZES[name], report
    assert sha256_file(local) == served.sha[name], report


ROLLOVER_CLIENTS = [HPA,  # no options at all: RFC 1350's 512-byte blocks, lock-step
                    ClientKind("curl-blksize512", "curl", blksize=512),
                    ClientKind("atftp-blksize512-ws8", "atftp", blksize=512, windowsize=8)]
HUGE_CLIENTS = [ClientKind("curl-blksize65464", "curl", blksize=65464),
                ClientKind("atftp-blksize65464", "atftp", blksize=65464),
                ClientKind("busybox-blksize65464", "busybox", blksize=65464)]


def fetch_checked(s: Served, kind: ClientKind, remote: str) -> tuple[str, int]:
    """Fetch *remote*, check its sha256, remove it; returns the RRQ log line
    (what was granted) and the log mark from before the request."""
    mark = s.server.mark()
    local, report = get(s, kind, remote, SIZES[remote])
    assert sha256_file(local) == s.sha[remote], report
    local.unlink()
    return granted(s, remote, mark), mark


@pytest.mark.parametrize("kind", ROLLOVER_CLIENTS, ids=lambda k: k.name)
def test_rollover_40mib_blksize_512(served: Served, kind: ClientKind) -> None:
    line, mark = fetch_checked(served, kind, ROLLOVER)
    assert "blksize=512" in line if kind.blksize else "blksize" not in line, line
    done = served.server.wait_log(rf"read {ROLLOVER} complete: (\d+) bytes .*?(\d+) packets",
                                  since=mark)
    assert int(done[1]) == 40 * MIB
    assert int(done[2]) >= 81921 > 65535  # block numbers wrapped past 65535


@pytest.mark.parametrize("name", ["one-mib.bin", "s513.bin", "empty.bin"])
def test_atftp_tsize_enable_gets_the_file_and_its_size(served: Served, name: str) -> None:
    """atftp 0.8 sends tsize=enable (not 0): a size request to tftpd-hpa and
    dnsmasq, so to pybootd too (RFC 2349 section 4), never ERROR 8."""
    mark = served.server.mark()
    local, report = get(served, ATFTP_TSIZE, name, SIZES[name])
    assert sha256_file(local) == served.sha[name], report
    line = granted(served, name, mark)
    assert f"tsize={SIZES[name]}" in line and "blksize=1468" in line, line
    served.server.wait_log(rf"read {re.escape(name)} complete: {SIZES[name]} bytes", since=mark)


@pytest.mark.parametrize("kind", HUGE_CLIENTS, ids=lambda k: k.name)
def test_100mib_blksize_65464(served: Served, kind: ClientKind) -> None:
    line, _ = fetch_checked(served, kind, HUGE)
    assert "blksize=65464" in line, line


# Windows leave in UDP GSO batches (tftp_transfer.gso_segments); over the
# veth's MTU of 1500, 8192-byte blocks cannot be cut by GSO (the kernel says
# EINVAL) and go one datagram, IP-fragmented, per block instead.
WINDOW_CLIENTS = [ClientKind("atftp-blksize1468-ws64", "atftp", blksize=1468, windowsize=64),
                  ClientKind("atftp-blksize8192-ws16", "atftp", blksize=8192, windowsize=16)]


@pytest.mark.parametrize("kind", WINDOW_CLIENTS, ids=lambda k: k.name)
def test_windows_in_gso_batches(served: Served, kind: ClientKind) -> None:
    line, _ = fetch_checked(served, kind, ROLLOVER)
    assert f"blksize={kind.blksize}" in line and f"windowsize={kind.windowsize}" in line, line


# --- netascii ----------------------------------------------------------------------------
def to_netascii(data: bytes) -> bytes:
    """RFC 764: CR -> CR NUL, then LF -> CR LF."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def test_netascii_wire_and_round_trip(served: Served) -> None:
    with ns_client(served.hosts.client) as client:
        wire = client.get("text.txt", mode="netascii").data
    assert wire == to_netascii(TEXT)
    assert len(wire) > 3 * 512  # the conversion crossed block boundaries
    # tftp-hpa in ascii mode converts back to the local form on receipt.
    local, report = get(served, HPA, "text.txt", mode="netascii")
    assert local.read_bytes() == TEXT, report
    mark = served.server.mark()
    get(served, HPA, "text.txt", mode="netascii")
    assert "netascii" in granted(served, "text.txt", mark)


# --- escapes ---------------------------------------------------------------------------
ESCAPES = [  # names that climb out: ERROR 2, which tells nothing of what is there
    "../outside/secret",
    "../../../../../../etc/passwd",
    "/../../etc/passwd",
    "..\\..\\etc\\passwd",
    "sub/../../outside/secret",
]
# Symlinks out of the root: what a missing file gets, whether the file they
# reach exists (passwd), is unreadable to the daemon's user (shadow) or not.
LINK_ESCAPES = [
    "outside-link",
    "relative-escape",
    "passwd-link",
    "etc-dir/passwd",
    "etc-dir/shadow",
    "etc-dir/no-such-file",
]
CONTROL_NAMES = ["sub/file\x01", "sub\nfile", "one-mib.bin\x7f", "\x1b[2J"]


def assert_refused_logged(s: Served, port: int, since: int) -> None:
    # (?s): a name with a newline is logged over two lines (see the test below).
    s.server.wait_log(rf"(?s){re.escape(CLIENT_IP)}:{port}: RRQ .*? refused: ERROR 2 ",
                      since=since)


@pytest.mark.parametrize("name", ESCAPES + CONTROL_NAMES, ids=ascii)
def test_escape_refused_with_error_2(served: Served, name: str) -> None:
    mark = served.server.mark()
    with ns_client(served.hosts.client) as client:
        port = client.sock.getsockname()[1]
        with pytest.raises(TftpFailure) as failure:
            client.get(name)
    assert failure.value.code == 2, failure.value
    assert SECRET not in failure.value.message
    assert_refused_logged(served, port, mark)


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +pybootd")


def test_log_lines_carry_no_raw_control_characters(served: Served) -> None:
    forged = "x\n2026-01-01 00:00:00,000 INFO    pybootd.tftp: 192.0.2.99:1: forged"
    mark = served.server.mark()
    for name in (forged, "\x1b[2Jcleared"):
        with ns_client(served.hosts.client) as client, pytest.raises(TftpFailure):
            client.get(name)
    served.server.wait_log(r"cleared", since=mark)
    text = served.server.log(mark)
    assert "\x1b" not in text, text
    for line in text.splitlines():
        assert LOG_LINE.match(line), f"a log line the server did not write: {line!r}"


@pytest.mark.parametrize("name", LINK_ESCAPES)
def test_symlink_out_of_the_root_is_file_not_found(served: Served, name: str) -> None:
    mark = served.server.mark()
    with ns_client(served.hosts.client) as client:
        port = client.sock.getsockname()[1]
        with pytest.raises(TftpFailure) as failure:
            client.get(name)
    assert (failure.value.code, failure.value.message) == (1, f"file not found: {name}")
    # The log tells the administrator why.
    served.server.wait_log(rf"{re.escape(CLIENT_IP)}:{port}: RRQ {re.escape(name)} refused: "
                           r"ERROR 1 .*leads outside", since=mark)


@pytest.mark.parametrize("name,code", [(n, 2) for n in ESCAPES] + [(n, 1) for n in LINK_ESCAPES],
                         ids=ascii)
def test_escape_refused_tftp_hpa(served: Served, name: str, code: int) -> None:
    local = served.downloads / "escape"
    run = fetch(served.lab, served.hosts.client, HPA, name, local)
    assert client_error(HPA, run) == code, run
    assert not local.exists() or local.stat().st_size == 0
    assert served.server.alive()


@pytest.mark.parametrize("kind", [ATFTP, CURL, ClientKind("busybox", "busybox")],
                         ids=lambda k: k.name)
def test_escape_refused_other_clients(served: Served, kind: ClientKind) -> None:
    name = "../outside/secret" if kind.tool != "curl" else "..%2Foutside%2Fsecret"
    local = served.downloads / "escape2"
    run = fetch(served.lab, served.hosts.client, kind, name, local)
    assert client_error(kind, run) == 2, run
    assert not local.exists() or SECRET not in local.read_text(errors="replace")
    run = fetch(served.lab, served.hosts.client, kind, "outside-link", local)
    assert client_error(kind, run) == 1, run
    assert not local.exists() or SECRET not in local.read_text(errors="replace")


@pytest.mark.parametrize("name,expected", [
    ("inside-link", "sub/file"),
    ("relative-link", "sub/file"),
    ("/sub/file", "sub/file"),
    ("sub\\file", "sub/file"),
    ("\\sub\\file", "sub/file"),
    ("./sub//./file", "sub/file"),
    ("/etc/passwd", "etc/passwd"),  # an absolute path is read inside the root
])
def test_names_resolving_inside_the_root(served: Served, name: str, expected: str) -> None:
    with ns_client(served.hosts.client) as client:
        data = client.get(name).data
    assert sha256_bytes(data) == served.sha[expected]
    local, report = get(served, HPA, name)
    assert sha256_file(local) == served.sha[expected], report


def test_missing_file_error_1(served: Served) -> None:
    with ns_client(served.hosts.client) as client, pytest.raises(TftpFailure) as failure:
        client.get("no/such/file")
    assert failure.value.code == 1
    for kind in (HPA, ATFTP, CURL):
        run = fetch(served.lab, served.hosts.client, kind, "nothing-here",
                    served.downloads / "missing")
        assert client_error(kind, run) == 1, f"{kind.name}: {run}"


LATIN1_NAME = os.fsdecode(b"caf\xe9.bin")  # not UTF-8: read with surrogateescape


def test_non_utf8_names_are_logged_to_a_log_file(lab: NetLab) -> None:
    hosts = two_hosts(lab)
    with public_tmpdir("latin1") as base:
        root = base / "root"
        sha = write_file(root / LATIN1_NAME, 2000, seed="latin1")
        root.chmod(0o755)
        server = Pybootd(lab, hosts.server, base)
        server.log_path.touch(mode=0o666)
        server.log_path.chmod(0o666)  # the daemon opens it after dropping to nobody
        server.start({"root": root},
                     logger={"type": "file", "file": server.log_path, "level": "info"})
        with ns_client(hosts.client) as client:
            assert sha256_bytes(client.get(LATIN1_NAME).data) == sha  # served all right
            with pytest.raises(TftpFailure):
                client.get(os.fsdecode(b"missing-\xff.bin"))
        assert server.stop() == 0
        log = server.log()
        assert "RRQ caf" in log and "complete: 2000 bytes" in log, log
        assert "RRQ missing-" in log, log


def test_the_daemon_never_serves_its_own_files(lab: NetLab) -> None:
    """The issue's case: the root is the configuration file's folder, which
    holds state_dir and the log file too. Each of them gets what a missing
    file gets, from pybootd and as tftp-hpa sees it; the root still serves."""
    hosts = two_hosts(lab)
    with public_tmpdir("own") as base:
        write_text(base / "hello.txt", "hello")
        write_text(base / "state" / "leases.sqlite", SECRET)
        (base / "state").chmod(0o755)
        server = Pybootd(lab, hosts.server, base)
        server.log_path.touch(mode=0o666)
        server.log_path.chmod(0o666)  # the daemon opens it after dropping to nobody
        server.start({"root": base}, daemon={"state_dir": base / "state"},
                     logger={"type": "file", "file": server.log_path, "level": "info"})
        with ns_client(hosts.client) as client:
            assert client.get("hello.txt").data == b"hello"
        for name in ("pybootd.ini", "state/leases.sqlite", "pybootd.log"):
            with ns_client(hosts.client) as client, pytest.raises(TftpFailure) as failure:
                client.get(name)
            assert (failure.value.code, failure.value.message) == (1, f"file not found: {name}")
            run = fetch(lab, hosts.client, HPA, name, base / "fetched")
            assert client_error(HPA, run) == 1, run
        server.wait_log(r"RRQ pybootd\.ini refused: ERROR 1 .*protected daemon file")
        assert server.stop() == 0


# --- protocol corners on the wire ---------------------------------------------------------
def test_tsize_probe_then_client_error_8_ends_quietly(served: Served) -> None:
    """EDK2's first RRQ: tsize only, read the OACK, answer ERROR 8, ask again."""
    mark = served.server.mark()
    with ns_client(served.hosts.client) as client:
        client.request("one-mib.bin", "octet", (("tsize", "0"),))
        oack, tid = client.receive()
        assert isinstance(oack, Oack) and dict(oack.options) == {"tsize": str(MIB)}
        client.sock.sendto(encode(Error(8, "User aborted the transfer")), tid)
        data = client.get("one-mib.bin", options=(("tsize", "0"), ("blksize", "1468"))).data
    assert sha256_bytes(data) == served.sha["one-mib.bin"]
    line = served.server.wait_log(r".* read one-mib.bin aborted by client.*", since=mark)[0]
    assert " INFO " in line, line


def test_foreign_tid_gets_error_5_and_the_transfer_goes_on(served: Served) -> None:
    mark = served.server.mark()
    with ns_client(served.hosts.client) as client, ns_client(served.hosts.client) as intruder:
        client.request("s513.bin", "octet")
        first, tid = client.receive()
        assert isinstance(first, Data) and first.block == 1
        intruder.sock.sendto(encode_ack(1), tid)
        reply, source = intruder.receive()
        assert isinstance(reply, Error) and reply.code == 5 and source == tid, reply
        client.sock.sendto(encode_ack(1), tid)
        second, _ = client.receive()
        assert isinstance(second, Data) and second.block == 2 and len(second.data) == 1
        client.sock.sendto(encode_ack(2), tid)
    served.server.wait_log(r"read s513.bin complete: 513 bytes", since=mark)


@pytest.mark.parametrize("mode", ["mail", "binary", "image"])
def test_unsupported_mode_is_error_4(served: Served, mode: str) -> None:
    with ns_client(served.hosts.client) as client, pytest.raises(TftpFailure) as failure:
        client.get("s511.bin", mode=mode)
    assert failure.value.code == 4, failure.value


# --- [filters] ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    ("pxelinux.cfg/01-52-54-00-12-34-56", "admin-default"),  # absolute admin file
    ("pxelinux.cfg/default", "admin-default"),
    ("legacy/vmlinuz", "store/legacy/vmlinuz"),  # {filename} expansion
    ("menu.cfg", "menus/menu.cfg"),  # [file] indirection
    ("first/x", "store/first-a"),  # ? and first match wins
    ("first/xy", "store/first-b"),
])
@pytest.mark.parametrize("kind", [HPA, ATFTP], ids=lambda k: k.name)
def test_filters(served: Served, kind: ClientKind, name: str, expected: str) -> None:
    local, report = get(served, kind, name)
    assert sha256_file(local) == served.sha[expected], report


# --- uploads ----------------------------------------------------------------------------------
@dataclass
class Uploads:
    lab: NetLab
    hosts: Hosts
    base: Path
    upload_dir: Path


@pytest.fixture
def uploads(lab: NetLab) -> Iterator[Uploads]:
    with public_tmpdir("wrq") as base:
        upload_dir = base / "uploads"
        upload_dir.mkdir()
        os.chown(upload_dir, 65534, 65534)  # nobody: the daemon writes as that user
        (base / "root").mkdir(mode=0o755)
        yield Uploads(lab, two_hosts(lab), base, upload_dir)


def start_writer(u: Uploads, **tftp: object) -> Pybootd:
    settings = {"root": u.base / "root", "upload_dir": u.upload_dir, "timeout": 0.5, **tftp}
    return Pybootd(u.lab, u.hosts.server, u.base).start(settings)


def put(u: Uploads, remote: str, size: int, seed: str) -> tuple[str, str]:
    local = u.base / f"local-{seed}"
    local.write_bytes(content(size, seed))
    run = hpa_put(u.lab, u.hosts.client, local, remote)
    return sha256_file(local), run.output


def leftovers(u: Uploads) -> list[str]:
    return sorted(p.name for p in u.upload_dir.iterdir())


def test_upload_allowed_lands_with_same_sha(uploads: Uploads) -> None:
    server = start_writer(uploads, allow_write="on")
    sha, output = put(uploads, "image.bin", 300_000, "first")
    assert "Error" not in output, output
    assert sha256_file(uploads.upload_dir / "image.bin") == sha
    assert leftovers(uploads) == ["image.bin"]
    server.wait_log(rf"{CLIENT_IP}:\d+: write image.bin complete: 300000 bytes")
    # An existing file is refused (ERROR 6) and left as it was.
    _, output = put(uploads, "image.bin", 1000, "second")
    assert re.search(r"Error code 6:", output), output
    assert sha256_file(uploads.upload_dir / "image.bin") == sha
    assert leftovers(uploads) == ["image.bin"]
    assert server.stop() == 0


def test_upload_refused_without_allow_write(uploads: Uploads) -> None:
    server = start_writer(uploads)
    _, output = put(uploads, "image.bin", 1000, "nope")
    assert re.search(r"Error code 2:", output), output
    assert leftovers(uploads) == []
    server.wait_log(rf"{CLIENT_IP}:\d+: WRQ image.bin refused: ERROR 2")


def test_upload_overwrite(uploads: Uploads) -> None:
    start_writer(uploads, allow_write="on", overwrite="on")
    put(uploads, "image.bin", 5000, "old")
    sha, output = put(uploads, "image.bin", 7000, "new")
    assert "Error" not in output, output
    assert sha256_file(uploads.upload_dir / "image.bin") == sha
    assert leftovers(uploads) == ["image.bin"]


def test_upload_over_max_size_leaves_nothing(uploads: Uploads) -> None:
    server = start_writer(uploads, allow_write="on", max_upload_size=100_000)
    _, output = put(uploads, "big.bin", 300_000, "big")
    assert re.search(r"Error code 3:", output), output  # disk full / allocation exceeded
    # The temporary file goes right after the ERROR leaves (a thread removes it).
    wait_for(lambda: not leftovers(uploads), 5, what=f"no upload left: {leftovers(uploads)}")
    _, output = put(uploads, "fits.bin", 100_000, "fits")
    assert "Error" not in output, output
    assert leftovers(uploads) == ["fits.bin"]
    # A client that announces its size (tsize) is refused before any data.
    with ns_client(uploads.hosts.client) as client:
        client.request("announced.bin", "octet", (("tsize", "300000"),), write=True)
        reply, _ = client.receive()
    assert isinstance(reply, Error) and reply.code == 3, reply
    assert leftovers(uploads) == ["fits.bin"]
    assert server.alive()


def test_upload_netascii_is_stored_in_local_form(uploads: Uploads) -> None:
    start_writer(uploads, allow_write="on")
    local = write_text(uploads.base / "notes.txt", TEXT)
    run = hpa_put(uploads.lab, uploads.hosts.client, local, "notes.txt", mode="ascii")
    assert "Error" not in run.output, run
    assert (uploads.upload_dir / "notes.txt").read_bytes() == TEXT


@pytest.mark.parametrize("options", [("blksize 1428",), ("blksize 1428", "windowsize 8")],
                         ids=lambda o: "+".join(x.replace(" ", "") for x in o))
def test_upload_atftp_with_options(uploads: Uploads, options: tuple[str, ...]) -> None:
    server = start_writer(uploads, allow_write="on")
    local = uploads.base / "atftp.bin"
    local.write_bytes(content(3 * MIB, "atftp-put"))
    argv = ["atftp", *(a for o in options for a in ("--option", o)), "-p", "-l", str(local),
            "-r", "atftp.bin", "192.0.2.1"]
    ATFTP.require()
    run = uploads.lab.run(uploads.hosts.client, argv, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sha256_file(uploads.upload_dir / "atftp.bin") == sha256_file(local)
    line = server.wait_log(r"WRQ atftp.bin octet.*")[0]
    assert all(o.replace(" ", "=") in line for o in options), line


def test_upload_escape_refused(uploads: Uploads) -> None:
    start_writer(uploads, allow_write="on")
    for name in ("../escaped.bin", "/../escaped.bin", "..\\escaped.bin"):
        _, output = put(uploads, name, 1000, "escape")
        assert re.search(r"Error code 2:", output), f"{name}: {output}"
    assert not (uploads.base / "escaped.bin").exists()
    assert leftovers(uploads) == []

