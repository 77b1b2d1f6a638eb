"""Client system architecture types (DHCP option 93).

RFC 4578 section 2.1 defines the option; the values are the IANA registry
"Processor Architecture Types" (which RFC 4578 created).
"""

from __future__ import annotations

from enum import IntEnum


class ClientArch(IntEnum):
    """IANA Processor Architecture Types (RFC 4578 section 2.1)."""

    BIOS = 0  # Intel x86PC
    NEC_PC98 = 1
    EFI_ITANIUM = 2
    DEC_ALPHA = 3
    ARC_X86 = 4
    INTEL_LEAN = 5
    EFI_IA32 = 6
    EFI_X64 = 7  # "EFI BC" in RFC 4578; every x86-64 UEFI firmware sends it
    EFI_XSCALE = 8
    EFI_BC = 9  # EBC; old x86-64 firmware sends 9 for x86-64 (dnsmasq maps both)
    EFI_ARM32 = 10
    EFI_ARM64 = 11
    PPC_OPEN_FIRMWARE = 12
    PPC_EPAPR = 13
    POWER_OPAL = 14
    HTTP_IA32 = 15
    HTTP_X64 = 16
    HTTP_EBC = 17
    HTTP_ARM32 = 18
    HTTP_ARM64 = 19
    HTTP_BIOS = 20
    UBOOT_ARM32 = 21
    UBOOT_ARM64 = 22
    HTTP_UBOOT_ARM32 = 23
    HTTP_UBOOT_ARM64 = 24
    EFI_RISCV32 = 25
    HTTP_RISCV32 = 26
    EFI_RISCV64 = 27
    HTTP_RISCV64 = 28
    EFI_RISCV128 = 29
    HTTP_RISCV128 = 30
    S390_BASIC = 31
    S390_EXTENDED = 32
    EFI_MIPS32 = 33
    EFI_MIPS64 = 34
    EFI_SUNWAY32 = 35
    EFI_SUNWAY64 = 36
    EFI_LOONGARCH32 = 37
    EFI_LOONGARCH64 = 38
    HTTP_LOONGARCH32 = 39
    HTTP_LOONGARCH64 = 40
    ARM_RPIBOOT = 41


# Names accepted as keys of the [bootfile] section, mapped to the option 93
# values they cover. "ipxe" is not an architecture: it is what a client that
# already runs iPXE gets, so it is handled by the caller.
BOOTFILE_NAMES: dict[str, tuple[int, ...]] = {
    "bios": (ClientArch.BIOS,),
    "efi-ia32": (ClientArch.EFI_IA32,),
    "efi-x64": (ClientArch.EFI_X64, ClientArch.EFI_BC),
    "efi-bc": (ClientArch.EFI_BC,),
    "efi-arm32": (ClientArch.EFI_ARM32,),
    "efi-arm64": (ClientArch.EFI_ARM64,),
    "http-ia32": (ClientArch.HTTP_IA32,),
    "http-x64": (ClientArch.HTTP_X64,),
    "http-arm32": (ClientArch.HTTP_ARM32,),
    "http-arm64": (ClientArch.HTTP_ARM64,),
    "http-bios": (ClientArch.HTTP_BIOS,),
    "uboot-arm32": (ClientArch.UBOOT_ARM32,),
    "uboot-arm64": (ClientArch.UBOOT_ARM64,),
    "riscv32": (ClientArch.EFI_RISCV32,),
    "riscv64": (ClientArch.EFI_RISCV64,),
    "http-riscv64": (ClientArch.HTTP_RISCV64,),
    "loongarch64": (ClientArch.EFI_LOONGARCH64,),
}

IPXE_BOOTFILE_KEY = "ipxe"

HTTP_BOOT_ARCHES = frozenset(
    {
        ClientArch.HTTP_IA32,
        ClientArch.HTTP_X64,
        ClientArch.HTTP_EBC,
        ClientArch.HTTP_ARM32,
        ClientArch.HTTP_ARM64,
        ClientArch.HTTP_BIOS,
        ClientArch.HTTP_UBOOT_ARM32,
        ClientArch.HTTP_UBOOT_ARM64,
        ClientArch.HTTP_RISCV32,
        ClientArch.HTTP_RISCV64,
        ClientArch.HTTP_RISCV128,
        ClientArch.HTTP_LOONGARCH32,
        ClientArch.HTTP_LOONGARCH64,
    }
)


# The UEFI PXE architecture that runs the same binaries as an HTTP boot one:
# an HTTP boot client with no [bootfile] entry of its own boots that file.
HTTP_TO_PXE: dict[int, int] = {
    ClientArch.HTTP_IA32: ClientArch.EFI_IA32,
    ClientArch.HTTP_X64: ClientArch.EFI_X64,
    ClientArch.HTTP_ARM32: ClientArch.EFI_ARM32,
    ClientArch.HTTP_ARM64: ClientArch.EFI_ARM64,
    ClientArch.HTTP_RISCV32: ClientArch.EFI_RISCV32,
    ClientArch.HTTP_RISCV64: ClientArch.EFI_RISCV64,
    ClientArch.HTTP_LOONGARCH64: ClientArch.EFI_LOONGARCH64,
}


def arch_name(value: int) -> str:
    """A short name for logs and notifications: ``efi-x64``, ``bios``, ``arch-99``."""
    for name, values in BOOTFILE_NAMES.items():
        if values and values[0] == value:
            return name
    try:
        return ClientArch(value).name.lower().replace("_", "-")
    except ValueError:
        return f"arch-{value}"
