"""Parsers for configuration values.

Each parser takes the raw string and returns a typed value, or raises
``ValueError`` whose text reads "what is wrong (expected ...)"; the loader
adds ``FILE:LINE: section.key:`` in front.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import TypeVar

T = TypeVar("T")

TRUE_WORDS = frozenset({"on", "true", "enable", "enabled", "yes", "high", "ok", "1"})
FALSE_WORDS = frozenset({"off", "false", "disable", "disabled", "no", "low", "ko", "0"})

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"^(\d+)\s*([kmgt]?)(i?b)?$", re.IGNORECASE)
_MAC_RE = re.compile(r"^[0-9a-f]{2}([-:]?)(?:[0-9a-f]{2}\1){4}[0-9a-f]{2}$", re.IGNORECASE)
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|[dhms])", re.IGNORECASE)
_DURATION_SYNTAX = "seconds, or numbers with units d, h, m, s, ms in that order, e.g. 90, 1h30m"
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


def boolean(value: str) -> bool:
    """The original pybootd's boolean words; anything else is an error."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(
        f"{value!r} is not a boolean (expected one of on/true/enable/enabled/yes/high/ok/1 "
        "or off/false/disable/disabled/no/low/ko/0)"
    )


def integer(low: int, high: int) -> Callable[[str], int]:
    """A whole number in ``low..high``."""

    def parse(value: str) -> int:
        try:
            number = int(value, 10)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a whole number (expected {low}..{high})"
            ) from None
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range (expected {low}..{high})")
        return number

    return parse


def real(low: float, high: float) -> Callable[[str], float]:
    """A decimal number in ``low..high`` (seconds, usually)."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number (expected {low:g}..{high:g})") from None
        if not low <= number <= high or number != number:
            raise ValueError(f"{value} is out of range (expected {low:g}..{high:g})")
        return number

    return parse


def duration(low: float, high: float) -> Callable[[str], float]:
    """Seconds in ``low..high``: a plain number, or ``2d``, ``1h30m``, ``1.5s``, ``500ms``."""

    def parse(value: str) -> float:
        seconds = _seconds(value)
        if seconds is None:
            raise ValueError(f"{value!r} is not a duration (expected {_DURATION_SYNTAX}; "
                             f"{_span(low)}..{_span(high)})")
        if not low <= seconds <= high:
            raise ValueError(f"{value.strip()} is out of range "
                             f"(expected {_span(low)}..{_span(high)})")
        return seconds

    return parse


def whole_duration(low: int, high: int) -> Callable[[str], int]:
    """Like :func:`duration`, in whole seconds (``lease_time``)."""
    parse_real = duration(low, high)

    def parse(value: str) -> int:
        seconds = parse_real(value)
        if seconds != int(seconds):
            raise ValueError(f"{value.strip()} is {seconds:g} seconds (expected whole seconds)")
        return int(seconds)

    return parse


def _seconds(value: str) -> float | None:
    """The seconds *value* spells, or None; units must come largest first."""
    text = value.strip()
    try:
        return float(text) if re.fullmatch(r"\d+(\.\d+)?", text) else _with_units(text)
    except ValueError:
        return None


def _with_units(text: str) -> float | None:
    total, position, last = 0.0, 0, float("inf")
    for match in _DURATION_PART.finditer(text):
        unit = _DURATION_UNITS[match.group(2).lower()]
        if match.start() != position or unit >= last:  # "1m1m", "30m1h": a typo, not a sum
            return None
        total += float(match.group(1)) * unit
        position, last = match.end(), unit
    return total if position == len(text) and position else None


def _span(seconds: float) -> str:
    """``86400`` -> ``86400s (1d)``: the bound in seconds, and in its largest whole unit."""
    number = f"{seconds:.12g}s"
    for unit, size in _DURATION_UNITS.items():
        if 1 < size <= seconds and seconds % size == 0:
            return f"{number} ({seconds / size:.12g}{unit})"
    return number


def size(value: str) -> int:
    """A byte count with an optional K/M/G/T suffix (powers of 1024)."""
    match = _SIZE_RE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size (expected bytes, or a number with K, M or G)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def choice(*words: str) -> Callable[[str], str]:
    """One word out of *words* (case-insensitive)."""

    def parse(value: str) -> str:
        word = value.strip().lower()
        if word not in words:
            raise ValueError(f"{value!r} is not allowed (expected one of {', '.join(words)})")
        return word

    return parse


def ipv4(value: str) -> IPv4Address:
    """A dotted-quad IPv4 address."""
    try:
        return IPv4Address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address (expected a.b.c.d)") from None


def listen_address(value: str) -> str:
    """An IPv4 or IPv6 address to bind; ``*``, ``all`` or empty mean every address."""
    text = value.strip()
    if text.lower() in ("", "*", "all", "any"):
        return ""
    try:
        return str(ip_address(text.strip("[]")))
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address (expected an IPv4 or IPv6 address, or 'all')"
        ) from None


def netmask(value: str) -> IPv4Address:
    """A netmask in dotted-quad or prefix-length form."""
    text = value.strip().lstrip("/")
    try:
        return IPv4Network(f"0.0.0.0/{text}").netmask
    except ValueError:
        raise ValueError(
            f"{value!r} is not a netmask (expected e.g. 255.255.255.0 or 24)"
        ) from None


def ipv4_list(value: str) -> tuple[IPv4Address, ...]:
    """One or more IPv4 addresses separated by commas or spaces."""
    words = [w for w in re.split(r"[,\s]+", value.strip()) if w]
    if not words:
        raise ValueError("empty (expected one or more IPv4 addresses)")
    return tuple(ipv4(w) for w in words)


def host_port_list(value: str) -> tuple[tuple[str, int], ...]:
    """One or more ``host:port`` UDP targets separated by commas or spaces."""
    targets = []
    for word in (w for w in re.split(r"[,\s]+", value.strip()) if w):
        host, sep, port = word.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{word!r} is not host:port (expected e.g. 192.0.2.10:5000)")
        targets.append((host.strip("[]"), integer(1, 65535)(port)))
    if not targets:
        raise ValueError("empty (expected one or more host:port)")
    return tuple(targets)


def hostname(value: str) -> str:
    """A DNS name (server name, domain)."""
    text = value.strip().rstrip(".")
    if not _HOSTNAME_RE.match(text) or len(text) > 253:
        raise ValueError(f"{value!r} is not a host or domain name (expected e.g. lab.example)")
    return text


def mac(value: str) -> str:
    """A MAC address with ``-``, ``:`` or no separators, any case -> ``aa:bb:cc:dd:ee:ff``."""
    text = value.strip()
    if not _MAC_RE.match(text):
        raise ValueError(f"{value!r} is not a MAC address (expected AA-BB-CC-DD-EE-FF)")
    digits = re.sub(r"[-:]", "", text).lower()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def uuid(value: str) -> str:
    """A UUID, any case -> the canonical form dmidecode prints (upper case)."""
    try:
        return str(uuidlib.UUID(value.strip())).upper()
    except ValueError:
        raise ValueError(
            f"{value!r} is not a UUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
        ) from None


def http_url(value: str) -> str:
    """An ``http://`` or ``https://`` URL."""
    text = value.strip()
    if not re.match(r"^https?://[^/\s]+", text, re.IGNORECASE):
        raise ValueError(f"{value!r} is not an HTTP URL (expected http://host/path)")
    return text


