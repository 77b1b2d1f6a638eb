"""The TFTP namespace over HTTP (``[httpd]``): UEFI HTTP Boot and iPXE.

Firmware and iPXE fetch kernels and initrds over HTTP in a fraction of the
time TFTP takes (one TCP stream against one datagram per round trip). What
is served is exactly what TFTP serves: the same root (a folder, or a mirror
through the same cache: one download for every client, TFTP and HTTP), the
same ``[filters]``, the same plugin (its :class:`pybootd.api.TftpRequest`
says ``protocol = http``), the same refusal of anything outside the root or
of the daemon's own files: one :class:`~pybootd.sources.resolver.Resolver`.

aiohttp parses HTTP on the daemon's loop. A local file (or a complete
cached one) goes out through aiohttp's ``FileResponse`` with ``sendfile``,
``Range`` (206, 416), ``ETag``/``Last-Modified`` and conditional GET (304),
opened through ``/proc/self/fd`` so it is the very file the resolver
checked, not the path again. Anything else (a mirror file while it
downloads, a plugin's bytes) is streamed as it comes, without ranges.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import socket
import ssl
import struct
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from pybootd.api import FileProtocol, FileResponse, TftpRequest
from pybootd.config import Config, HttpdConfig
from pybootd.errors import PybootdError, SourceError, TftpError
from pybootd.loglimit import LogLimiter, clip
from pybootd.observe.observer import Underway
from pybootd.observe.timeline import Source
from pybootd.runtime import Runtime
from pybootd.sources.chunks import ChunkSource, PooledSource
from pybootd.sources.httpcache import MirrorFailure
from pybootd.sources.resolver import Opened, Resolver
from pybootd.tftp.packets import ErrorCode
from pybootd.tftp.paths import normalize_request_path
from pybootd.udp import format_peer

log = logging.getLogger("pybootd.http")

STREAM_CHUNK = 256 * 1024  # bytes read from a streamed source at a time
KEEPALIVE = 75.0  # seconds an idle connection stays open (nginx's default)
BACKLOG = 1024  # a room of machines switched on at once
_STATUS: dict[int, int] = {ErrorCode.FILE_NOT_FOUND: 404, ErrorCode.ACCESS_VIOLATION: 403}
_METHODS = ("GET", "HEAD")


class HttpService:
    """Implements :class:`pybootd.runtime.Service`."""

    name = "http"

    def __init__(self, runtime: Runtime, resolver: Resolver, *,
                 address: str | None = None) -> None:
        conf = runtime.config.httpd
        assert conf is not None
        self.runtime = runtime
        self.conf: HttpdConfig = conf
        self.resolver = resolver
        self.address = conf.address if conf.address_set or address is None else address
        self.limiter = LogLimiter(logger=log)  # lines a client can cause (loglimit)
        self._web = web.Server(self._handle, loop=runtime.loop, access_log=None,
                               keepalive_timeout=KEEPALIVE)
        self._server: asyncio.Server | None = None
        self._running: set[_Running] = set()
        self.totals = {"requests": 0, "refused": 0, "broken": 0, "sent": 0}

    # --- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Raises PybootdError (the port taken, a TLS file unreadable)."""
        tls = _tls_context(self.conf)
        host = self.address or None  # None: every address, IPv4 and IPv6
        try:
            self._server = await self.runtime.loop.create_server(
                self._web, host, self.conf.port, ssl=tls, backlog=BACKLOG, reuse_address=True)
        except OSError as exc:
            where = format_peer((self.address or "*", self.conf.port))
            raise PybootdError(f"cannot listen on {where} for HTTP: {exc.strerror or exc} "
                               "(another web server, or another pybootd, runs on this port?)"
                               ) from None
        where = ", ".join(format_peer(s.getsockname()[:2]) for s in self._server.sockets)
        log.info("HTTP serving the TFTP root on %s (%s)", where, self.conf.scheme)

    @property
    def ports(self) -> list[int]:
        return [] if self._server is None else [
            s.getsockname()[1] for s in self._server.sockets]

    def reload(self, config: Config) -> None:
        """SIGHUP: [filters] come with the resolver, which TFTP reloads."""

    def summary(self) -> str:
        t = self.totals
        return (f"{len(self._running)} running, {t['requests']} requests ({t['refused']} "
                f"refused, {t['broken']} broken), {t['sent']} bytes sent")

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()  # no new connections; those open finish their request
        self._web.pre_shutdown()  # each connection closes after its current request

    async def drain(self, timeout: float) -> None:
        if self._running:
            log.info("waiting up to %gs for %d HTTP response(s) to finish", timeout,
                     len(self._running))
            await asyncio.wait({r.done for r in self._running}, timeout=timeout)

    def close(self) -> None:
        """Every response still running ends now, with a log line, its file
        closed: the daemon exits right after (as TFTP's close)."""
        self.stop_accepting()
        for running in list(self._running):
            if running.source is not None and self.limiter.allow(
                    "HTTP responses cut: shutting down", self.runtime.loop.time()):
                log.warning("%s: HTTP %s %s broken (server shutting down)",
                            format_peer(running.peer), running.request.method,
                            clip(running.request.path))
            running.release()
            if running.request.task is not None:
                running.request.task.cancel()
        for connection in self._web.connections:
            connection.force_close()
        self.limiter.flush()

    # --- one request ----------------------------------------------------------
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        running = _Running(request, self.runtime.loop.create_future())
        self._running.add(running)
        try:
            return await self._serve(running)
        finally:
            self._running.discard(running)
            self.runtime.observer.forget(running)  # ended without its line (cancelled)
            running.release()
            running.done.set_result(None)

    async def _serve(self, running: _Running) -> web.StreamResponse:
        request, peer = running.request, running.peer
        self.totals["requests"] += 1
        if request.method not in _METHODS:
            return self._refused(request, peer, 405, "only GET and HEAD",
                                 headers={"Allow": ", ".join(_METHODS)})
        started = time.monotonic()
        raw = request.path  # decoded, without the query (iPXE may add ?mac=...)
        try:
            name = normalize_request_path(raw)
            opened = await self.resolver.open(
                TftpRequest(peer, name, raw, "octet", {}, FileProtocol.HTTP))
        except TftpError as exc:
            status = 502 if isinstance(exc, MirrorFailure) else _STATUS.get(exc.code, 500)
            return self._refused(request, peer, status, exc.detail)
        except SourceError as exc:
            return self._refused(request, peer, 502, str(exc))
        running.source = opened.source
        self.runtime.observer.started(running, Underway(
            peer[0], raw, Source.HTTP, opened.source.size, time.time(), running.progress))
        response, sent, error = await self._respond(request, opened, running)
        self._log_end(running, opened, response.status, sent, started, error)
        return response

    async def _respond(self, request: web.BaseRequest, opened: Opened, running: _Running
                       ) -> tuple[web.StreamResponse, int, str]:
        """The response, the body bytes sent, why it broke ("" if it did not)."""
        content_type = mimetypes.guess_type(opened.served)[0] or "application/octet-stream"
        fd = _file_descriptor(opened.source)
        if fd is not None:
            running.count_acked()  # sendfile: the kernel's count is the only one
            return await self._send_file(request, fd, content_type)
        return await self._stream(request, opened.source, content_type, running)

    async def _send_file(self, request: web.BaseRequest, fd: int, content_type: str
                         ) -> tuple[web.StreamResponse, int, str]:
        # /proc/self/fd/N opens the file the resolver checked, whatever its
        # path has become since (a symlink swapped in cannot redirect it).
        response = _SentFile(f"/proc/self/fd/{fd}", chunk_size=STREAM_CHUNK,
                             headers={"Content-Type": content_type})
        try:
            await response.prepare(request)
        except ConnectionError as exc:
            return response, 0, f"connection lost: {exc or type(exc).__name__}"
        body = request.method == "GET" and response.status in (200, 206)
        return response, (response.content_length or 0) if body else 0, ""

    async def _stream(self, request: web.BaseRequest, source: ChunkSource, content_type: str,
                      running: _Running) -> tuple[web.StreamResponse, int, str]:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        if source.size is not None:
            response.content_length = source.size
        sent = 0
        try:
            await response.prepare(request)
            while request.method == "GET" and (chunk := await source.read(STREAM_CHUNK)):
                await response.write(chunk)
                sent += len(chunk)
                running.sent = sent
            await response.write_eof()
        except (TftpError, SourceError, OSError) as exc:
            # Headers are out: only a cut connection tells the client the
            # body is incomplete (Content-Length, or the chunked encoding).
            if request.transport is not None:
                request.transport.abort()
            reason = exc.detail if isinstance(exc, TftpError) else str(exc)
            return response, sent, reason or type(exc).__name__
        return response, sent, ""

    def _refused(self, request: web.BaseRequest, peer: tuple[str, int], status: int,
                 detail: str, headers: dict[str, str] | None = None) -> web.Response:
        self.totals["refused"] += 1
        level = logging.INFO if status == 404 else logging.WARNING
        if log.isEnabledFor(level) and self.limiter.allow(
                f"HTTP requests refused with {status}", self.runtime.loop.time(), level):
            log.log(level, "%s: HTTP %s %s refused: %d %s", format_peer(peer), request.method,
                    clip(request.path), status, clip(detail))
        self.runtime.observer.http(None, client=peer[0], path=request.path, served=None,
                                   status=status, nbytes=0, seconds=0.0, error=detail)
        reason = web.Response(status=status).reason
        return web.Response(status=status, text=f"{status} {reason}\n", headers=headers)

    def _log_end(self, running: _Running, opened: Opened, status: int, sent: int,
                 started: float, error: str) -> None:
        """One line per response, like TFTP's: client, file, bytes, seconds, rate."""
        request, peer = running.request, running.peer
        seconds = time.monotonic() - started
        self.runtime.observer.http(running, client=peer[0], path=request.path,
                                   served=opened.served, status=status, nbytes=sent,
                                   seconds=seconds, error=error, broken=bool(error))
        self.totals["sent"] += sent
        if error:
            self.totals["broken"] += 1
        rate = sent / seconds / 1e6 if seconds > 0 else 0.0
        served = f" -> {clip(opened.served)}" if opened.served != request.path.lstrip("/") else ""
        log.log(logging.WARNING if error else logging.INFO,
                "%s: HTTP %s %s%s %d%s: %d bytes in %.3fs (%.1f MB/s)", format_peer(peer),
                request.method, clip(request.path), served, status,
                f" broken ({clip(error)})" if error else "", sent, seconds, rate,
                extra={"event": {"source": "http", "client": peer[0], "what": request.path,
                                 "file": opened.served, "outcome": str(status),
                                 "bytes": sent, "seconds": round(seconds, 6), "why": error}})


