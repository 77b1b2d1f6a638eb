"""The TFTP service: listens on port 69 and starts one transfer per request."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections import Counter
from ipaddress import ip_address
from pathlib import Path

from pybootd import udp
from pybootd.api import (
    Direction,
    Handler,
    ServerStats,
    ServerStatsCallback,
    SessionStatsCallback,
    TftpRequest,
    TransferStats,
)
from pybootd.config import Config, TftpConfig
from pybootd.errors import BadPacket, PybootdError, SourceError, TftpError
from pybootd.loglimit import LogLimiter, OncePer, clip
from pybootd.observe.observer import Underway
from pybootd.observe.timeline import Source
from pybootd.runtime import Runtime
from pybootd.server import tftp_pump
from pybootd.server.tftp_transfer import (
    INTERNAL_ERROR,
    SHUTTING_DOWN,
    SOURCE_UNAVAILABLE,
    ReadTransfer,
    Transfer,
    TransferInfo,
    WriteTransfer,
)
from pybootd.sources import local
from pybootd.sources.chunks import DISK_TIMEOUT, NetasciiSource
from pybootd.sources.httpcache import HttpCache
from pybootd.sources.resolver import Resolver
from pybootd.tftp import admission
from pybootd.tftp.admission import Admission, Decision, Key, Running
from pybootd.tftp.connection import Outcome
from pybootd.tftp.filters import FilterSet, Rule
from pybootd.tftp.options import Limits, Negotiated, negotiate
from pybootd.tftp.packets import ErrorCode, Request, encode_error, parse_packet_untrusted
from pybootd.tftp.paths import normalize_request_path
from pybootd.udp import Address, Port, format_peer, packet_info

log = logging.getLogger("pybootd.tftp")

SOCKET_BUFFER = 4 * 1024 * 1024
SHUTDOWN_ABORT_WAIT = 2.0  # seconds an upload's abort waits for a write running in the pool
REFUSAL_BURST = 100  # refusal lines per code per LOG_WINDOW (see TftpService.refusals)
# The listener's receive buffer: a room of PCs switched on at once sends hundreds
# of RRQs in a few ms, more than 208 KiB holds (500 at once: 200 were dropped).
LISTENER_BUFFER = 4 * 1024 * 1024


def check_folders(config: Config) -> None:
    """A local ``root``, and ``upload_dir`` when uploads are on, must be
    existing folders, or every request would get ERROR 1. Blocks (the disk);
    raises ConfigError naming the key."""
    tftp = config.tftp
    folders = {"root": tftp.root_path if tftp.root_url is None else None,
               "upload_dir": tftp.upload_dir if tftp.allow_write else None}
    for key, path in folders.items():
        if path is not None and not path.is_dir():
            what = "is not a folder" if path.exists() else "does not exist"
            raise config.error("tftp", key, f"{path} {what} (expected an existing folder)")


def boot_file_names(config: Config) -> frozenset[str]:
    """The configured boot files, normalized like requests: a client that
    cannot get one of these cannot boot, so that is worth a warning (a
    missing pxelinux.cfg probe is not). URLs (HTTP boot) are not TFTP's."""
    names = [*config.bootfiles.values(), *config.ipxe_bootfiles.values(),
             config.ipxe_bootfile, config.bootp.boot_file if config.bootp else None]
    found = set()
    for name in names:
        if name and "://" not in name:
            with contextlib.suppress(TftpError):  # a name no request can match
                found.add(normalize_request_path(name))
    return frozenset(found)


