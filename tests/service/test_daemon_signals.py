"""The daemon as a service: signals, one instance per port and lease file, start-up failures.

Each test runs ``python3 -m pybootd -c FILE`` on 127.0.0.1 (DHCP and TFTP on
ports 0: the daemon binds ports of its own and logs them, no port is guessed),
with a state_dir and a log file of its own, and looks at what an operator
sees: log lines, stderr, exit statuses, files served.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from dhcplab import MAC_TEXT, datagram
from tftpclient import Client, TftpFailure

from pybootd.dhcp.options import DhcpOption, MessageType
from pybootd.dhcp.pool import Lease, LeaseState
from pybootd.server.leasestore import LeaseStore
from pybootd.tftp.packets import Error, encode_ack

REPO = Path(__file__).resolve().parents[2]
START = 20.0  # seconds a daemon gets to say "ready" or to fail
PAGE = 4096


BOUND = re.compile(r"DHCP server on 127\.0\.0\.1:(\d+) .*\n(?:.*\n)*?.*TFTP serving .* on "
                   r"127\.0\.0\.1:(\d+)")


@dataclass
class Setup:
    """A daemon's files; ports 0 in its config let it bind free ones (no race),
    which :func:`ready` reads from its log."""

    folder: Path
    state: Path
    dhcp_port: int = 0  # what the config says
    tftp_port: int = 0
    dhcp_at: int = 0  # what the daemon bound
    tftp_at: int = 0

    @property
    def log(self) -> Path:
        return self.folder / "pybootd.log"

    def config(self, *, bootp: str = "", tftp: str = "", filters: str = "", tail: str = "",
               grace: float = 5, name: str = "pybootd.ini", logger: str = "") -> Path:
        logger = logger or f"type = file\nfile = {self.log}\n"
        path = self.folder / name
        path.write_text(
            f"[logger]\n{logger}level = info\n"
            f"[daemon]\nstate_dir = {self.state}\nuser = root\nshutdown_grace = {grace}\n"
            f"[bootp]\naddress = 127.0.0.1\nport = {self.dhcp_port}\npxe_port = 0\n"
            f"pool_start = 127.0.0.100\npool_count = 10\nallow_simple_dhcp = on\n{bootp}"
            f"[tftp]\naddress = 127.0.0.1\nport = {self.tftp_port}\n"
            f"root = {self.folder / 'root'}\n{tftp}"
            f"[filters]\nalias.txt = a.txt\n{filters}{tail}")
        return path


class Daemon(subprocess.Popen[bytes]):
    """``python3 -m pybootd``, its stderr in a file of its own (read after it exits)."""

    def __init__(self, argv: list[str], stderr_path: Path,
                 preexec_fn: Callable[[], object] | None) -> None:
        self.stderr_path = stderr_path
        with stderr_path.open("wb") as err:
            super().__init__(argv, stdout=subprocess.DEVNULL, stderr=err,
                             env=dict(os.environ, PYTHONPATH=str(REPO)),
                             start_new_session=True, preexec_fn=preexec_fn)


class Daemons:
    """The daemons a test starts; each is killed (by its pid) at the end."""

    def __init__(self) -> None:
        self.procs: list[Daemon] = []

    def start(self, config: Path, wrap: list[str] | None = None,
              preexec_fn: Callable[[], object] | None = None) -> Daemon:
        err = config.parent / f"{config.name}.{len(self.procs)}.stderr"
        argv = [*(wrap or []), sys.executable, "-m", "pybootd", "-c", str(config)]
        proc = Daemon(argv, err, preexec_fn)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    started = Daemons()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def setup() -> Iterator[Setup]:
    # mkdtemp + 0755 (not tmp_path, 0700): one test runs the daemon as nobody.
    folder = Path(tempfile.mkdtemp(prefix="pybootd-signals-"))
    folder.chmod(0o755)
    (folder / "root").mkdir()
    (folder / "root" / "a.txt").write_bytes(b"file a\n")
    (folder / "root" / "b.txt").write_bytes(b"file b\n")
    (folder / "root" / "big.bin").write_bytes(os.urandom(200_000))
    try:
        yield Setup(folder, folder / "state")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stderr_of(proc: Daemon) -> str:
    return proc.stderr_path.read_text()


def wait_log(path: Path, text: str, proc: Daemon | None = None,
             timeout: float = START) -> str:
    """The log once it holds *text* (fails at once if the daemon exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"pybootd exited {proc.returncode} before logging {text!r}:\n"
                        f"{content}\n{stderr_of(proc)}")
        time.sleep(0.05)
    pytest.fail(f"no {text!r} in {path} within {timeout}s:\n{content}")


