"""The command line, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    config.write_text(f"[tftp]\nroot = {tmp_path}\nallow_write = on\nupload_dir = up\n")
    result = pybootd("--check", "-c", str(config))
    assert result.returncode == 1
    assert f"{config}:4: tftp.upload_dir: {tmp_path / 'up'} does not exist" in result.stderr
    (tmp_path / "up").mkdir()
    assert pybootd("--check", "-c", str(config)).returncode == 0
