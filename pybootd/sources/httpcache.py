"""An HTTP(S) root: files streamed from a mirror through a bounded disk cache.

* Single flight: while a file downloads, every client that asks for it reads
  the same download as it grows, so ten PXE clients booting at once cost one
  upstream transfer, and the first block leaves before the download ends.
* A complete file is served from disk; after ``FRESH_SECONDS`` it is
  revalidated with ``If-None-Match``/``If-Modified-Since`` (a 304 costs no
  download).
* Stale-if-error (RFC 5861 section 4): when that revalidation fails (no
  connection, a timeout, a 5xx answer), the complete copy is served, with
  a warning once per file per ``ONCE_WINDOW``, as long as it was last
  validated less than ``[tftp] stale_max`` seconds ago; a 404 still means
  the file is gone.
* A complete file that no transfer reads holds no descriptor: each reader
  opens its own, so a big cache costs nothing of the process's limit
  (systemd's default is 1024, and a session already holds a socket).
* What a client is told never holds a mirror URL or a cache path: those go
  to the log (``TftpError.detail``).
* The cache is bounded by ``cache_size``: least recently used files that no
  transfer reads are removed first. ``cache_size = 0`` keeps nothing.
* The file is asked for as it is stored (``Accept-Encoding: identity``); a
  mirror that encodes it anyway is decoded, and its Content-Length, which
  counts encoded bytes (RFC 9110 section 8.6), is not taken as the size.

Blocking work runs in threads, never on the loop: the requests in one small
pool, the downloads in another (a long download never delays a request),
the disk in the runtime's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import requests
from urllib3.response import HTTPResponse

from pybootd.api import FileResponse
from pybootd.errors import TftpError
from pybootd.loglimit import OncePer
from pybootd.runtime import Runtime
from pybootd.sources.chunks import DISK_TIMEOUT, PooledSource
from pybootd.sources.local import write_all
from pybootd.tftp.packets import ErrorCode

log = logging.getLogger("pybootd.http")

FRESH_SECONDS = 10.0
DOWNLOAD_CHUNK = 64 * 1024
MAX_REQUESTS = 8  # threads waiting for a mirror's answer (headers)
MAX_DOWNLOADS = 32  # files downloading at once, one thread each
_versions = itertools.count()
_NEVER = float("-inf")  # a monotonic time longer ago than any


class MirrorFailure(TftpError):
    """The mirror could not answer (no connection, a timeout, HTTP 5xx): a
    cached copy may be served instead (stale-if-error, RFC 5861 section 4)."""


class Entry:
    """One version of one URL in the cache."""

    def __init__(self, url: str, data_path: Path, size: int | None) -> None:
        self.url = url
        self.data_path = data_path
        self.size = size  # Content-Length, then the real size once complete
        self.available = 0  # bytes on disk (written by the download thread)
        self.complete = False
        self.error: str | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.validated_at = _NEVER  # monotonic: the mirror last confirmed this copy
        self.validated_wall = 0.0  # the same, wall clock (kept in the .json across restarts)
        self.checked_at = _NEVER  # monotonic: the mirror was last asked (or failed)
        self.serving_stale = False  # the last revalidation failed
        self.last_used = 0.0
        self.refs = 0
        self.fd = -1
        self.retired = False
        self._waiters: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for_bytes(self, offset: int, timeout: float) -> None:
        """Until more than *offset* bytes are there, the download ended, or timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.available <= offset and not self.complete and self.error is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TftpError(ErrorCode.NOT_DEFINED, f"mirror sent nothing for {timeout:g}s",
                                f"mirror sent nothing for {timeout:g}s: {self.url}")
            waiter = loop.create_future()
            self._waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

    def needs_check(self, now: float, stale_max: float) -> bool:
        """Ask the mirror again before serving? After FRESH_SECONDS, and at
        once when a stale copy served through an outage passed stale_max."""
        if now - self.checked_at >= FRESH_SECONDS:
            return True
        return self.serving_stale and now - self.validated_at >= stale_max

    def validated(self) -> None:
        self.validated_at = self.checked_at = time.monotonic()
        self.validated_wall = time.time()
        self.serving_stale = False

    def meta(self) -> dict[str, Any]:
        return {"url": self.url, "file": self.data_path.name, "size": self.size,
                "etag": self.etag, "last_modified": self.last_modified,
                "validated": self.validated_wall}