def ready(setup: Setup, proc: Daemon) -> str:
    """The log once the daemon is ready; the ports it bound are then known."""
    log = wait_log(setup.log, "pybootd ready", proc)
    bound = BOUND.findall(log)
    if bound:
        setup.dhcp_at, setup.tftp_at = (int(port) for port in bound[-1])
    return log


def fetch(setup: Setup, name: str) -> bytes:
    with Client("127.0.0.1", setup.tftp_at, timeout=3) as client:
        return client.get(name).data


def send_request(setup: Setup, ip: str = "127.0.0.100") -> None:
    """A SELECTING REQUEST from MAC_TEXT: the daemon stores a lease, then ACKs."""
    data = datagram(MessageType.REQUEST, options={
        DhcpOption.SERVER_ID: IPv4Address("127.0.0.1").packed,
        DhcpOption.REQUESTED_IP: IPv4Address(ip).packed})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, ("127.0.0.1", setup.dhcp_at))


def one_line_exit(proc: Daemon) -> str:
    """The daemon fails at start: exit status 1, one line on stderr, no traceback."""
    assert proc.wait(START) == 1
    err = stderr_of(proc)
    assert err.count("\n") == 1 and err.startswith("pybootd: "), err
    assert "Traceback" not in err
    return err.rstrip("\n")


