"""The DHCP/BOOTP/PXE service: sockets, the lease file, access control, events.

Everything protocol-related is decided by the sans-IO :mod:`pybootd.dhcp`
package; this module only moves bytes:

* one UDP socket on ``[bootp] port`` (67) and one on ``pxe_port`` (4011), read
  with ``recvmsg`` and ``IP_PKTINFO`` to learn the interface a request came in
  on; broadcasts are sent with ``sendmsg`` and ``IP_PKTINFO`` naming that
  interface, so they leave by it even on a host with no default route;
* acknowledged leases are committed to SQLite before their ACKs are sent, in
  groups (see :mod:`pybootd.server.leasestore`), in the thread pool;
* HTTP access queries run in the thread pool; a request waiting for one
  holds up no other request;
* a malformed or hostile packet is logged and dropped; per-packet warnings
  (malformed packets, an exhausted pool, a foreign relay, overload, failed
  access queries) are rate-limited, so a flood writes a bounded number of
  lines; a lasting refusal (access control, a plain DHCP client while
  ``allow_simple_dhcp`` is off) is logged at INFO once per MAC per 300 s;
* the sockets are bound without ``SO_REUSEADDR``: a second server on the port
  fails at start instead of sharing the broadcasts; the lease file is locked
  (see :mod:`pybootd.server.leasestore`);
* a lease file that fails for good at run time (damaged, I/O error) stops
  the daemon with exit status 1 (``Runtime.fatal``) rather than withholding
  every ACK; a transient failure (locked) withholds that batch only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TypeVar

from pybootd import udp
from pybootd.config import BootpConfig, Config
from pybootd.dhcp.chain import ChainTracker
from pybootd.dhcp.events import REPLY_EVENTS, Event, Ignored
from pybootd.dhcp.options import DhcpOption, MessageType
from pybootd.dhcp.packet import ZERO, DhcpPacket, parse_packet_untrusted
from pybootd.dhcp.pool import Lease, LeasePool
from pybootd.dhcp.pxe import ClientInfo, client_info
from pybootd.dhcp.responder import Decision, Settings, respond
from pybootd.errors import BadPacket, LeaseStoreError, NetworkConfigError, SourceError
from pybootd.loglimit import LogLimiter, OncePer
from pybootd.netif import LocalNetwork, find_network, local_networks
from pybootd.observe.timeline import Source
from pybootd.runtime import Runtime
from pybootd.server.dhcpacl import AccessControl, Verdict
from pybootd.server.notify import Notifier
from pybootd.server.stores import Store, describe_store_error, is_fatal, open_store
from pybootd.udp import PKTINFO_SPACE, packet_info, pktinfo_cmsg

log = logging.getLogger("pybootd.dhcp")
T = TypeVar("T")

_RECV_SIZE = 4096  # larger than any sane request (RFC 2131: at least 576 accepted)
_BATCH = 64  # datagrams read per wake-up before yielding to the loop
_MAX_WAITING = 1024  # requests waiting for an access answer; more are dropped
_STORE_TIMEOUT = 30.0
_STORE_POOL = "leases"  # Runtime.pool: one thread, see _in_store_thread
_CHANGES_POOL = "lease-changes"  # Runtime.pool: one thread, see _follow
_DECISIONS = 3  # a request refused this often by a shared store is dropped (it retries)
_CHANGES_EVERY = 1.0  # seconds between reads of what other instances wrote
_REPORT_EVERY = 60  # seconds between the INFO lines of counts
_INCOMING_EVENTS = {
    MessageType.DISCOVER: Event.DISCOVER,
    MessageType.REQUEST: Event.REQUEST,
    MessageType.RELEASE: Event.RELEASE,
    MessageType.DECLINE: Event.DECLINE,
    MessageType.INFORM: Event.INFORM,
}
# Decisions that are replies (REPLY_EVENTS) get their own notification; release,
# decline and inform are notified once, as the event the client sent.


class _Peer:
    """Who sent a request, for log lines: ``MAC [ciaddr] [via giaddr] [pxe/arch]``.

    Built only when a line is actually written (``%s`` calls ``__str__``).
    """

    __slots__ = ("client", "packet")

    def __init__(self, packet: DhcpPacket, client: ClientInfo) -> None:
        self.packet = packet
        self.client = client

    def __str__(self) -> str:
        packet, client = self.packet, self.client
        parts = [client.mac]
        if packet.ciaddr != ZERO:
            parts.append(str(packet.ciaddr))
        if packet.giaddr != ZERO:
            parts.append(f"via {packet.giaddr}")
        if client.netboot:
            kind = "http" if client.http else ("ipxe" if client.ipxe else "pxe")
            parts.append(f"{kind}/{client.arch_label}")
        return " ".join(parts)


@dataclass
class _Pending:
    """A reply that waits for its leases to be committed.

    It keeps the request: a shared store may refuse the decision (another
    instance holds the address), and the request is then decided again.
    """

    decision: Decision
    sock: socket.socket
    ifindex: int
    peer: _Peer  # the request and its client
    source: tuple[str, int]
    boot_service: bool
    attempt: int = 1


def detect_network(config: Config) -> LocalNetwork:
    """The network DHCP serves: the one holding ``pool_start`` (server mode), or
    in proxy mode the one of ``address``, ``interface``, or the only LAN."""
    bootp = config.bootp
    assert bootp is not None
    if bootp.pool_start is not None:
        network = find_network(bootp.pool_start, bootp.interface, bootp.netmask)
        last = bootp.pool_start + (bootp.pool_count - 1)
        if last not in network.network:
            raise config.error(
                "bootp", "pool_count",
                f"the pool ends at {last}, outside {network.network} on "
                f"{network.interface} (expected a smaller pool_count)")
        return network
    listen = IPv4Address(str(bootp.address))  # the config gives an IPv4Address
    if not listen.is_unspecified:
        return find_network(listen, bootp.interface, bootp.netmask, what="address")
    candidates = [n for n in local_networks() if not n.address.is_loopback
                  and (bootp.interface is None or n.interface == bootp.interface)]
    if not candidates:
        raise NetworkConfigError(
            "Unable to detect network configuration: no IPv4 address on "
            f"{bootp.interface or 'any interface'} (expected interface = NAME in [bootp])")
    if len({n.interface for n in candidates}) > 1:
        # Guessing would answer one LAN and silently ignore the others.
        found = ", ".join(str(n) for n in candidates)
        raise NetworkConfigError(
            f"Unable to detect network configuration: proxy mode found several networks "
            f"({found}) (expected interface = NAME in [bootp], the LAN to serve)")
    return candidates[0]


class DhcpService:
    """BOOTP/DHCP/PXE server or proxyDHCP, per ``[bootp]``."""

    name = "dhcp"

    def __init__(self, runtime: Runtime) -> None:
        if runtime.config.bootp is None:
            raise runtime.config.error("bootp", None, "missing (expected a [bootp] section)")
        self.runtime = runtime
        self.config: Config = runtime.config
        self.bootp: BootpConfig = runtime.config.bootp
        self.server_address = IPv4Address(0)
        self.network: LocalNetwork | None = None
        self.settings: Settings | None = None
        self.pool: LeasePool | None = None
        self.store: Store | None = None
        # ipxe_rom = chainload: tell an iPXE ROM from the iPXE it loads
        self.chains = ChainTracker() if self.bootp.ipxe_rom == "chainload" else None
        self.limiter = LogLimiter(logger=log)
        self.acl = AccessControl(self.config, runtime, may_log=self._may_log)
        self.notifier: Notifier | None = None
        self.stats: dict[str, int] = {}
        self._sockets: list[tuple[socket.socket, bool]] = []
        self._ifindex = 0
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None  # reads a shared store's changes
        self._waiting: set[asyncio.Task[None]] = set()
        self._accepting = False
        self._started = False
        self._failed = False  # the lease file failed for good: nothing more is served
        self._ifnames: dict[int, str] = {}
        # Lasting conditions (a refused MAC): one INFO line per MAC per window.
        self._once = OncePer()  # (MAC, condition) pairs logged in the last 300 s
        self._answers = OncePer()  # (client, request, answer) logged at INFO in the window
        self._reporter: asyncio.Task[None] | None = None  # the INFO summary, every minute

    # --- Service protocol ---------------------------------------------------
    async def start(self) -> None:
        """Detect the network, open the lease file, bind the sockets."""
        self.network = detect_network(self.config)
        self.server_address = self.network.address
        self._ifindex = socket.if_nametoindex(self.network.interface)
        self.settings = settings_for(self.config, self.network)
        if self.bootp.mode == "server":
            location = self.config.lease_store
            try:
                self.store = await self._in_store_thread(open_store, location,
                                                         str(self.server_address))
                leases = await self._in_store_thread(self.store.load)
            except LeaseStoreError:
                raise  # says what is wrong with the store and what to do
            except (sqlite3.Error, OSError) as exc:
                raise self.config.error(
                    *self.config.lease_store_key, f"cannot use {location}: {exc} "
                    "(expected a writable SQLite file)") from None
            self.pool = self._pool(self.network, shared=self.store.shared)
            self.pool.restore(leases)
        self.notifier = Notifier(self.bootp.notify)
        self._bind(self.bootp.port, boot_service=False)
        if self.bootp.pxe_port:
            self._bind(self.bootp.pxe_port, boot_service=True)
        if self.pool is not None:  # after the binds: a failed start logs one line only
            log.info("%d leases loaded from %s", len(self.pool.leases()), self.config.lease_store)
            self._register_gauges(self.pool)
            if self.store is not None and self.store.shared:
                self._follower = self.runtime.loop.create_task(self._follow(self.pool))
        self._accepting = self._started = True
        self._reporter = self.runtime.loop.create_task(self._report())
        for sock, boot_service in self._sockets:
            self.runtime.loop.add_reader(sock.fileno(), self._on_readable, sock, boot_service)
        log.info("DHCP %s on %s:%d (%s %s), pool %s", self.bootp.mode, self.bootp.address,
                 self.port, self.network.interface, self.network.network,
                 self._pool_text())

    def _register_gauges(self, pool: LeasePool) -> None:
        metrics = self.runtime.observer.metrics
        metrics.gauge("pybootd_leases", "Pool addresses by lease state", "state",
                      lambda: pool.counts(time.time()))
        metrics.gauge("pybootd_pool_addresses", "Addresses in the pool", None,
                      lambda: {"": pool.count})
        self.runtime.observer.timeline.mac_of = self._mac_of

    def _mac_of(self, ip: str) -> str | None:
        """Who holds *ip* (a TFTP or HTTP client the timeline has not seen offered)."""
        try:
            lease = None if self.pool is None else self.pool.lease_at(IPv4Address(ip))
        except ValueError:  # an IPv6 TFTP client
            return None
        return None if lease is None or not lease.active(time.time()) else lease.mac

    def reload(self, config: Config) -> None:
        """SIGHUP: apply ``[mac]``, ``[uuid]``, ``[static_dhcp]``, ``[bootfile]``,
        ``[bootp] access`` and ``[http]`` from *config*.

        The daemon hands over a validated config whose other values are the
        running ones (addresses, ports and the pool need a restart). Leases
        are kept; a new reservation whose address another MAC holds is
        served when that lease ends.
        """
        assert config.bootp is not None
        self.config, self.bootp = config, config.bootp
        if self.network is not None:
            self.settings = settings_for(self.config, self.network)
            if self.pool is not None:
                self._check_static(self.network)
                self.pool.set_static(config.static_dhcp)
        acl = AccessControl(config, self.runtime, may_log=self._may_log)
        acl.adopt(self.acl)
        self.acl = acl

    async def _report(self) -> None:
        """Every minute with traffic, one INFO line of counts: what the per-packet
        lines (DEBUG after their first time) no longer say."""
        last: dict[str, int] = {}
        while True:
            await asyncio.sleep(_REPORT_EVERY)
            now = dict(self.stats)
            delta = {k: v - last.get(k, 0) for k, v in now.items() if v != last.get(k, 0)}
            last = now
            if delta.get("received"):
                log.info("DHCP in the last %ds: %s", _REPORT_EVERY, _counts(delta))

    def summary(self) -> str:
        """Leases by state and requests by outcome since start (SIGUSR1)."""
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items()))
        requests = f"requests: {counts or 'none'}"
        if self.pool is None:
            return f"proxy mode, no leases; {requests}"
        states = self.pool.counts(time.time())
        leases = ", ".join(f"{state} {n}" for state, n in states.items())
        return f"leases: {leases} (pool of {self.pool.count}); {requests}"

    @property
    def port(self) -> int:
        """The DHCP port bound (``[bootp] port``; the one chosen for ``port = 0``)."""
        return int(self._sockets[0][0].getsockname()[1]) if self._sockets else self.bootp.port

    def stop_accepting(self) -> None:
        self._accepting = False
        for sock, _ in self._sockets:
            with contextlib.suppress(ValueError, OSError):
                self.runtime.loop.remove_reader(sock.fileno())

    async def drain(self, timeout: float) -> None:
        """Wait for waiting access queries and the last lease commit."""
        work: list[asyncio.Future[None]] = [*self._waiting]
        if self._writer is not None:
            work.append(self._writer)
        if work:
            await asyncio.wait(work, timeout=timeout)

    def close(self) -> None:
        self.stop_accepting()
        for task in [*self._waiting,
                     *(t for t in (self._writer, self._follower, self._reporter) if t)]:
            task.cancel()
        for sock, _ in self._sockets:
            sock.close()
        self._sockets.clear()
        if self.notifier is not None:
            self.notifier.close()
        if self.store is not None:
            store, self.store = self.store, None
            # In the writer thread, after any commit still running there.
            # In the writer thread, after any commit still running there.
            self.runtime.pool(_STORE_POOL).submit(store.close).result(_STORE_TIMEOUT)
        self.limiter.flush()
        if self._started:  # a start that failed said why in one line: nothing to add
            counts = ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items()))
            log.info("DHCP stopped (%s)", counts or "no requests")

    # --- setup --------------------------------------------------------------
    def _pool(self, network: LocalNetwork, *, shared: bool) -> LeasePool:
        assert self.bootp.pool_start is not None and self.settings is not None
        self._check_static(network)
        return LeasePool(network.network, self.bootp.pool_start, self.bootp.pool_count,
                         self.bootp.lease_time, static=self.config.static_dhcp,
                         excluded=self._excluded(network), shared=shared)

    def _check_static(self, network: LocalNetwork) -> None:
        for mac, ip in self.config.static_dhcp.items():
            if ip not in network.network:
                log.warning("%s: static address %s is outside %s; it will not be served",
                            mac, ip, network.network)

    def _excluded(self, network: LocalNetwork) -> set[IPv4Address]:
        """Addresses of this network's servers, never handed out: this server,
        the gateway, the TFTP server (next_server) and the DNS servers."""
        assert self.settings is not None
        settings = self.settings
        candidates = {network.address, settings.next_server, *settings.dns}
        if settings.gateway is not None:
            candidates.add(settings.gateway)
        return {ip for ip in candidates if ip in network.network}

    def _bind(self, port: int, *, boot_service: bool) -> None:
        # (udp.listen: a second DHCP server on this port must make the bind
        # fail, not split the requests and the addresses between two pools.)
        try:
            sock = udp.listen(socket.AF_INET, str(self.bootp.address), port,
                              buffer=4 * 1024 * 1024, broadcast=True,
                              device=self.bootp.interface or None)
        except OSError as exc:
            raise NetworkConfigError(
                f"cannot listen on {self.bootp.address}:{port}/udp for DHCP: {exc.strerror} "
                f"({_bind_advice(exc, port, boot_service)})") from None
        self._sockets.append((sock, boot_service))

    def _pool_text(self) -> str:
        if self.pool is None:
            return "none (proxy)"
        return f"{self.pool.start}+{self.pool.count}"

    # --- receive ------------------------------------------------------------
    def _on_readable(self, sock: socket.socket, boot_service: bool) -> None:
        for _ in range(_BATCH):
            try:
                data, ancdata, _flags, source = sock.recvmsg(_RECV_SIZE, PKTINFO_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("receive failed: %s", exc)
                return
            info = packet_info(ancdata)
            ifindex = info.ifindex if info is not None else 0
            try:
                self._received(data, ifindex, source, sock, boot_service)
            except Exception:  # a bug must not stop the service for other clients
                self._count("errors")
                log.exception("%s:%d: request dropped after an internal error", *source)

    def _received(self, data: bytes, ifindex: int, source: tuple[str, int],
                  sock: socket.socket, boot_service: bool) -> None:
        if self._failed:
            return
        self._count("received")
        try:
            packet = parse_packet_untrusted(data)
        except BadPacket as exc:
            self._malformed(source, len(data), exc)
            return
        if packet.op != 1:
            return  # a BOOTREPLY from another server
        if packet.giaddr == ZERO and ifindex and ifindex != self._ifindex and not boot_service:
            self._count("foreign")
            log.debug("%s: request on %s, not the served interface, ignored",
                      packet.mac, self._ifname(ifindex))
            return
        client = client_info(packet)
        verdict = self.acl.quick(client)
        if verdict is not None:
            self._serve(packet, client, verdict, ifindex, source, sock, boot_service)
            return
        if len(self._waiting) >= _MAX_WAITING:
            self._count("overload")
            self.runtime.observer.dhcp_ignored(Ignored.OVERLOAD)
            if self._may_log("access overload"):
                log.warning("%s: %d requests already wait for access answers; dropped",
                            client.mac, len(self._waiting))
            return
        arrived = self.runtime.loop.time()  # the access deadline counts from here
        task = self.runtime.loop.create_task(
            self._ask_then_serve(packet, client, arrived, ifindex, source, sock, boot_service))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _ask_then_serve(self, packet: DhcpPacket, client: ClientInfo, arrived: float,
                              ifindex: int, source: tuple[str, int], sock: socket.socket,
                              boot_service: bool) -> None:
        try:
            verdict = await self.acl.ask(client, arrived)
            if self._accepting:
                self._serve(packet, client, verdict, ifindex, source, sock, boot_service)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._count("errors")
            log.exception("%s: request dropped after an internal error", client.mac)

    def _serve(self, packet: DhcpPacket, client: ClientInfo, verdict: Verdict, ifindex: int,
               source: tuple[str, int], sock: socket.socket, boot_service: bool) -> None:
        kind = packet.message_type
        peer = _Peer(packet, client)
        incoming = _INCOMING_EVENTS.get(kind) if kind is not None else Event.BOOTP
        if incoming is not None:
            self._notify(incoming, client, _requested(packet), None)
        if verdict is not Verdict.ALLOW:
            self._refused(peer, kind, verdict)
            if verdict is Verdict.DENY:
                self._notify(Event.DENIED, client, _requested(packet), None)
            return
        if client.uuid is None and self.acl.uuid_of(client) is not None:
            # A plain DHCP request after a PXE boot: its lease keeps the UUID.
            client = dataclasses.replace(client, uuid=self.acl.uuid_of(client))
            peer = _Peer(packet, client)
        self._decide(peer, ifindex, source, sock, boot_service, attempt=1)

    def _decide(self, peer: _Peer, ifindex: int, source: tuple[str, int],
                sock: socket.socket, boot_service: bool, *, attempt: int) -> None:
        """Decide (the pure responder), then reply now or after the commit."""
        assert self.settings is not None
        decision = respond(peer.packet, peer.client, self.pool, self.settings, time.time(),
                           boot_service=boot_service, source=source, chains=self.chains)
        if decision.persist:
            self._queue(_Pending(decision, sock, ifindex, peer, source, boot_service, attempt))
        else:
            self._finish(decision, sock, ifindex, peer, boot_service)

    def _refused(self, peer: _Peer, kind: MessageType | None, verdict: Verdict) -> None:
        """INFO once per MAC per window (a lasting condition), debug for the repeats."""
        denied = verdict is Verdict.DENY
        self._count(Event.DENIED.value if denied else "unanswered")
        mac = peer.client.mac
        self.runtime.observer.dhcp(mac, _kind_name(kind), Event.DENIED if denied else Event.IGNORE,
                                   why=self.acl.reason(peer.client, verdict),
                                   reason=Ignored.DENIED if denied else Ignored.UNANSWERED)
        level = logging.INFO if self._first_time(mac, "access") else logging.DEBUG
        if log.isEnabledFor(level) and (level == logging.DEBUG or self.limiter.allow(
                "access denied", time.monotonic(), logging.INFO)):
            log.log(level, "%s: %s %s by access control: %s", peer, _kind_name(kind),
                    "denied" if denied else "ignored", self.acl.reason(peer.client, verdict))

    def _finish(self, decision: Decision, sock: socket.socket, ifindex: int, peer: _Peer,
                boot_service: bool) -> None:
        """The decision stands (stored, where it had to be): log it, reply, notify."""
        kind, client = peer.packet.message_type, peer.client
        self._log(peer, kind, decision)
        self.runtime.observer.dhcp(
            client.mac, _kind_name(kind), decision.event, reason=decision.reason,
            ip=None if decision.ip is None else str(decision.ip), file=decision.bootfile,
            why=decision.note, source=Source.PROXY if boot_service or self.bootp.mode == "proxy"
            else Source.DHCP)
        self._count(decision.event.value)
        if decision.reply is not None and decision.destination is not None:
            self._send(decision, sock, ifindex, peer)
            self.runtime.observer.dhcp_reply(decision.event.upper())
        if decision.event in REPLY_EVENTS:
            self._notify(decision.event, client, decision.ip, decision.bootfile)

    # --- group commit -------------------------------------------------------
    def _queue(self, pending: _Pending) -> None:
        self._pending.append(pending)
        if self._writer is None:
            self._writer = self.runtime.loop.create_task(self._commit())

    async def _commit(self) -> None:
        """Store queued leases, then send their replies; repeat while some wait."""
        try:
            while self._pending and self.store is not None:
                batch, self._pending = self._pending, []
                groups = [item.decision.persist for item in batch]
                try:
                    refused = await self._in_store_thread(self.store.commit, groups,
                                                          time.time())
                except Exception as exc:
                    if self._commit_failed(exc, len(batch)):
                        return
                    continue  # locked, slow or unreachable: the clients retry
                self._count("commits")
                for item, won in zip(batch, refused, strict=True):
                    if won:
                        self._decide_again(item, won)
                    else:
                        self._finish(item.decision, item.sock, item.ifindex, item.peer,
                                     item.boot_service)
        finally:
            self._writer = None

    def _decide_again(self, item: _Pending, won: tuple[Lease, ...]) -> None:
        """Another instance holds what we decided: learn its rows, decide anew."""
        assert self.pool is not None
        self._count("store_refused")
        self.pool.adopt(won)
        log.debug("%s: %s not stored, %s held by another server; deciding again", item.peer,
                  item.decision.event.upper(), ", ".join(f"{lease.ip} ({lease.mac or '-'})"
                                                         for lease in won))
        if item.attempt >= _DECISIONS:
            self.runtime.observer.dhcp_ignored(Ignored.STORE_CONTENDED)
            return  # the client retries; by then this instance knows more
        self._decide(item.peer, item.ifindex, item.source, item.sock, item.boot_service,
                     attempt=item.attempt + 1)

    def _commit_failed(self, exc: Exception, withheld: int) -> bool:
        """Log a failed commit (rate-limited); True when it is fatal (SQLite damaged)."""
        self._count("store_errors")
        self.runtime.observer.store_error()
        if self.limiter.allow("lease store not written", time.monotonic(), logging.ERROR):
            log.error("lease store %s not written (%s): %d replies withheld",
                      self.config.lease_store, describe_store_error(exc), withheld)
        if is_fatal(exc):  # damaged or failing disk: serving nothing helps no one
            self._store_failed(exc)
            return True
        return False

    async def _follow(self, pool: LeasePool) -> None:
        """Read what the other instances sharing the store wrote, every second."""
        assert self.store is not None
        store = self.store
        while True:
            await asyncio.sleep(_CHANGES_EVERY)
            try:
                # A thread of its own: a read stuck on an unreachable database
                # must not hold up a commit (the store's pool has two connections).
                pool.adopt(await self.runtime.blocking(_STORE_TIMEOUT, store.changes,
                                                       pool=_CHANGES_POOL))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the commits say it louder; keep following
                log.debug("lease store changes not read: %s", exc)

    def _store_failed(self, exc: BaseException) -> None:
        """A store that cannot be written stops the daemon (systemd restarts it, and
        the start's check then says what is wrong with the file)."""
        self._failed = True
        self.stop_accepting()
        self._pending.clear()
        self.runtime.fatal(f"lease file {self.config.lease_store} cannot be written ({exc}); "
                           "no lease can be acknowledged")

    async def _in_store_thread(self, func: Callable[..., T], *args: object) -> T:
        """Run SQLite work in the lease store's own thread (one: commits stay
        serialized on one connection and never queue behind HTTP queries)."""
        try:
            return await self.runtime.blocking(_STORE_TIMEOUT, func, *args, pool=_STORE_POOL)
        except SourceError:
            raise SourceError(f"lease file: no answer in {_STORE_TIMEOUT:g}s") from None

    # --- send ---------------------------------------------------------------
    def _send(self, decision: Decision, sock: socket.socket, ifindex: int, peer: _Peer) -> None:
        assert decision.reply is not None and decision.destination is not None
        ancillary = []
        if decision.broadcast:
            # Leave by the interface the request came in on (no route needed).
            out = ifindex or self._ifindex
            ancillary = pktinfo_cmsg(out, self.server_address.packed)
        try:
            if ancillary:
                sock.sendmsg([decision.reply], ancillary, 0, decision.destination)
            else:
                sock.sendto(decision.reply, decision.destination)
            self._count("sent")
        except OSError as exc:
            self._count("send_errors")
            log.warning("%s: %s to %s:%d not sent: %s", peer, decision.event.upper(),
                        *decision.destination, exc)

    # --- helpers ------------------------------------------------------------
    def _notify(self, event: Event, client: ClientInfo, ip: IPv4Address | None,
                bootfile: str | None) -> None:
        if self.notifier is not None and self.notifier.targets:
            self.notifier.send(event, client.mac, ip, self.acl.uuid_of(client),
                               client.arch_label if client.arch is not None else None, bootfile)

    def _log(self, peer: _Peer, kind: MessageType | None, decision: Decision) -> None:
        """INFO the first time in the window (300 s) a client gets this answer; the
        repeats (renewals, retransmissions, a load generator) at DEBUG, where a
        line per packet would cost more than the exchange itself."""
        if decision.event is Event.IGNORE:
            self._log_ignored(peer, kind, decision)
            return
        if not log.isEnabledFor(logging.INFO):
            return
        # The peer's parts, not its text: nothing is formatted for a repeat.
        packet, client = peer.packet, peer.client
        key = (client.mac, packet.ciaddr, packet.giaddr, client.netboot, client.http,
               client.ipxe, client.arch, kind, decision.event, decision.ip, decision.bootfile)
        level = logging.INFO if self._answers.first(key, time.monotonic()) else logging.DEBUG
        if log.isEnabledFor(level):
            what = decision.event.upper()
            ip = f" {decision.ip}" if decision.ip is not None else ""
            boot = f" file={decision.bootfile}" if decision.bootfile else ""
            note = f" ({decision.note})" if decision.note else ""
            log.log(level, "%s: %s -> %s%s%s%s", peer, _kind_name(kind), what, ip, boot, note)

    def _log_ignored(self, peer: _Peer, kind: MessageType | None, decision: Decision) -> None:
        """Debug, or a warning (info for a lasting condition logged once), rate-limited."""
        level = logging.WARNING if decision.warning else (
            logging.INFO if decision.once else logging.DEBUG)
        if decision.once and not self._first_time(peer.client.mac, decision.once):
            level = logging.DEBUG
        if not log.isEnabledFor(level):
            return
        if level > logging.DEBUG and not self.limiter.allow(
                decision.topic or "request ignored", time.monotonic(), level):
            return
        if decision.once:  # a sentence of its own, naming the client
            log.log(level, "%s", decision.note)
        else:
            log.log(level, "%s: %s ignored: %s", peer, _kind_name(kind), decision.note)

    def _may_log(self, topic: str) -> bool:
        return self.limiter.allow(topic, time.monotonic())

    def _first_time(self, mac: str, condition: str) -> bool:
        """Is it the first time in the window (300 s) that *mac* meets *condition*?"""
        return self._once.first((mac, condition), time.monotonic())

    def _ifname(self, ifindex: int) -> str:
        name = self._ifnames.get(ifindex)
        if name is None:
            try:
                name = socket.if_indextoname(ifindex)
            except OSError:
                name = f"if{ifindex}"
            self._ifnames[ifindex] = name
        return name

    def _malformed(self, source: tuple[str, int], size: int, exc: BadPacket) -> None:
        """Log dropped packets, rate-limited (see :mod:`pybootd.loglimit`)."""
        self._count("malformed")
        if self.limiter.allow("malformed packet dropped", time.monotonic(), logging.INFO):
            log.info("%s:%d: malformed packet dropped (%d bytes): %s", *source, size, exc)

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1


def _bind_advice(exc: OSError, port: int, boot_service: bool) -> str:
    key = "pxe_port" if boot_service else "port"
    if exc.errno == errno.EADDRINUSE:
        return (f"another pybootd or DHCP server (dnsmasq, isc-dhcp-server, kea) uses it: "
                f"stop it, or set [bootp] {key}")
    if exc.errno == errno.EACCES and port < 1024:
        return f"ports below 1024 need root: start pybootd as root, or set [bootp] {key}"
    return f"expected an address of this host in [bootp] address, and a free [bootp] {key}"


def _requested(packet: DhcpPacket) -> IPv4Address | None:
    ip = packet.address_option(DhcpOption.REQUESTED_IP)
    if ip is None and packet.ciaddr != ZERO:
        ip = packet.ciaddr
    return ip


def _counts(stats: dict[str, int]) -> str:
    """``received 1200, offer 300, ack 300, ...``: requests first, then answers."""
    order = ["received", *(e.value for e in (Event.OFFER, Event.ACK, Event.NAK)), "ignore"]
    keys = sorted(stats, key=lambda k: (order.index(k) if k in order else len(order), k))
    return ", ".join(f"{k} {stats[k]}" for k in keys)


def _kind_name(kind: MessageType | None) -> str:
    return kind.name if kind is not None else "BOOTP"


def settings_for(config: Config, network: LocalNetwork) -> Settings:
    """The responder's settings for *network* (also what --check prints from)."""
    bootp = config.bootp
    assert bootp is not None
    gateway: IPv4Address | None
    if bootp.gateway == "auto":
        gateway = network.address  # the original pybootd's choice: us
    elif bootp.gateway == "none":
        gateway = None
    else:
        gateway = bootp.gateway
    next_server = bootp.next_server or _tftp_address(config) or network.address
    return Settings(
        server_id=network.address, network=network.network, next_server=next_server,
        mode=bootp.mode, gateway=gateway, dns=bootp.dns, domain=bootp.domain,
        lease_time=bootp.lease_time, servername=bootp.servername,
        boot_file=bootp.boot_file, bootfiles=config.bootfiles,
        ipxe_bootfile=config.ipxe_bootfile, ipxe_bootfiles=config.ipxe_bootfiles,
        allow_simple_dhcp=bootp.allow_simple_dhcp, http_root=config.tftp.root_url,
        http_base=None if config.httpd is None else config.httpd.base_url(str(next_server)))


def _tftp_address(config: Config) -> IPv4Address | None:
    tftp = config.tftp
    if not tftp.address_set or not tftp.address:
        return None
    try:
        address = IPv4Address(tftp.address)
    except ValueError:
        return None
    return None if address.is_unspecified else address
