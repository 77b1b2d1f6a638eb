"""Boot files: the Debian 12 installer netboot tree and our serial-console menus.

The tree (package ``debian-installer-12-netboot-amd64``) is never edited: it
is mirrored into a temporary folder with hard links (copies across file
systems) and symbolic links recreated as they are. Its own menus never boot
unattended on a serial console (vesamenu waits for a key, GRUB uses gfxterm),
so the tests serve ours (``etc/pxe-serial.cfg``, ``etc/grub-serial.cfg``,
``etc/boot.ipxe``) through ``[filters]`` rules; dnsmasq, which has no filters,
gets a second mirror with our menus in place of Debian's.

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
# Our menus and iPXE script are the samples users copy to /etc/pybootd.
ETC = Path(__file__).resolve().parents[2] / "etc"
MENUS = ("pxe-serial.cfg", "grub-serial.cfg", "boot.ipxe")
# iPXE builds of the Debian package ipxe: BIOS, UEFI PXE, UEFI HTTP Boot.
IPXE_FILES = ("undionly.kpxe", "ipxe.efi", "snponly.efi")
SNPONLY = "snponly.efi"


@dataclass(frozen=True)
class BootFiles:
    """Everything the boot tests serve, under one 0755 folder."""

    base: Path
    menus: Path  # our menus and iPXE script (copies of etc/)
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


def put_file(source: Path, path: Path) -> Path:
    """Replace *path* (a link into the tree, maybe) by a 0644 copy of *source*."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    shutil.copyfile(source, path)
    os.chmod(path, 0o644)
    return path


def dnsmasq_tree(files: BootFiles) -> None:
    """The Debian tree with our menus in place, iPXE and its script beside
    (also the document root of the reference web server: snponly.efi is the
    iPXE that UEFI HTTP Boot loads)."""
    mirror_tree(INSTALLER, files.dnsmasq_root)
    root = files.dnsmasq_root
    put_file(files.pxe_cfg, root / "debian-installer/amd64/pxelinux.cfg/default")
    put_file(files.grub_cfg, root / GRUB_CFG)
    put_file(files.ipxe_script, root / "boot.ipxe")
    for name in IPXE_FILES:
        link_file(IPXE_DIR / name, root / name)
    # dnsmasq names the boot file in option 67 only, and shim looks for grub
    # beside the BOOTP file field, empty then: give it one at the top.
    link_file(INSTALLER / GRUB, root / "grubx64.efi")


def build_boot_files(base: Path) -> BootFiles:
    """Lay out every boot file under *base* (created 0755)."""
    open_dir(base)
    menus = open_dir(base / "menus")
    for name in MENUS:
        put_file(ETC / name, menus / name)
    files = BootFiles(
        base=base, menus=menus, root=base / "root", dnsmasq_root=base / "dnsmasq-root",
        mirror=base / "mirror", pxe_cfg=menus / "pxe-serial.cfg",
        grub_cfg=menus / "grub-serial.cfg", ipxe_script=menus / "boot.ipxe")
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
             "ipxe": IPXE_DIR / SNPONLY}
    return [package for package, path in needs.items() if not path.exists()]