# --- SIGHUP -------------------------------------------------------------------
def test_sighup_applies_filters_and_mac_and_names_what_needs_a_restart(
        setup: Setup, daemons: Daemons) -> None:
    mac = MAC_TEXT.replace(":", "-")
    config = setup.config(bootp="access = mac\n", tail="[mac]\n02-00-00-00-00-99 = enable\n")
    proc = daemons.start(config)
    ready(setup, proc)
    with pytest.raises(TftpFailure) as info:
        fetch(setup, "other.txt")
    assert info.value.code == 1
    send_request(setup)
    wait_log(setup.log, f"{MAC_TEXT}: REQUEST denied by access control: {MAC_TEXT} is not in "
             "[mac] (access = mac)", proc)
    setup.config(bootp="access = mac\n", tftp="blocksize = 1024\n",
                 filters="other.txt = b.txt\n", tail=f"[mac]\n{mac} = enable\n")
    proc.send_signal(signal.SIGHUP)
    log = wait_log(setup.log, "reloaded: applied [filters], [mac]", proc)
    assert "tftp.blocksize (1468 -> 1024) needs a restart; the running value is kept" in log
    assert fetch(setup, "other.txt") == b"file b\n"
    assert fetch(setup, "alias.txt") == b"file a\n"
    send_request(setup)
    wait_log(setup.log, f"{MAC_TEXT}: REQUEST -> ACK 127.0.0.100", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(START) == 0


def test_sighup_with_a_broken_file_keeps_the_old_configuration(
        setup: Setup, daemons: Daemons) -> None:
    config = setup.config()
    proc = daemons.start(config)
    ready(setup, proc)
    text = config.read_text().replace("[tftp]\n", "[tftp]\nblocksize = huge\n")
    config.write_text(text)
    line = text.splitlines().index("blocksize = huge") + 1
    proc.send_signal(signal.SIGHUP)
    log = wait_log(setup.log, "configuration not reloaded", proc)
    assert (f"SIGHUP: configuration not reloaded, still running with the previous one: "
            f"{config}:{line}: tftp.blocksize: ") in log
    assert fetch(setup, "alias.txt") == b"file a\n"
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(START) == 0


# --- SIGUSR1, SIGUSR2 ---------------------------------------------------------
def test_sigusr1_logs_leases_by_state_and_service_totals(setup: Setup, daemons: Daemons) -> None:
    proc = daemons.start(setup.config())
    ready(setup, proc)
    send_request(setup)
    wait_log(setup.log, "REQUEST -> ACK 127.0.0.100", proc)
    fetch(setup, "a.txt")
    proc.send_signal(signal.SIGUSR1)
    wait_log(setup.log, "SIGUSR1: statistics of dhcp, tftp", proc)
    log = wait_log(setup.log, "pybootd: tftp: ", proc)  # TftpService.summary()
    assert "no statistics" not in log
    dhcp = next(line for line in log.splitlines() if "pybootd: dhcp: leases:" in line)
    assert "leases: offered 0, bound 1, free 0, declined 0 (pool of 10)" in dhcp
    assert "received=1" in dhcp and "ack=1" in dhcp
    assert proc.poll() is None  # before: SIGUSR1 killed it


def test_sigusr2_reopens_a_moved_log_file(setup: Setup, daemons: Daemons) -> None:
    proc = daemons.start(setup.config())
    ready(setup, proc)
    rotated = setup.folder / "pybootd.log.1"
    setup.log.rename(rotated)
    proc.send_signal(signal.SIGUSR2)
    wait_log(setup.log, f"SIGUSR2: log file reopened: {setup.log}", proc)
    assert fetch(setup, "a.txt") == b"file a\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(START) == 0
    assert "DHCP stopped" in setup.log.read_text()
    assert "SIGUSR2" not in rotated.read_text() and "DHCP stopped" not in rotated.read_text()


# --- SIGTERM twice ------------------------------------------------------------
def test_second_sigterm_ends_the_grace_period_at_once(setup: Setup, daemons: Daemons) -> None:
    proc = daemons.start(setup.config(grace=60))
    ready(setup, proc)
    with Client("127.0.0.1", setup.tftp_at, timeout=1) as client:
        # Established (the OACK is acknowledged), then never acknowledged again: the
        # transfer retries for about 30 s, well within the grace period.
        client.request("big.bin", options=(("windowsize", "4"),))
        _oack, tid = client.receive()
        client.sock.sendto(encode_ack(0), tid)
        client.receive()
        proc.send_signal(signal.SIGTERM)
        wait_log(setup.log, "stopping: no new requests; running transfers get 60s", proc)
        time.sleep(1.5)
        assert proc.poll() is None  # the grace period runs
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - stopped < 5
        errors = []
        for _ in range(50):
            try:
                packet, _addr = client.receive()
            except TimeoutError:
                break
            if isinstance(packet, Error):
                errors.append(packet.message)
                break
    assert errors == ["server shutting down"]
    assert "stopping at once (second signal)" in setup.log.read_text()


def test_ctrl_c_in_the_middle_of_an_http_download(setup: Setup, daemons: Daemons) -> None:
    """The grace period, then the download is cut with a log line; exit 0, no traceback."""
    (setup.folder / "root" / "large.bin").write_bytes(os.urandom(20 * 1024 * 1024))
    proc = daemons.start(setup.config(grace=1, tail="[httpd]\nport = 0\n"))
    port = int(re.findall(r"HTTP serving the TFTP root on 127\.0\.0\.1:(\d+)",
                          ready(setup, proc))[0])
    curl = subprocess.Popen(["curl", "-sS", "--limit-rate", "1M", "-o", "/dev/null",
                             f"http://127.0.0.1:{port}/large.bin"], stderr=subprocess.PIPE)
    try:
        time.sleep(1)  # the download is under way
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        _, err = curl.communicate(timeout=15)
    finally:
        if curl.poll() is None:
            curl.kill()
    assert curl.returncode == 18, err  # curl: the transfer was cut short
    log = setup.log.read_text()
    assert "waiting up to 1s for 1 HTTP response(s) to finish" in log
    assert "HTTP GET /large.bin broken (server shutting down)" in log
    assert "Traceback" not in log + stderr_of(proc)


# --- one instance per port and per lease file ---------------------------------
def test_second_instance_with_the_same_config_fails_and_the_first_serves(
        setup: Setup, daemons: Daemons) -> None:
    config = setup.config()
    first = daemons.start(config)
    ready(setup, first)
    second = daemons.start(config)
    assert one_line_exit(second) == (
        f"pybootd: lease file {setup.state / 'leases.sqlite'} is in use by another pybootd "
        f"(pid {first.pid}) (expected one pybootd per lease file: stop the other one, or give "
        "this one its own [daemon] state_dir)")
    assert fetch(setup, "a.txt") == b"file a\n"
    send_request(setup)
    wait_log(setup.log, "REQUEST -> ACK 127.0.0.100", first)
    assert first.poll() is None


def test_same_lease_file_other_ports_fails_on_the_lock(setup: Setup, daemons: Daemons) -> None:
    first = daemons.start(setup.config())
    ready(setup, first)
    other = Setup(setup.folder, setup.state)
    second = daemons.start(other.config(name="other.ini", logger="type = stderr\n"))
    assert "is in use by another pybootd (pid" in one_line_exit(second)
    assert first.poll() is None


def test_same_dhcp_port_other_lease_file_fails_on_the_bind(setup: Setup,
                                                           daemons: Daemons) -> None:
    first = daemons.start(setup.config())
    ready(setup, first)
    other = Setup(setup.folder, setup.folder / "state2", dhcp_port=setup.dhcp_at)
    second = daemons.start(other.config(name="other.ini", logger="type = stderr\n"))
    assert one_line_exit(second) == (
        f"pybootd: cannot listen on 127.0.0.1:{setup.dhcp_at}/udp for DHCP: Address already "
        "in use (another pybootd or DHCP server (dnsmasq, isc-dhcp-server, kea) uses it: stop "
        "it, or set [bootp] port)")
    assert first.poll() is None


# --- broken lease files -------------------------------------------------------
def _lease_file(state: Path, rows: int = 300) -> Path:
    """A real lease file of several pages, as a stopped daemon leaves it."""
    path = state / "leases.sqlite"
    store = LeaseStore(path)
    store.write([Lease(IPv4Address("198.51.100.0") + i % 250,
                       f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", LeaseState.BOUND, 2e9 + i)
                 for i in range(rows)], 1.0)
    store.close()
    return path


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _not_sqlite(path: Path) -> None:
    path.write_text("lease 198.51.100.10 { hardware ethernet 52:54:00:12:34:56; }\n")


def _bad_page(path: Path) -> None:
    with path.open("r+b") as file:
        file.seek(2 * PAGE)
        file.write(b"\x5a" * PAGE)


@pytest.mark.parametrize(("damage", "what"), [
    (_empty, "is empty (0 bytes): every lease it held is lost"),
    (_not_sqlite, "is not an SQLite database"),
    (_bad_page, "is damaged (quick_check: "),
])
def test_broken_lease_file_is_refused_at_start(setup: Setup, daemons: Daemons,
                                               damage: Callable[[Path], None],
                                               what: str) -> None:
    path = _lease_file(setup.state)
    damage(path)
    proc = daemons.start(setup.config(logger="type = stderr\n"))
    err = one_line_exit(proc)
    assert err.startswith(f"pybootd: lease file {path} {what}")
    assert err.endswith("move it aside to start with no leases (machines may then be offered "
                        "addresses that others still hold)")


def test_lease_file_damaged_while_running_stops_the_daemon(setup: Setup,
                                                           daemons: Daemons) -> None:
    path = _lease_file(setup.state)
    proc = daemons.start(setup.config())
    ready(setup, proc)
    with path.open("r+b") as file:
        for offset in range(PAGE, path.stat().st_size, PAGE):
            file.seek(offset)
            file.write(os.urandom(PAGE))
    with open(f"{path}-shm", "r+b") as shm:
        shm.write(bytes(136))  # the WAL index header: the daemon reads the file again
    send_request(setup)
    assert proc.wait(START) == 1  # systemd's Restart=on-failure restarts it
    log = setup.log.read_text()
    assert (f"lease file {path} cannot be written (database disk image is malformed); no "
            "lease can be acknowledged: stopping (exit status 1)") in log
    assert "not written (database disk image is malformed): 1 replies withheld" in log


# --- start-up failures are one line -------------------------------------------
def test_state_dir_blocked_by_a_file(setup: Setup, daemons: Daemons) -> None:
    setup.state.write_text("")
    proc = daemons.start(setup.config())
    assert one_line_exit(proc) == (
        f"pybootd: cannot create folder {setup.state}: a file is in the way (expected a "
        "folder: move the file, or set [daemon] state_dir)")


def test_state_dir_under_a_file(setup: Setup, daemons: Daemons) -> None:
    (setup.folder / "blocker").write_text("")
    setup.state = setup.folder / "blocker" / "state"
    proc = daemons.start(setup.config())
    assert one_line_exit(proc) == (
        f"pybootd: cannot create folder {setup.state}: Not a directory (a file is in the way "
        "on that path: move it, or set [daemon] state_dir)")


def test_state_dir_in_a_read_only_folder(setup: Setup, daemons: Daemons) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare, for a read-only bind mount of its own")
    locked = setup.folder / "locked"
    locked.mkdir(mode=0o755)
    setup.state = locked / "state"
    config = setup.config(logger="type = stderr\n")
    # A mount namespace of the daemon's own: the read-only mount vanishes with it.
    proc = daemons.start(config, wrap=["unshare", "-m", "--propagation", "private", "sh", "-c",
                                       f"mount --bind -o ro {locked} {locked} && exec \"$@\"",
                                       "sh"])
    assert one_line_exit(proc) == (
        f"pybootd: cannot create folder {setup.state}: Read-only file system (expected a "
        "parent folder pybootd may write: create the folder as root, or set [daemon] "
        "state_dir)")


def test_log_folder_missing(setup: Setup, daemons: Daemons) -> None:
    log = setup.folder / "no-such-folder" / "pybootd.log"
    proc = daemons.start(setup.config(logger=f"type = file\nfile = {log}\n"))
    assert one_line_exit(proc) == (
        f"pybootd: cannot open log file {log}: No such file or directory (create the folder "
        f"{log.parent} first)")


# --- file descriptors ---------------------------------------------------------
def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))


