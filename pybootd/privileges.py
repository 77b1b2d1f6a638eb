"""Drop root after the ports are bound."""

from __future__ import annotations

import grp
import logging
import os
import pwd
from pathlib import Path

from pybootd.errors import PrivilegeError

log = logging.getLogger("pybootd")


def prepare_dirs(paths: list[Path], user: str) -> None:
    """Create folders the daemon writes to, owned by *user* (while root)."""
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and user != "root":
            entry = _user(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)


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
