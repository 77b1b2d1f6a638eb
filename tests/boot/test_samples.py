"""The files of ``etc/`` hold together (no VM, no root needed).

The boot tests run the sample configurations themselves; these checks catch
a broken sample in a second, where a boot takes a minute.
"""

from __future__ import annotations

import configparser

import pytest

from boot.fixtures import ETC, INSTALLER, MENUS
from boot.samples import HTTP_SAMPLES, SAMPLES, read_sample
from pybootd.config import load_config


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_loads(name: str) -> None:
    config = load_config(ETC / name)
    assert config.bootp is not None and config.bootfiles


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_local_files_exist(name: str) -> None:
    """Absolute filter targets are files we ship (etc/) or packages install."""
    for target in read_sample(name).get("filters", {}).values():
        if target.startswith("/etc/pybootd/"):
            assert target.removeprefix("/etc/pybootd/") in MENUS, target
            assert (ETC / target.removeprefix("/etc/pybootd/")).is_file(), target
        else:
            assert target.startswith("/usr/lib/ipxe/"), target


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_boot_files_in_tree(name: str) -> None:
    """Every boot file a sample names is in the Debian tree or filtered in."""
    if not INSTALLER.is_dir():
        pytest.skip("debian-installer-12-netboot-amd64 not installed")
    sample = read_sample(name)
    filtered = set(sample.get("filters", {}))
    for boot_file in sample["bootfile"].values():
        assert boot_file in filtered or (INSTALLER / boot_file).is_file(), boot_file


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ETC / "pybootd.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].split()[1:] == ["-c", "/etc/pybootd/pybootd.ini"]
    assert "/var/lib/pybootd" in service["ReadWritePaths"]


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_sets_its_root(name: str) -> None:
    """A copied sample never falls back to the default root (/srv/tftp)."""
    config = load_config(ETC / name)
    assert config.tftp.root_set
    assert config.tftp.root_path == INSTALLER or config.tftp.root_url is not None


@pytest.mark.parametrize("name", HTTP_SAMPLES)
def test_http_sample_serves_http(name: str) -> None:
    """The HTTP samples turn [httpd] on and give iPXE a relative script name
    (which becomes a URL of pybootd's web server), never TFTP-only."""
    config = load_config(ETC / name)
    assert config.httpd is not None and config.httpd.port == 80
    assert config.ipxe_bootfile == "boot.ipxe"
    assert "http" not in read_sample(name)["bootfile"]["ipxe"]
