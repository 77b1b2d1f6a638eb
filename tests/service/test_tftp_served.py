"""What TFTP serves, seen from a client of the real TftpService on loopback:
never the daemon's own files, absolute ``[filters]`` targets confined,
error replies that reveal nothing, the upload quota, liberal options, and
an HTTP cache that holds no idle descriptor and serves its copies through
a mirror outage (stale-if-error)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpmirror import Mirror
from netlab import wait_for
from tftpclient import Client, TftpFailure
from tftpserver import Server

from pybootd.api import TransferStats
from pybootd.sources import httpcache
from pybootd.tftp.packets import Ack, Error, ErrorCode, Oack

SECRET = b"root:$6$secret-hash:19000:0:99999:7:::\n"


def refused(port: int, name: str) -> TftpFailure:
    with Client("127.0.0.1", port) as client, pytest.raises(TftpFailure) as info:
        client.get(name)
    return info.value


def error_of(seen: list[TransferStats], name: str) -> str:
    """What the log and the session_stats callback got for *name* (the
    detail); reported just after the ERROR leaves."""
    def find() -> str | None:
        return next((s.error for s in reversed(seen) if s.filename == name), None)
    found: str = wait_for(find, 5, what=f"the stats of {name}")
    return found


def outcome(port: int, name: str) -> int | None:
    """The ERROR code a request gets, None when the file is served."""
    try:
        with Client("127.0.0.1", port) as client:
            client.get(name)
    except TftpFailure as exc:
        return exc.code
    return None


# --- item 1: the daemon's own files ------------------------------------------------------
@pytest.fixture
def own_files(tmp_path: Path) -> Iterator[tuple[Server, Path, list[TransferStats]]]:
    """The issue's case: the root is the configuration file's folder, which
    also holds state_dir (leases, cache) and the log file."""
    conf = tmp_path / "conf"
    (conf / "state" / "cache").mkdir(parents=True)
    (conf / "hello.txt").write_bytes(b"hello")
    for name in ("leases.sqlite", "leases.sqlite-wal", "leases.sqlite-shm",
                 "leases.sqlite.lock", "other"):
        (conf / "state" / name).write_bytes(SECRET)
    (conf / "state" / "cache" / "0123abcd-1-0").write_bytes(SECRET)
    (conf / "pybootd.log").write_bytes(SECRET)
    (conf / "pybootd.log.1").write_bytes(SECRET)
    (conf / "names.txt").write_text(f"# indirection to the configuration\n{conf / 't.ini'}\n")
    path = conf / "t.ini"
    text = (f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {conf}\n"
            "timeout = 0.2\nretries = 2\n"
            f"[daemon]\nstate_dir = state\n"
            f"[logger]\ntype = file\nfile = {conf / 'pybootd.log'}\n"
            "[bootp]\npool_start = 192.0.2.100\n"
            f"[filters]\nadmin-config = {path}\ndb = state/leases.sqlite\n"
            "via-names = [names.txt]\nt = {filename}.ini\nleases = state/{filename}.sqlite\n")
    path.write_text(text + "; [http] location tokens would be here\n")
    (conf / "link-config").symlink_to(path)
    os.link(path, conf / "hard-config")
    seen: list[TransferStats] = []
    srv = Server(text, path, session_stats=seen.append)
    yield srv, conf, seen
    srv.stop()


OWN_FILES = ["t.ini", "state/leases.sqlite", "state/leases.sqlite-wal",
             "state/leases.sqlite-shm", "state/leases.sqlite.lock", "state/other",
             "state/cache/0123abcd-1-0", "pybootd.log", "pybootd.log.1", "link-config",
             "hard-config", "/t.ini", "admin-config", "db", "via-names", "t", "leases"]


def test_the_daemon_never_serves_its_own_files(
        own_files: tuple[Server, Path, list[TransferStats]]) -> None:
    srv, _conf, seen = own_files
    with Client("127.0.0.1", srv.port) as client:
        assert client.get("hello.txt").data == b"hello"  # the root itself still serves
    missing = refused(srv.port, "nothing-here")
    assert (missing.code, missing.message) == (1, "file not found: nothing-here")
    for name in OWN_FILES:
        failure = refused(srv.port, name)
        shown = name.lstrip("/")
        # Exactly what a missing file gets: nothing tells the file is there.
        assert (failure.code, failure.message) == (1, f"file not found: {shown}"), name
        assert "protected daemon file" in error_of(seen, name), name


def test_a_root_inside_state_dir_still_serves(tmp_path: Path) -> None:
    """A root the administrator put in state_dir (state/tftp) is served;
    the rest of state_dir is not."""
    state = tmp_path / "state"
    (state / "tftp").mkdir(parents=True)
    (state / "tftp" / "boot.img").write_bytes(b"boot")
    (state / "leases.sqlite").write_bytes(SECRET)
    (state / "tftp" / "up").symlink_to(state / "leases.sqlite")
    text = (f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {state / 'tftp'}\n"
            f"[daemon]\nstate_dir = {state}\n")
    srv = Server(text, tmp_path / "t.ini")
    try:
        with Client("127.0.0.1", srv.port) as client:
            assert client.get("boot.img").data == b"boot"
        assert refused(srv.port, "up").code == ErrorCode.FILE_NOT_FOUND
    finally:
        srv.stop()


# --- item 2: absolute [filters] targets with {filename} ----------------------------------
@pytest.fixture
def confined(tmp_path: Path) -> Iterator[tuple[Server, list[TransferStats]]]:
    srv_dir, outside = tmp_path / "srv", tmp_path / "outside"
    (srv_dir / "pub" / "pub").mkdir(parents=True)
    (srv_dir / "names" / "names").mkdir(parents=True)
    outside.mkdir()
    (outside / "shadow").write_bytes(SECRET)
    (outside / "fixed.txt").write_bytes(b"the admin's file")
    (outside / "name-file").write_text("pub/ok.txt\n")
    (srv_dir / "pub" / "pub" / "ok.txt").write_bytes(b"public")
    (srv_dir / "pub" / "pub" / "etc").symlink_to(outside)  # the issue's /srv/pub/pub/etc
    (srv_dir / "pub" / "ind").symlink_to(outside)
    (srv_dir / "ind.txt").write_text(f"{srv_dir}/pub/{{filename}}\n")
    (srv_dir / "names" / "names" / "good").write_text("pub/ok.txt\n")
    (srv_dir / "names" / "names" / "esc").symlink_to(outside / "name-file")
    root = tmp_path / "root"
    root.mkdir()
    (root / "pub").mkdir()
    (root / "pub" / "ok.txt").write_bytes(b"in the root")
    rules = (f"[filters]\npub/* = {srv_dir}/pub/{{filename}}\nfixed = {outside}/fixed.txt\n"
             f"ind/* = [{srv_dir}/ind.txt]\nnames/* = [{srv_dir}/names/{{filename}}]\n")
    text = (f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {root}\n"
            f"timeout = 0.2\n{rules}")
    seen: list[TransferStats] = []
    srv = Server(text, tmp_path / "t.ini", session_stats=seen.append)
    yield srv, seen
    srv.stop()


def test_filename_in_an_absolute_target_stays_in_its_folder(
        confined: tuple[Server, list[TransferStats]]) -> None:
    srv, seen = confined
    with Client("127.0.0.1", srv.port) as client:
        assert client.get("pub/ok.txt").data == b"public"
        assert client.get("fixed").data == b"the admin's file"  # a fixed target: as named
        assert client.get("names/good").data == b"in the root"  # a relative name: the root
    for name in ("pub/etc/shadow", "ind/shadow", "names/esc"):
        failure = refused(srv.port, name)
        assert (failure.code, failure.message) == (1, f"file not found: {name}"), name
        assert "leads outside" in error_of(seen, name), name


# --- item 5: error replies ---------------------------------------------------------------
@pytest.fixture
def rooted(tmp_path: Path) -> Iterator[tuple[Server, list[TransferStats]]]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "small").write_bytes(b"hello")
    (tmp_path / "secret").write_bytes(SECRET)
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "escape-dir").symlink_to(tmp_path)
    (root / "dangling").symlink_to(tmp_path / "no-such-file")
    (root / "folder").mkdir()
    seen: list[TransferStats] = []
    text = (f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {root}\n"
            f"timeout = 0.2\nallow_write = off\n")
    srv = Server(text, tmp_path / "t.ini", session_stats=seen.append)
    yield srv, seen
    srv.stop()


def test_outside_the_root_is_told_as_not_found(rooted: tuple[Server, list[TransferStats]]) -> None:
    """A symlink out of the root gets what a missing file gets: a client
    cannot tell what exists outside the root; the log says why."""
    srv, seen = rooted
    for name in ("escape", "escape-dir/secret", "escape-dir/no-such", "dangling", "folder",
                 "no-such"):
        failure = refused(srv.port, name)
        assert (failure.code, failure.message) == (1, f"file not found: {name}"), name
        assert str(srv.config.tftp.root_path) not in failure.message
    assert "leads outside" in error_of(seen, "escape")
    # A name that tries to climb out reveals nothing either: ERROR 2 as before.
    assert refused(srv.port, "../secret").code == ErrorCode.ACCESS_VIOLATION


def test_options_that_cannot_be_used_are_ignored(
        rooted: tuple[Server, list[TransferStats]]) -> None:
    """atftp 0.8 sends tsize=enable; blksize=4 or timeout=0 are ignored, not refused."""
    srv, _ = rooted
    with Client("127.0.0.1", srv.port) as client:
        result = client.get("small", options=(("tsize", "enable"), ("blksize", "4"),
                                              ("timeout", "0"), ("windowsize", "0")))
        assert result.data == b"hello" and result.oack == {"tsize": "5"}
    with Client("127.0.0.1", srv.port) as client:
        result = client.get("small", options=(("blksize", "abc"),))
        assert result.data == b"hello" and result.oack == {}


# --- item 5: the upload quota -----------------------------------------------------------
def quota_server(tmp_path: Path, upload_dir: Path, quota: int, overwrite: bool = False) -> Server:
    text = (f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {tmp_path}\n"
            f"timeout = 0.2\nretries = 2\nallow_write = on\nupload_dir = {upload_dir}\n"
            f"upload_quota = {quota}\noverwrite = {'on' if overwrite else 'off'}\n")
    return Server(text, tmp_path / "t.ini")


def wrq_reply(port: int, name: str, tsize: int) -> object:
    with Client("127.0.0.1", port) as client:
        client.request(name, "octet", (("tsize", str(tsize)),), write=True)
        packet, _ = client.receive()
    return packet


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_upload_quota_counts_what_is_there_and_what_comes(tmp_path: Path) -> None:
    upload_dir = tmp_path / "up"
    (upload_dir / "sub").mkdir(parents=True)
    (upload_dir / "sub" / "old.bin").write_bytes(bytes(4000))  # measured at start
    srv = quota_server(tmp_path, upload_dir, 10_000)
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.put("a.bin", os.urandom(5000))  # 9000 of 10000
            # Over the quota in the middle of the transfer: ERROR 3, no file.
            with pytest.raises(TftpFailure) as info:
                client.put("b.bin", os.urandom(1500))
            assert (info.value.code, info.value.message) == \
                (ErrorCode.DISK_FULL, "disk full or allocation exceeded")
        # Announced too big (tsize): refused before any data.
        reply = wrq_reply(srv.port, "c.bin", 1001)
        assert isinstance(reply, Error) and reply.code == ErrorCode.DISK_FULL, reply
        assert isinstance(wrq_reply(srv.port, "d.bin", 1000), Oack)  # fits: would go on
        with Client("127.0.0.1", srv.port) as client:
            client.put("e.bin", os.urandom(1000))  # exactly full now
        reply = wrq_reply(srv.port, "f.bin", 0)  # at the quota: refused at once
        assert isinstance(reply, Error) and reply.code == ErrorCode.DISK_FULL, reply
        wait_for(lambda: files_in(upload_dir) == ["a.bin", "e.bin", "sub"], 5,
                 what=f"no leftovers: {files_in(upload_dir)}")
    finally:
        srv.stop()


def test_upload_stopped_in_the_middle_when_it_passes_the_quota(tmp_path: Path) -> None:
    upload_dir = tmp_path / "up"
    upload_dir.mkdir()
    seen: list[TransferStats] = []
    text = (f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {tmp_path}\n"
            f"timeout = 0.2\nretries = 2\nallow_write = on\nupload_dir = {upload_dir}\n"
            "upload_quota = 300000\n")
    srv = Server(text, tmp_path / "t.ini", session_stats=seen.append)
    try:
        with Client("127.0.0.1", srv.port) as client, pytest.raises(TftpFailure) as info:
            client.put("big.bin", os.urandom(2_000_000), blksize=1468)
        assert info.value.code == ErrorCode.DISK_FULL
        (stats,) = wait_for(lambda: [s for s in seen if s.filename == "big.bin"] or None, 5,
                            what="the upload's stats")
        assert stats.bytes < 1_000_000, stats  # stopped long before its end
        wait_for(lambda: not files_in(upload_dir), 5, what=f"no leftovers: {files_in(upload_dir)}")
    finally:
        srv.stop()


def test_an_overwrite_gives_back_the_old_size(tmp_path: Path) -> None:
    upload_dir = tmp_path / "up"
    upload_dir.mkdir()
    (upload_dir / "image.bin").write_bytes(bytes(6000))
    srv = quota_server(tmp_path, upload_dir, 10_000, overwrite=True)
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.put("image.bin", os.urandom(4000))  # 6000 + 4000 while it comes, then 4000
            client.put("other.bin", os.urandom(5000))  # 9000
            with pytest.raises(TftpFailure) as info:
                client.put("more.bin", os.urandom(1001))
            assert info.value.code == ErrorCode.DISK_FULL
    finally:
        srv.stop()
    assert (upload_dir / "image.bin").stat().st_size == 4000
    assert files_in(upload_dir) == ["image.bin", "other.bin"]


def test_upload_never_replaces_a_daemon_file(tmp_path: Path) -> None:
    """upload_dir holding the configuration file, with overwrite on."""
    path = tmp_path / "t.ini"
    text = (f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {tmp_path}\n"
            f"timeout = 0.2\nallow_write = on\nupload_dir = {tmp_path}\noverwrite = on\n")
    path.write_text(text)
    srv = Server(text, path)
    try:
        with Client("127.0.0.1", srv.port) as client, pytest.raises(TftpFailure) as info:
            client.put("t.ini", b"[tftp]\nroot = /\n")
        assert info.value.code == ErrorCode.ACCESS_VIOLATION
    finally:
        srv.stop()
    assert path.read_text() == text


# --- items 10 and 16: the HTTP cache -----------------------------------------------------
@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    folder = tmp_path / "mirror"
    (folder / "netboot").mkdir(parents=True)
    (folder / "netboot" / "linux").write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    (folder / "netboot" / "small").write_bytes(b"small file")
    m = Mirror(folder)
    yield m
    m.stop()


def http_server(mirror: Mirror, tmp_path: Path, extra: str = "") -> Server:
    return Server(f"[tftp]\naddress = 127.0.0.1\nport = 0\n"
                  f"root = {mirror.url}netboot\ncache_dir = {tmp_path / 'cache'}\n"
                  f"http_timeout = 1\ntimeout = 0.5\n{extra}", tmp_path / "t.ini")


def cache_fds(cache_dir: Path) -> list[str]:
    """This process's descriptors open on files in *cache_dir*."""
    real = os.path.realpath(cache_dir) + "/"
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(real):
            found.append(target)
    return found


