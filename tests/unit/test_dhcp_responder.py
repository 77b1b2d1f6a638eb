"""Requests in, decisions out: messages, options, destinations (RFC 2131 4.1, 4.3)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import hypothesis
import pytest
from dhcp_helpers import (
    MAC,
    MAC_TEXT,
    NETWORK,
    PXE_BIOS,
    SERVER,
    UUID_OPTION,
    pxe_options,
    request,
    settings,
)
from hypothesis import strategies as st

from pybootd.dhcp.chain import ChainTracker
from pybootd.dhcp.events import Event
from pybootd.dhcp.options import DhcpOption, MessageType
from pybootd.dhcp.packet import FLAG_BROADCAST, DhcpPacket, encode_packet, parse_packet_untrusted
from pybootd.dhcp.pool import PERMANENT, Lease, LeasePool, LeaseState
from pybootd.dhcp.pxe import client_info
from pybootd.dhcp.responder import Decision, Settings, respond

T0 = 1_700_000_000.0
POOL_START = IPv4Address("198.51.100.100")
OTHER = IPv4Address("203.0.113.1")


def new_pool(count: int = 10) -> LeasePool:
    return LeasePool(NETWORK, POOL_START, count, 3600, excluded={SERVER},
                     static={"52:54:00:00:00:99": IPv4Address("198.51.100.20")})


def answer(packet: DhcpPacket, pool: LeasePool | None, s: Settings | None = None,
           now: float = T0, **kw: object) -> Decision:
    return respond(packet, client_info(packet), pool, s or settings(), now, **kw)  # type: ignore[arg-type]


def reply_of(decision: Decision) -> DhcpPacket:
    assert decision.reply is not None
    assert len(decision.reply) >= 300
    return parse_packet_untrusted(decision.reply)


def dora(pool: LeasePool, options: dict[int, bytes] | None = None) -> IPv4Address:
    offer = reply_of(answer(request(MessageType.DISCOVER, options=options), pool))
    req = request(MessageType.REQUEST, options={
        **(options or {}), DhcpOption.SERVER_ID: SERVER.packed,
        DhcpOption.REQUESTED_IP: offer.yiaddr.packed})
    decision = answer(req, pool)
    assert decision.event is Event.ACK and decision.persist
    return reply_of(decision).yiaddr


def test_discover_offer_plain_client() -> None:
    decision = answer(request(MessageType.DISCOVER), new_pool())
    assert decision.event is Event.OFFER and decision.broadcast
    assert decision.destination == ("255.255.255.255", 68)
    assert decision.persist == ()  # offers are not stored
    reply = reply_of(decision)
    assert reply.op == 2 and reply.xid == 0x1234 and reply.chaddr == MAC
    assert reply.yiaddr == POOL_START and reply.siaddr == SERVER
    assert reply.message_type == MessageType.OFFER
    opts = reply.options
    assert opts[DhcpOption.SERVER_ID] == SERVER.packed
    assert opts[DhcpOption.SUBNET_MASK] == NETWORK.netmask.packed
    assert opts[DhcpOption.ROUTER] == SERVER.packed
    assert opts[DhcpOption.DNS] == IPv4Address("198.51.100.53").packed
    assert opts[DhcpOption.DOMAIN_NAME] == b"lab.example"
    assert int.from_bytes(opts[DhcpOption.LEASE_TIME], "big") == 3600
    assert int.from_bytes(opts[DhcpOption.RENEWAL_TIME], "big") == 1800
    assert int.from_bytes(opts[DhcpOption.REBINDING_TIME], "big") == 3150
    assert DhcpOption.BOOTFILE not in opts and reply.file == b""  # not asked, not PXE
    assert DhcpOption.VENDOR_CLASS not in opts and DhcpOption.VENDOR_SPECIFIC not in opts


def test_pxe_offer_has_boot_options() -> None:
    decision = answer(request(MessageType.DISCOVER, options=pxe_options()), new_pool())
    reply = reply_of(decision)
    opts = reply.options
    assert reply.file == b"grubx64.efi" and opts[DhcpOption.BOOTFILE] == b"grubx64.efi"
    assert reply.sname == b"bootsrv" and reply.siaddr == SERVER
    assert opts[DhcpOption.TFTP_SERVER] == b"198.51.100.1"
    assert opts[DhcpOption.VENDOR_CLASS] == b"PXEClient"
    assert opts[DhcpOption.VENDOR_SPECIFIC] == bytes((6, 1, 8, 255))
    assert opts[DhcpOption.CLIENT_UUID] == UUID_OPTION
    assert decision.bootfile == "grubx64.efi"


def test_bios_pxe_and_ipxe_files() -> None:
    bios = pxe_options(PXE_BIOS, 0)
    assert reply_of(answer(request(MessageType.DISCOVER, options=bios), new_pool())).file \
        == b"pxelinux.0"
    ipxe = {**bios, DhcpOption.USER_CLASS: b"iPXE"}
    assert reply_of(answer(request(MessageType.DISCOVER, options=ipxe), new_pool())).file \
        == b"http://198.51.100.1/boot.ipxe"


HTTP_BOOT = pxe_options(b"HTTPClient:Arch:00016:UNDI:003001", 16)
MIRROR = "http://mirror.example/netboot/"


def test_http_boot_client_gets_url_and_httpclient() -> None:
    """A relative name with an http(s) [tftp] root: root + name (pybootd serves no HTTP)."""
    decision = answer(request(MessageType.DISCOVER, options=HTTP_BOOT), new_pool(),
                      settings(http_root=MIRROR))
    reply = reply_of(decision)
    assert reply.options[DhcpOption.VENDOR_CLASS] == b"HTTPClient"
    assert reply.file == b"http://mirror.example/netboot/boot/shimx64.efi"
    assert reply.options[DhcpOption.BOOTFILE] == reply.file
    assert DhcpOption.VENDOR_SPECIFIC not in reply.options


def test_http_boot_client_gets_a_full_url_as_configured() -> None:
    s = settings(bootfiles={16: "https://boot.example/x64/shim.efi"})
    reply = reply_of(answer(request(MessageType.DISCOVER, options=HTTP_BOOT), new_pool(), s))
    assert reply.file == b"https://boot.example/x64/shim.efi"


def test_http_boot_client_without_any_url_is_not_answered() -> None:
    pool = new_pool(count=1)
    decision = answer(request(MessageType.DISCOVER, options=HTTP_BOOT), pool)  # no http root
    assert decision.event is Event.IGNORE and decision.reply is None
    assert decision.note.startswith(f"HTTP boot client {MAC_TEXT} ignored: no http URL "
                                    "configured for arch http-x64")
    assert decision.once and not decision.warning  # logged once per MAC, at info
    assert pool.lease_of(MAC_TEXT) is None  # and no address held for it
    tftp_url = settings(bootfiles={16: "tftp://198.51.100.1/shim.efi"})
    assert answer(request(MessageType.DISCOVER, options=HTTP_BOOT), pool, tftp_url).event \
        is Event.IGNORE


def test_http_boot_client_falls_back_to_its_uefi_pxe_file_never_boot_file() -> None:
    """http-x64 unset: the efi-x64 file (the same EFI binaries); with neither,
    no answer rather than the BIOS boot_file as a URL."""
    efi_only = settings(bootfiles={7: "grubx64.efi"}, http_root=MIRROR)
    reply = reply_of(answer(request(MessageType.DISCOVER, options=HTTP_BOOT), new_pool(),
                            efi_only))
    assert reply.file == b"http://mirror.example/netboot/grubx64.efi"
    bios_only = settings(bootfiles={0: "pxelinux.0"}, http_root=MIRROR)
    decision = answer(request(MessageType.DISCOVER, options=HTTP_BOOT), new_pool(), bios_only)
    assert decision.event is Event.IGNORE and decision.reply is None


OWN = "http://198.51.100.1:8080/"  # [httpd] port = 8080


def test_http_boot_client_gets_pybootds_own_http_server_first() -> None:
    """[httpd] on: a relative name is served by pybootd itself, even with a mirror root."""
    s = settings(bootfiles={7: "snponly.efi"}, http_root=MIRROR, http_base=OWN)
    reply = reply_of(answer(request(MessageType.DISCOVER, options=HTTP_BOOT), new_pool(), s))
    assert reply.file == b"http://198.51.100.1:8080/snponly.efi"
    assert reply.options[DhcpOption.VENDOR_CLASS] == b"HTTPClient"
    full = settings(bootfiles={16: "https://boot.example/shim.efi"}, http_base=OWN)
    assert reply_of(answer(request(MessageType.DISCOVER, options=HTTP_BOOT), new_pool(),
                           full)).file == b"https://boot.example/shim.efi"


def test_ipxe_fetches_a_relative_script_over_http_when_httpd_is_on() -> None:
    ipxe = {**pxe_options(PXE_BIOS, 0), DhcpOption.USER_CLASS: b"iPXE"}
    s = settings(ipxe_bootfile="boot.ipxe", http_base=OWN)
    assert reply_of(answer(request(MessageType.DISCOVER, options=ipxe), new_pool(), s)).file \
        == b"http://198.51.100.1:8080/boot.ipxe"
    tftp = settings(ipxe_bootfile="tftp://198.51.100.1/boot.ipxe", http_base=OWN)
    assert reply_of(answer(request(MessageType.DISCOVER, options=ipxe), new_pool(),
                           tftp)).file == b"tftp://198.51.100.1/boot.ipxe"
    off = settings(ipxe_bootfile="boot.ipxe")  # no [httpd]: TFTP, as before
    assert reply_of(answer(request(MessageType.DISCOVER, options=ipxe), new_pool(),
                           off)).file == b"boot.ipxe"
    # The firmware's own PXE request still gets its TFTP file.
    bios = reply_of(answer(request(MessageType.DISCOVER, options=pxe_options(PXE_BIOS, 0)),
                           new_pool(), s))
    assert bios.file == b"pxelinux.0"


def test_boot_file_too_long_for_the_file_field_is_never_cut() -> None:
    long_root = "http://mirror.example/" + "d" * 100 + "/"
    decision = answer(request(MessageType.DISCOVER, options=HTTP_BOOT), new_pool(),
                      settings(http_root=long_root))
    assert decision.event is Event.IGNORE and decision.warning and "127 bytes" in decision.note


def test_ipxe_file_per_architecture() -> None:
    s = settings(ipxe_bootfiles={7: "debian-installer/amd64/grubx64.efi", 0: "pxelinux.0"},
                 ipxe_bootfile="boot.ipxe")
    efi = {**pxe_options(), DhcpOption.USER_CLASS: b"iPXE"}
    bios = {**pxe_options(PXE_BIOS, 0), DhcpOption.IPXE_ENCAP: bytes((177, 5, 1, 0, 0, 0, 0))}
    arm = {**pxe_options(b"PXEClient:Arch:00011:UNDI:003016", 11), DhcpOption.USER_CLASS: b"iPXE"}
    files = [reply_of(answer(request(MessageType.DISCOVER, options=o), new_pool(), s)).file
             for o in (efi, bios, arm)]
    assert files == [b"debian-installer/amd64/grubx64.efi", b"pxelinux.0", b"boot.ipxe"]
    plain_efi = reply_of(answer(request(MessageType.DISCOVER, options=pxe_options()), new_pool(),
                                s))
    assert plain_efi.file == b"grubx64.efi"  # not iPXE: the efi-x64 file


def _with_xid(packet: DhcpPacket, xid: int) -> DhcpPacket:
    return parse_packet_untrusted(encode_packet(replace(packet, xid=xid)))


def test_ipxe_rom_chainloads_our_ipxe_then_gets_the_script() -> None:
    """ipxe_rom = chainload: an iPXE ROM's own exchange (its xid, DISCOVER to
    REQUEST) gets the architecture's file; the iPXE it loads, asking in a new
    exchange, gets the script; after the window a new boot starts over."""
    s = settings(bootfiles={0: "undionly.kpxe", 7: "ipxe.efi"}, ipxe_bootfile="boot.ipxe")
    rom = {**pxe_options(PXE_BIOS, 0), DhcpOption.USER_CLASS: b"iPXE"}
    chains = ChainTracker(window=300)
    pool = new_pool()

    def file_of(kind: MessageType, xid: int, now: float, options: dict[int, bytes]) -> bytes:
        extra: dict[int, bytes] = {DhcpOption.SERVER_ID: SERVER.packed,
                 DhcpOption.REQUESTED_IP: POOL_START.packed} if kind == MessageType.REQUEST \
            else {}
        packet = _with_xid(request(kind, options={**options, **extra}), xid)
        return reply_of(answer(packet, pool, s, now, chains=chains)).file

    assert file_of(MessageType.DISCOVER, 1, T0, rom) == b"undionly.kpxe"
    assert file_of(MessageType.REQUEST, 1, T0 + 1, rom) == b"undionly.kpxe"  # same exchange
    assert file_of(MessageType.DISCOVER, 2, T0 + 40, rom) == b"boot.ipxe"  # the chained iPXE
    assert file_of(MessageType.REQUEST, 2, T0 + 41, rom) == b"boot.ipxe"
    assert file_of(MessageType.DISCOVER, 3, T0 + 400, rom) == b"undionly.kpxe"  # a new boot
    # Without chains (ipxe_rom = script, the default) the ROM gets the script at once.
    assert reply_of(answer(request(MessageType.DISCOVER, options=rom), new_pool(), s)).file \
        == b"boot.ipxe"


def test_chainload_from_firmware_that_is_not_ipxe() -> None:
    """UEFI's own PXE (not iPXE) gets ipxe.efi; the iPXE it starts gets the script."""
    s = settings(bootfiles={7: "ipxe.efi"}, ipxe_bootfile="boot.ipxe")
    chains = ChainTracker()
    pool = new_pool()
    uefi = _with_xid(request(MessageType.DISCOVER, options=pxe_options()), 10)
    ipxe = _with_xid(request(MessageType.DISCOVER, options={
        **pxe_options(), DhcpOption.USER_CLASS: b"iPXE"}), 11)
    assert reply_of(answer(uefi, pool, s, T0, chains=chains)).file == b"ipxe.efi"
    assert reply_of(answer(ipxe, pool, s, T0 + 30, chains=chains)).file == b"boot.ipxe"


