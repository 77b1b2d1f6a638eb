"""Option negotiation: RFC 2347 (framework), 2348 (blksize), 2349 (timeout,
tsize) and 7440 (windowsize)."""

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


def _number(name: str, value: str) -> int:
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses,
    # and a value of thousands of digits is refused by int() too.
    text = value.strip()
    if not 0 < len(text) <= _MAX_DIGITS or text.strip("0123456789"):
        raise TftpError(ErrorCode.OPTION_REFUSED, f"option {name}={value!r} is not a number")
    return int(text)


def _too_small(name: str, value: int, low: int) -> TftpError:
    return TftpError(ErrorCode.OPTION_REFUSED, f"option {name}={value} is below {low}")


def negotiate(
    options: tuple[tuple[str, str], ...],
    limits: Limits,
    *,
    size: int | None,
    is_write: bool,
) -> Negotiated:
    """Grant what can be honoured; only options the client sent, in its order.

    *size* is the file size for a read (None when unknown: netascii or an
    HTTP source without Content-Length). Raises :class:`TftpError` 8 for a
    value that cannot be honoured, 3 for an upload over the limit.
    """
    blksize, windowsize, timeout, tsize = DEFAULT_BLKSIZE, 1, limits.timeout, None
    granted: list[tuple[str, str]] = []
    for name, value in options:
        if name == "blksize":
            asked = _number(name, value)
            if asked < MIN_BLKSIZE:
                raise _too_small(name, asked, MIN_BLKSIZE)
            # RFC 2348: the server may answer with a smaller size.
            blksize = min(asked, MAX_BLKSIZE, limits.blksize)
            granted.append((name, str(blksize)))
        elif name == "windowsize":
            asked = _number(name, value)
            if asked < MIN_WINDOWSIZE:
                raise _too_small(name, asked, MIN_WINDOWSIZE)
            windowsize = min(asked, MAX_WINDOWSIZE, limits.windowsize)
            granted.append((name, str(windowsize)))
        elif name == "timeout":
            asked = _number(name, value)
            if not MIN_TIMEOUT <= asked <= MAX_TIMEOUT:
                raise TftpError(
                    ErrorCode.OPTION_REFUSED,
                    f"option timeout={asked} is outside {MIN_TIMEOUT}..{MAX_TIMEOUT}",
                )
            timeout = float(asked)
            granted.append((name, str(asked)))
        elif name == "tsize":
            asked = _number(name, value)
            if is_write:
                if limits.max_upload is not None and asked > limits.max_upload:
                    raise TftpError(
                        ErrorCode.DISK_FULL,
                        f"upload of {asked} bytes exceeds the limit of {limits.max_upload}",
                    )
                tsize = asked
                granted.append((name, str(asked)))
            elif size is not None:
                # RFC 2349 section 4: the server answers with the file's size.
                tsize = size
                granted.append((name, str(size)))
        # RFC 2347 section 2: unknown options are ignored.
    if windowsize > 1:
        windowsize = min(windowsize, max(1, limits.window_bytes // blksize))
        granted = [(n, str(windowsize) if n == "windowsize" else v) for n, v in granted]
    return Negotiated(blksize, windowsize, timeout, tsize, tuple(granted))