def downloaded(srv: Server, count: int) -> None:
    http = srv.service.http
    assert http is not None
    wait_for(lambda: srv.call(lambda: http.downloads) == count, 5, what="the downloads")


def test_idle_cached_files_hold_no_descriptor(mirror: Mirror, tmp_path: Path) -> None:
    srv = http_server(mirror, tmp_path)
    cache = tmp_path / "cache"
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.get("linux", options=(("blksize", "1468"), ("windowsize", "8")))
            client.get("small")
        downloaded(srv, 2)
        wait_for(lambda: not cache_fds(cache), 5, what=f"no descriptor: {cache_fds(cache)}")
        with Client("127.0.0.1", srv.port) as client:  # from the cache, like a local file
            assert client.get("linux").data == (mirror.folder / "netboot" / "linux").read_bytes()
        wait_for(lambda: not cache_fds(cache), 5, what=f"no descriptor: {cache_fds(cache)}")
        assert len(mirror.gets) == 2
    finally:
        srv.stop()


def test_errors_from_the_mirror_carry_no_url(mirror: Mirror, tmp_path: Path) -> None:
    srv = http_server(mirror, tmp_path)
    try:
        failure = refused(srv.port, "missing")
        assert (failure.code, failure.message) == (1, "file not found: missing")
        mirror.fail_status = 502
        failure = refused(srv.port, "small")
        assert failure.code == 0 and "502" in failure.message
        mirror.stop()
        failure = refused(srv.port, "small")
        assert failure.code == 0 and "mirror unreachable" in failure.message
        for text in ("http", "127.0.0.1", str(mirror.port), str(tmp_path)):
            assert text not in failure.message
    finally:
        srv.stop()