BOOT_FILE_MAX = 127  # RFC 951: the 128-byte BOOTP ``file`` field, NUL-terminated


def boot_file(value: str) -> str:
    """A boot file name or URL that fits the BOOTP ``file`` field (shim reads only it)."""
    name = text(value)
    size = len(name.encode())
    if size > BOOT_FILE_MAX:
        raise ValueError(
            f"the name is {size} bytes long (expected at most {BOOT_FILE_MAX} bytes: "
            "the BOOTP file field holds no more, and shim reads only that field)"
        )
    return name


def text(value: str) -> str:
    """Any non-empty string."""
    if not value.strip():
        raise ValueError("empty (expected a value)")
    return value.strip()


def url_path(value: str) -> str:
    """A path to append to an URL (``[http] pxe``)."""
    return value.strip()


def lease_store(value: str) -> str:
    """``sqlite:///PATH`` or a libpq URL ``postgresql://...`` (``postgres://`` too)."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    expected = ("expected sqlite:///PATH or postgresql://USER@HOST/DATABASE, e.g. "
                "postgresql:///pybootd?host=/run/postgresql")
    if not sep or scheme not in ("sqlite", "postgresql", "postgres"):
        raise ValueError(f"{redact(text)!r} is not a lease store URL ({expected})")
    if scheme == "sqlite" and not rest.startswith("/"):
        raise ValueError(f"{text!r} names no absolute path (expected sqlite:///PATH, "
                         "three slashes before an absolute path)")
    if scheme == "sqlite" and len(rest) < 2:
        raise ValueError(f"{text!r} names no file (expected sqlite:///PATH)")
    return text


_PASSWORD_RE = re.compile(r"(://[^:/?#@]*:)[^@/?#]*@")
_PASSWORD_PARAM_RE = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def redact(url: str) -> str:
    """*url* with any password replaced by ``***``: what logs and --check print."""
    return _PASSWORD_PARAM_RE.sub(r"\1***", _PASSWORD_RE.sub(r"\1***@", url))
