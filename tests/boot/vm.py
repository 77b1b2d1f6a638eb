"""QEMU virtual machines that boot from the network, with a serial console.

Four firmwares, as a user meets them:

* ``bios``: SeaBIOS with the iPXE ROM of an e1000 NIC (``pxe-e1000.rom``);
* ``uefi``: OVMF with a virtio-net NIC and no option ROM, so OVMF's own
  EDK2 PXE client boots (``romfile=`` empty: see the field notes);
* ``uefi-ipxe``: OVMF with the iPXE EFI ROM of an e1000 NIC (``efi-e1000.rom``);
* ``uefi-http``: OVMF's own UEFI HTTP Boot (virtio-net, no option ROM), its
  PXE boot options turned off through fw_cfg, so that HTTP Boot (vendor
  class ``HTTPClient:Arch:00016``) is the first network boot it tries.

KVM is used only when it really boots a Linux guest on this machine (nested
virtualisation may hang it after "Probing EDD"): :func:`accelerator` probes
once per process and falls back to TCG. ``PYBOOTD_BOOT_ACCEL=kvm|tcg``
skips the probe.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab import NetLab

QEMU = "qemu-system-x86_64"
IPXE_ROMS = Path("/usr/lib/ipxe/qemu")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
INSTALLER = Path("/usr/lib/debian-installer/images/12/amd64/text")
KERNEL_MARK = "Linux version"
FIRMWARES = ("bios", "uefi", "uefi-ipxe", "uefi-http")
PROBE_SECONDS = 20.0
# Under TCG a BIOS boot reaches the kernel in ~30 s and a UEFI one in ~20 s
# on an idle machine; these limits leave room for a loaded CI runner.
BOOT_LIMIT = {"kvm": 90.0, "tcg": 240.0}
# OVMF (Debian 12) reads these at start: "n" removes its PXE boot options, so
# HTTP Boot is tried first rather than after a failed PXE boot.
NO_PXE = ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
          "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]


def required_files(firmware: str) -> list[Path]:
    """Firmware files a VM of this kind needs (for require_tools)."""
    files = {"bios": [IPXE_ROMS / "pxe-e1000.rom"],
             "uefi": [OVMF_CODE, OVMF_VARS],
             "uefi-ipxe": [OVMF_CODE, OVMF_VARS, IPXE_ROMS / "efi-e1000.rom"],
             "uefi-http": [OVMF_CODE, OVMF_VARS]}
    return files[firmware]


@functools.cache
def accelerator() -> str:
    """``kvm`` if a Linux guest really boots under KVM here, else ``tcg``."""
    forced = os.environ.get("PYBOOTD_BOOT_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    return "kvm" if probe_kvm() else "tcg"


def probe_kvm(limit: float = PROBE_SECONDS) -> bool:
    """Boot the installer kernel directly under KVM: does it reach a panic?"""
    kernel = INSTALLER / "debian-installer/amd64/linux"
    if not kernel.exists():
        return False
    with tempfile.TemporaryDirectory(prefix="pybootd-kvm-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = [QEMU, "-accel", "kvm", "-m", "256", "-nodefaults", "-display", "none",
                "-no-user-config", "-serial", f"file:{serial}", "-kernel", str(kernel),
                "-append", "console=ttyS0 panic=-1", "-no-reboot"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline and proc.poll() is None:
                if "Kernel panic" in _read(serial):
                    return True
                time.sleep(0.1)
            return "Kernel panic" in _read(serial)
        finally:
            proc.kill()
            proc.wait(timeout=10)


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


@dataclass
class VmSpec:
    """What to boot: firmware, NIC MAC, the tap it attaches to, a work folder."""

    name: str
    firmware: str
    mac: str
    tap: str
    workdir: Path
    memory_mb: int = 512

    @property
    def serial(self) -> Path:
        return self.workdir / f"{self.name}.serial"


def firmware_argv(spec: VmSpec) -> list[str]:
    """QEMU options for the firmware and the NIC of *spec*."""
    net = f"netdev=n0,mac={spec.mac},bootindex=1"
    if spec.firmware == "bios":
        return ["-device", f"e1000,{net},romfile={IPXE_ROMS / 'pxe-e1000.rom'}", "-boot", "n"]
    variables = spec.workdir / f"{spec.name}.vars.fd"
    shutil.copyfile(OVMF_VARS, variables)
    pflash = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
              "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]
    if spec.firmware == "uefi":
        return [*pflash, "-device", f"virtio-net-pci,{net},romfile="]
    if spec.firmware == "uefi-ipxe":
        return [*pflash, "-device", f"e1000,{net},romfile={IPXE_ROMS / 'efi-e1000.rom'}"]
    if spec.firmware == "uefi-http":
        return [*pflash, *NO_PXE, "-device", f"virtio-net-pci,{net},romfile="]
    raise ValueError(f"unknown firmware {spec.firmware!r} (expected one of {FIRMWARES})")


def qemu_argv(spec: VmSpec, accel: str) -> list[str]:
    return [QEMU, "-name", spec.name, "-accel", accel, "-m", str(spec.memory_mb), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", f"file:{spec.serial}",
            "-netdev", f"tap,id=n0,ifname={spec.tap},script=no,downscript=no",
            *firmware_argv(spec), "-no-reboot"]


@dataclass
class Vm:
    """One running VM in *ns*; times are seconds since :meth:`start`."""

    lab: NetLab
    ns: str
    spec: VmSpec
    accel: str
    started: float = 0.0
    proc: subprocess.Popen[Any] | None = field(default=None, repr=False)

    @property
    def mac(self) -> str:
        return self.spec.mac

    def start(self) -> None:
        self.spec.workdir.mkdir(parents=True, exist_ok=True)
        argv = qemu_argv(self.spec, self.accel)
        log = (self.spec.workdir / f"{self.spec.name}.qemu.log").open("wb")
        self.started = time.monotonic()
        self.proc = self.lab.popen(self.ns, argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def console(self) -> str:
        return _read(self.spec.serial)

    def seen(self, needle: str) -> bool:
        return needle in self.console()

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc, timeout=5)

    def console_tail(self, lines: int = 25) -> str:
        text = self.console().replace("\x1b", "^[")
        printable = "".join(c for c in text if c.isprintable() or c == "\n")
        return "\n".join(printable.splitlines()[-lines:])


def wait_all(vms: list[Vm], needle: str, timeout: float,
             stop: bool = True) -> dict[str, float | None]:
    """Watch the consoles of *vms* together: seconds from each VM's start until
    *needle* appeared (None: timeout or the VM exited). With *stop*, a VM is
    stopped once done (after its kernel command line is out), which frees a
    CPU for the others."""
    found: dict[str, float | None] = {}
    running = list(vms)
    while running:
        now = time.monotonic()
        for vm in list(running):
            name = vm.spec.name
            if name not in found:
                if vm.seen(needle):
                    found[name] = now - vm.started
                elif now >= vm.started + timeout or vm.exited():
                    found[name] = None
            if name in found and (not stop or _finished(vm, found[name], now)):
                running.remove(vm)
                if stop:
                    vm.stop()
        if running:
            time.sleep(0.1)
    return found


def _finished(vm: Vm, seconds: float | None, now: float) -> bool:
    """Done with *vm*: it failed, or printed its command line, or 3 s passed."""
    return (seconds is None or "Command line:" in vm.console()
            or now - vm.started - seconds > 3.0)


def wait_kernels(vms: list[Vm], timeout: float | None = None) -> dict[str, float | None]:
    limit = timeout or max(BOOT_LIMIT[vm.accel] for vm in vms)
    return wait_all(vms, KERNEL_MARK, limit)
