"""The lease pool with an injected clock, and its restart from SQLite."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from pybootd.dhcp.pool import PERMANENT, Lease, LeasePool, LeaseState
from pybootd.server.leasestore import LeaseStore

NET = IPv4Network("198.51.100.0/24")
START = IPv4Address("198.51.100.10")
A, B, C, D = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c", "02:00:00:00:00:0d"
T0 = 1_700_000_000.0


def pool(count: int = 3, **kw: object) -> LeasePool:
    return LeasePool(NET, START, count, 3600, offer_hold=30, quarantine=600,
                     excluded={IPv4Address("198.51.100.11")}, **kw)  # type: ignore[arg-type]


def ip(last: int) -> IPv4Address:
    return IPv4Address(f"198.51.100.{last}")


def test_offer_skips_excluded_and_holds() -> None:
    p = pool()
    first = p.offer(A, None, T0)
    assert first is not None and first.ip == ip(10) and first.state == LeaseState.OFFERED
    second = p.offer(B, None, T0 + 1)
    assert second is not None and second.ip == ip(12)  # .11 is excluded (server)
    again = p.offer(A, None, T0 + 2)
    assert again is not None and again.ip == ip(10)  # same client, same offer
    assert p.take_dirty() == ()  # offers are not stored


def test_offer_hold_expiry_lets_another_client_take_it() -> None:
    p = pool(count=1)
    assert p.offer(A, None, T0) is not None
    assert p.offer(B, None, T0 + 10) is None  # held: exhausted, no duplicate
    later = p.offer(B, None, T0 + 31)
    assert later is not None and later.ip == ip(10)
    assert p.request(A, ip(10), T0 + 32) is None  # A lost it: NAK


def test_requested_address_is_honoured_when_free() -> None:
    p = pool(count=10)
    lease = p.offer(A, ip(15), T0)
    assert lease is not None and lease.ip == ip(15)
    assert p.offer(B, ip(15), T0) is not None
    assert p.lease_of(B) is not None and p.lease_of(B).ip != ip(15)  # type: ignore[union-attr]
    outside = p.offer(C, ip(200), T0)
    assert outside is not None and outside.ip != ip(200)


def test_request_binds_renew_and_rebind_extend() -> None:
    p = pool()
    p.offer(A, None, T0)
    bound = p.request(A, ip(10), T0 + 1)
    assert bound is not None and bound.state == LeaseState.BOUND and bound.expires == T0 + 3601
    assert p.take_dirty() == (bound,)
    renewed = p.request(A, ip(10), T0 + 1800)  # RENEWING at T1
    assert renewed is not None and renewed.expires == T0 + 5400
    rebound = p.request(A, ip(10), T0 + 3150)  # REBINDING at T2
    assert rebound is not None and rebound.expires == T0 + 6750
    assert p.offer(A, None, T0 + 3200) == rebound  # DISCOVER while bound keeps the lease


def test_nak_cases() -> None:
    p = pool()
    p.offer(A, None, T0)
    p.request(A, ip(10), T0)
    assert p.request(B, ip(10), T0 + 1) is None  # someone else's
    assert p.request(B, ip(11), T0 + 1) is None  # excluded address
    assert p.request(B, ip(99), T0 + 1) is None  # outside the range
    assert p.request(A, ip(12), T0 + 1) is None  # A holds .10: "requested address incorrect"


def test_decline_quarantines() -> None:
    p = pool(count=3)
    p.offer(A, None, T0)
    p.request(A, ip(10), T0)
    p.take_dirty()
    declined = p.decline(A, ip(10), T0 + 5)
    assert declined is not None and declined.state == LeaseState.DECLINED and declined.mac is None
    assert p.take_dirty() == (declined,)
    again = p.offer(A, None, T0 + 6)
    assert again is not None and again.ip == ip(12)
    assert p.offer(B, None, T0 + 7) is None  # .10 quarantined, .12 held
    after = p.offer(B, None, T0 + 606)
    assert after is not None and after.ip == ip(10)
    assert p.decline(C, ip(12), T0) is None


def test_release_keeps_affinity_then_returns() -> None:
    p = pool(count=3)
    p.offer(A, None, T0)
    p.request(A, ip(10), T0)
    released = p.release(A, ip(10), T0 + 10)
    assert released is not None and released.state == LeaseState.FREE
    assert p.release(A, ip(10), T0 + 11) is None  # twice: nothing to do
    other = p.offer(B, None, T0 + 20)
    assert other is not None and other.ip == ip(12)  # never-used first, .10 stays A's
    back = p.offer(A, None, T0 + 30)
    assert back is not None and back.ip == ip(10)


def test_exhaustion_reclaims_oldest_free_never_a_held_one() -> None:
    p = pool(count=3)  # .10 and .12 (.11 excluded)
    for mac, t in ((A, 0), (B, 1)):
        lease = p.offer(mac, None, T0 + t)
        assert lease is not None
        p.request(mac, lease.ip, T0 + t)
    assert p.offer(C, None, T0 + 2) is None  # both bound: no offer, no duplicate
    p.release(B, ip(12), T0 + 3)
    p.release(A, ip(10), T0 + 4)
    reclaimed = p.offer(C, None, T0 + 5)
    assert reclaimed is not None and reclaimed.ip == ip(12)  # released first
    assert p.lease_of(B) is None
    assert p.offer(D, None, T0 + 6) is not None
    assert p.offer(B, None, T0 + 7) is None


def test_expired_lease_is_reclaimed_only_when_needed() -> None:
    p = pool(count=3)
    p.offer(A, None, T0)
    p.request(A, ip(10), T0)
    assert p.offer(B, None, T0 + 4000).ip == ip(12)  # type: ignore[union-attr]
    p.request(B, ip(12), T0 + 4000)
    stolen = p.offer(C, None, T0 + 4001)
    assert stolen is not None and stolen.ip == ip(10)  # A's lease expired at T0 + 3600


def test_forget_offer_when_client_chose_another_server() -> None:
    p = pool(count=3)
    p.offer(A, None, T0)
    p.forget_offer(A, T0 + 1)
    assert p.offer(B, None, T0 + 2).ip == ip(12)  # type: ignore[union-attr]
    assert p.offer(A, None, T0 + 3).ip == ip(10)  # type: ignore[union-attr]


def test_static_reservation() -> None:
    p = pool(count=3, static={C: ip(50)})
    lease = p.offer(C, ip(10), T0)
    assert lease is not None and lease.ip == ip(50)
    assert p.request(C, ip(10), T0) is None
    assert p.request(C, ip(50), T0) is not None
    assert p.request(A, ip(50), T0) is None
    assert p.knows(C) and not p.knows(A)


def test_restart_from_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite"
    store = LeaseStore(path)
    p = pool(count=10)
    for mac in (A, B, C):
        lease = p.offer(mac, None, T0)
        assert lease is not None
        p.request(mac, lease.ip, T0)
    p.mark_pxe(D)
    offer = p.offer(D, None, T0)
    assert offer is not None
    p.request(D, offer.ip, T0)
    p.release(B, p.lease_of(B).ip, T0 + 1)  # type: ignore[union-attr]
    p.decline(C, p.lease_of(C).ip, T0 + 2)  # type: ignore[union-attr]
    store.write(p.take_dirty(), T0 + 3)
    store.close()

    store = LeaseStore(path)  # as after a restart (or kill -9)
    q = pool(count=10)
    q.restore(store.load())
    store.close()
    assert q.lease_of(A) == p.lease_of(A)
    assert q.lease_of(B) == p.lease_of(B) and q.lease_of(B).state == LeaseState.FREE  # type: ignore[union-attr]
    assert q.lease_of(C) is None
    assert q.seen_pxe(D) and not q.seen_pxe(A)
    fresh = q.offer("02:00:00:00:00:ee", None, T0 + 5)
    assert fresh is not None and fresh.ip not in {p.lease_of(m).ip for m in (A, B, D)}  # type: ignore[union-attr]
    back = q.offer(B, None, T0 + 6)
    assert back is not None and back.ip == p.lease_of(B).ip  # type: ignore[union-attr]


def test_restore_keeps_latest_row_for_a_mac() -> None:
    p = pool(count=10)
    p.restore([Lease(ip(10), A, LeaseState.FREE, T0), Lease(ip(12), A, LeaseState.BOUND, T0 + 9)])
    assert p.lease_of(A).ip == ip(12)  # type: ignore[union-attr]
    assert p.lease_at(ip(10)).mac is None  # type: ignore[union-attr]


def random_walk(p: LeasePool, macs: list[str], seed: int, *, bootp: float = 0.0) -> None:
    """2000 random offers, requests (a share of them BOOTP: permanent),
    releases and declines; after each, no address or MAC is held twice."""
    import random

    rng = random.Random(seed)
    now = T0
    for _ in range(2000):
        now += rng.random() * 20
        mac = rng.choice(macs)
        action = rng.random()
        lease = p.lease_of(mac)
        if action < 0.4:
            p.offer(mac, None, now)
        elif action < 0.8 and lease is not None:
            p.request(mac, lease.ip, now, permanent=action < 0.4 + bootp)
        elif action < 0.9 and lease is not None:
            p.release(mac, lease.ip, now)
        elif lease is not None:
            p.decline(mac, lease.ip, now)
        held = [x for x in p.leases() if x.mac is not None and x.active(now)]
        assert len({x.ip for x in held}) == len(held)
        assert len({x.mac for x in held}) == len(held)
        for x in p.leases():
            if x.mac is not None:
                assert p.lease_of(x.mac) == x


@pytest.mark.parametrize("count", [1, 5, 50])
def test_never_two_macs_on_one_address(count: int) -> None:
    random_walk(pool(count=count), [f"02:00:00:00:01:{i:02x}" for i in range(count * 2)], count)


def test_exhausted_pool_skips_rescans_until_something_frees() -> None:
    p = pool(count=3)
    for mac in (A, B):
        lease = p.offer(mac, None, T0)
        assert lease is not None
        p.request(mac, lease.ip, T0)
    assert p.offer(C, None, T0 + 1) is None
    assert p._no_reclaim_until == T0 + 3600  # the first lease to end
    assert p.offer(D, None, T0 + 2) is None
    p.release(A, ip(10), T0 + 3)  # frees one at once
    assert p.offer(D, None, T0 + 4).ip == ip(10)  # type: ignore[union-attr]
    assert p.offer(C, None, T0 + 5) is None
    assert p.offer(C, None, T0 + 3601) is not None  # holds and leases have ended


def test_bootp_binding_never_expires_and_is_stored(tmp_path: Path) -> None:
    """RFC 1534 section 2 / RFC 951: a BOOTP client never renews, so its address is permanent."""
    p = pool(count=2)  # one address: .10 (.11 excluded)
    offered = p.offer(A, None, T0)
    assert offered is not None
    bound = p.request(A, offered.ip, T0, permanent=True)
    assert bound is not None and bound.expires == PERMANENT
    years = T0 + 10 * 365 * 86400.0
    assert bound.active(years)
    assert p.offer(B, None, years) is None  # never reclaimed for another MAC
    again = p.offer(A, None, years)  # the next BOOTREQUEST: same address, stored again
    assert again == bound
    refreshed = p.request(A, again.ip, years, permanent=True)
    assert refreshed is not None and refreshed.expires == PERMANENT

    store = LeaseStore(tmp_path / "leases.sqlite")
    store.write(p.take_dirty(), years)
    store.close()
    store = LeaseStore(tmp_path / "leases.sqlite")  # a restart
    q = pool(count=2)
    q.restore(store.load())
    store.close()
    assert q.lease_of(A) == refreshed
    assert q.offer(B, None, years + 1) is None


def test_bootp_binding_can_become_a_dhcp_lease() -> None:
    p = pool(count=3)
    p.offer(A, None, T0)
    p.request(A, ip(10), T0, permanent=True)
    lease = p.request(A, ip(10), T0 + 5)  # the same machine now runs a DHCP client
    assert lease is not None and lease.expires == T0 + 5 + 3600


def test_reservation_never_takes_an_address_another_mac_holds() -> None:
    """A reservation added after A leased the address (restored from the lease file)."""
    p = pool(count=10, static={B: ip(12)})
    p.restore([Lease(ip(12), A, LeaseState.BOUND, T0 + 3600)])
    assert p.static_blocker(B, T0) == p.lease_at(ip(12))
    assert p.offer(B, None, T0) is None  # no duplicate
    assert p.request(B, ip(12), T0) is None
    assert p.request(A, ip(12), T0 + 1800) is None  # A's renewal: NAK, the address is reserved
    moved = p.offer(A, None, T0 + 1801)  # A starts over and moves
    assert moved is not None and moved.ip != ip(12)
    assert p.lease_at(ip(12)).mac is None  # type: ignore[union-attr]
    assert p.static_blocker(B, T0 + 1802) is None
    offer = p.offer(B, None, T0 + 1802)
    assert offer is not None and offer.ip == ip(12)
    assert p.request(B, ip(12), T0 + 1803) is not None


def test_reservation_waits_for_the_other_lease_to_end() -> None:
    p = pool(count=10, static={B: ip(12)})
    p.restore([Lease(ip(12), A, LeaseState.BOUND, T0 + 3600)])
    assert p.offer(B, None, T0 + 3599) is None
    offer = p.offer(B, None, T0 + 3600)  # A's lease is over
    assert offer is not None and offer.ip == ip(12)
    assert p.lease_of(A) is None  # A's affinity went with the address
    bound = p.request(B, ip(12), T0 + 3601)
    assert bound is not None and p.lease_of(B) == bound


def test_reserved_address_in_quarantine_is_not_offered() -> None:
    p = pool(count=3, static={B: ip(50)})
    p.offer(B, None, T0)
    p.request(B, ip(50), T0)
    assert p.decline(B, ip(50), T0 + 1) is not None
    assert p.offer(B, None, T0 + 2) is None  # it would only decline it again
    assert p.offer(B, None, T0 + 601).ip == ip(50)  # type: ignore[union-attr]


def test_quarantine_on_a_full_pool_ends_on_time() -> None:
    """A DECLINE on an exhausted pool: the address is free again when quarantine ends."""
    p = pool(count=3)  # .10 and .12
    for mac in (A, B):
        lease = p.offer(mac, None, T0)
        assert lease is not None
        p.request(mac, lease.ip, T0)
    assert p.offer(C, None, T0 + 1) is None  # exhausted: no rescan before T0 + 3600
    assert p.decline(A, ip(10), T0 + 5) is not None
    assert p.offer(C, None, T0 + 6) is None  # quarantined
    after = p.offer(C, None, T0 + 605)  # the quarantine ended at T0 + 605
    assert after is not None and after.ip == ip(10)


@pytest.mark.parametrize("count", [2, 6])
def test_never_two_macs_with_reservations_and_bootp(count: int) -> None:
    reserved = ip(12) if count > 2 else ip(60)  # inside the range, or outside it
    macs = [f"02:00:00:00:02:{i:02x}" for i in range(count * 2)]
    p = pool(count=count, static={macs[0]: reserved})
    p.restore([Lease(reserved, macs[1], LeaseState.BOUND, T0 + 500)])  # a stale holder
    random_walk(p, macs, count, bootp=0.05)


def test_reservations_replaced_while_running() -> None:
    """SIGHUP: a new reservation is served; one whose address another MAC holds waits."""
    p = pool(count=5)
    held = p.offer(A, None, T0)
    assert held is not None and p.request(A, held.ip, T0) is not None
    p.set_static({B: ip(50), C: held.ip})
    offer = p.offer(B, None, T0 + 1)
    assert offer is not None and offer.ip == ip(50)
    assert p.offer(C, None, T0 + 1) is None  # A still holds it
    assert p.static_blocker(C, T0 + 1) is not None
    other = p.offer(D, None, T0 + 1)
    assert other is not None and other.ip not in (ip(50), held.ip)
    p.set_static({})
    assert p.static == {} and p.in_range(ip(14))


def test_counts_by_state() -> None:
    p = pool(count=5)
    a, b = p.offer(A, None, T0), p.offer(B, None, T0)
    assert a is not None and b is not None
    p.request(A, a.ip, T0)
    p.decline(A, a.ip, T0 + 1)
    c = p.offer(C, None, T0 + 2)
    assert c is not None and p.request(C, c.ip, T0 + 2) is not None
    assert p.counts(T0 + 3) == {"offered": 1, "bound": 1, "free": 0, "declined": 1}
    assert p.counts(T0 + 100) == {"offered": 0, "bound": 1, "free": 1, "declined": 1}
