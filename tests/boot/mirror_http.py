"""A static web server for a mirror-like folder, optionally slow like a far mirror.

    python3 mirror_http.py DOCROOT --bind 192.0.2.1 --port 8080 [--delay 0.05]

``http.server`` with one addition: each request waits *delay* seconds before
its answer, as it would wait a round trip to a mirror across the Internet
(there is no netem on every machine). Conditional GETs get 304 as usual.
"""

from __future__ import annotations

import argparse
import functools
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SlowHandler(SimpleHTTPRequestHandler):
    delay = 0.0

    def send_head(self) -> Any:
        if self.delay:
            time.sleep(self.delay)
        return super().send_head()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("docroot")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per request")
    args = parser.parse_args()
    SlowHandler.delay = args.delay
    handler = functools.partial(SlowHandler, directory=args.docroot)
    with ThreadingHTTPServer((args.bind, args.port), handler) as server:
        print(f"Serving HTTP on {args.bind} port {args.port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
