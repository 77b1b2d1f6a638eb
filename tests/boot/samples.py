"""The sample configurations of ``etc/``, made runnable in a test namespace.

A scenario test boots from the very file a user copies, changed only where a
site differs: the pool (192.0.2.100 here), the state folder, where
``/etc/pybootd/`` menus and the Debian tree are, and the mirror's URL. The
router and DNS of the sample are dropped (the test LAN has none).
"""

from __future__ import annotations

from pathlib import Path

from boot.fixtures import ETC, INSTALLER, BootFiles
from boot.servers import POOL_START
from pybootd.ini import parse_ini

SAMPLES = ("uefi-bios.ini", "debian-mirror.ini", "proxy.ini", "ipxe-chainload.ini",
           "access-mac.ini", "uefi-http.ini", "bios-ipxe-http.ini")
HTTP_SAMPLES = ("uefi-http.ini", "bios-ipxe-http.ini")  # [httpd] on
PUBLIC_MIRROR = "http://debian-mirror.example/debian/"
SITE_KEYS = ("interface", "netmask", "gateway", "dns", "address")

Config = dict[str, dict[str, str]]


def read_sample(name: str) -> Config:
    path = ETC / name
    sections = parse_ini(path.read_text(encoding="utf-8"), str(path))
    return {section: {e.key: e.value for e in body.entries}
            for section, body in sections.items()}


def localize(value: str, files: BootFiles, mirror_url: str | None) -> str:
    value = value.replace("/etc/pybootd/", f"{files.menus}/")
    value = value.replace(str(INSTALLER), str(files.root))
    if mirror_url is not None:
        value = value.replace(PUBLIC_MIRROR, mirror_url)
    return value


def sample_config(name: str, files: BootFiles, state_dir: Path,
                  mirror_url: str | None = None) -> Config:
    """``etc/NAME`` for a test: same boot files, filters and modes; our site."""
    config = {section: {key: localize(value, files, mirror_url) for key, value in body.items()}
              for section, body in read_sample(name).items()}
    config["logger"] = {"type": "stderr", "level": "info"}
    config.setdefault("daemon", {})["state_dir"] = str(state_dir)
    bootp = config.setdefault("bootp", {})
    for key in SITE_KEYS:
        bootp.pop(key, None)
    if "pool_start" in bootp:
        bootp["pool_start"] = POOL_START
    return config
