"""Local files: open them without ever leaving the root, and take uploads.

* A file is opened inside a root (or a filter target's folder), checked on
  the opened descriptor, and never when it is one of the daemon's own
  files (:class:`Protected`). Whatever the reason a file is not served, the
  client hears what a missing file gets, ERROR 1 "file not found: NAME"
  (RFC 1350 section 5), so it learns nothing of what lies outside the
  root; ``TftpError.detail`` tells the log why.
* Uploads land through a temporary file (:class:`Upload`), within
  ``upload_quota`` (:class:`UploadQuota`).

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

from pybootd.api import FileResponse
from pybootd.config import Config
from pybootd.errors import TftpError
from pybootd.tftp.packets import ErrorCode

log = logging.getLogger("pybootd.tftp")

_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang us


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _beside(path: str, file: str) -> bool:
    """*path* is *file*, or a file beside it whose name starts with its name
    (``leases.sqlite-wal``, ``leases.sqlite.lock``, ``pybootd.log.1``)."""
    return path.startswith(file) and "/" not in path[len(file):]


def _real_path_of(fd: int, fallback: str) -> str:
    """Where *fd* really is (after every symlink), without a race."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(fallback)


class Protected:
    """The daemon's own files: never served, whatever the root and ``[filters]``.

    The configuration file (it may hold ``[http] location`` tokens), the
    lease file and the log file, each with the files beside it that share
    its name's start (``-wal``, ``-shm``, ``.lock``, rotated logs, backups),
    and everything under ``state_dir`` and ``cache_dir``. Paths are real
    paths, computed once; one that does not exist yet protects the place
    it will be created. A root or ``upload_dir`` that the administrator put
    strictly inside ``state_dir`` stays usable (the rest of it does not).
    """

    def __init__(self, files: dict[str, str], folders: dict[str, str],
                 exempt: tuple[str, ...] = ()) -> None:
        self.files = {os.path.realpath(p): what for p, what in files.items()}
        self.folders = {os.path.realpath(p): what for p, what in folders.items()}
        self.exempt = tuple(os.path.realpath(p) for p in exempt)

    @classmethod
    def from_config(cls, config: Config) -> Protected:
        files = {str(config.path): "the configuration file"}
        if config.bootp is not None and config.bootp.mode == "server":
            files[str(config.lease_file)] = "the lease file"
        if config.logger.file is not None:
            files[str(config.logger.file)] = "the log file"
        state_dir = config.daemon.state_dir
        folders = {str(state_dir): "under state_dir", str(config.cache_dir): "under cache_dir"}
        real_state = os.path.realpath(state_dir)
        # Only the part of state_dir the admin chose to serve or fill is exempt.
        exempt = tuple(str(p) for p in (config.tftp.root_path, config.tftp.upload_dir)
                       if p is not None and os.path.realpath(p) != real_state
                       and _inside(os.path.realpath(p), real_state))
        return cls(files, folders, exempt)

    def why(self, real: str, info: os.stat_result | None = None) -> str | None:
        """Why the file at *real* (its ``fstat`` *info*) is protected, or None."""
        for file, what in self.files.items():
            if _beside(real, file):
                return what
        for folder, what in self.folders.items():
            if _inside(real, folder) and not (what == "under state_dir" and any(
                    _inside(real, e) for e in self.exempt)):
                return what
        if info is not None and info.st_nlink > 1:
            return self._hard_link(info)
        return None

    def _hard_link(self, info: os.stat_result) -> str | None:
        """A hard link to a protected file has a path of its own."""
        for file, what in self.files.items():
            try:
                other = os.stat(file)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                return f"a hard link to {what}"
        return None


def _not_found(shown: str, detail: str) -> TftpError:
    """What a missing file gets, whatever the true reason (kept for the log):
    a client learns nothing of what lies outside the root."""
    return TftpError(ErrorCode.FILE_NOT_FOUND, f"file not found: {shown}", detail)


