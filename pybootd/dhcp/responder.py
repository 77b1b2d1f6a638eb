"""From a request to a decision: which reply, which options, where to send it.

Sans-IO: :func:`respond` takes a parsed request, what is known about the
client, the pool and the clock, and returns a :class:`Decision` (the reply
bytes, if any, its destination, and the leases to store first). Access
control is done by the caller before; sockets and disks are the caller's.

References: RFC 2131 sections 4.1 (destinations), 4.3 (server behaviour) and
table 3 (reply fields); RFC 2132; RFC 4578; RFC 3046 (option 82 echoed);
RFC 6842 (option 61 echoed); PXE 2.1 (proxyDHCP, port 4011).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from pybootd.dhcp.arch import HTTP_TO_PXE
from pybootd.dhcp.chain import ChainTracker
from pybootd.dhcp.events import Event, Ignored
from pybootd.dhcp.options import DhcpOption, MessageType, param_request_list
from pybootd.dhcp.packet import (
    BOOTREPLY,
    BOOTREQUEST,
    FLAG_BROADCAST,
    ZERO,
    DhcpPacket,
    encode_packet,
)
from pybootd.dhcp.pool import PERMANENT, Lease, LeasePool
from pybootd.dhcp.pxe import HTTP_CLIENT, PXE_CLIENT, ClientInfo, pxe_vendor_options

CLIENT_PORT = 68
SERVER_PORT = 67
BROADCAST = IPv4Address("255.255.255.255")
FILE_FIELD_MAX = 127  # RFC 951: the 128-byte ``file`` field, NUL-terminated
_U32 = struct.Struct("!I")
_HTTP_SCHEMES = ("http://", "https://")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the responder needs from the configuration and the detected network."""

    server_id: IPv4Address  # option 54: our address on the served network
    network: IPv4Network  # the pool's network (relays must sit in it)
    next_server: IPv4Address  # siaddr and option 66: the TFTP server
    mode: str = "server"  # "server" or "proxy" (PXE 2.1 proxyDHCP)
    gateway: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    lease_time: int = 86400
    servername: str | None = None
    boot_file: str | None = None
    bootfiles: Mapping[int, str] = field(default_factory=dict)
    ipxe_bootfile: str | None = None
    ipxe_bootfiles: Mapping[int, str] = field(default_factory=dict)  # [bootfile] ipxe-ARCH
    allow_simple_dhcp: bool = False
    http_root: str | None = None  # [tftp] root when an http(s) URL: for UEFI HTTP boot
    http_base: str | None = None  # pybootd's own [httpd], "http://192.0.2.1/": before http_root
    # Encoded once: the options that are the same in every reply.
    lease_options: tuple[tuple[int, bytes], ...] = field(init=False, repr=False, compare=False)
    network_options: tuple[tuple[int, bytes], ...] = field(init=False, repr=False,
                                                           compare=False)

    def __post_init__(self) -> None:
        lease = self.lease_time
        object.__setattr__(self, "lease_options", (
            (DhcpOption.LEASE_TIME, _U32.pack(lease)),
            (DhcpOption.RENEWAL_TIME, _U32.pack(lease // 2)),  # RFC 2131 4.4.5: T1 50 %
            (DhcpOption.REBINDING_TIME, _U32.pack(lease * 7 // 8)),  # T2 87.5 %
        ))
        network: list[tuple[int, bytes]] = []
        if self.mode == "server":
            network.append((DhcpOption.SUBNET_MASK, self.network.netmask.packed))
            if self.gateway is not None:
                network.append((DhcpOption.ROUTER, self.gateway.packed))
            if self.dns:
                network.append((DhcpOption.DNS, b"".join(a.packed for a in self.dns)))
            if self.domain:
                network.append((DhcpOption.DOMAIN_NAME, self.domain.encode()))
            network.append((DhcpOption.BROADCAST, self.network.broadcast_address.packed))
        object.__setattr__(self, "network_options", tuple(network))


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one request. ``reply`` None means stay silent."""

    event: Event  # OFFER, ACK (also the reply to INFORM and BOOTP), NAK, RELEASE, DECLINE, IGNORE
    reply: bytes | None = None
    destination: tuple[str, int] | None = None
    broadcast: bool = False  # destination is 255.255.255.255
    ip: IPv4Address | None = None
    bootfile: str | None = None
    persist: tuple[Lease, ...] = ()  # store these before sending the reply
    note: str = ""  # why, for the log line
    warning: bool = False  # worth a warning (pool exhausted, bad static)
    topic: str = ""  # the kind of warning, for rate-limiting its log lines
    once: str = ""  # log the note once per MAC and this key (a lasting condition)
    reason: Ignored | None = None  # why an IGNORE (a metric label: a fixed set)


def ignore(reason: Ignored, note: str, *, warning: bool = False,
           persist: tuple[Lease, ...] = (), topic: str = "", once: str = "") -> Decision:
    return Decision(Event.IGNORE, note=note, warning=warning, persist=persist, topic=topic,
                    once=once, reason=reason)


def respond(packet: DhcpPacket, client: ClientInfo, pool: LeasePool | None,
            settings: Settings, now: float, *,
            boot_service: bool = False, source: tuple[str, int] = ("0.0.0.0", 68),
            chains: ChainTracker | None = None) -> Decision:
    """Decide the answer to *packet* (already access-checked) at time *now*.

    *boot_service* is True for requests that came to the PXE port (4011),
    which are answered to their *source*. With *chains* (``ipxe_rom =
    chainload``) an iPXE firmware's own exchange is served as plain PXE.
    """
    if packet.op != BOOTREQUEST:
        return ignore(Ignored.MALFORMED, "not a BOOTREQUEST")
    if not packet.chaddr:
        return ignore(Ignored.MALFORMED, "no hardware address")
    if packet.giaddr != ZERO and packet.giaddr not in settings.network:
        return ignore(Ignored.RELAY_OUTSIDE,
                      f"relay {packet.giaddr} is outside {settings.network}", warning=True,
                      topic="relay outside the network")
    kind = packet.message_type
    if client.netboot and chains is not None and kind not in (MessageType.RELEASE,
                                                               MessageType.DECLINE) \
            and chains.is_firmware(client.mac, packet.xid, now) and client.ipxe:
        client = replace(client, ipxe=False)  # an iPXE ROM: it loads our iPXE first
    if client.netboot and kind not in (MessageType.RELEASE, MessageType.DECLINE):
        refused = _unservable(client, settings)
        if refused is not None:
            return refused
    if boot_service:
        return _boot_service(packet, client, settings, kind, source)
    if settings.mode == "proxy" or pool is None:
        return _proxy(packet, client, settings, kind)
    if not (client.netboot or settings.allow_simple_dhcp or pool.seen_pxe(client.mac)) \
            and kind not in (MessageType.RELEASE, MessageType.DECLINE):
        # A lasting condition: logged at INFO once per MAC per window by the caller.
        return ignore(Ignored.PLAIN_CLIENT,
                      f"{client.mac}: {_kind(kind)} ignored: plain DHCP client (not PXE) and "
                      "allow_simple_dhcp is off (expected allow_simple_dhcp = on to serve it)",
                      once="allow_simple_dhcp", topic="plain DHCP client ignored")
    if client.netboot:
        pool.mark_pxe(client.mac)
    if kind is None:
        return _bootp(packet, client, pool, settings, now)
    handler = _HANDLERS.get(kind)
    if handler is None:
        return ignore(Ignored.NOT_FOR_SERVER, f"{kind.name} is not for a server")
    return handler(packet, client, pool, settings, now)


# --- message handlers (RFC 2131 section 4.3) --------------------------------
def _discover(packet: DhcpPacket, client: ClientInfo, pool: LeasePool, settings: Settings,
              now: float) -> Decision:
    """RFC 2131 4.3.1: choose an address, hold it, OFFER it."""
    conflict = _static_conflict(client, pool, now)
    if conflict is not None:
        return conflict
    lease = pool.offer(client.mac, packet.address_option(DhcpOption.REQUESTED_IP), now)
    if lease is None:
        return ignore(Ignored.POOL_EXHAUSTED,
                      f"pool exhausted ({pool.count} addresses), no offer", warning=True,
                      topic="pool exhausted")
    if lease.ip not in settings.network:
        return ignore(Ignored.RESERVATION,
                      f"reserved {lease.ip} is outside {settings.network}", warning=True,
                      topic="reservation outside the network")
    # A shared pool's offer is stored before it leaves (held for offer_hold).
    return _with_persist(_answer(packet, client, settings, MessageType.OFFER, lease.ip),
                         pool.take_dirty())


def _request(packet: DhcpPacket, client: ClientInfo, pool: LeasePool, settings: Settings,
             now: float) -> Decision:
    """RFC 2131 4.3.2: SELECTING, INIT-REBOOT, RENEWING or REBINDING."""
    server = packet.address_option(DhcpOption.SERVER_ID)
    requested = packet.address_option(DhcpOption.REQUESTED_IP)
    if server is not None:  # SELECTING
        if server != settings.server_id:
            pool.forget_offer(client.mac, now)  # a shared pool ends its hold in the store
            return ignore(Ignored.OTHER_SERVER, f"client chose server {server}",
                          persist=pool.take_dirty())
        ip = requested or packet.ciaddr
        if ip == ZERO:
            return ignore(Ignored.BAD_REQUEST, "REQUEST names no address")
    elif requested is not None:  # INIT-REBOOT
        ip = requested
        if ip in settings.network and not pool.knows(client.mac):
            return ignore(Ignored.UNKNOWN_CLIENT,
                          f"INIT-REBOOT for {ip}, but no record of this client (RFC 2131 4.3.2)")
    elif packet.ciaddr != ZERO:  # RENEWING or REBINDING
        ip = packet.ciaddr
        if not pool.knows(client.mac):
            # Another server's client rebinding: not ours to NAK (RFC 2131 4.3.2).
            return ignore(Ignored.UNKNOWN_CLIENT,
                          f"RENEW/REBIND of {ip}, but no record of this client")
    else:
        return ignore(Ignored.BAD_REQUEST, "REQUEST names no address")
    if ip not in settings.network:
        return _nak(packet, settings, f"{ip} is not on {settings.network}")
    lease = pool.request(client.mac, ip, now, hostname=host_name(packet), uuid=client.uuid)
    if lease is None:
        holder = pool.static_blocker(client.mac, now)
        why = f" ({_held(holder, now)})" if holder is not None and holder.ip == ip else ""
        return _nak(packet, settings, f"{ip} is not available to this client{why}")
    decision = _answer(packet, client, settings, MessageType.ACK, lease.ip)
    pool.remember_bootfile(lease.ip, decision.bootfile)
    return _with_persist(decision, pool.take_dirty())


def _decline(packet: DhcpPacket, client: ClientInfo, pool: LeasePool, settings: Settings,
             now: float) -> Decision:
    """RFC 2131 4.3.3: the client found the address in use; quarantine it."""
    if packet.address_option(DhcpOption.SERVER_ID) not in (None, settings.server_id):
        return ignore(Ignored.OTHER_SERVER, "DECLINE for another server")
    ip = packet.address_option(DhcpOption.REQUESTED_IP)
    if ip is None or pool.decline(client.mac, ip, now) is None:
        return ignore(Ignored.UNKNOWN_CLIENT, f"DECLINE of {ip}, which this client does not hold")
    return Decision(Event.DECLINE, ip=ip, persist=pool.take_dirty(),
                    note=f"{ip} quarantined for {pool.quarantine:g}s")


def _release(packet: DhcpPacket, client: ClientInfo, pool: LeasePool, settings: Settings,
             now: float) -> Decision:
    """RFC 2131 4.3.4: the lease ends; the MAC keeps its affinity while free."""
    if packet.address_option(DhcpOption.SERVER_ID) not in (None, settings.server_id):
        return ignore(Ignored.OTHER_SERVER, "RELEASE for another server")
    if pool.release(client.mac, packet.ciaddr, now) is None:
        return ignore(Ignored.UNKNOWN_CLIENT,
                      f"RELEASE of {packet.ciaddr}, which this client does not hold")
    return Decision(Event.RELEASE, ip=packet.ciaddr, persist=pool.take_dirty())


def _inform(packet: DhcpPacket, client: ClientInfo, pool: LeasePool, settings: Settings,
            now: float) -> Decision:
    """RFC 2131 4.3.5: parameters only; no yiaddr, no lease time; the reply is an ACK."""
    if packet.ciaddr == ZERO and packet.giaddr == ZERO:
        return ignore(Ignored.BAD_REQUEST, "INFORM without ciaddr")
    return _answer(packet, client, settings, MessageType.ACK, ZERO, no_lease=True)


def _bootp(packet: DhcpPacket, client: ClientInfo, pool: LeasePool, settings: Settings,
           now: float) -> Decision:
    """RFC 951 / RFC 1534 section 2: a BOOTP request gets an address at once, for good.

    A BOOTP client never renews, so its binding has no expiry; each request
    stores it again.
    """
    conflict = _static_conflict(client, pool, now)
    if conflict is not None:
        return conflict
    offered = pool.offer(client.mac, None, now)
    if offered is None:
        return ignore(Ignored.POOL_EXHAUSTED,
                      f"pool exhausted ({pool.count} addresses), no BOOTP reply", warning=True,
                      topic="pool exhausted")
    lease = pool.request(client.mac, offered.ip, now, permanent=True,
                         hostname=host_name(packet), uuid=client.uuid)
    if lease is None or lease.ip not in settings.network:
        return ignore(Ignored.POOL_EXHAUSTED, f"cannot bind {offered.ip} for BOOTP", warning=True,
                      topic="reservation outside the network")
    decision = _answer(packet, client, settings, None, lease.ip)
    pool.remember_bootfile(lease.ip, decision.bootfile)
    return _with_persist(decision, pool.take_dirty())


def host_name(packet: DhcpPacket) -> str | None:
    """Option 12 as text for the lease file (RFC 2132 3.14: at least 1 byte, NVT ASCII).

    Untrusted: bytes that are not UTF-8 are written ``\\xNN`` (storable
    text), and whoever shows the name escapes control characters.
    """
    raw = packet.options.get(DhcpOption.HOST_NAME)
    if not raw:
        return None
    return raw.rstrip(b"\0").decode("utf-8", "backslashreplace") or None


def _kind(kind: MessageType | None) -> str:
    return kind.name if kind is not None else "BOOTP"


def _static_conflict(client: ClientInfo, pool: LeasePool, now: float) -> Decision | None:
    """The client's reserved address is still another's: no answer until that ends."""
    holder = pool.static_blocker(client.mac, now)
    if holder is None:
        return None
    return ignore(Ignored.RESERVATION,
                  f"reservation {holder.ip} for {client.mac} not served: {_held(holder, now)}; "
                  f"{client.mac} gets it when that ends", warning=True,
                  topic="reservation conflict", once=f"static {holder.ip} {holder.mac}")


def _held(holder: Lease, now: float) -> str:
    if holder.mac is None:
        return f"quarantined after a DECLINE for {holder.expires - now:.0f}s more"
    if holder.expires == PERMANENT:
        return f"held by BOOTP client {holder.mac}, with no expiry, until it boots again"
    return f"held by {holder.mac} for {holder.expires - now:.0f}s more"


_HANDLERS = {
    MessageType.DISCOVER: _discover,
    MessageType.REQUEST: _request,
    MessageType.DECLINE: _decline,
    MessageType.RELEASE: _release,
    MessageType.INFORM: _inform,
}


# --- proxyDHCP and the boot service (PXE 2.1 sections 2.2.3 and 2.2.4) -------
def _proxy(packet: DhcpPacket, client: ClientInfo, settings: Settings,
           kind: MessageType | None) -> Decision:
    """Next to another DHCP server: a boot-only OFFER for PXE clients, no address."""
    if not client.netboot:
        return ignore(Ignored.NOT_PXE, "proxy mode serves PXE clients only")
    if kind != MessageType.DISCOVER:
        return ignore(Ignored.NOT_FOR_SERVER, "proxy mode answers DISCOVER only on this port")
    return _answer(packet, client, settings, MessageType.OFFER, ZERO, no_lease=True)


def _boot_service(packet: DhcpPacket, client: ClientInfo, settings: Settings,
                  kind: MessageType | None, source: tuple[str, int]) -> Decision:
    """A REQUEST to port 4011: ACK with the boot file, to the sender."""
    if not client.netboot:
        return ignore(Ignored.NOT_PXE, "boot service serves PXE clients only")
    if kind not in (MessageType.REQUEST, MessageType.INFORM):
        return ignore(Ignored.NOT_FOR_SERVER, "boot service answers REQUEST only")
    decision = _answer(packet, client, settings, MessageType.ACK, ZERO, no_lease=True)
    host = str(packet.ciaddr) if packet.ciaddr != ZERO else source[0]
    return replace(decision, destination=(host, source[1]), broadcast=False)


# --- replies ----------------------------------------------------------------
def bootfile_for(client: ClientInfo, settings: Settings) -> str | None:
    """iPXE's own file first, then the file of the preferred architecture.

    A UEFI HTTP boot client (UEFI 2.x section 24.7) needs an http(s) URL:
    the file itself when it is one, else pybootd's own HTTP server
    (``http_base``) or ``http_root`` + the file, else None. iPXE fetches a
    relative name over HTTP too when pybootd serves HTTP (faster than TFTP,
    and the script's relative names then come over HTTP as well).
    """
    name = _ipxe_file(client, settings) if client.ipxe else None
    if name is not None and settings.http_base is not None and "://" not in name:
        return _http_url(name, settings.http_base)
    if name is None and client.http:
        # Its own entry, else the UEFI PXE one of the same CPU (the same EFI
        # binaries); never boot_file, which is a BIOS file by default.
        arches = [*client.arches, *(HTTP_TO_PXE[a] for a in client.arches if a in HTTP_TO_PXE)]
        name = next((settings.bootfiles[a] for a in arches if a in settings.bootfiles), None)
    elif name is None:
        found = (settings.bootfiles[a] for a in client.arches if a in settings.bootfiles)
        name = next(found, settings.boot_file)
    if name and client.http:
        return _http_url(name, settings.http_base or settings.http_root)
    return name


def _ipxe_file(client: ClientInfo, settings: Settings) -> str | None:
    """``[bootfile] ipxe-ARCH`` of the client's architecture, else ``ipxe``."""
    for arch in client.arches:
        if arch in settings.ipxe_bootfiles:
            return settings.ipxe_bootfiles[arch]
    return settings.ipxe_bootfile


def _http_url(name: str, root: str | None) -> str | None:
    if name.lower().startswith(_HTTP_SCHEMES):
        return name
    if "://" in name or root is None:
        return None  # tftp://..., or a relative name and no http root
    return f"{root.rstrip('/')}/{name.lstrip('/')}"


def _unservable(client: ClientInfo, settings: Settings) -> Decision | None:
    """A firmware client whose boot file cannot be sent: ignore it before any offer."""
    name = bootfile_for(client, settings)
    if name is None and client.http:
        arch = client.arch_label
        return ignore(Ignored.NO_HTTP_URL,
                      f"HTTP boot client {client.mac} ignored: no http URL configured for "
                      f"arch {arch} (expected an [httpd] section, [bootfile] {arch} = "
                      "http://..., or [tftp] root = http://... for a relative name)",
                      once=f"http-boot {arch}",
                      topic="HTTP boot client ignored")
    if name is not None and len(name.encode()) > FILE_FIELD_MAX:
        return _too_long(name)
    return None


def _too_long(name: str) -> Decision:
    return ignore(Ignored.BOOT_FILE_TOO_LONG,
                  f"boot file {name!r} is longer than {FILE_FIELD_MAX} bytes, the BOOTP "
                  "file field", warning=True, topic="boot file too long")


def _answer(packet: DhcpPacket, client: ClientInfo, settings: Settings,
            kind: MessageType | None, yiaddr: IPv4Address, *, no_lease: bool = False) -> Decision:
    """An OFFER, ACK or BOOTREPLY (RFC 2131 table 3)."""
    wanted = param_request_list(packet.options)
    give_file = kind is None or client.netboot or DhcpOption.BOOTFILE in wanted
    bootfile = bootfile_for(client, settings) if give_file else None
    file = (bootfile or "").encode()
    if len(file) > FILE_FIELD_MAX:
        return _too_long(bootfile or "")  # never cut: shim reads only this field
    options = _options(packet, client, settings, kind, bootfile, wanted, no_lease)
    sname = (settings.servername or "").encode()[:63]
    reply = DhcpPacket(
        op=BOOTREPLY, xid=packet.xid, chaddr=packet.chaddr, htype=packet.htype,
        flags=packet.flags, ciaddr=packet.ciaddr if kind != MessageType.OFFER else ZERO,
        yiaddr=yiaddr, siaddr=settings.next_server, giaddr=packet.giaddr, sname=sname,
        file=file, dhcp=packet.dhcp or kind is not None,
    )
    data = encode_packet(reply, tuple(options))
    # RFC 2131 4.3.5: INFORM -> ACK; a BOOTREPLY is notified as an ACK too
    event = Event.OFFER if kind == MessageType.OFFER else Event.ACK
    destination, broadcast = _destination(packet, nak=False)
    return Decision(event, data, destination, broadcast, yiaddr if yiaddr != ZERO else None,
                    bootfile)


def _options(packet: DhcpPacket, client: ClientInfo, settings: Settings,
             kind: MessageType | None, bootfile: str | None, wanted: frozenset[int],
             no_lease: bool) -> list[tuple[int, bytes]]:
    opts: list[tuple[int, bytes]] = []
    if kind is not None:
        opts.append((DhcpOption.MESSAGE_TYPE, bytes((kind,))))
        opts.append((DhcpOption.SERVER_ID, settings.server_id.packed))
    if not no_lease and kind is not None:  # INFORM, proxy and boot service: no lease
        opts.extend(settings.lease_options)
    opts.extend(settings.network_options)
    if bootfile:
        if client.netboot or DhcpOption.TFTP_SERVER in wanted:
            opts.append((DhcpOption.TFTP_SERVER, str(settings.next_server).encode()))
        opts.append((DhcpOption.BOOTFILE, bootfile.encode()))
    opts.extend(_netboot_options(client))
    client_id = packet.options.get(DhcpOption.CLIENT_ID)
    if client_id is not None and kind is not None:
        opts.append((DhcpOption.CLIENT_ID, client_id))  # RFC 6842
    relay = packet.options.get(DhcpOption.RELAY_AGENT)
    if relay is not None:
        opts.append((DhcpOption.RELAY_AGENT, relay))  # RFC 3046 2.2: echo, last
    return opts


def _netboot_options(client: ClientInfo) -> list[tuple[int, bytes]]:
    """PXE 2.1 / UEFI HTTP boot: echo the class and UUID, no boot server discovery."""
    if client.http:
        opts = [(int(DhcpOption.VENDOR_CLASS), HTTP_CLIENT)]
    elif client.pxe:
        opts = [(int(DhcpOption.VENDOR_CLASS), PXE_CLIENT),
                (int(DhcpOption.VENDOR_SPECIFIC), pxe_vendor_options())]
    else:
        return []
    if client.uuid_option is not None:
        opts.append((DhcpOption.CLIENT_UUID, client.uuid_option))
    return opts


def _nak(packet: DhcpPacket, settings: Settings, why: str) -> Decision:
    """RFC 2131 4.3.2 and table 3: NAK with 53, 54, 56; broadcast (or via the relay)."""
    flags = packet.flags | FLAG_BROADCAST if packet.giaddr != ZERO else packet.flags
    reply = DhcpPacket(op=BOOTREPLY, xid=packet.xid, chaddr=packet.chaddr, htype=packet.htype,
                       flags=flags, giaddr=packet.giaddr)
    options = [
        (int(DhcpOption.MESSAGE_TYPE), bytes((MessageType.NAK,))),
        (int(DhcpOption.SERVER_ID), settings.server_id.packed),
        (int(DhcpOption.MESSAGE), why.encode()[:255]),
    ]
    client_id = packet.options.get(DhcpOption.CLIENT_ID)
    if client_id is not None:
        options.append((DhcpOption.CLIENT_ID, client_id))
    relay = packet.options.get(DhcpOption.RELAY_AGENT)
    if relay is not None:
        options.append((DhcpOption.RELAY_AGENT, relay))
    destination, broadcast = _destination(packet, nak=True)
    requested = packet.address_option(DhcpOption.REQUESTED_IP) or packet.ciaddr
    return Decision(Event.NAK, encode_packet(reply, tuple(options)), destination, broadcast,
                    requested if requested != ZERO else None, note=why)


def _destination(packet: DhcpPacket, *, nak: bool) -> tuple[tuple[str, int], bool]:
    """RFC 2131 section 4.1: relay, else broadcast for NAK / no ciaddr / flag, else ciaddr.

    Unicast to yiaddr before the client has its address would need an ARP
    entry we cannot add from a UDP socket, so those replies are broadcast.
    """
    if packet.giaddr != ZERO:
        return (str(packet.giaddr), SERVER_PORT), False
    if nak or packet.ciaddr == ZERO or packet.broadcast:
        return (str(BROADCAST), CLIENT_PORT), True
    return (str(packet.ciaddr), CLIENT_PORT), False


def _with_persist(decision: Decision, persist: tuple[Lease, ...]) -> Decision:
    return replace(decision, persist=persist)
