"""A real HTTP server (stdlib) in a thread, counting what it serves."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import http.server
import os
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any


class Mirror:
    """Serves a folder; logs GETs; answers conditional GETs with 304.

    With ``cut_after`` set, each body stops after that many bytes and the
    connection closes: a mirror that dies mid-download. With *gzip*, every
    body is sent gzip-encoded (``Content-Encoding: gzip``,
    Content-Length of the encoded bytes), whatever the client accepts: a
    misconfigured mirror. With *fail_status* set (it may be set at any
    time), every GET gets that status (a mirror in trouble: 503).
    """

    def __init__(self, folder: Path, host: str = "127.0.0.1", delay: float = 0.0,
                 gzip: bool = False, header_delay: float = 0.0) -> None:
        self.folder = folder
        self.delay = delay  # seconds to sleep between 64 KiB pieces
        self.gzip = gzip
        self.header_delay = header_delay  # seconds the header lines take to come
        self.fail_status: int | None = None  # answer every GET with this status
        self.cut_after: int | None = None  # end each body after this many bytes (a crash)
        self.gets: list[tuple[str, int]] = []  # (path, status)
        self.broken: list[str] = []  # paths whose client closed the connection mid-body
        self.accept_encodings: list[str | None] = []  # Accept-Encoding of each GET
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        self.accept_encodings.append(request.headers.get("Accept-Encoding"))
        # The request path is percent-encoded bytes (RFC 3986 section 2.1).
        raw = urllib.parse.unquote_to_bytes(request.path.split("?")[0].lstrip("/"))
        path = self.folder / os.fsdecode(raw)
        if self.fail_status is not None:
            self.gets.append((request.path, self.fail_status))
            request.send_error(self.fail_status)
            return
        if not path.is_file():
            self.gets.append((request.path, 404))
            request.send_error(404)
            return
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            self.gets.append((request.path, 304))
            request.send_response(304)
            request.end_headers()
            return
        self.gets.append((request.path, 200))
        headers = {"Content-Length": str(len(data)), "ETag": etag,
                   "Last-Modified": email.utils.formatdate(path.stat().st_mtime, usegmt=True)}
        if self.gzip:
            data = gzip.compress(data)
            headers["Content-Encoding"] = "gzip"
            headers["Content-Length"] = str(len(data))
        request.send_response(200)
        # With header_delay the header lines trickle in: each one within a
        # client's read timeout, all of them late.
        pause = self.header_delay / (len(headers) + 1)
        for name, value in headers.items():
            request.flush_headers()
            time.sleep(pause)
            request.send_header(name, value)
        time.sleep(pause)
        request.end_headers()
        end = len(data) if self.cut_after is None else min(self.cut_after, len(data))
        for i in range(0, end, 65536):
            if self.delay:
                time.sleep(self.delay)
            try:
                request.wfile.write(data[i:min(i + 65536, end)])
            except OSError:
                self.broken.append(request.path)
                return

    def downloads(self, path: str) -> int:
        return sum(1 for p, status in self.gets if p == path and status == 200)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