class CachedSource:
    """A ChunkSource reading one cache entry, following its download."""

    def __init__(self, cache: HttpCache, entry: Entry) -> None:
        self._cache = cache
        self._entry = entry
        self._offset = 0
        self.size = entry.size

    async def read(self, n: int) -> bytes:
        entry = self._entry
        await entry.wait_for_bytes(self._offset, self._cache.timeout)
        count = min(n, entry.available - self._offset)
        if count <= 0:
            if entry.error is not None:
                raise TftpError(ErrorCode.NOT_DEFINED, "download from the mirror failed",
                                f"download from the mirror failed: {entry.url}: {entry.error}")
            return b""
        data: bytes = await self._cache.runtime.blocking(
            DISK_TIMEOUT, os.pread, entry.fd, count, self._offset
        )
        self._offset += len(data)
        return data

    def close(self) -> None:
        self._cache.release(self._entry)


class _CachedFile(FileResponse):
    """A complete cache file read like a local one; *release* on close."""

    def __init__(self, fd: int, size: int, release: Callable[[], None]) -> None:
        super().__init__(fd, size)
        self._release = release

    def close(self) -> None:
        super().close()
        self._release()


class HttpCache:
    def __init__(self, runtime: Runtime, base_url: str, cache_dir: Path, max_bytes: int,
                 timeout: float, stale_max: float | None = None) -> None:
        self.runtime = runtime
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.cache_dir = cache_dir
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.entries: dict[str, Entry] = {}
        self._opening: dict[str, asyncio.Future[Entry]] = {}
        # Pools of their own (the runtime's, by name): a long download never
        # delays a request, and neither waits behind disk work.
        self._requests = runtime.pool("http-requests", MAX_REQUESTS)
        self._downloads = runtime.pool("http-downloads", MAX_DOWNLOADS)
        self._running = 0  # downloads submitted and not yet done
        self.downloads = 0  # complete upstream downloads (for tests and stats)
        self.stale_max = runtime.config.tftp.stale_max if stale_max is None else stale_max
        self._stale_warned = OncePer()  # a stale copy served: one warning per URL per window

    # --- start and stop ---------------------------------------------------
    def load(self) -> None:
        """Adopt files a previous run left (they are revalidated before use)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for meta_path in self.cache_dir.glob("*.json"):
            try:
                meta = json.loads(meta_path.read_text())
                data_path = self.cache_dir / meta["file"]
                if data_path.stat().st_size != meta["size"]:
                    raise ValueError("size mismatch")
            except (OSError, ValueError, KeyError, TypeError):
                self._remove_files(meta_path.with_suffix(""), meta_path)
                continue
            entry = Entry(meta["url"], data_path, meta["size"])
            entry.available, entry.complete = meta["size"], True
            entry.etag, entry.last_modified = meta.get("etag"), meta.get("last_modified")
            _adopt_validation(entry, meta.get("validated"))
            self.entries[entry.url] = entry
        for stray in self.cache_dir.glob("*.part"):
            self._remove_files(stray)

    def close(self) -> None:
        self._requests.shutdown(wait=False, cancel_futures=True)
        self._downloads.shutdown(wait=False, cancel_futures=True)
        for entry in self.entries.values():
            self._close_fd(entry)

    # --- opening ------------------------------------------------------------
    def url_for(self, relative: str) -> str:
        # The name's bytes, as the client sent them (the packet parser keeps
        # bytes that are not UTF-8 as surrogates), percent-encoded (RFC 3986
        # section 2.1).
        raw = relative.encode("utf-8", "surrogateescape")
        return self.base_url + urllib.parse.quote(raw, safe="/~-._")

    async def open(self, relative: str, peer: str = "",
                   shown: str | None = None) -> CachedSource | PooledSource:
        """Start (or join) the download of *relative*. Raises TftpError,
        whose message names only *shown* (what the client asked for)."""
        ask = _Ask(shown or relative, peer)
        url = self.url_for(relative)
        entry = self.entries.get(url)
        result = "hit"
        if entry is None or (entry.complete and entry.needs_check(time.monotonic(),
                                                                  self.stale_max)):
            before = entry
            entry = await self._single_flight(url, entry, ask)
            result = "miss" if entry is not before else (
                "stale" if entry.serving_stale else "revalidated")
        self.runtime.observer.cache(result)
        # Held from here on: never evicted while its file is being opened.
        entry.refs += 1
        entry.last_used = time.monotonic()
        if entry.complete and entry.size is not None:
            try:
                return await self._open_file(entry, ask)
            except BaseException:
                self.release(entry)
                raise
        return CachedSource(self, entry)

    async def _open_file(self, entry: Entry, ask: _Ask) -> PooledSource:
        """A complete file, served like a local one from a descriptor of its own.

        Measured (scripts/bench_boot.py, BIOS from a warm cache): read through
        CachedSource, a pool round trip per chunk, the initrd took 8.7 s where
        dnsmasq took 7.4 s from disk, and the boot 1.07x as long. As a local
        file it gets the page-cached reads on the loop. The descriptor is
        opened for this reader and closed with it, so an idle cache holds
        none; it stays valid if the entry is evicted meanwhile (the data is
        unlinked, not gone).
        """
        try:
            fd = await self.runtime.blocking(DISK_TIMEOUT, os.open, str(entry.data_path),
                                             os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:  # removed behind our back: fetched again next time
            if self.entries.get(entry.url) is entry:
                del self.entries[entry.url]
                self._retire(entry)
            raise TftpError(ErrorCode.NOT_DEFINED, "cache error",
                            f"{ask.peer}: cannot open the cached copy of {entry.url}: "
                            f"{exc.strerror}") from None
        loop = self.runtime.loop

        def release() -> None:  # PooledSource closes in the pool: back to the loop
            with contextlib.suppress(RuntimeError):  # the loop is gone at exit
                loop.call_soon_threadsafe(self.release, entry)

        assert entry.size is not None
        data = _CachedFile(fd, entry.size, release)
        return PooledSource(self.runtime, data, entry.size)

    async def _single_flight(self, url: str, stale: Entry | None, ask: _Ask) -> Entry:
        pending = self._opening.get(url)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Entry] = self.runtime.loop.create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._opening[url] = future
        try:
            entry = await self._fetch(url, stale, ask)
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else
                                 TftpError(ErrorCode.NOT_DEFINED, "cancelled"))
            raise
        finally:
            del self._opening[url]

    async def _fetch(self, url: str, stale: Entry | None, ask: _Ask) -> Entry:
        headers = {}
        if stale is not None:
            if stale.etag:
                headers["If-None-Match"] = stale.etag
            if stale.last_modified:
                headers["If-Modified-Since"] = stale.last_modified
        try:
            response = await self._ask_mirror(url, headers)
        except MirrorFailure as exc:
            return self._serve_stale(stale, exc, ask)
        if response.status_code == 304 and stale is not None:
            response.close()
            self._revalidated(stale, ask)
            return stale
        try:
            return await self._start_download(url, response, stale, ask)
        except MirrorFailure as exc:
            response.close()
            return self._serve_stale(stale, exc, ask)
        except BaseException as exc:
            response.close()
            if isinstance(exc, TftpError) and exc.code == ErrorCode.FILE_NOT_FOUND \
                    and stale is not None and self.entries.get(url) is stale:
                del self.entries[url]  # gone from the mirror: gone from the cache
                self._retire(stale)
            raise

    async def _ask_mirror(self, url: str, headers: dict[str, str]) -> requests.Response:
        """The mirror's answer (headers). Raises MirrorFailure."""
        request = self._requests.submit(self._get, url, headers)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(request), self.timeout + 1)
        except BaseException as exc:
            # An answer that comes after we gave up must not keep its connection.
            request.add_done_callback(_close_late_answer)
            if isinstance(exc, TimeoutError):
                raise MirrorFailure(ErrorCode.NOT_DEFINED,
                                    f"mirror did not answer in {self.timeout:g}s",
                                    f"mirror did not answer in {self.timeout:g}s: {url}") \
                    from None
            raise

    def _serve_stale(self, stale: Entry | None, exc: MirrorFailure, ask: _Ask) -> Entry:
        """The complete cached copy when the mirror fails, within stale_max
        of its last validation (RFC 5861 section 4); else the error."""
        if stale is None or not stale.complete or self.entries.get(stale.url) is not stale:
            raise exc
        now = time.monotonic()
        age = now - stale.validated_at
        if age >= self.stale_max:
            raise MirrorFailure(exc.code, exc.message,
                                f"{exc.detail} (the cached copy, validated {age:.0f}s ago, "
                                f"is past stale_max {self.stale_max:g}s)") from None
        # Not asked again for FRESH_SECONDS: each request would wait for
        # the outage's timeout.
        stale.checked_at, stale.serving_stale = now, True
        if self._stale_warned.first(stale.url, now):
            log.warning("%s: %s: %s; serving the cached copy, validated %.0fs ago "
                        "(stale_max %gs)", ask.peer, ask.shown, exc.detail, age, self.stale_max)
        return stale

    def _revalidated(self, entry: Entry, ask: _Ask) -> None:
        """A 304: the copy is current; its .json keeps when (across restarts)."""
        if entry.serving_stale:
            log.info("%s: %s: the mirror answers again; the cached copy is current",
                     ask.peer, ask.shown)
        entry.validated()
        log.debug("%s: not modified", entry.url)
        meta_path, text = entry.data_path.with_suffix(".json"), json.dumps(entry.meta())
        with contextlib.suppress(RuntimeError):  # the pool is shut down: we are exiting
            self.runtime.executor.submit(_write_meta, meta_path, text)

    def _get(self, url: str, headers: dict[str, str]) -> requests.Response:
        try:
            headers = {**headers, "Accept-Encoding": "identity"}
            return requests.get(url, headers=headers, stream=True,
                                timeout=(self.timeout, self.timeout))
        except requests.RequestException as exc:
            raise MirrorFailure(ErrorCode.NOT_DEFINED, f"mirror unreachable: {_safe_reason(exc)}",
                                f"mirror unreachable: {url}: {_reason(exc)}") from None

    async def _start_download(self, url: str, response: requests.Response,
                              stale: Entry | None, ask: _Ask) -> Entry:
        """Create the cache file and start the download thread. The caller
        closes *response* if this raises."""
        _check_status(url, response.status_code, ask.shown)
        if self._running >= MAX_DOWNLOADS:
            raise TftpError(ErrorCode.NOT_DEFINED,
                            f"{MAX_DOWNLOADS} downloads from the mirror already running")
        digest = hashlib.sha256(url.encode()).hexdigest()[:32]
        path = self.cache_dir / f"{digest}-{os.getpid()}-{next(_versions)}"
        entry = Entry(url, path, _file_size(url, response))
        entry.etag = response.headers.get("ETag")
        entry.last_modified = response.headers.get("Last-Modified")
        entry.validated()
        temp = path.with_suffix(".part")
        write_fd, entry.fd = await self.runtime.blocking(DISK_TIMEOUT, _create_part, temp)
        if stale is not None:
            self._retire(stale)
        self.entries[url] = entry
        self._running += 1
        self._downloads.submit(self._download, entry, response, write_fd, temp)
        log.info("%s: downloading (%s bytes)", url,
                 "unknown" if entry.size is None else entry.size)
        return entry

    # --- the download thread -------------------------------------------------
    def _download(self, entry: Entry, response: requests.Response, fd: int, temp: Path) -> None:
        loop = self.runtime.loop
        try:
            with response:
                for chunk in response.iter_content(DOWNLOAD_CHUNK):  # decoded
                    write_all(fd, chunk)
                    entry.available += len(chunk)
                    loop.call_soon_threadsafe(entry.notify)
            if entry.size is not None and entry.available != entry.size:
                raise ValueError(f"truncated: {entry.available} of {entry.size} bytes")
            os.rename(temp, entry.data_path)
            entry.size = entry.available
            entry.data_path.with_suffix(".json").write_text(json.dumps(entry.meta()))
            entry.complete = True
        except Exception as exc:  # the download thread must report, not die
            entry.error = _reason(exc)
            with contextlib.suppress(OSError):
                temp.unlink()
        finally:
            os.close(fd)
            with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                loop.call_soon_threadsafe(self._download_done, entry)

    def _download_done(self, entry: Entry) -> None:
        self._running -= 1
        entry.notify()
        if entry.error is not None:
            log.warning("%s: download failed: %s", entry.url, entry.error)
            if self.entries.get(entry.url) is entry:
                del self.entries[entry.url]
            self._retire(entry)
            return
        self.downloads += 1
        log.info("%s: downloaded %d bytes", entry.url, entry.available)
        if entry.refs <= 0:
            self._close_fd(entry)  # complete and idle: no descriptor (see _open_file)
        self._evict()

    # --- references and eviction -------------------------------------------------
    def release(self, entry: Entry) -> None:
        entry.refs -= 1
        entry.last_used = time.monotonic()
        if entry.refs <= 0 and entry.retired:
            self._drop(entry)
            return
        if entry.refs <= 0 and entry.complete:
            self._close_fd(entry)  # the download's descriptor, once nobody follows it
        self._evict()

    def _retire(self, entry: Entry) -> None:
        """A newer version replaced *entry*: drop it when nobody reads it."""
        entry.retired = True
        if entry.refs <= 0:
            self._drop(entry)

    def _evict(self) -> None:
        complete = [e for e in self.entries.values() if e.complete]
        total = sum(e.available for e in complete)
        for entry in sorted(complete, key=lambda e: e.last_used):
            if total <= self.max_bytes:
                break
            if entry.refs > 0:
                continue
            total -= entry.available
            del self.entries[entry.url]
            self._drop(entry)

    def _drop(self, entry: Entry) -> None:
        self._close_fd(entry)
        if entry.complete or entry.error is not None:
            paths = (entry.data_path, entry.data_path.with_suffix(".json"))
            try:
                self.runtime.executor.submit(self._remove_files, *paths)
            except RuntimeError:  # the pool is shut down: we are exiting
                self._remove_files(*paths)

    @staticmethod
    def _close_fd(entry: Entry) -> None:
        if entry.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(entry.fd)
            entry.fd = -1

    @staticmethod
    def _remove_files(*paths: Path) -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()


