"""The command line, run as a user would."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pybootd.cli import os_error_line

REPO = Path(__file__).resolve().parents[2]


def pybootd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pybootd", *args], capture_output=True,
                          text=True, timeout=30, cwd=REPO)


def test_version() -> None:
    result = pybootd("--version")
    assert result.returncode == 0 and result.stdout.startswith("pybootd ")


def test_without_config_names_the_expected_file() -> None:
    result = pybootd()
    assert result.returncode != 0
    assert "-c" in result.stderr and "pybootd.ini" in result.stderr


def test_p_and_t_together_is_an_error() -> None:
    result = pybootd("-p", "-t", "-c", "x.ini")
    assert result.returncode != 0 and "not allowed with" in result.stderr


def test_check_sample_config() -> None:
    result = pybootd("--check", "-c", "pybootd.ini.sample")
    assert result.returncode == 0, result.stderr
    assert "TFTP:" in result.stdout and "DHCP:" in result.stdout


def test_check_bad_config_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ini"
    bad.write_text("[tftp]\nwindowsize = lots\n")
    result = pybootd("--check", "-c", str(bad))
    assert result.returncode == 1
    assert f"{bad}:2: tftp.windowsize: 'lots' is not a whole number" in result.stderr


def test_missing_config_file() -> None:
    result = pybootd("-c", "/nonexistent/pybootd.ini")
    assert result.returncode == 1
    assert "/nonexistent/pybootd.ini: configuration file not found" in result.stderr


def test_check_missing_root_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "t.ini"
    config.write_text("[tftp]\nport = 6969\nroot = nowhere\n")
    result = pybootd("--check", "-c", str(config))
    assert result.returncode == 1 and "OK" not in result.stdout
    assert f"{config}:3: tftp.root: {tmp_path / 'nowhere'} does not exist" in result.stderr
    # The daemon refuses to start the same way (before it binds a port).
    result = pybootd("-t", "-c", str(config))
    assert result.returncode == 1
    assert f"tftp.root: {tmp_path / 'nowhere'} does not exist" in result.stderr


def test_check_missing_upload_dir_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "t.ini"
    # user = root: who may write it is test_check's business
    config.write_text(f"[tftp]\nroot = {tmp_path}\nallow_write = on\nupload_dir = up\n"
                      "[daemon]\nuser = root\n")
    result = pybootd("--check", "-c", str(config))
    assert result.returncode == 1
    assert f"{config}:4: tftp.upload_dir: {tmp_path / 'up'} does not exist" in result.stderr
    (tmp_path / "up").mkdir()
    assert pybootd("--check", "-c", str(config)).returncode == 0


def test_config_that_is_a_folder_is_one_line(tmp_path: Path) -> None:
    result = pybootd("-c", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == (f"pybootd: {tmp_path}: cannot read the configuration (Is a "
                             "directory): expected -c FILE, a readable INI file\n")


def test_unreadable_config_is_one_line() -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "pybootd.ini"
        config.write_text("[tftp]\nport = 6969\n")
        config.chmod(0o000)
        # root reads any file: without the capabilities that allow it, it cannot
        argv = [sys.executable, "-m", "pybootd", "--check", "-c", str(config)]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("needs setpriv (util-linux) to read as root without CAP_DAC_*")
            argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.returncode == 1
    assert result.stderr == (f"pybootd: {config}: cannot read the configuration (Permission "
                             "denied): expected -c FILE, a readable INI file\n")


def test_start_up_failure_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A log file in a folder that does not exist: the path, what failed, exit 1."""
    log = tmp_path / "missing" / "pybootd.log"
    config = tmp_path / "t.ini"
    config.write_text(f"[logger]\ntype = file\nfile = {log}\n"
                      f"[tftp]\naddress = 127.0.0.1\nport = 6969\nroot = {tmp_path}\n")
    result = pybootd("-t", "-c", str(config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("pybootd: ") and str(log.parent) in result.stderr


def test_os_error_line_names_path_reason_and_what_to_do() -> None:
    error = PermissionError(errno.EACCES, "Permission denied", "/var/lib/pybootd")
    assert os_error_line(error) == ("/var/lib/pybootd: cannot start (Permission denied): give "
                                    "pybootd's user access to it, or change the path in the "
                                    "configuration")
    assert os_error_line(OSError(errno.EADDRINUSE, "Address already in use")).startswith(
        "cannot start (Address already in use): another program")


def test_readme_inline_comment_line_is_accepted(tmp_path: Path) -> None:
    config = tmp_path / "t.ini"
    config.write_text("[bootp]\npool_start = 127.0.0.100\naddress = 127.0.0.1\nport = 6767\n"
                      "allow_simple_dhcp = enable   ; the installer asks again as a plain client\n"
                      "lease_time = 1h30m ; durations\n")
    result = pybootd("--check", "-p", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "lease 5400s" in result.stdout