class _Running:
    """A request being answered, and the source close() must close at once."""

    def __init__(self, request: web.BaseRequest, done: asyncio.Future[None]) -> None:
        self.request = request
        self.peer = _peer(request)
        self.done = done
        self.source: ChunkSource | None = None  # set while the body is sent
        self.sent = 0  # body bytes streamed so far
        self._acked_base: int | None = None  # a sendfile's: the connection's count at start

    def count_acked(self) -> None:
        """The body goes by sendfile, which reports nothing until it ends: count
        progress as the bytes the client has acknowledged on this connection
        (TCP_INFO), from now (a keep-alive connection's earlier responses)."""
        self._acked_base = _bytes_acked(self.request.transport)

    def progress(self) -> int:
        """Body bytes sent so far, for /api/v1/transfers."""
        if self._acked_base is None:
            return self.sent
        acked = _bytes_acked(self.request.transport)
        return max(0, acked - self._acked_base) if acked is not None else 0

    def release(self) -> None:
        if self.source is not None:
            source, self.source = self.source, None
            source.close()


class _SentFile(web.FileResponse):
    """Sent by the handler itself, which closes the file right after; aiohttp
    prepares every returned response again, which must then do nothing."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None
        return await super().prepare(request)


# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64 at offset 120 (Linux >= 4.1).
_TCP_INFO_SIZE = 232
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_AT = 120


def _bytes_acked(transport: Any) -> int | None:
    """The bytes the peer acknowledged on *transport*'s TCP socket (headers included)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _BYTES_ACKED_AT + _BYTES_ACKED.size:
        return None
    return int(_BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0])


def _file_descriptor(source: ChunkSource) -> int | None:
    """The open file behind *source*, if it is one (a local or cached file)."""
    if isinstance(source, PooledSource) and isinstance(source.data, FileResponse):
        fd = source.data.fileno()
        return fd if fd >= 0 else None
    return None


def _peer(request: web.BaseRequest) -> tuple[str, int]:
    peername = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peername, tuple) and len(peername) >= 2:
        return str(peername[0]), int(peername[1])
    return (request.remote or "?", 0)


def _tls_context(conf: HttpdConfig) -> ssl.SSLContext | None:
    if conf.tls_cert is None or conf.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(conf.tls_cert, conf.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise PybootdError(f"[httpd] tls_cert {conf.tls_cert} / tls_key {conf.tls_key}: "
                           f"{getattr(exc, 'strerror', None) or exc} (expected a PEM "
                           "certificate and its private key, readable by root)") from None
    return context


mimetypes.add_type("text/plain", ".ipxe")  # iPXE scripts are text
