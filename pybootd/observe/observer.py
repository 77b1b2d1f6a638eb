"""What the services report about each client event, in one place: the
metrics, each machine's timeline, the transfers running and just finished.

The DHCP, TFTP and HTTP services call it once per request or transfer (not
per block); the ``[api]`` server reads it. It lives on the loop's thread.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pybootd.api import Direction, TransferStats
from pybootd.observe.metrics import Metrics
from pybootd.observe.timeline import Source, Timeline

FINISHED = 200  # finished transfers kept for /api/v1/transfers


@dataclass
class Underway:
    """A transfer under way; *progress* gives the bytes sent so far."""

    client: str
    file: str
    protocol: Source
    size: int | None
    started: float  # time.time()
    progress: Callable[[], int]

    def as_json(self, now: float) -> dict[str, Any]:
        sent = self.progress()
        seconds = max(now - self.started, 1e-9)
        return {"client": self.client, "file": self.file, "protocol": str(self.protocol),
                "bytes": sent, "size": self.size,
                "progress": round(sent / self.size, 4) if self.size else None,
                "rate": round(sent / seconds), "started": self.started, "outcome": None}


class Observer:
    def __init__(self, finished: int = FINISHED) -> None:
        self.metrics = Metrics()
        self.timeline = Timeline()
        self.running: dict[object, Underway] = {}
        self.finished: deque[dict[str, Any]] = deque(maxlen=finished)
        self.errors: deque[dict[str, Any]] = deque(maxlen=100)  # refusals and failures

    # --- DHCP ---------------------------------------------------------------
    def dhcp(self, mac: str, message: str, outcome: str, *, ip: str | None = None,
             file: str | None = None, why: str = "", source: Source = Source.DHCP,
             reason: str | None = None) -> None:
        """One request and pybootd's decision (``ignore``: *reason*, a fixed word)."""
        self.metrics.dhcp_requests.labels(message).inc()
        if reason is not None:
            self.metrics.dhcp_ignored.labels(reason).inc()
        spans = self.timeline.dhcp(time.time(), mac, message, outcome, ip=ip, file=file,
                                   why=why, source=source)
        self.metrics.phases(spans)

    def dhcp_reply(self, kind: str) -> None:
        self.metrics.dhcp_replies.labels(kind).inc()

    def dhcp_ignored(self, reason: str) -> None:
        """Unanswered before any decision (overload)."""
        self.metrics.dhcp_ignored.labels(reason).inc()

    def store_error(self) -> None:
        """A lease commit failed: its replies were not sent."""
        self.metrics.lease_store_errors.inc()

    # --- TFTP and HTTP -----------------------------------------------------------
    def started(self, key: object, running: Underway) -> None:
        self.running[key] = running

    def forget(self, key: object) -> None:
        """A transfer that ended without a report (cancelled at shutdown)."""
        self.running.pop(key, None)

    def ended(self, key: object | None, *, client: str, name: str, served: str | None,
              protocol: Source, outcome: str, nbytes: int, seconds: float,
              error: str = "") -> None:
        """A transfer ended (or a request was refused: *key* None)."""
        if key is not None:
            self.running.pop(key, None)
        now = time.time()
        mac, spans = self.timeline.file(now, client, protocol, name, outcome, served=served,
                                        nbytes=nbytes, seconds=seconds, why=error)
        self.metrics.phases(spans)
        record = {"client": client, "mac": mac, "file": name, "served": served,
                  "protocol": str(protocol), "bytes": nbytes, "seconds": round(seconds, 6),
                  "rate": round(nbytes / seconds) if seconds > 0 else None,
                  "outcome": outcome, "error": error, "ended": now}
        self.finished.append(record)
        if error:
            self.errors.append(record)

    def tftp(self, key: object | None, stats: TransferStats) -> None:
        """A TFTP transfer ended, or a request was refused (*key* None)."""
        m = self.metrics
        m.tftp_transfers.labels(str(stats.outcome), str(stats.direction)).inc()
        if stats.direction is Direction.READ:
            m.tftp_bytes_sent.inc(stats.bytes)
        m.tftp_retransmits.inc(stats.retransmits)
        self.ended(key, client=stats.peer[0], name=stats.filename, served=stats.served or None,
                   protocol=Source.TFTP, outcome=str(stats.outcome), nbytes=stats.bytes,
                   seconds=stats.duration, error=stats.error)

    def http(self, key: object | None, *, client: str, path: str, served: str | None,
             status: int, nbytes: int, seconds: float, error: str = "",
             broken: bool = False) -> None:
        """An HTTP response ended (*key* None: refused before any body; *broken*:
        cut before its end, *error* says why)."""
        self.metrics.http_requests.labels(str(status)).inc()
        self.metrics.http_bytes_sent.inc(nbytes)
        outcome = f"{status} broken" if broken else str(status)
        self.ended(key, client=client, name=path, served=served, protocol=Source.HTTP,
                   outcome=outcome, nbytes=nbytes, seconds=seconds, error=error)

    def cache(self, result: str) -> None:
        self.metrics.cache_requests.labels(result).inc()
