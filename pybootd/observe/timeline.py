"""One boot timeline per machine: what pybootd saw of it, step by step.

The whole boot of a machine passes through one pybootd: DHCP (or
proxyDHCP), then TFTP and HTTP requests. DHCP events name the MAC; a file
request names only the client's address, which the timeline maps back to
the MAC that the last OFFER or ACK of that address went to (or, for an
address it never saw offered, to *mac_of*: the lease pool's answer).

Pure: the caller passes the wall-clock time of every event. Bounded: the
last ``per_machine`` events of the last ``machines`` machines (the oldest
machine goes first), so a flood of made-up MACs costs a fixed amount.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

PER_MACHINE = 200
MACHINES = 1000


class Source(StrEnum):
    """Which service saw the event."""

    DHCP = "dhcp"
    PROXY = "proxydhcp"  # mode = proxy, or the PXE boot service (port 4011)
    TFTP = "tftp"
    HTTP = "http"


class Phase(StrEnum):
    """The spans of a boot the histogram ``pybootd_boot_phase_seconds`` measures."""

    DISCOVER_TO_ACK = "discover_to_ack"  # the DHCP exchange
    ACK_TO_FIRST_FILE = "ack_to_first_file"  # the firmware's start of the download
    FILE = "file"  # each file's transfer


@dataclass(frozen=True, slots=True)
class MachineEvent:
    """One step. DHCP: *what* is the client's message, *outcome* pybootd's
    decision, *file* the boot file offered, *why* the rule or note behind it.
    A file: *what* is the name asked, *file* what was served (after
    [filters]), *outcome* how it ended."""

    at: float  # seconds since the epoch
    source: Source
    what: str
    outcome: str
    ip: str | None = None
    file: str | None = None
    why: str = ""
    bytes: int = 0
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"at": self.at, "source": str(self.source), "what": self.what,
                                "outcome": self.outcome, "ip": self.ip, "file": self.file,
                                "why": self.why}
        if self.source in (Source.TFTP, Source.HTTP):
            data.update(bytes=self.bytes, seconds=round(self.seconds, 6))
        return data


@dataclass(slots=True)
class Machine:
    mac: str
    events: deque[MachineEvent]
    ip: str | None = None
    discover_at: float | None = None  # the exchange under way began here
    ack_at: float | None = None  # the last ACK, until the first file after it
    files: int = field(default=0)

    @property
    def last(self) -> MachineEvent:
        return self.events[-1]

    @property
    def phase(self) -> str:
        """What it is doing now, for the status page: ``dhcp ack``, ``tftp linux``."""
        last = self.last
        if last.source in (Source.TFTP, Source.HTTP):
            return f"{last.source} {last.what}"
        return f"{last.source} {last.outcome}"


Spans = list[tuple[Phase, float]]


class Timeline:
    def __init__(self, per_machine: int = PER_MACHINE, machines: int = MACHINES,
                 mac_of: Callable[[str], str | None] | None = None) -> None:
        self.per_machine = per_machine
        self.limit = machines
        self.mac_of = mac_of
        self._machines: OrderedDict[str, Machine] = OrderedDict()
        self._by_ip: dict[str, str] = {}

    def dhcp(self, at: float, mac: str, message: str, outcome: str, *, ip: str | None = None,
             file: str | None = None, why: str = "", source: Source = Source.DHCP) -> Spans:
        """A DHCP message and pybootd's decision; the spans it ends."""
        machine = self._machine(mac)
        self._add(machine, MachineEvent(at, source, message, outcome, ip, file, why))
        spans: Spans = []
        if message == "DISCOVER":
            machine.discover_at = at
        if outcome in ("offer", "ack") and ip is not None:
            machine.ip = ip
            self._by_ip[ip] = mac
        if outcome == "ack":
            if machine.discover_at is not None:
                spans.append((Phase.DISCOVER_TO_ACK, at - machine.discover_at))
            machine.discover_at = None
            machine.ack_at = at
        return spans

    def file(self, at: float, ip: str, source: Source, name: str, outcome: str, *,
             served: str | None = None, nbytes: int = 0, seconds: float = 0.0,
             why: str = "") -> tuple[str | None, Spans]:
        """A file request that ended at *at* (it began *seconds* before): the
        MAC it was put down to (None: unknown client), and the spans it ends."""
        mac = self._by_ip.get(ip) or (self.mac_of(ip) if self.mac_of is not None else None)
        if mac is None:
            return None, [(Phase.FILE, seconds)]
        machine = self._machine(mac)
        started = at - seconds
        spans: Spans = [(Phase.FILE, seconds)]
        if machine.ack_at is not None:
            spans.insert(0, (Phase.ACK_TO_FIRST_FILE, max(0.0, started - machine.ack_at)))
            machine.ack_at = None
        machine.files += 1
        self._add(machine, MachineEvent(at, source, name, outcome, ip, served or name, why,
                                        nbytes, seconds))
        return mac, spans

    def machine(self, mac: str) -> Machine | None:
        return self._machines.get(mac)

    def machines(self) -> list[Machine]:
        """The most recently seen first."""
        return list(reversed(self._machines.values()))

    def _machine(self, mac: str) -> Machine:
        machine = self._machines.pop(mac, None)
        if machine is None:
            machine = Machine(mac, deque(maxlen=self.per_machine))
            while len(self._machines) >= self.limit:
                _, gone = self._machines.popitem(last=False)
                if gone.ip is not None and self._by_ip.get(gone.ip) == gone.mac:
                    del self._by_ip[gone.ip]
        self._machines[mac] = machine  # now the most recent
        return machine

    @staticmethod
    def _add(machine: Machine, event: MachineEvent) -> None:
        machine.events.append(event)