def test_chain_tracker_is_bounded() -> None:
    chains = ChainTracker(limit=3)
    for n in range(10):
        assert chains.is_firmware(f"52:54:00:00:00:{n:02x}", n, T0)
    assert len(chains._firmware) == 3


def test_full_exchange_then_renew_unicast() -> None:
    pool = new_pool()
    ip = dora(pool)
    assert ip == POOL_START
    renew = answer(request(MessageType.REQUEST, ciaddr=ip), pool, now=T0 + 1800)
    assert renew.event is Event.ACK and renew.destination == (str(ip), 68) and not renew.broadcast
    reply = reply_of(renew)
    assert reply.ciaddr == ip and reply.yiaddr == ip
    assert pool.lease_of(MAC_TEXT).expires == T0 + 1800 + 3600  # type: ignore[union-attr]


def test_broadcast_flag_and_relay_destinations() -> None:
    pool = new_pool()
    ip = dora(pool)
    flagged = answer(request(MessageType.REQUEST, ciaddr=ip, flags=FLAG_BROADCAST), pool)
    assert flagged.event is Event.ACK and flagged.broadcast  # the flag wins over ciaddr
    relay = IPv4Address("198.51.100.2")
    relayed = answer(request(MessageType.DISCOVER, giaddr=relay), pool)
    assert relayed.destination == (str(relay), 67) and not relayed.broadcast
    assert reply_of(relayed).giaddr == relay


