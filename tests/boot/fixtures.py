"""Boot files: the Debian 12 installer netboot tree and our serial-console menus.

The tree (package ``debian-installer-12-netboot-amd64``) is never edited: it
is mirrored into a temporary folder with hard links (copies across file
systems) and symbolic links recreated as they are. Its own menus never boot
unattended on a serial console (vesamenu waits for a key, GRUB uses gfxterm),
so the tests serve ours through ``[filters]`` rules; dnsmasq, which has no
filters, gets a second mirror with our menus in place of Debian's.

Every folder is 0755 and every file 0644: the servers drop to ``nobody``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

INSTALLER = Path("/usr/lib/debian-installer/images/12/amd64/text")
IPXE_DIR = Path("/usr/lib/ipxe")
MIRROR_PATH = "debian/dists/bookworm/main/installer-amd64/current/images/netboot"
KERNEL = "debian-installer/amd64/linux"
INITRD = "debian-installer/amd64/initrd.gz"
SHIM = "debian-installer/amd64/bootnetx64.efi"
GRUB = "debian-installer/amd64/grubx64.efi"
PXE_DEFAULT = "pxelinux.cfg/default"
GRUB_CFG = "debian-installer/amd64/grub/grub.cfg"
KERNEL_ARGS = "console=ttyS0,115200n8 priority=low"

PXE_SERIAL_CFG = f"""\
# pxelinux: boot the Debian installer at once, console on the first serial port.
serial 0 115200
console 0
default install
prompt 0
timeout 0
label install
  kernel {KERNEL}
  append initrd={INITRD} {KERNEL_ARGS} ---
"""

GRUB_SERIAL_CFG = f"""\
# GRUB (UEFI): boot the Debian installer at once, console on the first serial port.
set default=0
set timeout=0
menuentry 'Debian installer (serial console)' {{
    linux /{KERNEL} {KERNEL_ARGS} ---
    initrd /{INITRD}
}}
"""

IPXE_SCRIPT = f"""\
#!ipxe
# iPXE (BIOS or UEFI): boot the Debian installer, console on the first serial port.
# Relative names are fetched from where this script came from.
echo pybootd: iPXE script on ${{platform}}
kernel {KERNEL} initrd=initrd.gz {KERNEL_ARGS} ---
initrd {INITRD}
boot
"""


@dataclass(frozen=True)
class BootFiles:
    """Everything the boot tests serve, under one 0755 folder."""

    base: Path
    root: Path  # the Debian tree as shipped: pybootd's root
    dnsmasq_root: Path  # the same with our menus in place (dnsmasq has no filters)
    mirror: Path  # an HTTP document root laid out like a Debian mirror
    pxe_cfg: Path
    grub_cfg: Path
    ipxe_script: Path

    @property
    def mirror_netboot(self) -> Path:
        return self.mirror / MIRROR_PATH


def open_dir(path: Path) -> Path:
    """mkdir -p with 0755 on every folder we create (mktemp makes 0700)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path


def link_file(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dst)
        os.chmod(dst, 0o644)


def mirror_tree(src: Path, dst: Path) -> None:
    """Recreate *src* under *dst*: folders, hard-linked files, same symlinks."""
    open_dir(dst)
    for folder, dirs, files in os.walk(src):
        rel = Path(folder).relative_to(src)
        for name in sorted(dirs + files):
            source, target = Path(folder) / name, dst / rel / name
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            elif source.is_dir():
                open_dir(target)
            else:
                link_file(source, target)
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]


def write_text(path: Path, text: str) -> Path:
    """Replace *path* (a link into the tree, maybe) by a new 0644 file."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o644)
    return path


def dnsmasq_tree(files: BootFiles) -> None:
    """The Debian tree with our menus in place, iPXE and its script beside."""
    mirror_tree(INSTALLER, files.dnsmasq_root)
    root = files.dnsmasq_root
    write_text(root / "debian-installer/amd64/pxelinux.cfg/default", PXE_SERIAL_CFG)
    write_text(root / GRUB_CFG, GRUB_SERIAL_CFG)
    write_text(root / "boot.ipxe", IPXE_SCRIPT)
    for name in ("undionly.kpxe", "ipxe.efi"):
        link_file(IPXE_DIR / name, root / name)
    # dnsmasq names the boot file in option 67 only, and shim looks for grub
    # beside the BOOTP file field, empty then: give it one at the top.
    link_file(INSTALLER / GRUB, root / "grubx64.efi")


def build_boot_files(base: Path) -> BootFiles:
    """Lay out every boot file under *base* (created 0755)."""
    open_dir(base)
    menus = open_dir(base / "menus")
    files = BootFiles(
        base=base, root=base / "root", dnsmasq_root=base / "dnsmasq-root",
        mirror=base / "mirror",
        pxe_cfg=write_text(menus / "pxe-serial.cfg", PXE_SERIAL_CFG),
        grub_cfg=write_text(menus / "grub-serial.cfg", GRUB_SERIAL_CFG),
        ipxe_script=write_text(menus / "boot.ipxe", IPXE_SCRIPT))
    mirror_tree(INSTALLER, files.root)
    dnsmasq_tree(files)
    parent = files.mirror
    for part in MIRROR_PATH.split("/"):
        parent = open_dir(parent / part)
    mirror_tree(INSTALLER, files.mirror_netboot)
    return files


def missing_sources() -> list[str]:
    """Packages whose files are absent, for a skip (or CI failure) message."""
    needs = {"debian-installer-12-netboot-amd64": INSTALLER / KERNEL,
             "ipxe": IPXE_DIR / "undionly.kpxe"}
    return [package for package, path in needs.items() if not path.exists()]
