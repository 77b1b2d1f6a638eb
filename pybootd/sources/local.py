"""Local files: open them without ever leaving the root.

These functions block (they touch the disk); the server runs them in the
thread pool.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import threading
from pathlib import Path

from pybootd.errors import TftpError
from pybootd.sources.api import FileResponse
from pybootd.tftp.packets import ErrorCode

log = logging.getLogger("pybootd.tftp")

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


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (it may write fewer, write(2))."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# Upload's temporary files: ".NAME.pybootd-PID-ID.part".
_TEMP_NAME = re.compile(r"\..+\.pybootd-(\d+)-[0-9a-f]+\.part", re.DOTALL)
SWEEP_MAX_ENTRIES = 100_000  # a bounded walk, whatever upload_dir holds
SWEEP_MAX_DEPTH = 16


class Upload:
    """A WRQ's file: a temporary file renamed into place at the end.

    An interrupted upload leaves nothing behind; an existing file is never
    replaced unless *overwrite*. The methods may run in different pool
    threads: a lock keeps :meth:`abort` from closing the file under a
    write or a commit still running.
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
        self.done = False  # committed or aborted: the temporary file is gone
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.done:
                raise TftpError(ErrorCode.NOT_DEFINED, "upload already ended")
            try:
                write_all(self.fd, data)
            except OSError as exc:
                raise _disk_error(exc, "write failed") from None
            self.size += len(data)

    def commit(self) -> None:
        """Put the file in place (atomically). Raises TftpError."""
        with self._lock:
            if self.done:
                raise TftpError(ErrorCode.NOT_DEFINED, "upload already ended")
            try:
                self._commit()
            except OSError as exc:
                self._abort()
                raise _disk_error(exc, "cannot store the file") from None

    def _commit(self) -> None:
        os.fsync(self.fd)
        fd, self.fd = self.fd, -1
        os.close(fd)
        if self.overwrite:
            os.replace(self.temp, self.target)
        else:
            try:
                os.link(self.temp, self.target)  # fails if the name appeared meanwhile
            except FileExistsError:
                self._abort()
                raise TftpError(ErrorCode.FILE_EXISTS, "file already exists") from None
            os.unlink(self.temp)
        self.done = True

    def abort(self, wait: float = -1) -> None:
        """Close and remove the temporary file; nothing once committed.

        With *wait* >= 0 (at shutdown), wait at most that long for a write
        running in another thread, then remove the file anyway (the fd is
        left to that thread: closing it under a write is worse)."""
        if self._lock.acquire(timeout=wait):
            try:
                self._abort()
            finally:
                self._lock.release()
        elif not self.done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temp)

    def _abort(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
        if not self.done:
            self.done = True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temp)


def _disk_error(exc: OSError, what: str) -> TftpError:
    """ERROR 3 for a full disk or quota (RFC 1350 section 5), else ERROR 0."""
    code = ErrorCode.DISK_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 0
    return TftpError(code, f"{what}: {exc.strerror}")


def sweep_stale_uploads(upload_dir: Path) -> int:
    """Remove temporary upload files a previous run left (a crash, or a
    shutdown that could not wait); returns how many. Only regular files
    named like :class:`Upload`'s, of a process no longer running (or of
    this one: it has not started any upload yet); symlinks are not
    followed; the walk is bounded."""
    removed = seen = 0
    for top, dirs, files, dir_fd in os.fwalk(upload_dir, follow_symlinks=False):
        seen += len(dirs) + len(files)
        if seen > SWEEP_MAX_ENTRIES:
            log.warning("%s: more than %d entries, stale uploads not all checked",
                        upload_dir, SWEEP_MAX_ENTRIES)
            break
        if os.path.relpath(top, upload_dir).count(os.sep) + 1 >= SWEEP_MAX_DEPTH:
            dirs.clear()
        for name in files:
            if not _is_stale_temp(name, dir_fd):
                continue
            try:
                os.unlink(name, dir_fd=dir_fd)
                removed += 1
            except OSError as exc:
                log.warning("cannot remove stale upload %s: %s", os.path.join(top, name),
                            exc.strerror)
    return removed


def _is_stale_temp(name: str, dir_fd: int) -> bool:
    match = _TEMP_NAME.fullmatch(name)
    if match is None:
        return False
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and not _other_process_alive(int(match[1]))


def _other_process_alive(pid: int) -> bool:
    """Another pybootd sharing upload_dir may still be writing its file."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether it exists (kill(2))
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True