def _open_regular(path: str, shown: str) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise _not_found(shown, f"file not found: {shown} ({path})") from None
    except PermissionError:
        raise TftpError(ErrorCode.ACCESS_VIOLATION, f"permission denied: {shown}",
                        f"permission denied: {shown} ({path})") from None
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG):
            raise _not_found(shown, f"cannot open {path}: {exc.strerror}") from None
        raise TftpError(ErrorCode.NOT_DEFINED, f"cannot open {shown}",
                        f"cannot open {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _not_found(shown, f"not a regular file: {path}")
    return fd, info


def _checked(fd: int, info: os.stat_result, real: str, shown: str,
             protected: Protected | None) -> FileResponse:
    why = protected.why(real, info) if protected is not None else None
    if why is not None:
        os.close(fd)
        raise _not_found(shown, f"{shown} is a protected daemon file ({why}: {real})")
    return FileResponse(fd, info.st_size)


def open_in_root(root: Path | str, relative: str, shown: str | None = None,
                 protected: Protected | None = None) -> FileResponse:
    """Open *relative* (already normalized) under *root*: the root, or the
    folder of a ``[filters]`` target before its ``{filename}``.

    Symlinks are followed, but the file finally opened must lie inside the
    root (checked on the opened descriptor: no race) and not be one of the
    daemon's own files (*protected*); otherwise the client is told what a
    missing file gets (ERROR 1, naming *shown*, what it asked for) and the
    log gets the reason.
    """
    shown = relative if shown is None else shown
    real_root = os.path.realpath(root)
    candidate = os.path.join(real_root, relative)
    # Checked before opening as well: a device outside the root is never
    # even opened (opening a tape rewinds it); the check on the fd decides.
    if not _inside(os.path.realpath(candidate), real_root):
        raise _not_found(shown, f"{relative!r} leads outside {real_root}")
    fd, info = _open_regular(candidate, shown)
    real = _real_path_of(fd, candidate)
    if not _inside(real, real_root):
        os.close(fd)
        raise _not_found(shown, f"{relative!r} leads outside {real_root} ({real})")
    return _checked(fd, info, real, shown, protected)


def open_admin_file(path: str, shown: str | None = None,
                    protected: Protected | None = None) -> FileResponse:
    """Open a file the administrator named in ``[filters]`` (an absolute
    path without ``{filename}``): served as is, unless it is one of the
    daemon's own files."""
    shown = path if shown is None else shown
    fd, info = _open_regular(path, shown)
    return _checked(fd, info, _real_path_of(fd, path), shown, protected)


def read_small_text(data: FileResponse, limit: int = 4096) -> str:
    """Content of a small local file (``[file]`` indirection); closes *data*."""
    try:
        return data.read(limit).decode("utf-8", "replace")
    finally:
        data.close()


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (it may write fewer, write(2))."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# Upload's temporary files: ".NAME.pybootd-PID-ID.part".
_TEMP_NAME = re.compile(r"\..+\.pybootd-(\d+)-[0-9a-f]+\.part", re.DOTALL)
SWEEP_MAX_ENTRIES = 100_000  # a bounded walk, whatever upload_dir holds
SWEEP_MAX_DEPTH = 16


DISK_FULL = "disk full or allocation exceeded"  # RFC 1350 section 5, error 3


class UploadQuota:
    """``[tftp] upload_quota``: the bytes ``upload_dir`` may hold in all.

    Measured once at start (:func:`scan_upload_dir`), then kept up to date:
    an upload's bytes are reserved as they arrive, before they are written,
    so running uploads count too and the folder never holds more than the
    quota (temporary files included); an aborted upload gives its bytes
    back, an overwrite gives back the size of the file it replaced. Used
    from pool threads: a lock guards the count.
    """

    def __init__(self, limit: int, used: int = 0) -> None:
        self.limit = limit
        self._used = used
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def admit(self, announced: int | None) -> None:
        """A new upload (of *announced* bytes, its tsize, if it said):
        ERROR 3 when the folder is full or the announced size would not fit."""
        with self._lock:
            if self._used >= self.limit:
                raise self._full(f"upload_dir holds {self._used} bytes, upload_quota is "
                                 f"{self.limit}")
            if announced is not None and self._used + announced > self.limit:
                raise self._full(f"an upload of {announced} bytes would pass upload_quota "
                                 f"({self._used} of {self.limit} bytes used)")

    def reserve(self, count: int) -> None:
        with self._lock:
            if self._used + count > self.limit:
                raise self._full(f"upload_quota of {self.limit} bytes reached")
            self._used += count

    def release(self, count: int) -> None:
        with self._lock:
            self._used = max(0, self._used - count)

    @staticmethod
    def _full(detail: str) -> TftpError:
        return TftpError(ErrorCode.DISK_FULL, DISK_FULL, detail)


class Upload:
    """A WRQ's file: a temporary file renamed into place at the end.

    An interrupted upload leaves nothing behind; an existing file is never
    replaced unless *overwrite*, nor one of the daemon's own files
    (*protected*); with a *quota*, the bytes are counted as they come
    (*announced*: the client's tsize). The methods may run in different pool
    threads: a lock keeps :meth:`abort` from closing the file under a
    write or a commit still running.
    """

    def __init__(self, upload_dir: Path, relative: str, overwrite: bool,
                 quota: UploadQuota | None = None, announced: int | None = None,
                 protected: Protected | None = None) -> None:
        real_dir = os.path.realpath(upload_dir)
        self.target = os.path.join(real_dir, relative)
        parent = os.path.dirname(self.target)
        real_parent = os.path.realpath(parent)
        if not _inside(real_parent, real_dir) or not os.path.isdir(parent):
            raise TftpError(ErrorCode.ACCESS_VIOLATION, f"no such upload folder for {relative!r}")
        # The name itself is replaced (os.replace), not what a symlink there names.
        real_target = os.path.join(real_parent, os.path.basename(self.target))
        why = protected.why(real_target) if protected is not None else None
        if why is not None:
            raise TftpError(ErrorCode.ACCESS_VIOLATION, f"access violation: {relative!r}",
                            f"{relative!r} is a protected daemon file ({why}: {real_target})")
        self.overwrite = overwrite
        if not overwrite and os.path.lexists(self.target):
            raise TftpError(ErrorCode.FILE_EXISTS, f"file already exists: {relative}")
        if quota is not None:
            quota.admit(announced)
        self.quota = quota
        self.reserved = 0  # bytes counted in the quota, given back unless committed
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
            if self.quota is not None:
                self.quota.reserve(len(data))  # before the bytes reach the disk
                self.reserved += len(data)
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
            replaced = _regular_size(self.target)
            os.replace(self.temp, self.target)
            self._stored(replaced)
        else:
            try:
                os.link(self.temp, self.target)  # fails if the name appeared meanwhile
            except FileExistsError:
                self._abort()
                raise TftpError(ErrorCode.FILE_EXISTS, "file already exists") from None
            self._stored(0)
            os.unlink(self.temp)
        self.done = True

    def _stored(self, replaced: int) -> None:
        """The file is in place: its bytes stay counted, the old file's go."""
        self.reserved = 0
        if self.quota is not None and replaced:
            self.quota.release(replaced)

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
        if self.quota is not None and self.reserved:
            reserved, self.reserved = self.reserved, 0
            self.quota.release(reserved)


def _regular_size(path: str) -> int:
    """The size of the regular file at *path* (symlinks not followed), else 0."""
    try:
        info = os.lstat(path)
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def _disk_error(exc: OSError, what: str) -> TftpError:
    """ERROR 3 for a full disk or quota (RFC 1350 section 5), else ERROR 0."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TftpError(ErrorCode.DISK_FULL, DISK_FULL, f"{what}: {exc.strerror}")
    return TftpError(ErrorCode.NOT_DEFINED, what, f"{what}: {exc.strerror}")


def sweep_stale_uploads(upload_dir: Path) -> int:
    """Remove temporary upload files a previous run left; returns how many
    (see :func:`scan_upload_dir`)."""
    return scan_upload_dir(upload_dir)[0]


def scan_upload_dir(upload_dir: Path) -> tuple[int, int]:
    """One bounded walk at start: remove temporary upload files a previous
    run left (a crash, or a shutdown that could not wait), and measure what
    the folder holds for the quota. Returns (files removed, bytes held).
    Only regular files named like :class:`Upload`'s, of a process no longer
    running (or of this one: it has not started any upload yet), are
    removed; symlinks are not followed."""
    removed = seen = held = 0
    for top, dirs, files, dir_fd in os.fwalk(upload_dir, follow_symlinks=False):
        seen += len(dirs) + len(files)
        if seen > SWEEP_MAX_ENTRIES:
            log.warning("%s: more than %d entries, stale uploads not all checked and "
                        "upload_quota counts only what was seen", upload_dir, SWEEP_MAX_ENTRIES)
            break
        if os.path.relpath(top, upload_dir).count(os.sep) + 1 >= SWEEP_MAX_DEPTH:
            dirs.clear()
        for name in files:
            if _is_stale_temp(name, dir_fd):
                removed += _remove_stale(top, name, dir_fd)
            else:
                held += _size_at(name, dir_fd)
    return removed, held


def _remove_stale(top: str, name: str, dir_fd: int) -> int:
    try:
        os.unlink(name, dir_fd=dir_fd)
        return 1
    except OSError as exc:
        log.warning("cannot remove stale upload %s: %s", os.path.join(top, name), exc.strerror)
        return 0


def _size_at(name: str, dir_fd: int) -> int:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


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
