"""Local files: open them without ever leaving the root.

These functions block (they touch the disk); the server runs them in the
thread pool.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from pybootd.errors import TftpError
from pybootd.sources.api import FileResponse
from pybootd.tftp.packets import ErrorCode

_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang us


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _real_path_of(fd: int, fallback: str) -> str:
    """Where *fd* really is (after every symlink), without a race."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(fallback)


def _open_regular(path: str, shown: str) -> tuple[int, int]:
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise TftpError(ErrorCode.FILE_NOT_FOUND, f"file not found: {shown}") from None
    except PermissionError:
        raise TftpError(ErrorCode.ACCESS_VIOLATION, f"permission denied: {shown}") from None
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG):
            raise TftpError(ErrorCode.FILE_NOT_FOUND, f"file not found: {shown}") from None
        raise TftpError(ErrorCode.NOT_DEFINED, f"cannot open {shown}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise TftpError(ErrorCode.FILE_NOT_FOUND, f"not a regular file: {shown}")
    return fd, info.st_size


def open_in_root(root: Path, relative: str) -> FileResponse:
    """Open *relative* (already normalized) under *root*.

    Symlinks are followed, but the file finally opened must lie inside the
    root; otherwise access violation.
    """
    real_root = os.path.realpath(root)
    candidate = os.path.join(real_root, relative)
    fd, size = _open_regular(candidate, relative)
    if not _inside(_real_path_of(fd, candidate), real_root):
        os.close(fd)
        raise TftpError(
            ErrorCode.ACCESS_VIOLATION, f"access violation: {relative!r} leads outside the root"
        )
    return FileResponse(fd, size)


def open_admin_file(path: str) -> FileResponse:
    """Open a file the administrator named in ``[filters]`` (absolute path)."""
    fd, size = _open_regular(path, path)
    return FileResponse(fd, size)


def read_small_text(path: str, limit: int = 4096) -> str:
    """Content of a small local file (``[file]`` indirection)."""
    fd, _ = _open_regular(path, path)
    try:
        return os.read(fd, limit).decode("utf-8", "replace")
    finally:
        os.close(fd)


class Upload:
    """A WRQ's file: a temporary file renamed into place at the end.

    An interrupted upload leaves nothing behind; an existing file is never
    replaced unless *overwrite*.
    """

    def __init__(self, upload_dir: Path, relative: str, overwrite: bool) -> None:
        real_dir = os.path.realpath(upload_dir)
        self.target = os.path.join(real_dir, relative)
        parent = os.path.dirname(self.target)
        if not _inside(os.path.realpath(parent), real_dir) or not os.path.isdir(parent):
            raise TftpError(ErrorCode.ACCESS_VIOLATION, f"no such upload folder for {relative!r}")
        self.overwrite = overwrite
        if not overwrite and os.path.lexists(self.target):
            raise TftpError(ErrorCode.FILE_EXISTS, f"file already exists: {relative}")
        self.temp = os.path.join(parent, f".{os.path.basename(self.target)}.pybootd-{os.getpid()}-"
                                 f"{id(self):x}.part")
        try:
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise TftpError(ErrorCode.ACCESS_VIOLATION, f"cannot create upload: {exc.strerror}") \
                from None
        self.size = 0

    def write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError as exc:
            code = ErrorCode.DISK_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 0
            raise TftpError(code, f"write failed: {exc.strerror}") from None
        self.size += len(data)

    def commit(self) -> None:
        """Put the file in place (atomically)."""
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self.overwrite:
            os.replace(self.temp, self.target)
            return
        try:
            os.link(self.temp, self.target)  # fails if the name appeared meanwhile
        except FileExistsError:
            self.abort()
            raise TftpError(ErrorCode.FILE_EXISTS, "file already exists") from None
        os.unlink(self.temp)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)
