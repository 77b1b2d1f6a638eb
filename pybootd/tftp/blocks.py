"""Blocks of a stream, kept from the oldest unacknowledged one on.

Sources deliver chunks of any length; the store cuts them into segments
whose length is a multiple of the block size, so a block never spans two
segments and the I/O layer can send a block as a slice without copying.
A source read in block-multiple chunks (local files) is never copied.
"""

from __future__ import annotations

from collections import deque


class BlockStore:
    def __init__(self, blksize: int) -> None:
        self.blksize = blksize
        self._segments: deque[tuple[int, bytes]] = deque()
        self._next = 1  # first block number not stored yet
        self._tail = b""  # a partial block waiting for more bytes
        self.fed = 0  # bytes received from the source
        self.last_block: int | None = None  # known at end of stream

    @property
    def available_through(self) -> int:
        """The highest block that :meth:`block` can return."""
        return self.last_block if self.last_block is not None else self._next - 1

    def feed(self, chunk: bytes, eof: bool = False) -> None:
        if self.last_block is not None:
            return
        self.fed += len(chunk)
        if self._tail:
            chunk = self._tail + chunk
            self._tail = b""
        full = len(chunk) // self.blksize
        if eof:
            if chunk:
                self._segments.append((self._next, chunk))
            # The final block is short, possibly empty (RFC 1350 section 6).
            self.last_block = self._next + full
            return
        cut = full * self.blksize
        if cut:
            self._segments.append((self._next, chunk if cut == len(chunk) else chunk[:cut]))
            self._next += full
        self._tail = chunk[cut:]

    def block(self, number: int) -> memoryview | bytes | None:
        """Block *number*'s payload, or None if not received yet."""
        found = self.segment(number)
        if found is not None:
            first, data = found
            offset = (number - first) * self.blksize
            return memoryview(data)[offset : offset + self.blksize]
        if number == self.last_block:
            return b""
        return None

    def segment(self, number: int) -> tuple[int, bytes] | None:
        """The stored segment holding block *number*: (its first block, its
        bytes), or None."""
        size = self.blksize
        for first, data in self._segments:
            if 0 <= (number - first) * size < len(data):
                return first, data
        return None

    def release_before(self, number: int) -> None:
        """Forget segments whose blocks all come before *number*."""
        size = self.blksize
        segments = self._segments
        while segments:
            first, data = segments[0]
            if first + -(-len(data) // size) > number:
                break
            segments.popleft()
