"""Asynchronous chunk readers: what a transfer pulls its bytes from."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Protocol

from pybootd.api import ResponseData
from pybootd.runtime import Runtime
from pybootd.tftp.netascii import encode_netascii

log = logging.getLogger("pybootd.tftp")

DISK_TIMEOUT = 30.0  # seconds a single read from disk or a plugin may take


class ChunkSource(Protocol):
    """Bytes of one response, read chunk by chunk without blocking the loop."""

    size: int | None  # the size on the wire, when known

    async def read(self, n: int) -> bytes:
        """Up to *n* bytes; ``b""`` at the end. Raises SourceError or TftpError."""

    def close(self) -> None:
        """Release resources; never blocks."""


class PooledSource:
    """A blocking :class:`ResponseData` read in the thread pool."""

    def __init__(self, runtime: Runtime, data: ResponseData, size: int | None,
                 timeout: float = DISK_TIMEOUT) -> None:
        self._runtime = runtime
        self.data = data
        self._timeout = timeout
        self.size = size

    async def read(self, n: int) -> bytes:
        read_cached = getattr(self.data, "read_cached", None)
        if read_cached is not None:
            chunk: bytes | None = read_cached(n)
            if chunk is not None:
                return chunk
        return await self._runtime.blocking(self._timeout, self.data.read, n)

    def close(self) -> None:
        future = self._runtime.executor.submit(self.data.close)
        future.add_done_callback(_log_close_error)


def _log_close_error(future: Future[None]) -> None:
    if future.cancelled():
        return  # the daemon is exiting (its pool dropped queued work): exit closes it
    exc = future.exception()
    if exc is not None:
        log.warning("closing a response failed: %s", exc)


class NetasciiSource:
    """Converts local text to netascii on the fly (RFC 1350 section 1).

    The converted size is not known in advance, so ``tsize`` is not offered.
    """

    def __init__(self, inner: ChunkSource) -> None:
        self._inner = inner
        self.size: int | None = None

    async def read(self, n: int) -> bytes:
        return encode_netascii(await self._inner.read(n))

    def close(self) -> None:
        self._inner.close()