def test_relay_from_another_network_is_ignored() -> None:
    decision = answer(request(MessageType.DISCOVER, giaddr=OTHER), new_pool())
    assert decision.event is Event.IGNORE and decision.reply is None


def test_selecting_another_server_forgets_the_offer() -> None:
    pool = new_pool(count=1)
    answer(request(MessageType.DISCOVER), pool)
    req = request(MessageType.REQUEST, options={DhcpOption.SERVER_ID: OTHER.packed,
                                                DhcpOption.REQUESTED_IP: OTHER.packed})
    assert answer(req, pool).event is Event.IGNORE
    assert pool.lease_of(MAC_TEXT).state == LeaseState.FREE  # type: ignore[union-attr]


def test_init_reboot() -> None:
    pool = new_pool()
    unknown = request(MessageType.REQUEST, options={
        DhcpOption.REQUESTED_IP: IPv4Address("198.51.100.105").packed})
    assert answer(unknown, pool).event is Event.IGNORE  # no record: silent (RFC 2131 4.3.2)
    ip = dora(pool)
    ok = request(MessageType.REQUEST, options={DhcpOption.REQUESTED_IP: ip.packed})
    assert answer(ok, pool).event is Event.ACK
    wrong = request(MessageType.REQUEST, options={
        DhcpOption.REQUESTED_IP: IPv4Address("198.51.100.105").packed})
    nak = answer(wrong, pool)
    assert nak.event is Event.NAK and nak.broadcast
    assert reply_of(nak).message_type == MessageType.NAK
    assert reply_of(nak).yiaddr == IPv4Address(0)
    foreign = request(MessageType.REQUEST, options={DhcpOption.REQUESTED_IP: OTHER.packed})
    assert answer(foreign, pool).event is Event.NAK  # wrong network


