"""HTTP root on loopback against a real http.server: shared download,
404, a dead mirror, revalidation, encodings, odd names, many downloads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpmirror import Mirror
from netlab import wait_for
from tftpclient import Client, TftpFailure
from tftpserver import Server

from pybootd.sources import httpcache
from pybootd.sources.chunks import PooledSource
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
    return Server(f"[tftp]\naddress = 127.0.0.1\nport = 0\n"
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
            # The client can have the 10 bytes before the download is marked
            # complete; a request meanwhile rightly joins it instead. The
            # cache's .json is written just before the entry is marked
            # complete, so wait for the count the loop keeps after that.
            http = srv.service.http
            assert http is not None
            wait_for(lambda: srv.call(lambda: http.downloads) == 1, 5,
                     what="the download to complete")
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

    def cache_empty() -> bool:
        return not list((tmp_path / "cache").iterdir())

    try:
        with Client("127.0.0.1", srv.port) as client:
            client.get("small")
            # The client has the file before the server has read its last ACK;
            # until then the entry is still in use and a second request would
            # rightly share it, so wait for the server to let it go.
            wait_for(cache_empty, 5, what="the cache to empty")
            client.get("small")
            wait_for(cache_empty, 5, what="the cache to empty")
        assert mirror.downloads("/netboot/small") == 2
    finally:
        srv.stop()


def test_gzip_encoding_mirror_serves_the_decoded_file(tmp_path: Path) -> None:
    folder = tmp_path / "mirror"
    text = b"".join(b"line %d of a kernel command line\n" % i for i in range(40000))
    (folder / "netboot").mkdir(parents=True)
    (folder / "netboot" / "text").write_bytes(text)
    mirror = Mirror(folder, gzip=True)
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port) as client:
            first = client.get("text", options=(("tsize", "0"), ("blksize", "1468")))
            again = client.get("text")  # from the cache
        assert first.data == text and again.data == text
        # Content-Length counted the gzip bytes: no tsize rather than a wrong
        # one (or the real size, when the download ended before the answer).
        assert first.oack.get("tsize") in (None, str(len(text)))
        assert first.oack["blksize"] == "1468"
        assert mirror.accept_encodings == ["identity"]
        assert mirror.downloads("/netboot/text") == 1
    finally:
        srv.stop()
        mirror.stop()


def test_name_that_is_not_utf8_is_fetched(mirror: Mirror, tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xff.bin")  # as the packet parser keeps it
    (mirror.folder / "netboot" / name).write_bytes(b"latin-1 name")
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port) as client:
            assert client.get(name).data == b"latin-1 name"
            with pytest.raises(TftpFailure) as info:
                client.get(os.fsdecode(b"missing-\xfe"))
            assert info.value.code == ErrorCode.FILE_NOT_FOUND
        assert [path for path, _ in mirror.gets] == ["/netboot/caf%FF.bin",
                                                     "/netboot/missing-%FE"]
    finally:
        srv.stop()


def test_many_slow_distinct_downloads_at_once_all_succeed(tmp_path: Path) -> None:
    # More long downloads than request threads: none may starve a request.
    folder = tmp_path / "mirror"
    (folder / "netboot").mkdir(parents=True)
    files = {f"f{i}": os.urandom(1024 * 1024 + i) for i in range(httpcache.MAX_REQUESTS + 3)}
    for name, data in files.items():
        (folder / "netboot" / name).write_bytes(data)
    mirror = Mirror(folder, delay=0.15)  # 17 pieces: ~2.5 s each, beyond http_timeout + 1
    srv = http_server(mirror, tmp_path)
    results: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def fetch(name: str) -> None:
        try:
            with Client("127.0.0.1", srv.port, timeout=5) as client:
                results[name] = client.get(name, options=(("blksize", "1468"),
                                                          ("windowsize", "8"))).data
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=fetch, args=(name,)) for name in files]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        assert results == files
    finally:
        srv.stop()
        mirror.stop()


def test_late_answer_after_the_timeout_is_closed(tmp_path: Path) -> None:
    folder = tmp_path / "mirror"
    (folder / "netboot").mkdir(parents=True)
    (folder / "netboot" / "late").write_bytes(bytes(16 * 1024 * 1024))  # beyond socket buffers
    mirror = Mirror(folder, header_delay=3.0)  # http_timeout = 1: we give up at 2 s
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port, timeout=5) as client, \
                pytest.raises(TftpFailure) as info:
            client.get("late")
        assert info.value.code == ErrorCode.NOT_DEFINED and "did not answer" in info.value.message
        # The answer came after all: its connection is closed, not left open.
        wait_for(lambda: mirror.broken == ["/netboot/late"], 10, what="the connection closed")
    finally:
        srv.stop()
        mirror.stop()


def test_complete_file_is_served_like_a_local_one(mirror: Mirror, tmp_path: Path) -> None:
    """A cached file is read from its own descriptor (page-cached reads on the
    loop), and still counts as in use until closed."""
    srv = http_server(mirror, tmp_path)
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.get("linux")
        cache = srv.service.http
        assert cache is not None
        wait_for(lambda: srv.call(lambda: all(e.complete for e in cache.entries.values())), 5,
                 what="the download to complete")
        source = asyncio.run_coroutine_threadsafe(cache.open("linux"), srv.loop).result(5)
        assert isinstance(source, PooledSource)
        (entry,) = cache.entries.values()
        assert srv.call(lambda: entry.refs) == 1
        with Client("127.0.0.1", srv.port) as client:  # served meanwhile, from the cache
            assert client.get("linux").data == (mirror.folder / "netboot" / "linux").read_bytes()
        srv.call(source.close)
        wait_for(lambda: srv.call(lambda: entry.refs) == 0, 5, what="the release")
        assert mirror.downloads("/netboot/linux") == 1
    finally:
        srv.stop()
