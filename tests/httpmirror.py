"""A real HTTP server (stdlib) in a thread, counting what it serves."""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import threading
import time
from pathlib import Path
from typing import Any


class Mirror:
    """Serves a folder; logs GETs; answers conditional GETs with 304."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", delay: float = 0.0) -> None:
        self.folder = folder
        self.delay = delay  # seconds to sleep between 64 KiB pieces
        self.gets: list[tuple[str, int]] = []  # (path, status)
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
        path = self.folder / request.path.lstrip("/").split("?")[0]
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
        request.send_response(200)
        request.send_header("Content-Length", str(len(data)))
        request.send_header("ETag", etag)
        request.send_header("Last-Modified", email.utils.formatdate(path.stat().st_mtime,
                                                                    usegmt=True))
        request.end_headers()
        for i in range(0, len(data), 65536):
            if self.delay:
                time.sleep(self.delay)
            try:
                request.wfile.write(data[i:i + 65536])
            except OSError:
                return

    def downloads(self, path: str) -> int:
        return sum(1 for p, status in self.gets if p == path and status == 200)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