def test_rebinding_unknown_client_is_not_ours_to_nak() -> None:
    pool = new_pool()
    req = request(MessageType.REQUEST, ciaddr=IPv4Address("198.51.100.50"))
    assert answer(req, pool).event is Event.IGNORE
    ip = dora(pool)
    moved = request(MessageType.REQUEST, ciaddr=OTHER)
    assert answer(moved, pool).event is Event.NAK  # known client, wrong network
    assert answer(request(MessageType.REQUEST, ciaddr=ip), pool).event is Event.ACK


def test_nak_via_relay_sets_broadcast_bit() -> None:
    relay = IPv4Address("198.51.100.2")
    pool = new_pool()
    dora(pool)
    req = request(MessageType.REQUEST, ciaddr=OTHER, giaddr=relay)
    nak = answer(req, pool)
    assert nak.event is Event.NAK and nak.destination == (str(relay), 67)
    assert reply_of(nak).flags & FLAG_BROADCAST


def test_decline_and_release() -> None:
    pool = new_pool()
    ip = dora(pool)
    release = request(MessageType.RELEASE, ciaddr=ip, options={DhcpOption.SERVER_ID: SERVER.packed})
    decision = answer(release, pool)
    assert decision.event is Event.RELEASE and decision.reply is None and decision.persist
    assert dora(pool) == ip  # same MAC, same address
    decline = request(MessageType.DECLINE, options={DhcpOption.SERVER_ID: SERVER.packed,
                                                   DhcpOption.REQUESTED_IP: ip.packed})
    declined = answer(decline, pool)
    assert declined.event is Event.DECLINE and declined.persist[0].state == LeaseState.DECLINED
    assert dora(pool) != ip


