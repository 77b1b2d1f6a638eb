"""Option negotiation: RFC 2347 (framework), 2348 (blksize), 2349 (timeout,
tsize) and 7440 (windowsize).

Be liberal in what is accepted: RFC 2347 section 2 lets a server omit from
its OACK any option it does not grant, and the transfer then goes on with
the defaults. So a value pybootd cannot use is ignored (not echoed), never
refused, as tftpd-hpa and dnsmasq do; the one refusal is the one RFC 2349
allows, an upload announced larger than the server takes. Per option:

``blksize`` (RFC 2348)
    8..65464 is granted, clamped to ``[tftp] blocksize``; larger is clamped
    too (section 2: the server may answer with a smaller size). Below 8 or
    not a number: ignored (512-byte blocks).
``windowsize`` (RFC 7440)
    1..65535 is granted, clamped to ``[tftp] windowsize`` and to a burst of
    ``WINDOW_BYTES``; larger is clamped. 0 or not a number: ignored
    (lock-step).
``timeout`` (RFC 2349 section 3)
    1..255 seconds is honoured. Outside that range or not a number:
    ignored (the server's own timeout).
``tsize`` (RFC 2349 section 4)
    In a read request it is a size request (the client is to send 0; atftp
    0.8 sends ``enable``): whatever the value, the OACK carries the file's
    size when it is known (octet mode, an HTTP root with Content-Length),
    and omits it otherwise. In a write request it is the upload's size: a
    number larger than ``max_upload_size`` gets ERROR 3 (the server may
    refuse, section 4); a value that is not a number is ignored.

Options pybootd does not know are ignored (RFC 2347 section 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from pybootd.errors import TftpError
from pybootd.tftp.packets import ErrorCode

DEFAULT_BLKSIZE = 512  # RFC 1350 section 2
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348 section 2
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349 section 3
MIN_WINDOWSIZE, MAX_WINDOWSIZE = 1, 65535  # RFC 7440 section 3
# A window is sent as one burst; a burst larger than a client's default
# receive buffer (212992 bytes on Linux) is partly dropped and costs a
# timeout. Measured: atftp at blksize 65464 and windowsize 64 (4 MB
# bursts) got 2.9 MB/s. RFC 7440 section 3 lets the server grant less.
WINDOW_BYTES = 128 * 1024


@dataclass(frozen=True)
class Limits:
    """What the server grants at most (from ``[tftp]``)."""

    blksize: int = 1468
    windowsize: int = 64
    timeout: float = 1.0
    max_upload: int | None = None
    window_bytes: int = WINDOW_BYTES


@dataclass(frozen=True)
class Negotiated:
    """The transfer's parameters and the OACK to send (empty: none)."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float = 1.0
    tsize: int | None = None
    oack: tuple[tuple[str, str], ...] = ()


_MAX_DIGITS = 20  # a 64-bit tsize; blksize, timeout, windowsize need far fewer


def _number(value: str) -> int | None:
    """The value as a number, or None for anything else (then ignored).

    ASCII digits only: str.isdigit() also takes "²", which int() refuses,
    and a value of thousands of digits is refused by int() too."""
    text = value.strip()
    if not 0 < len(text) <= _MAX_DIGITS or text.strip("0123456789"):
        return None
    return int(text)


def negotiate(
    options: tuple[tuple[str, str], ...],
    limits: Limits,
    *,
    size: int | None,
    is_write: bool,
) -> Negotiated:
    """Grant what can be honoured; only options the client sent, in its order.

    *size* is the file size for a read (None when unknown: netascii or an
    HTTP source without Content-Length). A value that cannot be used is
    ignored (see the module's docstring). Raises :class:`TftpError` 3 for an
    upload announced over the limit, nothing else.
    """
    blksize, windowsize, timeout, tsize = DEFAULT_BLKSIZE, 1, limits.timeout, None
    granted: list[tuple[str, str]] = []
    for name, value in options:
        asked = _number(value)
        if name == "blksize" and asked is not None and asked >= MIN_BLKSIZE:
            # RFC 2348 section 2: the server may answer with a smaller size.
            blksize = min(asked, MAX_BLKSIZE, limits.blksize)
            granted.append((name, str(blksize)))
        elif name == "windowsize" and asked is not None and asked >= MIN_WINDOWSIZE:
            # RFC 7440 section 3: the server may answer with a smaller window.
            windowsize = min(asked, MAX_WINDOWSIZE, limits.windowsize)
            granted.append((name, str(windowsize)))
        elif name == "timeout" and asked is not None and MIN_TIMEOUT <= asked <= MAX_TIMEOUT:
            timeout = float(asked)
            granted.append((name, str(asked)))
        elif name == "tsize" and not is_write:
            # RFC 2349 section 4: in a read request, a request for the size
            # (the value is meant to be 0; it is not looked at).
            if size is not None:
                tsize = size
                granted.append((name, str(size)))
        elif name == "tsize" and asked is not None:  # else: counted as the bytes come
            if limits.max_upload is not None and asked > limits.max_upload:
                raise TftpError(ErrorCode.DISK_FULL, "disk full or allocation exceeded",
                                f"upload of {asked} bytes exceeds max_upload_size "
                                f"({limits.max_upload})")
            tsize = asked
            granted.append((name, str(asked)))
        # RFC 2347 section 2: unknown options are ignored.
    if windowsize > 1:  # the burst's bytes, once blksize is known whatever the order
        windowsize = min(windowsize, max(1, limits.window_bytes // blksize))
        granted = [(n, str(windowsize) if n == "windowsize" else v) for n, v in granted]
    return Negotiated(blksize, windowsize, timeout, tsize, tuple(granted))
