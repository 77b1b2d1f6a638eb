"""Drop root after the ports are bound."""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
from pathlib import Path

from pybootd.errors import PrivilegeError, PybootdError

log = logging.getLogger("pybootd")


class StateDirError(PybootdError):
    """A folder the daemon writes to cannot be created or used."""


def prepare_dirs(paths: list[Path], user: str) -> None:
    """Create folders the daemon writes to, owned by *user* (while root).

    Raises :class:`StateDirError` naming the folder and what to do.
    """
    for path in paths:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise StateDirError(f"cannot create folder {path}: a file is in the way (expected "
                                "a folder: move the file, or set [daemon] state_dir)") from None
        except OSError as exc:
            raise StateDirError(f"cannot create folder {path}: {exc.strerror} ({_advice(exc)})"
                                ) from None
        if os.geteuid() == 0 and user != "root":
            entry = _user(user)
            try:
                os.chown(path, entry.pw_uid, entry.pw_gid)
            except OSError as exc:
                raise StateDirError(f"cannot give folder {path} to {user}: {exc.strerror} "
                                    "(expected a local, writable file system)") from None
        elif not os.access(path, os.W_OK | os.X_OK):
            raise StateDirError(f"folder {path} is not writable by this user (expected a "
                                "folder pybootd may write: fix its owner, or set "
                                "[daemon] state_dir)")


def _advice(exc: OSError) -> str:
    if isinstance(exc, NotADirectoryError):
        return "a file is in the way on that path: move it, or set [daemon] state_dir"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ("expected a parent folder pybootd may write: create the folder as root, "
                "or set [daemon] state_dir")
    return "expected a folder pybootd may create, see [daemon] state_dir"


def _user(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"no such user {user!r} (expected [daemon] user = an existing "
                             "account, or root)") from None


def drop_privileges(user: str, group: str | None = None) -> None:
    """setgid/setuid to *user* when running as root; no-op otherwise."""
    if os.geteuid() != 0 or user == "root":
        return
    entry = _user(user)
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"no such group {group!r}") from None
    os.setgroups([])
    os.setgid(gid)
    os.setuid(entry.pw_uid)
    if os.geteuid() == 0:
        raise PrivilegeError("still root after setuid")
    log.info("running as %s (uid %d, gid %d)", user, entry.pw_uid, gid)
