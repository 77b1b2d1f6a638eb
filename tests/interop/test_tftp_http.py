"""An HTTP root: pybootd streams files from a real mirror through its cache.

The mirror is ``python -m http.server`` inside the server's namespace, which
logs one line per request: the tests count its GETs. Ten real clients at
once cost one download; an upstream 404 is ERROR 1; a stopped or silent
mirror is a clean ERROR 0 within the timeout, and the daemon goes on serving,
cached copies too, also once they are due for revalidation (stale-if-error).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netlab import NetLab, ns_socket
from tftp_support import (
    ATFTP_WS8,
    BUSYBOX,
    CLIENT_IP,
    CURL_BIG,
    HPA,
    MIB,
    ClientKind,
    Hosts,
    HttpMirror,
    Pybootd,
    client_error,
    fetch,
    ns_client,
    public_tmpdir,
    sha256_bytes,
    sha256_file,
    two_hosts,
    write_file,
)
from tftpclient import TftpFailure

from pybootd.sources.httpcache import FRESH_SECONDS

pytestmark = [pytest.mark.netns, pytest.mark.interop]

HTTP_TIMEOUT = 2.0
BIG = "images/big.bin"


@dataclass
class Mirrored:
    lab: NetLab
    hosts: Hosts
    base: Path
    mirror: HttpMirror
    sha: dict[str, str]
    server: Pybootd | None = None

    def start(self, url: str | None = None, **tftp: Any) -> Pybootd:
        settings = {"root": url or self.mirror.url, "cache_dir": self.base / "cache",
                    "http_timeout": HTTP_TIMEOUT, "timeout": 0.5, **tftp}
        self.server = Pybootd(self.lab, self.hosts.server, self.base).start(
            settings, filters=[("pxelinux.cfg/*", str(self.base / "admin" / "default"))])
        return self.server


@pytest.fixture
def mirrored(lab: NetLab) -> Iterator[Mirrored]:
    with public_tmpdir("http") as base:
        files = base / "mirror"
        sha = {BIG: write_file(files / BIG, 20 * MIB),
               "small.bin": write_file(files / "small.bin", 70_000),
               "other.bin": write_file(files / "other.bin", 5000),
               "admin": write_file(base / "admin" / "default", 123)}
        (base / "admin").chmod(0o755)
        hosts = two_hosts(lab)
        mirror = HttpMirror(lab, hosts.server, files, base / "mirror.log").start()
        state = Mirrored(lab, hosts, base, mirror, sha)
        try:
            yield state
        finally:
            if state.server is not None and state.server.alive():
                state.server.stop()
            print(mirror.log()[-5000:])
            if state.server is not None:
                print(state.server.log()[-10000:])


CROWD: list[ClientKind] = [CURL_BIG] * 4 + [ATFTP_WS8] * 3 + [BUSYBOX] * 2 + [HPA]


def test_ten_clients_at_once_cost_one_download(mirrored: Mirrored) -> None:
    # A mirror that needs about 1.6 s for the file: every client joins the
    # running download and gets its first blocks before the download ends.
    mirrored.mirror.stop()
    mirrored.mirror.start(chunk_delay=0.02)
    server = mirrored.start()
    out = mirrored.base / "out"
    out.mkdir()
    procs = []
    for i, kind in enumerate(CROWD):
        local = out / f"{i}-{kind.name}"
        argv = kind.argv("192.0.2.1", BIG, local, 20 * MIB)
        procs.append((kind, local, mirrored.lab.popen(mirrored.hosts.client, argv)))
    for kind, local, proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{kind.name}: {output!r}"
        assert sha256_file(local) == mirrored.sha[BIG], kind.name
    assert mirrored.mirror.gets(BIG) == 1, mirrored.mirror.log()
    assert mirrored.mirror.gets(BIG, 200) == 1
    log = server.log()
    assert log.count("downloading") == 1 and log.count("downloaded 20971520 bytes") == 1, log
    before_end = log[:log.index("downloaded 20971520 bytes")]
    assert before_end.count(f"RRQ {BIG}") == len(CROWD), "not all clients joined the download"
    assert log.count(f"read {BIG} complete") == len(CROWD)
    # Served again from the cache: still one download.
    with ns_client(mirrored.hosts.client) as client:
        data = client.get(BIG, options=(("blksize", "1468"), ("windowsize", "16"))).data
    assert sha256_bytes(data) == mirrored.sha[BIG]
    assert mirrored.mirror.gets(BIG) == 1


def test_upstream_404_is_error_1(mirrored: Mirrored) -> None:
    server = mirrored.start()
    with ns_client(mirrored.hosts.client) as client, pytest.raises(TftpFailure) as failure:
        client.get("images/missing.bin")
    assert failure.value.code == 1, failure.value
    assert mirrored.mirror.gets("images/missing.bin", 404) == 1
    run = fetch(mirrored.lab, mirrored.hosts.client, HPA, "no-such.bin",
                mirrored.base / "missing")
    assert client_error(HPA, run) == 1, run
    server.wait_log(rf"{CLIENT_IP}:\d+: RRQ no-such.bin refused: ERROR 1")


@pytest.mark.parametrize("name,code", [
    ("../outside.bin", 2),
    ("images/../../outside.bin", 2),
    ("%2e%2e/outside.bin", 1),  # sent quoted: a literal "%2e%2e" folder, not found
    ("..%2foutside.bin", 1),
    ("big.bin?x=y", 1),  # "?" is quoted: no query string
])
def test_http_root_never_reaches_outside_its_prefix(mirrored: Mirrored, name: str,
                                                     code: int) -> None:
    write_file(mirrored.base / "mirror" / "outside.bin", 100)
    mirrored.start(url=mirrored.mirror.url + "images/")
    with ns_client(mirrored.hosts.client) as client, pytest.raises(TftpFailure) as failure:
        client.get(name)
    assert failure.value.code == code, failure.value
    requests = re.findall(r'"GET (\S*) HTTP/1\.[01]" (\d+)', mirrored.mirror.log())
    assert all(path.startswith("/images/") and status == "404" for path, status in requests), \
        requests


def test_admin_file_with_url_root_needs_no_mirror(mirrored: Mirrored) -> None:
    """The Debian layout: URL root, a local pxelinux.cfg/default chosen by the admin."""
    mirrored.start()
    with ns_client(mirrored.hosts.client) as client:
        data = client.get("pxelinux.cfg/01-52-54-00-12-34-56").data
    assert sha256_bytes(data) == mirrored.sha["admin"]
    assert "pxelinux.cfg" not in mirrored.mirror.log()


def timed_failure(ns: str, name: str, timeout: float) -> tuple[TftpFailure, float]:
    start = time.monotonic()
    with ns_client(ns, timeout=timeout) as client, pytest.raises(TftpFailure) as failure:
        client.get(name)
    return failure.value, time.monotonic() - start


def test_stopped_mirror_is_a_clean_error_and_serving_goes_on(mirrored: Mirrored) -> None:
    server = mirrored.start()
    with ns_client(mirrored.hosts.client) as client:
        assert sha256_bytes(client.get("small.bin").data) == mirrored.sha["small.bin"]
    mirrored.mirror.stop()
    failure, seconds = timed_failure(mirrored.hosts.client, "other.bin", HTTP_TIMEOUT + 5)
    assert failure.code == 0, failure
    assert seconds < HTTP_TIMEOUT + 1.5, f"ERROR 0 after {seconds:.2f}s"
    server.wait_log(r"RRQ other.bin refused: ERROR 0 mirror unreachable")
    assert server.alive()
    assert "http://" not in failure.message and "192.0.2." not in failure.message, failure
    # Still serving: a file fetched while it was fresh comes from the cache ...
    with ns_client(mirrored.hosts.client) as client:
        assert sha256_bytes(client.get("small.bin").data) == mirrored.sha["small.bin"]
    # ... and once it is due for revalidation, which fails, too (RFC 5861
    # stale-if-error, within stale_max), with a warning naming file and reason.
    mark = server.mark()
    time.sleep(FRESH_SECONDS + 0.5)
    with ns_client(mirrored.hosts.client, timeout=HTTP_TIMEOUT + 5) as client:
        assert sha256_bytes(client.get("small.bin").data) == mirrored.sha["small.bin"]
    server.wait_log(r"WARNING .*small\.bin: mirror unreachable.*serving the cached copy",
                    since=mark)
    # ... and once the mirror is back, what failed works.
    mirrored.mirror.start()
    with ns_client(mirrored.hosts.client) as client:
        assert sha256_bytes(client.get("other.bin").data) == mirrored.sha["other.bin"]
    assert server.stop() == 0


@pytest.fixture
def silent_mirror(mirrored: Mirrored) -> Iterator[str]:
    """A TCP port in the server's namespace that accepts connections, never answers."""
    sock = ns_socket(mirrored.hosts.server, socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        sock.close()


def test_silent_mirror_is_error_0_within_the_timeout(mirrored: Mirrored,
                                                     silent_mirror: str) -> None:
    server = mirrored.start(url=silent_mirror)
    failure, seconds = timed_failure(mirrored.hosts.client, "small.bin", HTTP_TIMEOUT + 6)
    assert failure.code == 0, failure
    assert seconds < HTTP_TIMEOUT + 1.5, f"ERROR 0 after {seconds:.2f}s"
    assert server.alive()
    with ns_client(mirrored.hosts.client) as client:
        assert sha256_bytes(client.get("pxelinux.cfg/default").data) == mirrored.sha["admin"]


def test_revalidation_304_costs_no_download_and_a_change_is_fetched(mirrored: Mirrored) -> None:
    mirrored.start()
    with ns_client(mirrored.hosts.client) as client:
        client.get("small.bin")
        client.get("other.bin")
    changed = mirrored.base / "mirror" / "other.bin"
    new_sha = write_file(changed, 6000, seed="changed")
    later = time.time() + 60
    os.utime(changed, (later, later))
    time.sleep(FRESH_SECONDS + 0.5)  # the cache trusts a file this long, then asks again
    with ns_client(mirrored.hosts.client) as client:
        assert sha256_bytes(client.get("small.bin").data) == mirrored.sha["small.bin"]
        assert sha256_bytes(client.get("other.bin").data) == new_sha
    log = mirrored.mirror.log()
    assert mirrored.mirror.gets("small.bin", 200) == 1, log
    assert mirrored.mirror.gets("small.bin", 304) == 1, log
    assert mirrored.mirror.gets("other.bin", 200) == 2, log


def test_mirror_dying_mid_download_is_error_0_and_nothing_truncated_is_kept(
        mirrored: Mirrored) -> None:
    mirrored.mirror.stop()
    mirrored.mirror.start(chunk_delay=0.05)  # 20 MiB in about 4 s
    server = mirrored.start()
    mark = server.mark()
    outcome: list[BaseException | bytes] = []

    def fetch_big() -> None:
        try:
            with ns_client(mirrored.hosts.client, timeout=HTTP_TIMEOUT + 3) as client:
                outcome.append(client.get(BIG, options=(("blksize", "1468"),)).data)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=fetch_big)
    worker.start()
    server.wait_log(r"downloading \(20971520 bytes\)", since=mark)
    time.sleep(1.0)
    mirrored.mirror.stop()  # the mirror goes away in the middle of the body
    worker.join(HTTP_TIMEOUT + 20)
    assert not worker.is_alive()
    assert isinstance(outcome[0], TftpFailure) and outcome[0].code == 0, outcome[0]
    server.wait_log(r"download failed", since=mark)
    # Nothing truncated stays in the cache: with the mirror back, the whole file.
    mirrored.mirror.start()
    with ns_client(mirrored.hosts.client) as client:
        data = client.get(BIG, options=(("blksize", "1468"), ("windowsize", "16"))).data
    assert sha256_bytes(data) == mirrored.sha[BIG]
    assert mirrored.mirror.gets(BIG, 200) == 2
    assert not list((mirrored.base / "cache").glob("*.part"))
