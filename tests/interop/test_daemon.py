"""The daemon as root: privileges dropped after binding, sd_notify, SIGTERM."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from netlab import REPO, require_root, require_tools, wait_for

pytestmark = [pytest.mark.netns]


SERVING = re.compile(r"TFTP serving .* on 127\.0\.0\.1:(\d+)")


def bound_port(proc: subprocess.Popen[bytes], seen: list[str]) -> int:
    """The port the daemon chose for ``port = 0``, from its log (read up to 50 lines)."""
    assert proc.stdout is not None
    for _ in range(50):
        line = proc.stdout.readline().decode()
        seen.append(line)
        match = SERVING.search(line)
        if match:
            return int(match[1])
    raise AssertionError("no 'TFTP serving' line:\n" + "".join(seen))


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_root_binds_then_runs_as_nobody_and_stops_cleanly() -> None:
    require_root()
    require_tools("curl")
    folder = Path(tempfile.mkdtemp(prefix="pybootd-daemon-"))
    folder.chmod(0o755)
    try:
        root = folder / "root"
        root.mkdir(mode=0o755)
        (root / "file").write_bytes(b"x" * 100_000)
        (root / "file").chmod(0o644)
        config = folder / "pybootd.ini"
        config.write_text(f"[daemon]\nstate_dir = {folder / 'state'}\n"
                          f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {root}\n")
        notify = folder / "notify.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(notify))
        notify.chmod(0o777)  # like systemd's, writable after the drop to nobody
        listener.settimeout(20)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify), PYTHONPATH=str(REPO))
        proc = subprocess.Popen([sys.executable, "-m", "pybootd", "-t", "-c", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        seen: list[str] = []
        try:
            assert listener.recv(100) == b"READY=1"
            port = bound_port(proc, seen)
            assert uid_of(proc.pid) == pwd.getpwnam("nobody").pw_uid
            out = subprocess.run(["curl", "-s", f"tftp://127.0.0.1:{port}/file"],
                                 capture_output=True, timeout=20)
            assert out.stdout == b"x" * 100_000
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert listener.recv(100) == b"STOPPING=1"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            listener.close()
        log = "".join(seen) + (proc.stdout.read().decode() if proc.stdout else "")
        assert "running as nobody" in log
        wait_for(lambda: proc.returncode is not None, 5)
    finally:
        subprocess.run(["rm", "-rf", str(folder)], timeout=20, check=False)
