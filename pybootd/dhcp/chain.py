"""Which iPXE is asking: the firmware's own, or the one pybootd chainloaded.

With ``[bootp] ipxe_rom = chainload`` an iPXE firmware (the NIC ROMs of
QEMU and libvirt, iPXE flashed on a NIC) is first served like any PXE
firmware: it gets the boot file of its architecture, the administrator's own
iPXE build (``undionly.kpxe``, ``ipxe.efi``). The iPXE that file starts asks
again and gets the ``[bootfile] ipxe`` script.

Both ask alike: option 77 "iPXE" and the same option 175, features and bus
ID included (measured with the ipxe-qemu ROM and Debian's undionly.kpxe), so
they are told apart by what came before. A MAC's first netboot exchange
(one transaction ID, RFC 2131 section 4.1: the client keeps its xid from
DISCOVER to REQUEST) is the firmware's; another exchange within ``window``
seconds comes from what the firmware loaded.

Sans-IO: the caller passes ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAIN_WINDOW = 300.0  # seconds from the firmware's exchange to the chained iPXE's
MAX_CLIENTS = 65536  # MACs remembered; the oldest go first (a flood of made-up MACs)


@dataclass(frozen=True, slots=True)
class _Exchange:
    xid: int
    at: float


class ChainTracker:
    """Remembers, per MAC, the transaction in which its firmware asked."""

    def __init__(self, window: float = CHAIN_WINDOW, limit: int = MAX_CLIENTS) -> None:
        self.window = window
        self.limit = limit
        self._firmware: dict[str, _Exchange] = {}

    def is_firmware(self, mac: str, xid: int, now: float) -> bool:
        """Is this exchange (*mac*, *xid*) the firmware's own, not a chained loader's?"""
        seen = self._firmware.get(mac)
        if seen is None or now - seen.at > self.window:
            self._remember(mac, _Exchange(xid, now))
            return True
        return seen.xid == xid

    def _remember(self, mac: str, exchange: _Exchange) -> None:
        self._firmware.pop(mac, None)
        if len(self._firmware) >= self.limit:
            del self._firmware[next(iter(self._firmware))]
        self._firmware[mac] = exchange
