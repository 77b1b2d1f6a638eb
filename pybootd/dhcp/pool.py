"""The address pool: who holds which address until when (RFC 2131 section 4.3).

Sans-IO, with an injected clock: every method takes ``now`` (seconds since the
epoch, so that expiry times survive a restart). Nothing here touches a disk;
the changes that must be stored before a reply is sent are collected and
handed out by :meth:`LeasePool.take_dirty`.

Rules:

* one address per MAC and one MAC per address, always;
* an OFFER holds its address for ``offer_hold`` seconds, so two clients are
  never offered the same one (RFC 2131 section 4.3.1);
* a released or expired address keeps its MAC affinity: the same MAC gets it
  back, and it goes to another MAC only when no never-used address is left,
  oldest first (RFC 2131 section 4.3.1, "previous address");
* a declined address is quarantined for ``quarantine`` seconds
  (RFC 2131 section 4.3.3);
* a BOOTP client never renews, so its binding never expires (RFC 1534
  section 2, RFC 951: a BOOTP address is permanent);
* static reservations bind one MAC to one address, outside the dynamic pool,
  but never while another MAC still holds that address (a reservation added
  after the address was leased): the reserved MAC gets it when that ends.

A *shared* pool (several pybootd instances on one lease store) also hands
out its offers, and the end of an offer, to be stored before the OFFER
leaves; the store may refuse a decision, and the rows that won are then
:meth:`LeasePool.adopt`-ed and the request decided again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network

OFFER_HOLD = 30.0
QUARANTINE = 600.0
PERMANENT = float("inf")  # the expiry of a BOOTP binding (RFC 1534 section 2)


class LeaseState(StrEnum):
    OFFERED = "offered"  # held for an OFFER, not stored
    BOUND = "bound"  # acknowledged: stored before the ACK leaves
    FREE = "free"  # released or expired; the MAC keeps its affinity
    DECLINED = "declined"  # in quarantine after a DECLINE; no MAC


@dataclass(frozen=True, slots=True)
class Lease:
    ip: IPv4Address
    mac: str | None
    state: LeaseState
    expires: float  # seconds since the epoch; PERMANENT for a BOOTP binding
    pxe: bool = False  # the MAC was seen booting by PXE
    hostname: str | None = None  # option 12 of its last REQUEST, for operators (RFC 2132 3.14)
    uuid: str | None = None  # option 97 as dmidecode prints it (RFC 4578 2.3)
    bootfile: str | None = None  # what its last ACK gave it to boot, for operators

    def active(self, now: float) -> bool:
        """Held (offered, bound or quarantined) at *now*."""
        return self.state != LeaseState.FREE and self.expires > now


class LeasePool:
    """Leases of one network: a dynamic range plus static reservations."""

    def __init__(
        self,
        network: IPv4Network,
        start: IPv4Address,
        count: int,
        lease_time: int,
        *,
        static: Mapping[str, IPv4Address] | None = None,
        excluded: Iterable[IPv4Address] = (),
        offer_hold: float = OFFER_HOLD,
        quarantine: float = QUARANTINE,
        shared: bool = False,
    ) -> None:
        self.network = network
        self.start = start
        self.count = count
        self.lease_time = lease_time
        self.offer_hold = offer_hold
        self.quarantine = quarantine
        self.shared = shared  # offers are stored too (see the module's docstring)
        self._fixed_excluded = {*excluded, network.network_address, network.broadcast_address}
        self.static: dict[str, IPv4Address] = {}
        self._static_owner: dict[IPv4Address, str] = {}
        self._excluded: set[IPv4Address] = set()
        self.set_static(static or {})
        self._by_ip: dict[IPv4Address, Lease] = {}
        self._by_mac: dict[str, IPv4Address] = {}
        # MACs seen booting by PXE, oldest first; bounded against floods of
        # made-up MACs (the ones holding a lease keep the flag in their lease).
        self._pxe: dict[str, None] = {}
        self._pxe_limit = max(65536, 4 * count)
        self._cursor = 0  # next never-used offset in the range
        self._dirty: dict[IPv4Address, Lease] = {}
        self._no_reclaim_until = 0.0  # see _reclaim

    # --- queries ------------------------------------------------------------
    def in_range(self, ip: IPv4Address) -> bool:
        offset = int(ip) - int(self.start)
        return 0 <= offset < self.count and ip in self.network and ip not in self._excluded

    def lease_of(self, mac: str) -> Lease | None:
        ip = self._by_mac.get(mac)
        return None if ip is None else self._by_ip.get(ip)

    def lease_at(self, ip: IPv4Address) -> Lease | None:
        return self._by_ip.get(ip)

    def knows(self, mac: str) -> bool:
        """Has *mac* a record here (lease, affinity or reservation)?"""
        return mac in self._by_mac or mac in self.static

    def static_blocker(self, mac: str, now: float) -> Lease | None:
        """What keeps *mac* from its reserved address: another MAC's live lease
        or a quarantine; None when it has no reservation or may have it."""
        static = self.static.get(mac)
        lease = None if static is None else self._by_ip.get(static)
        if lease is None or lease.mac == mac or not lease.active(now):
            return None
        return lease

    def seen_pxe(self, mac: str) -> bool:
        if mac in self._pxe:
            return True
        lease = self.lease_of(mac)
        return lease is not None and lease.pxe

    def leases(self) -> list[Lease]:
        return list(self._by_ip.values())

    def take_dirty(self) -> tuple[Lease, ...]:
        """The leases changed since the last call, to store before replying."""
        dirty = tuple(self._dirty.values())
        self._dirty.clear()
        return dirty

    def counts(self, now: float) -> dict[str, int]:
        """Addresses by state at *now*, for statistics: an ended hold or lease is free."""
        counts = {str(state): 0 for state in LeaseState}
        for lease in self._by_ip.values():
            state = lease.state if lease.active(now) else LeaseState.FREE
            counts[str(state)] += 1
        return counts

    # --- transitions --------------------------------------------------------
    def set_static(self, static: Mapping[str, IPv4Address]) -> None:
        """Replace the reservations (SIGHUP); leases already given are kept.

        A newly reserved address that another MAC holds goes to the reserved
        MAC when that lease ends (see :meth:`static_blocker`).
        """
        self.static = dict(static)
        self._static_owner = {ip: mac for mac, ip in self.static.items()}
        self._excluded = {*self._fixed_excluded, *self._static_owner}
        self._no_reclaim_until = 0.0

    def mark_pxe(self, mac: str) -> None:
        if mac in self._pxe:
            return
        if len(self._pxe) >= self._pxe_limit:
            del self._pxe[next(iter(self._pxe))]
        self._pxe[mac] = None

    def offer(self, mac: str, requested: IPv4Address | None, now: float) -> Lease | None:
        """An address to OFFER *mac*, held for ``offer_hold``; None when exhausted."""
        current = self.lease_of(mac)
        ip = self._choose(mac, requested, current, now)
        if ip is None:
            return None
        if current is not None and current.ip != ip:
            self._orphan(current)  # out of the pool now, or not its reservation: it moves
        elif current is not None and current.state == LeaseState.BOUND \
                and current.expires > now:
            return current  # a bound client asking again keeps its lease
        return self._set(Lease(ip, mac, LeaseState.OFFERED, now + self.offer_hold,
                               self.seen_pxe(mac)), persist=self.shared)

    def request(self, mac: str, ip: IPv4Address, now: float, *, permanent: bool = False,
                hostname: str | None = None, uuid: str | None = None) -> Lease | None:
        """Bind *ip* to *mac* for ``lease_time``; None means NAK (RFC 2131 4.3.2).

        *permanent*: a BOOTP binding, which never expires (RFC 1534 section 2).
        *hostname* and *uuid* are stored for operators; a renewal that omits
        them keeps the ones the lease had.
        """
        if not self._may_bind(mac, ip, now):
            return None
        current = self.lease_of(mac)
        if current is not None and current.ip != ip:
            if current.active(now):
                return None  # it holds another address: "requested address incorrect"
            self._orphan(current)
        bootfile = None
        if current is not None and current.ip == ip:
            hostname = hostname if hostname is not None else current.hostname
            uuid = uuid if uuid is not None else current.uuid
            bootfile = current.bootfile
        expires = PERMANENT if permanent else now + self.lease_time
        return self._set(Lease(ip, mac, LeaseState.BOUND, expires, self.seen_pxe(mac),
                               hostname, uuid, bootfile), persist=True)

    def remember_bootfile(self, ip: IPv4Address, bootfile: str | None) -> None:
        """The boot file the ACK of the lease at *ip*, bound just now, gives."""
        lease = self._by_ip.get(ip)
        if lease is None or bootfile is None or lease.bootfile == bootfile:
            return
        lease = replace(lease, bootfile=bootfile)
        self._by_ip[ip] = lease
        if ip in self._dirty:
            self._dirty[ip] = lease

    def forget_offer(self, mac: str, now: float) -> None:
        """The client chose another server (RFC 2131 section 4.3.2, SELECTING)."""
        current = self.lease_of(mac)
        if current is not None and current.state == LeaseState.OFFERED:
            self._set(replace(current, state=LeaseState.FREE, expires=now),
                      persist=self.shared)

    def release(self, mac: str, ip: IPv4Address, now: float) -> Lease | None:
        """DHCPRELEASE (RFC 2131 section 4.3.4): free it, keep the affinity."""
        current = self.lease_of(mac)
        if current is None or current.ip != ip or current.state != LeaseState.BOUND:
            return None
        return self._set(replace(current, state=LeaseState.FREE, expires=now), persist=True)

    def decline(self, mac: str, ip: IPv4Address, now: float) -> Lease | None:
        """DHCPDECLINE (RFC 2131 section 4.3.3): the address is in use by someone else."""
        current = self.lease_of(mac)
        if current is None or current.ip != ip:
            return None
        del self._by_mac[mac]
        return self._set(Lease(ip, None, LeaseState.DECLINED, now + self.quarantine),
                         persist=True)

    def restore(self, leases: Iterable[Lease]) -> None:
        """Load stored leases (at start); the latest row wins for a MAC.

        A shared pool keeps the stored offers (other instances' holds).
        """
        self.adopt(sorted((lease for lease in leases
                           if self.shared or lease.state != LeaseState.OFFERED),
                          key=lambda item: item.expires))

    def adopt(self, leases: Iterable[Lease]) -> None:
        """Take *leases* as the truth for their addresses (the store's rows that
        refused a decision of ours, or another instance's writes), in order."""
        self._no_reclaim_until = 0.0
        for lease in leases:
            old = self._by_mac.get(lease.mac) if lease.mac else None
            if old is not None and old != lease.ip:
                self._by_ip[old] = replace(self._by_ip[old], mac=None)
            previous = self._by_ip.get(lease.ip)
            if previous is not None and previous.mac and previous.mac != lease.mac:
                self._by_mac.pop(previous.mac, None)
            self._by_ip[lease.ip] = lease
            if lease.mac:
                self._by_mac[lease.mac] = lease.ip
                if lease.pxe:
                    self.mark_pxe(lease.mac)

    # --- internals ----------------------------------------------------------
    def _choose(self, mac: str, requested: IPv4Address | None, current: Lease | None,
                now: float) -> IPv4Address | None:
        static = self.static.get(mac)
        if static is not None:
            return None if self.static_blocker(mac, now) else static
        if current is not None and current.state != LeaseState.DECLINED \
                and self.in_range(current.ip):
            return current.ip
        if requested is not None and self.in_range(requested) \
                and self._free_for(mac, requested, now):
            return requested
        return self._never_used() or self._reclaim(now)

    def _free_for(self, mac: str, ip: IPv4Address, now: float) -> bool:
        """May *mac* take *ip* without taking it from anyone?"""
        lease = self._by_ip.get(ip)
        if lease is None:
            return True
        if lease.mac == mac:
            return lease.state != LeaseState.DECLINED
        if lease.mac is None:  # quarantined, or orphaned
            return not lease.active(now)
        return False  # another MAC's lease or affinity

    def _may_bind(self, mac: str, ip: IPv4Address, now: float) -> bool:
        static = self.static.get(mac)
        if static is not None:
            return ip == static and self.static_blocker(mac, now) is None
        return self.in_range(ip) and self._free_for(mac, ip, now)

    def _never_used(self) -> IPv4Address | None:
        while self._cursor < self.count:
            ip = self.start + self._cursor
            self._cursor += 1
            if ip not in self._by_ip and ip not in self._excluded and ip in self.network:
                return ip
        return None

    def _reclaim(self, now: float) -> IPv4Address | None:
        """A free or expired address: ownerless ones first, else the one unused longest.

        A full scan; when it finds nothing, none is made again before the
        first hold or lease ends (or something is released), so a flood of
        DISCOVERs on an exhausted pool costs no scan each.
        """
        if now < self._no_reclaim_until:
            return None
        best: Lease | None = None
        soonest = float("inf")
        for lease in self._by_ip.values():
            if lease.active(now):
                soonest = min(soonest, lease.expires)
            if lease.active(now) or not self.in_range(lease.ip):
                continue
            # Ownerless first (quarantine over, orphaned), then the oldest.
            if best is None or (lease.mac is not None, lease.expires) < (
                    best.mac is not None, best.expires):
                best = lease
        if best is None:
            self._no_reclaim_until = soonest
            return None
        if best.mac is not None:
            self._by_mac.pop(best.mac, None)
        self._by_ip[best.ip] = replace(best, mac=None, state=LeaseState.FREE)
        return best.ip

    def _orphan(self, lease: Lease) -> None:
        """*lease*'s MAC moved to another address: its old one has no owner now."""
        self._set(replace(lease, mac=None, state=LeaseState.FREE), persist=True)

    def _set(self, lease: Lease, *, persist: bool) -> Lease:
        if lease.state == LeaseState.FREE:  # freed: worth a new reclaim scan
            self._no_reclaim_until = 0.0
        else:  # a hold or quarantine that ends sooner: scan again then
            self._no_reclaim_until = min(self._no_reclaim_until, lease.expires)
        previous = self._by_ip.get(lease.ip)
        if previous is not None and previous.mac is not None and previous.mac != lease.mac \
                and self._by_mac.get(previous.mac) == lease.ip:
            del self._by_mac[previous.mac]  # a reservation takes over an old affinity
        self._by_ip[lease.ip] = lease
        if lease.mac is not None:
            self._by_mac[lease.mac] = lease.ip
        if persist:
            self._dirty[lease.ip] = lease
        return lease
