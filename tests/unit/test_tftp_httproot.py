"""HTTP root on loopback against a real http.server: shared download,
404, a dead mirror, revalidation."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpmirror import Mirror
from netlab import wait_for
from test_tftp_service import Server, free_port
from tftpclient import Client, TftpFailure

from pybootd.sources import httpcache
from pybootd.tftp.packets import ErrorCode


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    folder = tmp_path / "mirror"
    (folder / "netboot").mkdir(parents=True)
    (folder / "netboot" / "linux").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (folder / "netboot" / "small").write_bytes(b"small file")
    m = Mirror(folder, delay=0.002)
    yield m
    m.stop()


def http_server(mirror: Mirror, tmp_path: Path, extra: str = "") -> Server:
    return Server(f"[tftp]\naddress = 127.0.0.1\nport = {free_port()}\n"
                  f"root = {mirror.url}netboot\ncache_dir = {tmp_path / 'cache'}\n"
                  f"http_timeout = 1\ntimeout = 0.5\n{extra}", tmp_path / "t.ini")


def test_concurrent_clients_share_one_download(mirror: Mirror, tmp_path: Path) -> None:
    srv = http_server(mirror, tmp_path)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            with Client("127.0.0.1", srv.port, timeout=5) as client:
                results.append(client.get("linux", options=(("blksize", "1468"),
                                                             ("windowsize", "8"))).data)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=fetch) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        expected = (mirror.folder / "netboot" / "linux").read_bytes()
        assert [hashlib.sha256(r).digest() for r in results] == \
            [hashlib.sha256(expected).digest()] * 10
        assert mirror.downloads("/netboot/linux") == 1
        with Client("127.0.0.1", srv.port) as client:  # from the cache, no request
            assert client.get("linux").data == expected
        assert len(mirror.gets) == 1
    finally:
        srv.stop()


def test_tsize_from_content_length(mirror: Mirror, tmp_path: Path) -> None:
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port) as client:
            result = client.get("small", options=(("tsize", "0"),))
        assert result.data == b"small file" and result.oack == {"tsize": "10"}
    finally:
        srv.stop()


def test_upstream_404_is_file_not_found(mirror: Mirror, tmp_path: Path) -> None:
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port) as client, pytest.raises(TftpFailure) as info:
            client.get("missing")
        assert info.value.code == ErrorCode.FILE_NOT_FOUND
    finally:
        srv.stop()


def test_stopped_mirror_is_a_clean_error(mirror: Mirror, tmp_path: Path) -> None:
    srv = http_server(mirror, tmp_path)
    mirror.stop()
    try:
        with Client("127.0.0.1", srv.port, timeout=5) as client, \
                pytest.raises(TftpFailure) as info:
            client.get("small")
        assert info.value.code == ErrorCode.NOT_DEFINED
        assert "mirror" in info.value.message
    finally:
        srv.stop()


def test_stale_entry_revalidated_with_304(mirror: Mirror, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpcache, "FRESH_SECONDS", 0.0)
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port) as client:
            assert client.get("small").data == b"small file"
            assert client.get("small").data == b"small file"
        assert [status for _, status in mirror.gets] == [200, 304]
    finally:
        srv.stop()


def test_cache_survives_restart(mirror: Mirror, tmp_path: Path) -> None:
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.get("small")
    finally:
        srv.stop()
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port) as client:
            assert client.get("small").data == b"small file"
    finally:
        srv.stop()
    assert [status for _, status in mirror.gets] == [200, 304]


def test_zero_cache_size_keeps_nothing(mirror: Mirror, tmp_path: Path) -> None:
    srv = http_server(mirror, tmp_path, "cache_size = 0\n")
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.get("small")
            client.get("small")
        assert mirror.downloads("/netboot/small") == 2

        def cache_empty() -> bool:
            return not list((tmp_path / "cache").iterdir())

        wait_for(cache_empty, 5, what="the cache to empty")  # the last ACK is processed async
    finally:
        srv.stop()
