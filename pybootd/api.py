"""The embedding API: plug in your own bytes and watch every transfer.

An embedder gives :class:`pybootd.server.tftp.TftpService` a ``handler``:
a callable that takes a :class:`TftpRequest` and returns a
:class:`ResponseData` to serve, or ``None`` to let pybootd serve the file
from its root as usual. The handler and ``read``/``size``/``close`` run in
pybootd's thread pool, so they may block (a database, a template engine).
Raising :class:`pybootd.errors.TftpError` sends that error to the client;
any other exception sends ERROR 0 and is logged.

This is the shape of fbtftp's ``ResponseData``, so handlers port over.
This module is public and typed (``py.typed``): what it names stays
compatible within a major version.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from pybootd.tftp.connection import Outcome

__all__ = ["BytesResponse", "Direction", "FileProtocol", "FileResponse", "Handler", "Outcome",
           "ResponseData", "ServerStats", "ServerStatsCallback", "SessionStatsCallback",
           "TftpRequest", "TransferStats"]


class ResponseData(Protocol):
    """A file-like object with the bytes of one response."""

    def read(self, n: int) -> bytes:
        """Up to *n* bytes; ``b""`` at the end."""

    def size(self) -> int | None:
        """The total size if known (answers the ``tsize`` option), else None."""

    def close(self) -> None:
        """Called once when the transfer ends, whatever the outcome."""


class FileProtocol(StrEnum):
    """How a file was asked for: the same namespace is served both ways."""

    TFTP = "tftp"
    HTTP = "http"  # [httpd]: GET or HEAD (UEFI HTTP Boot, iPXE)


@dataclass(frozen=True)
class TftpRequest:
    """One read request, as the handler sees it (over TFTP or HTTP)."""

    peer: tuple[str, int]
    filename: str  # normalized: no leading "/", "\\" read as "/", no ".."
    raw_filename: str  # as the client sent it (over HTTP: the URL's path, decoded)
    mode: str  # "octet" or "netascii" ("octet" over HTTP)
    options: dict[str, str] = field(default_factory=dict)  # TFTP options (none over HTTP)
    protocol: FileProtocol = FileProtocol.TFTP


Handler = Callable[[TftpRequest], "ResponseData | None"]


class BytesResponse:
    """Serve bytes held in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def size(self) -> int | None:
        return len(self._data)

    def close(self) -> None:
        self._data = b""


_NOWAIT = getattr(os, "RWF_NOWAIT", None)


class FileResponse:
    """Serve an open file descriptor (pybootd owns and closes it)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._pos = 0
        self._nowait = _NOWAIT is not None

    def read(self, n: int) -> bytes:
        chunk = os.pread(self._fd, n, self._pos)
        self._pos += len(chunk)
        return chunk

    def read_cached(self, n: int) -> bytes | None:
        """Up to *n* bytes if the page cache holds them, else None; never blocks.

        ``preadv2(RWF_NOWAIT)`` (Linux 4.14) fails with EAGAIN instead of
        waiting for the disk, so the event loop can read cached files itself
        and leave only real disk reads to the thread pool. Measured at
        blksize 65464, a pool round trip per chunk cost 75-94 us of CPU per
        block against tftpd-hpa's 12.5.
        """
        if not self._nowait or self._fd < 0:
            return None
        buffer = bytearray(n)
        try:
            count = os.preadv(self._fd, [buffer], self._pos, _NOWAIT)  # type: ignore[arg-type]
        except BlockingIOError:
            return None
        except OSError:
            self._nowait = False  # e.g. EOPNOTSUPP on tmpfs: always use the pool
            return None
        if count == 0 and self._pos < self._size:
            return None  # the next page is not cached: let the pool wait for it
        self._pos += count
        del buffer[count:]
        # A bytearray is kept as is (no copy); nothing resizes it afterwards.
        return buffer  # type: ignore[return-value]

    def size(self) -> int | None:
        return self._size

    def fileno(self) -> int:
        """The descriptor (HTTP sends the file from it with sendfile); -1 once closed."""
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Direction(StrEnum):
    """Which way a transfer's file goes (RFC 1350 section 1: read or write)."""

    READ = "read"  # RRQ: the server sends
    WRITE = "write"  # WRQ: the server receives


@dataclass(frozen=True)
class TransferStats:
    """Handed to ``session_stats`` when a transfer ends."""

    peer: tuple[str, int]
    filename: str  # as requested
    served: str  # what was served after filters ("" when refused)
    direction: Direction
    mode: str
    options_asked: dict[str, str]
    options_granted: dict[str, str]
    bytes: int  # payload bytes sent (read) or received (write)
    packets: int  # DATA packets sent or received, retransmissions included
    retransmits: int
    duration: float  # seconds
    outcome: Outcome  # a StrEnum: compares equal to its text ("complete", ...)
    error: str = ""


class ServerStats:
    """Server-wide counters, handed to ``server_stats`` every interval.

    Like fbtftp's: read them with :meth:`get_and_reset_all_counters`.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._counters: dict[str, int] = {}
        self.active_sessions = 0

    def increment(self, name: str, by: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + by

    def get_counter(self, name: str) -> int:
        return self._counters.get(name, 0)

    def get_and_reset_all_counters(self) -> dict[str, int]:
        counters, self._counters = self._counters, {}
        counters["active_sessions"] = self.active_sessions
        return counters


SessionStatsCallback = Callable[[TransferStats], None]
ServerStatsCallback = Callable[[ServerStats], None]