def test_inform_gets_options_without_address() -> None:
    ip = IPv4Address("198.51.100.7")
    decision = answer(request(MessageType.INFORM, ciaddr=ip), new_pool())
    assert decision.event is Event.ACK and decision.destination == (str(ip), 68)  # notified as ack
    reply = reply_of(decision)
    assert reply.yiaddr == IPv4Address(0) and reply.message_type == MessageType.ACK
    assert DhcpOption.LEASE_TIME not in reply.options
    assert DhcpOption.SUBNET_MASK in reply.options


def test_bootp_request() -> None:
    pool = new_pool()
    decision = answer(request(None), pool)
    assert decision.event is Event.ACK and decision.persist
    reply = reply_of(decision)
    assert reply.message_type is None and reply.yiaddr == POOL_START
    assert reply.file == b"pxelinux.0"
    assert pool.lease_of(MAC_TEXT).state == LeaseState.BOUND  # type: ignore[union-attr]


def test_bootp_address_is_permanent_and_refreshed() -> None:
    """RFC 1534 section 2: BOOTP clients never renew; their address is never reclaimed."""
    pool = new_pool(count=1)
    first = answer(request(None), pool)
    assert first.persist[0].expires == PERMANENT
    later = T0 + 30 * 86400  # long after lease_time
    other = answer(request(MessageType.DISCOVER, mac=bytes.fromhex("525400000001")), pool,
                   now=later)
    assert other.event is Event.IGNORE and "exhausted" in other.note  # no duplicate
    again = answer(request(None), pool, now=later)  # the next boot: same address, stored again
    assert again.event is Event.ACK and again.ip == first.ip
    assert again.persist and again.persist[0].expires == PERMANENT


