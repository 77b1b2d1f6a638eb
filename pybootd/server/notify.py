"""UDP notifications of client events (``[bootp] notify = host:port, ...``).

One datagram per event and target, one line of UTF-8 text ending in ``\\n``::

    pybootd EVENT mac=MAC ip=IP uuid=UUID arch=ARCH file=FILE

* ``EVENT``: what the client sent (discover, request, release, decline,
  inform, bootp: a BOOTP request) or what pybootd did (offer, ack, nak,
  denied: refused by access control); exactly one line per event (the reply
  to an INFORM is an ``ack``);
* ``MAC``: ``aa:bb:cc:dd:ee:ff``; ``IP``: the address offered, acknowledged,
  requested or released; ``UUID``: as ``dmidecode`` prints it (upper case);
  ``ARCH``: the option 93 architecture name (``bios``, ``efi-x64``, ...);
  ``FILE``: the boot file sent, percent-encoded (RFC 3986) so it holds no space;
* a value that is unknown is ``-``. Fields may be added at the end of the
  line in later versions: parse by key.

Example: ``pybootd ack mac=52:54:00:12:34:56 ip=192.0.2.10
uuid=4C4C4544-0042-3510-8051-B4C04F4D3132 arch=efi-x64 file=grubx64.efi``

Sending never waits: the socket is non-blocking and every error (no route,
a refused port, a full buffer) is counted and dropped, so a dead target never
delays a reply. Host names are resolved once, at start.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address
from urllib.parse import quote

from pybootd.dhcp.events import Event

log = logging.getLogger("pybootd.dhcp.notify")


def format_event(event: Event, mac: str, ip: IPv4Address | None, uuid: str | None,
                 arch: str | None, bootfile: str | None) -> bytes:
    """The documented line for one event."""
    fields = (
        f"mac={mac or '-'}",
        f"ip={ip if ip is not None else '-'}",
        f"uuid={uuid or '-'}",
        f"arch={arch or '-'}",
        f"file={quote(bootfile, safe='/:.-_~') if bootfile else '-'}",
    )
    return f"pybootd {event} {' '.join(fields)}\n".encode()


class Notifier:
    """Sends event lines to every configured target, never blocking."""

    def __init__(self, targets: Sequence[tuple[str, int]]) -> None:
        self.targets: list[tuple[str, int]] = []
        for host, port in targets:
            try:
                infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning("notify target %s:%d cannot be resolved (%s); skipped",
                            host, port, exc)
                continue
            address = infos[0][4]
            self.targets.append((str(address[0]), int(address[1])))
        self.errors = 0
        self._sock: socket.socket | None = None
        if self.targets:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    def send(self, event: Event, mac: str, ip: IPv4Address | None, uuid: str | None,
             arch: str | None, bootfile: str | None) -> None:
        if self._sock is None:
            return
        line = format_event(event, mac, ip, uuid, arch, bootfile)
        for target in self.targets:
            try:
                self._sock.sendto(line, target)
            except OSError:
                self.errors += 1  # ECONNREFUSED from an earlier send, EAGAIN, ...

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
