"""Netascii (RFC 1350 section 1, after RFC 764): LF <-> CR LF, CR <-> CR NUL."""

from __future__ import annotations


def encode_netascii(chunk: bytes) -> bytes:
    """Local text to netascii. Stateless, so any chunking gives the same stream."""
    return chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class NetasciiDecoder:
    """Netascii to local text, across chunk boundaries (a CR may end a chunk)."""

    def __init__(self) -> None:
        self._pending_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._pending_cr = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r")

    def flush(self) -> bytes:
        """End of stream: a lone trailing CR is kept as is."""
        if self._pending_cr:
            self._pending_cr = False
            return b"\r"
        return b""