def test_plain_dhcp_needs_pxe_first_without_allow_simple_dhcp() -> None:
    pool = new_pool()
    s = settings(allow_simple_dhcp=False)
    assert answer(request(MessageType.DISCOVER), pool, s).event is Event.IGNORE
    pxe = request(MessageType.DISCOVER, options=pxe_options())
    assert answer(pxe, pool, s).event is Event.OFFER
    assert answer(request(MessageType.DISCOVER), pool, s).event is Event.OFFER  # now known


def test_static_reservation_and_exhaustion() -> None:
    pool = new_pool(count=1)
    static = request(MessageType.DISCOVER, mac=bytes.fromhex("525400000099"))
    assert reply_of(answer(static, pool)).yiaddr == IPv4Address("198.51.100.20")
    dora(pool)
    other = request(MessageType.DISCOVER, mac=bytes.fromhex("525400000001"))
    decision = answer(other, pool)
    assert decision.event is Event.IGNORE and decision.warning and "exhausted" in decision.note


def test_reservation_held_by_another_mac_is_not_offered() -> None:
    static_mac = bytes.fromhex("525400000099")  # reserved 198.51.100.20 in new_pool()
    reserved = IPv4Address("198.51.100.20")
    pool = new_pool()
    pool.restore([Lease(reserved, MAC_TEXT, LeaseState.BOUND, T0 + 600)])  # from before
    decision = answer(request(MessageType.DISCOVER, mac=static_mac), pool)
    assert decision.event is Event.IGNORE and decision.reply is None and decision.warning
    assert decision.once  # the service logs the conflict once
    assert "198.51.100.20" in decision.note and f"held by {MAC_TEXT}" in decision.note
    bootp = answer(request(None, mac=static_mac), pool)
    assert bootp.event is Event.IGNORE and bootp.once == decision.once
    req = request(MessageType.REQUEST, mac=static_mac,
                  options={DhcpOption.REQUESTED_IP: reserved.packed})
    assert answer(req, pool).event is Event.NAK  # INIT-REBOOT: not while the other holds it
    renew = answer(request(MessageType.REQUEST, ciaddr=reserved), pool, now=T0 + 300)
    assert renew.event is Event.NAK  # the holder is told to move
    freed = answer(request(MessageType.DISCOVER, mac=static_mac), pool, now=T0 + 600)
    assert freed.event is Event.OFFER and freed.ip == reserved