class TftpService:
    """Implements :class:`pybootd.runtime.Service`."""

    name = "tftp"

    def __init__(self, runtime: Runtime, *, address: str | None = None,
                 handler: Handler | None = None,
                 session_stats: SessionStatsCallback | None = None,
                 server_stats: ServerStatsCallback | None = None) -> None:
        self.runtime = runtime
        config = runtime.config
        self.conf: TftpConfig = config.tftp
        self.address = self.conf.address if address is None else address
        self.limits = Limits(self.conf.blocksize, self.conf.windowsize, self.conf.timeout,
                             self.conf.max_upload_size)
        rules = [Rule(r.pattern, r.target, r.indirect, r.line) for r in config.filters]
        self.http: HttpCache | None = None
        if self.conf.root_url:
            self.http = HttpCache(runtime, self.conf.root_url, config.cache_dir,
                                  self.conf.cache_size, self.conf.http_timeout)
        self.resolver = Resolver(runtime, self.conf, FilterSet(rules), config.path.parent,
                                 handler, self.http)
        self.session_stats = session_stats
        self.server_stats = server_stats
        self.stats = ServerStats(config.daemon.stats_interval)
        self.listeners: list[socket.socket] = []
        # Requests being served, oldest first (eviction takes the oldest);
        # None while the file is being opened.
        self.active: dict[Key, Transfer | None] = {}
        self.admission = admission.Limits(self.conf.max_sessions, self.conf.max_client_sessions)
        # Requests whose file is being opened: their socket, client and name (see close).
        self._opening: dict[Key, tuple[socket.socket, tuple[str, int], str]] = {}
        self._closed = False
        self._stats_timer: asyncio.TimerHandle | None = None
        self.pump: tftp_pump.Pump | None = None  # lock-step reads' compiled path
        self.limiter = LogLimiter(logger=log)  # lines a client can cause (loglimit)
        # A refused request's line is all the operator sees of it, and a room
        # of PCs booting pxelinux makes ~9 "not found" probes each: a larger
        # budget than the other topics, still bounded (~20 KB per 10 s).
        self.refusals = LogLimiter(burst=REFUSAL_BURST, logger=log)
        self._missing = OncePer()  # (client address, boot file) warned about
        self.boot_files = boot_file_names(config)
        self.totals: Counter[str] = Counter()  # since start (self.stats resets)

    # --- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Raises PybootdError (a missing root or upload_dir, a port taken)."""
        await self.runtime.blocking(DISK_TIMEOUT, check_folders, self.runtime.config)
        self.upload_quota: local.UploadQuota | None = None
        if self.conf.allow_write and self.conf.upload_dir is not None:
            self.upload_quota = await self._sweep_uploads(self.conf.upload_dir)
        if self.http is not None:
            await self.runtime.blocking(DISK_TIMEOUT, self.http.load)
        for family, host in self._bind_targets():
            sock = _listener(family, host, self.conf.port)
            self.listeners.append(sock)
            self.runtime.loop.add_reader(sock.fileno(), self._on_listener, sock)
        if tftp_pump.available():
            self.pump = tftp_pump.Pump(self.runtime.loop, self.conf.busy_poll / 1e6)
            log.info("TFTP lock-step pump: epoll")
        where = ", ".join(format_peer(s.getsockname()[:2]) for s in self.listeners)
        root = self.conf.root_url or self.conf.root_path
        log.info("TFTP serving %s on %s", root, where)
        self._schedule_stats()

    async def _sweep_uploads(self, upload_dir: Path) -> local.UploadQuota:
        """Temporary files of uploads a previous run could not remove, and
        what upload_dir holds, for upload_quota (one bounded walk)."""
        removed, held = await self.runtime.blocking(DISK_TIMEOUT, local.scan_upload_dir,
                                                    upload_dir)
        if removed:
            log.info("removed %d stale temporary upload file(s) in %s", removed, upload_dir)
        log.info("%s holds %d bytes (upload_quota %d)", upload_dir, held,
                 self.conf.upload_quota)
        return local.UploadQuota(self.conf.upload_quota, held)

    def _bind_targets(self) -> list[tuple[int, str]]:
        if self.address:
            family = socket.AF_INET6 if ip_address(self.address).version == 6 else socket.AF_INET
            return [(family, self.address)]
        targets: list[tuple[int, str]] = [(socket.AF_INET, "0.0.0.0")]
        if socket.has_ipv6 and udp.ipv6_usable():
            targets.append((socket.AF_INET6, "::"))
        return targets

    @property
    def ports(self) -> list[int]:
        return [s.getsockname()[1] for s in self.listeners]

    def reload(self, config: Config) -> None:
        """SIGHUP: ``[filters]`` and the boot file names (for the missing
        boot file warning) take effect for the next request; the rest of
        ``[tftp]`` needs a restart (the daemon says so)."""
        rules = [Rule(r.pattern, r.target, r.indirect, r.line) for r in config.filters]
        self.resolver.filters = FilterSet(rules)
        self.boot_files = boot_file_names(config)
        log.info("TFTP: %d filter rule(s) and %d boot file name(s) reloaded", len(rules),
                 len(self.boot_files))

    def summary(self) -> str:
        t = self.totals
        running = sum(1 for transfer in self.active.values() if transfer is not None)
        return (f"{running} running, {t['ok'] + t['failed'] + t['aborted']} finished "
                f"({t['ok']} ok, {t['failed']} failed, {t['aborted']} aborted), "
                f"{t['sent']} bytes sent, {t['received']} received")

    def stop_accepting(self) -> None:
        for sock in self.listeners:
            self.runtime.loop.remove_reader(sock.fileno())
            sock.close()
        self.listeners = []

    async def drain(self, timeout: float) -> None:
        pending = [t.done for t in self.active.values() if t is not None]
        if pending:
            log.info("waiting up to %gs for %d transfer(s) to finish", timeout, len(pending))
            await asyncio.wait(pending, timeout=timeout)

    def close(self) -> None:
        """Every transfer still running gets ERROR 0 and a log line before
        this returns: the daemon exits right after, so nothing may be left
        for a later turn of the loop."""
        self.stop_accepting()
        self._closed = True
        for sock, peer, filename in self._opening.values():  # connected to peer
            # Not started yet (a mirror can take http_timeout to answer): told now.
            with contextlib.suppress(OSError):
                sock.send(encode_error(ErrorCode.NOT_DEFINED, SHUTTING_DOWN))
            if self._may_log("TFTP requests not served: shutting down"):
                log.warning("%s: %s not served: server shutting down", format_peer(peer),
                            clip(filename))
        for transfer in list(self.active.values()):
            if isinstance(transfer, WriteTransfer):
                # Now, not in the pool: the daemon drops queued pool work as it exits.
                transfer.abort_now(SHUTDOWN_ABORT_WAIT)
            elif transfer is not None:
                transfer.fail(ErrorCode.NOT_DEFINED, SHUTTING_DOWN)
        self.limiter.flush()
        self.refusals.flush()
        if self._stats_timer is not None:
            self._stats_timer.cancel()
        if self.http is not None:
            self.http.close()
        if self.pump is not None:
            self.pump.close()
            self.pump = None

    # --- requests -------------------------------------------------------------
    def _on_listener(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(65536, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("listener receive error: %s", exc)
                return
            local_addr = _local_address(ancdata) or sock.getsockname()[0]
            self._on_datagram(sock, data, addr, local_addr)

    def _on_datagram(self, listener: socket.socket, data: bytes, addr: tuple[str, int],
                     local_addr: tuple[str, int] | str) -> None:
        peer = (addr[0], addr[1])
        label = format_peer(peer)
        try:
            request = parse_packet_untrusted(data)
        except BadPacket as exc:
            self.stats.increment("malformed_requests")
            if self._may_log("malformed requests dropped"):
                log.warning("%s: malformed request dropped: %s", label, clip(str(exc)))
            return
        if not isinstance(request, Request):
            log.debug("%s: %s sent to the server port ignored", label, type(request).__name__)
            return
        key = (peer[0], peer[1], int(request.opcode), request.filename)
        decision = self._decide(key, request.mode)
        if decision.outcome is Admission.REPEAT:
            decision = self._after_catch_up(key, request.mode)
        if decision.outcome is Admission.REPEAT:
            # The client repeated its request while we answer it: the running
            # transfer already replies, a second one would confuse it.
            log.debug("%s: repeated request for %s ignored", label, clip(request.filename))
            return
        if decision.outcome in (Admission.CLIENT_LIMIT, Admission.BUSY):
            self._refuse_busy(listener, addr, request, decision)
            return
        if decision.victim is not None:
            self._evict(decision.victim)
        if key in self.active:  # asked again after its client answered
            self._retire(key)
        try:
            port = _transfer_port(listener.family, local_addr, addr)
        except OSError as exc:
            if self._may_log("transfer sockets not opened", logging.ERROR):
                log.error("%s: cannot open a transfer socket: %s", label, exc)
            return
        self.stats.increment("requests")
        if decision.outcome is Admission.BAD_MODE:
            self._refused(port, peer, request, TftpError(
                ErrorCode.ILLEGAL_OPERATION, f"unsupported transfer mode {request.mode!r}"))
            return
        self.active[key] = None
        self.runtime.loop.create_task(self._serve(request, peer, port, key))

    def _decide(self, key: Key, mode: str) -> Decision:
        running = [Running(k, t.started, t.finished or t.established, False) if t is not None
                   else Running(k, 0.0, False, True) for k, t in self.active.items()]
        return admission.admit(key, mode, running, self.admission)

    def _after_catch_up(self, key: Key, mode: str) -> Decision:
        """A request like an unanswered transfer's: that transfer first reads
        its socket (the ERROR that ends UEFI's tsize probe may wait there); if
        that ends the transfer, the request is new, else a true repeat."""
        transfer = self.active.get(key)
        if transfer is not None:
            transfer.catch_up()
            if not transfer.finished:
                return Decision(Admission.REPEAT)
        return self._decide(key, mode)

    def _retire(self, key: Key) -> None:
        """Another client shares the port (Linux may give busybox's SO_REUSEADDR
        sockets one port: 1 in 100 was never served): the running transfer goes
        on under a key no request matches (a NUL ends names on the wire)."""
        transfer = self.active.pop(key)
        assert transfer is not None  # a request still being opened is a repeat
        transfer.key = (*key[:3], f"{key[3]}\0{id(transfer)}")
        self.active[transfer.key] = transfer

    def _refuse_busy(self, listener: socket.socket, addr: tuple[str, int], request: Request,
                     decision: Decision) -> None:
        """ERROR 0 from the server port, a log line (rate-limited)."""
        per_address = decision.outcome is Admission.CLIENT_LIMIT
        self.stats.increment("refused_per_address" if per_address else "refused_busy")
        if self._may_log("TFTP requests refused: " + (
                "too many from one address" if per_address else "server busy")):
            log.warning("%s: refused %s: %d %s", format_peer(addr), clip(request.filename),
                        decision.running, "transfers from this address running "
                        "(max_client_sessions)" if per_address else "sessions running")
        refusal = "too many transfers from this address" if per_address else "server busy"
        with contextlib.suppress(OSError):
            listener.sendto(encode_error(ErrorCode.NOT_DEFINED, refusal), addr)

    def _evict(self, key: Key) -> None:
        """End a transfer whose client never answered (ERROR 0 "server
        busy"), to make room for a new request."""
        transfer = self.active.get(key)
        self._drop(key)  # its slot is free now
        if transfer is None:
            return
        self.stats.increment("evicted")
        if self._may_log("TFTP transfers evicted: no answer, server full"):
            log.warning("%s: %s %s evicted for a new request: the server is full and this "
                        "client never answered", transfer.label, transfer.direction,
                        clip(transfer.info.name))
        transfer.fail(ErrorCode.NOT_DEFINED, "server busy",
                      "evicted: no answer while the server was full")

    def _drop(self, key: Key, transfer: Transfer | None = None) -> None:
        """Forget request *key* (only if it is still *transfer*'s, when given)."""
        if key not in self.active or (transfer is not None and self.active[key] is not transfer):
            return
        del self.active[key]

    def _may_log(self, topic: str, level: int = logging.WARNING,
                 limiter: LogLimiter | None = None) -> bool:
        """A line a client can cause: at most a burst per topic per window."""
        return log.isEnabledFor(level) and (limiter or self.limiter).allow(
            topic, self.runtime.loop.time(), level)

    async def _serve(self, request: Request, peer: tuple[str, int], port: Port,
                     key: Key) -> None:
        label = format_peer(peer)
        served = name = ""
        self._opening[key] = (port.sock, peer, request.filename)
        try:
            name = normalize_request_path(request.filename)
            if request.is_write:
                transfer: Transfer = await self._start_write(request, name, peer, port)
            else:
                transfer = await self._start_read(request, name, peer, port)
            served = transfer.info.served
            if self._closed:  # close() came meanwhile, and told the client
                transfer.discard()
                return
            transfer.key = key
            transfer.limiter = self.limiter
            self.active[key] = transfer
            self.stats.active_sessions = sum(1 for t in self.active.values() if t)
            self._observe_start(transfer)  # first: start() may end it at once
            transfer.start()
        except (TftpError, SourceError) as exc:
            self._drop(key)
            self._refused(port, peer, request, exc, name, served)
        except Exception as exc:
            log.exception("%s: internal error serving %s", label, clip(request.filename))
            self._drop(key)
            self._refused(port, peer, request, TftpError(ErrorCode.NOT_DEFINED, INTERNAL_ERROR,
                                                         f"internal error: {exc}"), name)
        finally:
            self._opening.pop(key, None)

    def _refused(self, port: Port, peer: tuple[str, int], request: Request,
                 exc: TftpError | SourceError, name: str = "", served: str = "") -> None:
        """A request that gets ERROR *exc* instead of a transfer: the ERROR, a
        log line (rate-limited, per code), its stats."""
        # A SourceError's text names a mirror URL or a path: the log's only.
        code, message, detail = (exc.code, exc.message, exc.detail) if isinstance(
            exc, TftpError) else (ErrorCode.NOT_DEFINED, SOURCE_UNAVAILABLE, str(exc))
        level = logging.INFO if code == ErrorCode.FILE_NOT_FOUND else logging.WARNING
        if not self._missing_boot_file(peer, name, code) and self._may_log(
                f"TFTP requests refused with ERROR {code}", level, self.refusals):
            log.log(level, "%s: %s %s refused: ERROR %d %s", format_peer(peer),
                    request.opcode.name, clip(request.filename), code, clip(detail))
        self.stats.increment(f"error_{code}")
        with contextlib.suppress(OSError):
            port.sock.send(encode_error(code, message))
        port.close()
        self._report(TransferStats(peer, request.filename, served,
                                   Direction.WRITE if request.is_write else Direction.READ,
                                   request.mode, dict(request.options), {}, 0, 0, 0, 0.0,
                                   Outcome.REFUSED, detail))

    def _missing_boot_file(self, peer: tuple[str, int], name: str, code: int) -> bool:
        """A configured boot file that is not there: that client cannot boot.
        A warning (True: logged) instead of the INFO line, once per client and
        file per OncePer window; pxelinux's probes of other names stay INFO."""
        if code != ErrorCode.FILE_NOT_FOUND or name not in self.boot_files:
            return False
        if not self._missing.first((peer[0], name), self.runtime.loop.time()):
            return False
        if self._may_log("missing boot files"):
            log.warning("%s: boot file %s not found: it is configured as a boot file, so "
                        "this client cannot boot (is it in the root, or does a filter "
                        "map it?)", format_peer(peer), clip(name))
        return True

    async def _start_read(self, request: Request, name: str, peer: tuple[str, int],
                          port: Port) -> ReadTransfer:
        treq = TftpRequest(peer, name, request.filename, request.mode, dict(request.options))
        opened = await self.resolver.open(treq)
        source = NetasciiSource(opened.source) if request.mode == "netascii" else opened.source
        try:
            negotiated = negotiate(request.options, self.limits, size=source.size,
                                   is_write=False)
        except TftpError:
            source.close()
            raise
        info = self._granted(request, name, peer, opened.served, negotiated)
        return ReadTransfer(self.runtime, port, info, self._transfer_done, source, self.pump)

    async def _start_write(self, request: Request, name: str, peer: tuple[str, int],
                           port: Port) -> WriteTransfer:
        if not self.conf.allow_write or self.conf.upload_dir is None:
            raise TftpError(ErrorCode.ACCESS_VIOLATION, "uploads are not allowed")
        negotiated = negotiate(request.options, self.limits, size=None, is_write=True)
        # upload_quota (RFC 1350 ERROR 3 when full); never one of the daemon's own files.
        upload = await self.runtime.blocking(DISK_TIMEOUT, local.Upload, self.conf.upload_dir,
                                             name, self.conf.overwrite, self.upload_quota,
                                             negotiated.tsize, self.resolver.protected)
        info = self._granted(request, name, peer, name, negotiated)
        return WriteTransfer(self.runtime, port, info, self._transfer_done, upload,
                             self.conf.max_upload_size)

    def _granted(self, request: Request, name: str, peer: tuple[str, int], served: str,
                 negotiated: Negotiated) -> TransferInfo:
        """The line that says a request is served, and the transfer's info."""
        log.info("%s: %s %s%s %s%s", format_peer(peer), request.opcode.name,
                 clip(request.filename), f" -> {clip(served)}" if served != name else "",
                 request.mode, "".join(f" {k}={clip(v)}" for k, v in negotiated.oack))
        return TransferInfo(peer, request.filename, served, request.mode,
                            dict(request.options), negotiated, self.conf.retries)

    def _transfer_done(self, transfer: Transfer, stats: TransferStats) -> None:
        self._drop(transfer.key, transfer)  # not if evicted (_evict): its slot is gone
        self.stats.active_sessions = sum(1 for t in self.active.values() if t)
        aborted = stats.outcome is Outcome.ABORTED
        kind = "ok" if stats.outcome.succeeded else "aborted" if aborted else "failed"
        read = stats.direction is Direction.READ
        self.totals.update({kind: 1, "sent" if read else "received": stats.bytes})
        self._log_end(transfer, stats, kind != "failed")
        self.stats.increment("transfers_" + kind)
        self.stats.increment("bytes_sent" if read else "bytes_received", stats.bytes)
        self.stats.increment("retransmits", stats.retransmits)
        self._report(stats, transfer)

    def _log_end(self, transfer: Transfer, stats: TransferStats, ok: bool) -> None:
        """One line per transfer; rate-limited only for a client that never
        answered (a flood of RRQs must not make as many lines). A client
        that ends its transfer with an ERROR did answer (UEFI's tsize probe)."""
        level = logging.INFO if ok else logging.WARNING
        silent = not transfer.established and stats.outcome is not Outcome.ABORTED
        if silent and not self._may_log("TFTP transfers ended before the client answered",
                                        level):
            return
        rate = stats.bytes / stats.duration / 1e6 if stats.duration > 0 else 0.0
        log.log(level, "%s: %s %s %s: %d bytes in %.3fs (%.1f MB/s), %d packets, "
                "%d retransmits%s", format_peer(transfer.peer), stats.direction,
                clip(stats.filename), stats.outcome, stats.bytes, stats.duration, rate,
                stats.packets, stats.retransmits,
                f" ({clip(stats.error)})" if stats.error else "",
                extra={"event": {"source": "tftp", "client": transfer.peer[0],
                                 "what": stats.filename, "file": stats.served,
                                 "outcome": str(stats.outcome), "bytes": stats.bytes,
                                 "seconds": round(stats.duration, 6), "why": stats.error}})

    def _observe_start(self, transfer: Transfer) -> None:
        size = transfer.source.size if isinstance(transfer, ReadTransfer) else None
        conn = transfer.conn
        self.runtime.observer.started(transfer, Underway(
            transfer.peer[0], transfer.info.name, Source.TFTP, size, time.time(),
            lambda: conn.transferred))

    def _report(self, stats: TransferStats, transfer: Transfer | None = None) -> None:
        self.runtime.observer.tftp(transfer, stats)
        if self.session_stats is None:
            return
        try:
            self.session_stats(stats)
        except Exception:
            log.exception("session stats callback failed")

    def _schedule_stats(self) -> None:
        self._stats_timer = self.runtime.loop.call_later(self.stats.interval, self._emit_stats)

    def _emit_stats(self) -> None:
        if self.server_stats is not None:
            try:
                self.server_stats(self.stats)
            except Exception:
                log.exception("server stats callback failed")
        else:
            counters = self.stats.get_and_reset_all_counters()
            if len(counters) > 1:
                log.info("TFTP stats: %s", " ".join(f"{k}={v}" for k, v in
                                                    sorted(counters.items())))
        self._schedule_stats()


def _listener(family: int, host: str, port: int) -> socket.socket:
    try:
        return udp.listen(family, host, port, buffer=LISTENER_BUFFER)
    except OSError as exc:
        hint = (" (another TFTP server, or another pybootd, runs on this port)"
                if exc.errno == errno.EADDRINUSE else "")
        raise PybootdError(f"cannot listen on {format_peer((host, port))} for TFTP: "
                           f"{exc.strerror}{hint}") from None


def _local_address(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """The local address to answer from, and the interface (IP_PKTINFO)."""
    info = packet_info(ancdata)
    if info is None or info.local is None:
        return None  # no route: the caller falls back to the listener's address
    return info.local, info.ifindex


def _transfer_port(family: int, local: tuple[str, int] | str, peer: Address) -> Port:
    """A new port (the TID) on the address the request came to, so a
    multi-homed host answers from the right address."""
    host, ifindex = (local, 0) if isinstance(local, str) else local
    if family == socket.AF_INET6:
        scope = ifindex if host.lower().startswith("fe80") else 0
        return Port.open(family, (host, 0, 0, scope), peer, buffer=SOCKET_BUFFER)
    return Port.open(family, (host, 0), peer, buffer=SOCKET_BUFFER)
