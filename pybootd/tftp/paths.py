"""Requested file names -> safe relative paths.

A TFTP client names a file with any bytes; this turns the name into a path
relative to the root or refuses it. The check that a symlink does not leave
the root happens where the file is opened (it needs the file system).
"""

from __future__ import annotations

from pybootd.errors import TftpError
from pybootd.tftp.packets import ErrorCode

MAX_NAME = 1024


def _refuse(name: str, why: str) -> TftpError:
    return TftpError(ErrorCode.ACCESS_VIOLATION, f"access violation: {why} in {name!r}")


def normalize_request_path(name: str) -> str:
    """``\\`` -> ``/``; leading ``/`` and ``./`` dropped; no ``..``, NUL or controls.

    Returns a relative POSIX path such as ``pxelinux.cfg/default``. Raises
    :class:`TftpError` (access violation) for a name that could reach
    outside the root.
    """
    if len(name) > MAX_NAME:
        raise _refuse(name[:64] + "...", "name too long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise _refuse(name, "control character")
    parts = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise _refuse(name, "parent directory")
        parts.append(part)
    if not parts:
        raise TftpError(ErrorCode.FILE_NOT_FOUND, f"file not found: {name!r} names no file")
    return "/".join(parts)