def test_open_files_soft_limit_is_raised_to_the_hard_limit(setup: Setup,
                                                           daemons: Daemons) -> None:
    proc = daemons.start(setup.config(), preexec_fn=_low_limit)
    log = ready(setup, proc)
    limits = Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
    assert next(line for line in limits if line.startswith("Max open files")).split()[3:5] == [
        "2048", "2048"]
    assert ("open files limit is 2048 (hard limit 2048): about 1024 transfers at once at most "
            "(expected LimitNOFILE=65536 in the unit, or ulimit -n)") in log


def test_the_unit_file_raises_the_limit_and_reloads_with_sighup() -> None:
    unit = (REPO / "etc" / "pybootd.service").read_text().splitlines()
    assert "LimitNOFILE=65536" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "Documentation=https://pypi.org/project/pybootd/" in unit


def test_reload_applies_live_sections_and_names_the_rest(tmp_path: Path) -> None:
    """On values: which changes SIGHUP applies and which it reports as needing a restart."""
    from pybootd.config import parse_config
    from pybootd.daemon import split_reload

    base = ("[logger]\nlevel = info\n[bootp]\npool_start = 198.51.100.100\nport = 6767\n"
            "[tftp]\nport = 6969\nroot = {root}\n[filters]\na = b\n")
    (tmp_path / "r1").mkdir()
    (tmp_path / "r2").mkdir()
    old = parse_config(base.format(root=tmp_path / "r1"), tmp_path / "pybootd.ini")
    new = parse_config(
        base.format(root=tmp_path / "r2").replace("level = info", "level = debug")
        .replace("port = 6767", "port = 6768\naccess = mac") + "c = d\n[mac]\n"
        "52-54-00-12-34-56 = on\n[static_dhcp]\n52-54-00-12-34-56 = 198.51.100.9\n",
        tmp_path / "pybootd.ini")
    running, applied, restart = split_reload(old, new)
    assert applied == ["[filters]", "[mac]", "[static_dhcp]", "logger.level", "bootp.access"]
    assert restart == [f"tftp.root ({tmp_path / 'r1'} -> {tmp_path / 'r2'})",
                       "bootp.port (6767 -> 6768)"]
    assert running.bootp is not None and old.bootp is not None
    assert (running.bootp.port, running.bootp.access) == (6767, "mac")
    assert running.tftp == old.tftp and running.filters == new.filters
    assert running.logger.level == "debug"
    assert split_reload(old, old)[1:] == ([], [])


def test_reload_never_logs_a_lease_store_password(tmp_path: Path) -> None:
    from pybootd.config import parse_config
    from pybootd.daemon import split_reload

    base = "[bootp]\npool_start = 198.51.100.100\nlease_store = postgresql://u:{pw}@db/pybootd\n"
    old = parse_config(base.format(pw="old-secret"), tmp_path / "pybootd.ini")
    new = parse_config(base.format(pw="new-secret"), tmp_path / "pybootd.ini")
    assert split_reload(old, new)[2] == [
        "bootp.lease_store (postgresql://u:***@db/pybootd -> postgresql://u:***@db/pybootd)"]