def stale_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "serving the cached copy" in r.getMessage()]


@pytest.mark.parametrize("outage", ["stopped", "503"])
def test_stale_copy_served_while_the_mirror_fails(
        mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, outage: str) -> None:
    """RFC 5861 stale-if-error: within stale_max, the complete copy is
    served with one warning per file; past stale_max, the error."""
    monkeypatch.setattr(httpcache, "FRESH_SECONDS", 0.0)  # every request revalidates
    caplog.set_level(logging.INFO, logger="pybootd")
    srv = http_server(mirror, tmp_path, "stale_max = 1.5\n")
    try:
        with Client("127.0.0.1", srv.port) as client:
            assert client.get("small").data == b"small file"
        downloaded(srv, 1)
        if outage == "stopped":
            mirror.stop()
        else:
            mirror.fail_status = 503
        with Client("127.0.0.1", srv.port) as client:
            assert client.get("small").data == b"small file"
        with Client("127.0.0.1", srv.port) as client:  # a new port: not a repeat
            assert client.get("small", options=(("tsize", "0"),)).oack == {"tsize": "10"}
        (warning,) = stale_warnings(caplog)  # once per file, not once per request
        assert "small" in warning and ("connection failed" in warning or "503" in warning)
        wait_for(lambda: outcome(srv.port, "small") == 0, 5, what="stale_max to pass")
        failure = refused(srv.port, "small")
        assert failure.code == 0 and "mirror" in failure.message
    finally:
        srv.stop()