class _Ask:
    """Who asked, for messages: the name as the client knows it, its peer."""

    def __init__(self, shown: str, peer: str) -> None:
        self.shown = shown
        self.peer = peer


def _check_status(url: str, status: int, shown: str) -> None:
    """What the client gets: the same as for a local file (ERROR 1 "file
    not found: NAME" for a 404), never the URL (that goes to the log)."""
    if status == 200:
        return
    detail = f"mirror answered HTTP {status} for {url}"
    if status in (404, 410):
        raise TftpError(ErrorCode.FILE_NOT_FOUND, f"file not found: {shown}", detail)
    if status in (401, 403):
        raise TftpError(ErrorCode.ACCESS_VIOLATION, f"mirror refused access ({status})", detail)
    # RFC 5861 section 4: 500, 502, 503, 504 are the errors a stale copy may cover.
    kind = MirrorFailure if status >= 500 else TftpError
    raise kind(ErrorCode.NOT_DEFINED, f"mirror answered HTTP {status}", detail)


def _file_size(url: str, response: requests.Response) -> int | None:
    """The size of the file, if the mirror said it. With a Content-Encoding
    (sent although we asked for identity) Content-Length counts the encoded
    bytes, not the decoded ones we serve: unknown then (RFC 9110 section 8.6)."""
    header = response.headers.get("Content-Encoding", "")
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    if codings and codings != ["identity"]:
        if not all(c in HTTPResponse.CONTENT_DECODERS for c in codings):
            raise TftpError(ErrorCode.NOT_DEFINED,
                            "mirror sent a Content-Encoding that cannot be decoded",
                            f"mirror sent Content-Encoding {header!r}, which cannot be "
                            f"decoded: {url}")
        return None
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _create_part(temp: Path) -> tuple[int, int]:
    """The download's file, open for writing and for reading (blocks)."""
    try:
        write_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise TftpError(ErrorCode.NOT_DEFINED, "cache error",
                        f"cannot create {temp}: {exc.strerror}") from None
    try:
        return write_fd, os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        os.close(write_fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise TftpError(ErrorCode.NOT_DEFINED, "cache error",
                        f"cannot open {temp}: {exc.strerror}") from None


def _close_late_answer(request: Future[requests.Response]) -> None:
    if not request.cancelled() and request.exception() is None:
        request.result().close()


def _adopt_validation(entry: Entry, validated: object) -> None:
    """A file a previous run left: validated when its .json says (wall
    clock), so that stale_max holds across a restart; never, if unknown."""
    if isinstance(validated, int | float) and validated > 0:
        age = max(0.0, time.time() - validated)
        entry.validated_at = time.monotonic() - age
        entry.validated_wall = float(validated)


def _write_meta(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):  # best effort: only the restart's stale_max needs it
        path.write_text(text)


def _safe_reason(exc: BaseException) -> str:
    """_reason without what a client must not see (the URL in requests' texts)."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return "request failed"


def _reason(exc: BaseException) -> str:
    """For the log: requests' own text past the two common cases."""
    if isinstance(exc, requests.Timeout | requests.ConnectionError):
        return _safe_reason(exc)
    return str(exc) or type(exc).__name__
