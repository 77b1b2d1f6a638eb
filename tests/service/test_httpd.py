"""[httpd] on loopback with real clients (curl, http.client): the TFTP root,
its filters and its plugin over HTTP; ranges, validators, keep-alive; paths
that try to leave the root; a mirror root shared with TFTP, and one that
dies mid-download."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpmirror import Mirror
from netlab import wait_for
from tftpclient import Client
from tftpserver import Server

from pybootd.api import BytesResponse, FileProtocol, ResponseData, TftpRequest
from pybootd.errors import PybootdError

CURL_TIMEOUT = 30


def ini(root: Path | str, extra: str = "", tftp: str = "") -> str:
    return (f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {root}\ntimeout = 0.5\n{tftp}\n"
            f"[httpd]\nport = 0\n{extra}\n")


@pytest.fixture
def served(root: Path, tmp_path: Path) -> Iterator[Server]:
    (root / "linux").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (root / "menu.cfg").write_text("default install\n")
    (root / "boot.ipxe").write_text("#!ipxe\nkernel linux\n")
    (tmp_path / "secret").write_text("not for clients\n")
    srv = Server(ini(root) + "[filters]\npxelinux.cfg/* = menu.cfg\n", tmp_path / "t.ini")
    yield srv
    srv.stop()


def request(srv: Server, method: str, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)  # path sent as is
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("curl") is None:
        pytest.fail("curl not found (.ci/run installs it)")
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=CURL_TIMEOUT,
                          check=False)


def test_curl_gets_the_file_and_the_log_says_so(
        served: Server, root: Path, logs: pytest.LogCaptureFixture) -> None:
    done = curl(f"http://127.0.0.1:{served.http_port}/linux")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (root / "linux").read_bytes()
    wait_for(lambda: any("HTTP GET /linux 200: 3145733 bytes in" in r.getMessage()
                         for r in logs.records), 5, what="the access log line")


def test_head_has_the_headers_and_no_body(served: Server, root: Path) -> None:
    status, headers, body = request(served, "HEAD", "/menu.cfg")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str((root / "menu.cfg").stat().st_size)
    assert "etag" in headers and "last-modified" in headers
    assert headers["accept-ranges"] == "bytes"


def test_ranges(served: Server, root: Path) -> None:
    data = (root / "linux").read_bytes()
    status, headers, body = request(served, "GET", "/linux", {"Range": "bytes=100-199"})
    assert (status, body) == (206, data[100:200])
    assert headers["content-range"] == f"bytes 100-199/{len(data)}"
    status, _, body = request(served, "GET", "/linux", {"Range": "bytes=-10"})
    assert (status, body) == (206, data[-10:])
    status, headers, _ = request(served, "GET", "/linux", {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"
    done = curl("-r", "0-9", f"http://127.0.0.1:{served.http_port}/linux")
    assert done.stdout == data[:10]


def test_conditional_get(served: Server) -> None:
    _, headers, _ = request(served, "HEAD", "/menu.cfg")
    status, _, body = request(served, "GET", "/menu.cfg", {"If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"")
    status, _, _ = request(served, "GET", "/menu.cfg",
                           {"If-Modified-Since": headers["last-modified"]})
    assert status == 304
    status, _, body = request(served, "GET", "/menu.cfg", {"If-None-Match": '"other"'})
    assert (status, body) == (200, b"default install\n")


def test_keep_alive_serves_many_requests_on_one_connection(served: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served.http_port, timeout=10)
    try:
        for name in ("boot.ipxe", "menu.cfg", "boot.ipxe"):
            conn.request("GET", f"/{name}")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
            assert response.getheader("Connection", "keep-alive").lower() != "close"
        assert conn.sock is not None  # still the first connection
    finally:
        conn.close()


def test_missing_file_and_other_methods(served: Server) -> None:
    assert request(served, "GET", "/missing")[0] == 404
    status, headers, _ = request(served, "POST", "/menu.cfg")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert request(served, "PUT", "/menu.cfg")[0] == 405


@pytest.mark.parametrize("path", [
    "/../secret", "/a/../../secret", "/%2e%2e/secret", "/%2E%2E%2Fsecret", "//secret",
    "/..%2fsecret", "/..\\secret", "/%5c..%5csecret", "/pxelinux.cfg/../../secret",
])
def test_paths_that_leave_the_root_get_nothing(served: Server, tmp_path: Path,
                                               path: str) -> None:
    status, _, body = request(served, "GET", path)
    assert status in (403, 404), (path, status)
    assert b"not for clients" not in body


def test_absolute_paths_stay_in_the_root(served: Server, tmp_path: Path) -> None:
    status, _, body = request(served, "GET", f"/{tmp_path}/secret")
    assert status == 404 and b"not for clients" not in body
    assert request(served, "GET", "/etc/passwd")[0] == 404


def test_the_daemons_own_files_are_never_served(root: Path, tmp_path: Path) -> None:
    """The configuration and the state folder inside the root (a mistake)."""
    config = root / "pybootd.ini"
    state = root / "state"
    srv = Server(ini(root, tftp="") + f"[daemon]\nstate_dir = {state}\n", config)
    config.write_text("[tftp]\n")
    state.mkdir()
    (state / "leases.sqlite").write_bytes(b"SQLite format 3\0")
    try:
        assert request(srv, "GET", "/pybootd.ini")[0] in (403, 404)
        assert request(srv, "GET", "/state/leases.sqlite")[0] in (403, 404)
    finally:
        srv.stop()


def test_filters_apply_as_over_tftp(served: Server) -> None:
    status, _, body = request(served, "GET", "/pxelinux.cfg/01-52-54-00-12-34-56")
    assert (status, body) == (200, b"default install\n")


def test_filename_and_indirection_filters(root: Path, tmp_path: Path) -> None:
    (root / "hosts" / "cfg").mkdir(parents=True)
    (root / "hosts" / "cfg" / "a.cfg").write_text("host a\n")  # {filename}: the whole name
    (tmp_path / "which").write_text("hosts/cfg/a.cfg\n")
    srv = Server(ini(root) + "[filters]\ncfg/* = hosts/{filename}\nwho = [which]\n",
                 tmp_path / "t.ini")
    try:
        assert request(srv, "GET", "/cfg/a.cfg")[2] == b"host a\n"
        assert request(srv, "GET", "/who")[2] == b"host a\n"
    finally:
        srv.stop()


def test_a_plugin_sees_the_protocol(root: Path, tmp_path: Path) -> None:
    seen: list[TftpRequest] = []

    def handler(req: TftpRequest) -> ResponseData | None:
        seen.append(req)
        return BytesResponse(f"hello {req.protocol}\n".encode()) if req.filename == "dyn" \
            else None

    srv = Server(ini(root), tmp_path / "t.ini", handler=handler)
    try:
        status, headers, body = request(srv, "GET", "/dyn?mac=52-54-00-12-34-56")
        assert (status, body, headers["content-length"]) == (200, b"hello http\n", "11")
        with Client("127.0.0.1", srv.port) as client:
            assert client.get("dyn").data == b"hello tftp\n"
        assert [(r.filename, r.protocol) for r in seen] == [
            ("dyn", FileProtocol.HTTP), ("dyn", FileProtocol.TFTP)]
    finally:
        srv.stop()


# --- a mirror root -----------------------------------------------------------------

@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "initrd.gz").write_bytes(os.urandom(2 * 1024 * 1024 + 3))
    m = Mirror(folder, delay=0.01)
    yield m
    m.stop()


def mirror_server(mirror: Mirror, tmp_path: Path) -> Server:
    return Server(ini(mirror.url, tftp=f"cache_dir = {tmp_path / 'cache'}\nhttp_timeout = 2\n"),
                  tmp_path / "t.ini")


def test_tftp_and_http_clients_share_one_mirror_download(mirror: Mirror,
                                                         tmp_path: Path) -> None:
    srv = mirror_server(mirror, tmp_path)
    expected = hashlib.sha256((mirror.folder / "initrd.gz").read_bytes()).hexdigest()
    got: dict[str, str] = {}

    def over_tftp() -> None:
        with Client("127.0.0.1", srv.port, timeout=5) as client:
            data = client.get("initrd.gz", options=(("blksize", "1468"),
                                                    ("windowsize", "16"))).data
            got["tftp"] = hashlib.sha256(data).hexdigest()

    try:
        thread = threading.Thread(target=over_tftp)
        thread.start()
        done = curl(f"http://127.0.0.1:{srv.http_port}/initrd.gz")
        thread.join(60)
        got["http"] = hashlib.sha256(done.stdout).hexdigest()
        assert got == {"tftp": expected, "http": expected}
        assert mirror.downloads("/initrd.gz") == 1
        assert request(srv, "GET", "/initrd.gz", {"Range": "bytes=0-3"})[0] == 206  # cached
        assert mirror.downloads("/initrd.gz") == 1
    finally:
        srv.stop()


def test_a_mirror_that_dies_mid_download(mirror: Mirror, tmp_path: Path,
                                         logs: pytest.LogCaptureFixture) -> None:
    """The client sees a broken transfer; the cache keeps nothing truncated."""
    srv = mirror_server(mirror, tmp_path)
    size = (mirror.folder / "initrd.gz").stat().st_size
    try:
        mirror.cut_after = 1024 * 1024
        done = curl(f"http://127.0.0.1:{srv.http_port}/initrd.gz")
        assert done.returncode != 0  # curl: 18, partial file
        assert len(done.stdout) < size
        wait_for(lambda: any("HTTP GET /initrd.gz -> " in r.getMessage()
                             and " 200 broken (download from the mirror failed" in r.getMessage()
                             for r in logs.records), 5, what="the broken transfer's line")
        mirror.cut_after = None
        done = curl(f"http://127.0.0.1:{srv.http_port}/initrd.gz")
        assert done.returncode == 0, done.stderr
        assert done.stdout == (mirror.folder / "initrd.gz").read_bytes()
        assert mirror.downloads("/initrd.gz") == 2
    finally:
        srv.stop()


# --- HTTPS, and a start that cannot serve -----------------------------------------------

def test_https_with_the_configured_certificate(root: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl not found (Debian's openssl package)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                           "-keyout", str(key), "-out", str(cert), "-days", "1",
                           "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                          capture_output=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    (root / "menu.cfg").write_text("secure\n")
    srv = Server(ini(root, f"tls_cert = {cert}\ntls_key = {key}\n"), tmp_path / "t.ini")
    try:
        done = curl("--cacert", str(cert), f"https://127.0.0.1:{srv.http_port}/menu.cfg")
        assert (done.returncode, done.stdout) == (0, b"secure\n"), done.stderr
        plain = curl(f"http://127.0.0.1:{srv.http_port}/menu.cfg")
        assert plain.stdout != b"secure\n"  # no plain HTTP on the HTTPS port
    finally:
        srv.stop()


def test_a_start_that_cannot_serve_says_why(root: Path, tmp_path: Path) -> None:
    with pytest.raises(PybootdError, match=r"\[httpd\] tls_cert .*missing.pem.* \(expected "
                       r"a PEM certificate and its private key"):
        Server(ini(root, f"tls_cert = {tmp_path}/missing.pem\ntls_key = {tmp_path}/k.pem\n"),
               tmp_path / "t.ini")
    first = Server(ini(root), tmp_path / "t.ini")
    try:
        with pytest.raises(PybootdError, match=rf"cannot listen on 127\.0\.0\.1:"
                           rf"{first.http_port} for HTTP: .*another pybootd"):
            Server(ini(root).replace("[httpd]\nport = 0", f"[httpd]\nport = {first.http_port}"),
                   tmp_path / "u.ini")
    finally:
        first.stop()