def test_warning_topics_for_rate_limiting() -> None:
    relay = answer(request(MessageType.DISCOVER, giaddr=OTHER), new_pool())
    assert relay.warning and relay.topic == "relay outside the network"
    pool = new_pool(count=1)
    dora(pool)
    full = answer(request(MessageType.DISCOVER, mac=bytes.fromhex("525400000001")), pool)
    assert full.warning and full.topic == "pool exhausted"


def test_echoes_option_82_last_and_61() -> None:
    relay_info = bytes((1, 4)) + b"eth0"
    req = request(MessageType.DISCOVER, giaddr=IPv4Address("198.51.100.2"),
                  options={DhcpOption.RELAY_AGENT: relay_info,
                           DhcpOption.CLIENT_ID: b"\x01" + MAC})
    data = answer(req, new_pool()).reply
    assert data is not None
    reply = parse_packet_untrusted(data)
    assert reply.options[DhcpOption.RELAY_AGENT] == relay_info
    assert reply.options[DhcpOption.CLIENT_ID] == b"\x01" + MAC
    end = data.index(bytes((82, 6)) + relay_info)
    assert data[end + 8] == 255  # option 82 is the last one


def test_proxy_mode() -> None:
    s = settings(mode="proxy")
    assert answer(request(MessageType.DISCOVER), None, s).event is Event.IGNORE
    offer = answer(request(MessageType.DISCOVER, options=pxe_options()), None, s)
    assert offer.event is Event.OFFER and offer.broadcast
    reply = reply_of(offer)
    assert reply.yiaddr == IPv4Address(0) and reply.file == b"grubx64.efi"
    assert DhcpOption.LEASE_TIME not in reply.options
    assert DhcpOption.SUBNET_MASK not in reply.options
    assert reply.options[DhcpOption.VENDOR_CLASS] == b"PXEClient"


@pytest.mark.parametrize("mode", ["server", "proxy"])
def test_boot_service_port_4011(mode: str) -> None:
    client = IPv4Address("198.51.100.150")
    req = request(MessageType.REQUEST, ciaddr=client, options=pxe_options())
    decision = answer(req, new_pool(), settings(mode=mode), boot_service=True,
                      source=(str(client), 4011))
    assert decision.event is Event.ACK and decision.destination == (str(client), 4011)
    assert reply_of(decision).file == b"grubx64.efi"


_CODES = st.sampled_from([1, 3, 12, 43, 50, 52, 53, 54, 55, 57, 60, 61, 66, 67, 77, 82, 93, 94,
                          97, 175])
_ADDRESSES = st.sampled_from([0, int(SERVER), int(POOL_START), int(POOL_START) + 3,
                              int(OTHER), 0xFFFFFFFF]).map(IPv4Address)


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(
    options=st.dictionaries(_CODES, st.binary(max_size=20), max_size=8),
    kind=st.sampled_from([None, *range(0, 10)]),
    ciaddr=_ADDRESSES, giaddr=_ADDRESSES, flags=st.sampled_from([0, FLAG_BROADCAST]),
    mac=st.binary(min_size=0, max_size=16), mode=st.sampled_from(["server", "proxy"]),
    boot_service=st.booleans(), simple=st.booleans(),
)
def test_any_parsed_request_gets_a_decision_never_an_exception(
        options: dict[int, bytes], kind: int | None, ciaddr: IPv4Address,
        giaddr: IPv4Address, flags: int, mac: bytes, mode: str, boot_service: bool,
        simple: bool) -> None:
    if kind is not None:
        options[DhcpOption.MESSAGE_TYPE] = bytes((kind,))
    options.pop(52, None)
    packet = parse_packet_untrusted(encode_packet(DhcpPacket(
        op=1, xid=1, chaddr=mac, ciaddr=ciaddr, giaddr=giaddr, flags=flags, options=options)))
    pool = new_pool(count=3)
    for now in (T0, T0 + 1):  # twice: with and without state from the first
        decision = answer(packet, pool, settings(mode=mode, allow_simple_dhcp=simple), now=now,
                          boot_service=boot_service, source=("198.51.100.77", 68))
        if decision.reply is not None:
            reply = reply_of(decision)
            assert reply.xid == 1 and reply.op == 2
            assert decision.destination is not None


