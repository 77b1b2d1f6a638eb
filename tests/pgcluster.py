"""A throw-away PostgreSQL cluster for tests and benchmarks: a real server, never a mock.

``initdb`` into a temporary folder, ``pg_ctl start`` listening on a unix
socket in that folder only (no TCP port), run as the ``postgres`` user when
we are root (PostgreSQL refuses to run as root); stopped and removed
afterwards, whatever happened.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

_TIMEOUT = 60.0


def pg_bin() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` live (Debian keeps them off PATH)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[3]) if Path(p).parts[3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if pg_bin() is None:
        return "PostgreSQL server not installed (Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no postgres user to run the server as (Debian package postgresql)"
    return None


class PgCluster:
    """One running cluster; :attr:`url` reaches its ``pybootd`` database."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.socket_dir = folder
        self.bin = pg_bin()
        assert self.bin is not None, missing()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        self.user = "postgres" if self._as else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@/pybootd?host={self.socket_dir}"

    def _run(self, *argv: str) -> None:
        assert self.bin is not None
        done = subprocess.run([*self._as, str(self.bin / argv[0]), *argv[1:]],
                              capture_output=True, text=True, timeout=_TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")

    def start(self) -> None:
        # No TCP (listen_addresses ''), the socket in our folder, fsync off:
        # a test cluster, thrown away afterwards.
        options = (f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-t", "30",
                  "-l", str(self.folder / "server.log"), "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def createdb(self, name: str = "pybootd") -> None:
        self._run("createdb", "-h", str(self.socket_dir), "-U", self.user, name)

    def psql(self, sql: str, db: str = "pybootd") -> str:
        assert self.bin is not None
        done = subprocess.run(
            [*self._as, str(self.bin / "psql"), "-h", str(self.socket_dir), "-U", self.user,
             "-d", db, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, timeout=_TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout


@contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """A started cluster with an empty ``pybootd`` database; gone afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="pybootd-pg-"))
    os.chmod(folder, 0o755)
    cluster = PgCluster(folder)
    started = False
    try:
        cluster.init()
        cluster.start()
        started = True
        cluster.createdb()
        yield cluster
    finally:
        if started:
            with suppress(RuntimeError, subprocess.TimeoutExpired):
                cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