def test_a_404_on_revalidation_means_gone(mirror: Mirror, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpcache, "FRESH_SECONDS", 0.0)
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port) as client:
            assert client.get("small").data == b"small file"
        downloaded(srv, 1)
        (mirror.folder / "netboot" / "small").unlink()
        failure = refused(srv.port, "small")
        assert (failure.code, failure.message) == (1, "file not found: small")
    finally:
        srv.stop()


def test_stale_copy_served_after_a_restart_during_an_outage(mirror: Mirror,
                                                             tmp_path: Path) -> None:
    """When a copy was validated is kept beside it: a restart (the usual
    reflex when something is wrong) does not turn the outage into refusals."""
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.get("small")
        downloaded(srv, 1)
    finally:
        srv.stop()
    mirror.stop()
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port) as client:
            assert client.get("small").data == b"small file"
    finally:
        srv.stop()
    srv = http_server(mirror, tmp_path, "stale_max = 0\n")
    try:
        assert refused(srv.port, "small").code == 0
    finally:
        srv.stop()


def test_wrq_tsize_that_is_not_a_number_is_ignored(tmp_path: Path) -> None:
    """A WRQ whose tsize is not a number: ignored, the upload goes on."""
    upload_dir = tmp_path / "up"
    upload_dir.mkdir()
    srv = quota_server(tmp_path, upload_dir, 10_000)
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.request("x.bin", "octet", (("tsize", "enable"),), write=True)
            reply, _ = client.receive()
        assert isinstance(reply, Ack) and reply.block == 0, reply
    finally:
        srv.stop()