def test_ack_stores_host_name_and_uuid_a_renewal_keeps_them() -> None:
    """What ``pybootd leases`` shows: option 12 and option 97 as dmidecode prints it."""
    pool = new_pool()
    options = {**pxe_options(), DhcpOption.HOST_NAME: b"pc-1"}
    ip = dora(pool, options)
    (lease,) = [item for item in pool.leases() if item.ip == ip]
    assert (lease.hostname, lease.uuid) == ("pc-1", "4C4C4544-0042-3510-8051-B4C04F4D3132")
    renew = answer(request(MessageType.REQUEST, ciaddr=ip), pool, now=T0 + 1800)
    assert renew.event is Event.ACK
    (stored,) = renew.persist
    assert (stored.hostname, stored.uuid) == ("pc-1", "4C4C4544-0042-3510-8051-B4C04F4D3132")
    assert stored.expires == T0 + 1800 + 3600


def test_plain_client_refused_names_the_mac_and_the_key() -> None:
    decision = answer(request(MessageType.DISCOVER), new_pool(),
                      settings(allow_simple_dhcp=False))
    assert decision.event is Event.IGNORE and decision.reply is None
    assert decision.note == (f"{MAC_TEXT}: DISCOVER ignored: plain DHCP client (not PXE) and "
                             "allow_simple_dhcp is off (expected allow_simple_dhcp = on to "
                             "serve it)")
    assert decision.once  # a lasting condition: logged once per MAC per window


def test_the_stored_lease_keeps_the_boot_file_of_its_ack() -> None:
    """What an operator reads in ``pybootd leases --json`` and /api/v1/leases,
    also after a restart."""
    pool = new_pool()
    bios = pxe_options(PXE_BIOS, 0)
    offer = reply_of(answer(request(MessageType.DISCOVER, options=bios), pool))
    decision = answer(request(MessageType.REQUEST, options={
        **bios, DhcpOption.SERVER_ID: SERVER.packed,
        DhcpOption.REQUESTED_IP: offer.yiaddr.packed}), pool)
    assert decision.bootfile == "pxelinux.0"
    assert [lease.bootfile for lease in decision.persist] == ["pxelinux.0"]
    # A renewal that gets no file (a plain DHCP client's) keeps the one it booted.
    renewal = answer(request(MessageType.REQUEST, ciaddr=offer.yiaddr), pool)
    assert renewal.event is Event.ACK
    assert [lease.bootfile for lease in renewal.persist] == ["pxelinux.0"]


def test_a_shared_pool_stores_its_offer_before_it_leaves_and_ends_it() -> None:
    """Several instances on one store: the OFFER's hold is in the decision to store;
    a REQUEST naming another server ends it (RFC 2131 4.3.2, SELECTING)."""
    pool = LeasePool(NETWORK, POOL_START, 10, 3600, excluded={SERVER}, shared=True)
    offer = answer(request(MessageType.DISCOVER), pool)
    assert offer.event is Event.OFFER
    assert [(lease.ip, lease.state) for lease in offer.persist] == [
        (POOL_START, LeaseState.OFFERED)]
    other = answer(request(MessageType.REQUEST, options={
        DhcpOption.SERVER_ID: OTHER.packed, DhcpOption.REQUESTED_IP: POOL_START.packed}), pool)
    assert other.event is Event.IGNORE
    assert [(lease.ip, lease.state) for lease in other.persist] == [
        (POOL_START, LeaseState.FREE)]
