"""The TFTP service: listens on port 69 and starts one transfer per request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from ipaddress import ip_address
from pathlib import Path

from pybootd.config import Config, TftpConfig
from pybootd.errors import BadPacket, PybootdError, SourceError, TftpError
from pybootd.server import tftp_pump
from pybootd.server.runtime import Runtime
from pybootd.server.tftp_lockstep import ThreadedReadTransfer
from pybootd.server.tftp_transfer import ReadTransfer, Transfer, WriteTransfer
from pybootd.sources import local
from pybootd.sources.api import (
    Handler,
    ServerStats,
    ServerStatsCallback,
    SessionStatsCallback,
    TftpRequest,
    TransferStats,
)
from pybootd.sources.chunks import DISK_TIMEOUT, ChunkSource, NetasciiSource, PooledSource
from pybootd.sources.httpcache import HttpCache
from pybootd.sources.resolver import Resolver, format_peer
from pybootd.tftp.filters import FilterSet, Rule
from pybootd.tftp.options import Limits, negotiate
from pybootd.tftp.packets import ErrorCode, Request, encode_error, parse_packet_untrusted
from pybootd.tftp.paths import normalize_request_path
from pybootd.tftp.session import Outcome, ReadSession, WriteSession

log = logging.getLogger("pybootd.tftp")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; absent from Python's module
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr (linux/in.h)
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex (RFC 3542 section 6.1)
SOCKET_BUFFER = 4 * 1024 * 1024
MODES = ("octet", "netascii")
REPEAT_AFTER_ABORT = 1.0  # seconds: a request this close to its transfer's abort is new
SHUTDOWN_ABORT_WAIT = 2.0  # seconds an upload's abort waits for a write running in the pool


# A request taken for a repeat: when it came, and _on_datagram's arguments.
_Repeat = tuple[float, tuple[socket.socket, bytes, tuple[str, int], "tuple[str, int] | str"]]


def check_folders(config: Config) -> None:
    """A local ``root``, and ``upload_dir`` when uploads are on, must be
    existing folders, or every request would get ERROR 1. Blocks (the disk);
    raises ConfigError naming the key."""
    tftp = config.tftp
    if tftp.root_url is None and tftp.root_path is not None:
        _require_folder(config, "root", tftp.root_path)
    if tftp.allow_write and tftp.upload_dir is not None:
        _require_folder(config, "upload_dir", tftp.upload_dir)


def _require_folder(config: Config, key: str, path: Path) -> None:
    if path.is_dir():
        return
    what = "is not a folder" if path.exists() else "does not exist"
    raise config.error("tftp", key, f"{path} {what} (expected an existing folder)")


class TftpService:
    """Implements :class:`pybootd.server.runtime.Service`."""

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
        self.active: dict[tuple[str, int, int, str], Transfer | None] = {}
        self.threaded: ThreadedReadTransfer | None = None  # the one with a thread of its own
        self._repeats: dict[tuple[str, int, int, str], _Repeat] = {}  # see _transfer_done
        self._stats_timer: asyncio.TimerHandle | None = None
        self.pump: tftp_pump.Pump | None = None  # lock-step reads' compiled path

    # --- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Raises PybootdError (a missing root or upload_dir, a port taken)."""
        await self.runtime.blocking(DISK_TIMEOUT, check_folders, self.runtime.config)
        if self.conf.allow_write and self.conf.upload_dir is not None:
            await self._sweep_uploads(self.conf.upload_dir)
        if self.http is not None:
            await self.runtime.blocking(DISK_TIMEOUT, self.http.load)
        for family, host in self._bind_targets():
            sock = _listener(family, host, self.conf.port)
            self.listeners.append(sock)
            self.runtime.loop.add_reader(sock.fileno(), self._on_listener, sock)
        if tftp_pump.available():
            self.pump = tftp_pump.Pump(self.runtime.loop, self.conf.busy_poll / 1e6)
            log.info("TFTP lock-step pump: %s", self.pump.backend)
        where = ", ".join(format_peer(s.getsockname()[:2]) for s in self.listeners)
        root = self.conf.root_url or self.conf.root_path
        log.info("TFTP serving %s on %s", root, where)
        self._schedule_stats()

    async def _sweep_uploads(self, upload_dir: Path) -> None:
        """Temporary files of uploads a previous run could not remove."""
        removed = await self.runtime.blocking(DISK_TIMEOUT, local.sweep_stale_uploads,
                                              upload_dir)
        if removed:
            log.info("removed %d stale temporary upload file(s) in %s", removed, upload_dir)

    def _bind_targets(self) -> list[tuple[int, str]]:
        if self.address:
            family = socket.AF_INET6 if ip_address(self.address).version == 6 else socket.AF_INET
            return [(family, self.address)]
        targets: list[tuple[int, str]] = [(socket.AF_INET, "0.0.0.0")]
        if socket.has_ipv6 and _ipv6_usable():
            targets.append((socket.AF_INET6, "::"))
        return targets

    @property
    def ports(self) -> list[int]:
        return [s.getsockname()[1] for s in self.listeners]

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
        self.stop_accepting()
        for transfer in list(self.active.values()):
            if isinstance(transfer, WriteTransfer):
                # Now, not in the pool: the daemon drops queued pool work as it exits.
                transfer.abort_now(SHUTDOWN_ABORT_WAIT)
            elif transfer is not None:
                transfer.fail(Outcome.FAILED, "server shutting down", ErrorCode.NOT_DEFINED)
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
            log.warning("%s: malformed request dropped: %s", label, exc)
            return
        if not isinstance(request, Request):
            log.debug("%s: %s sent to the server port ignored", label, type(request).__name__)
            return
        key = (peer[0], peer[1], int(request.opcode), request.filename)
        if key in self.active:
            # The client repeated its request while we answer it: the running
            # transfer already replies, a second one would confuse it. (A
            # different request from the same port is a new transfer: tftp-hpa
            # reuses its port for every command of a session.)
            log.debug("%s: repeated request for %s ignored", label, request.filename)
            self._repeats[key] = (self.runtime.loop.time(), (listener, data, addr, local_addr))
            return
        if len(self.active) >= self.conf.max_sessions:
            self.stats.increment("refused_busy")
            log.warning("%s: refused %s: %d sessions running", label, request.filename,
                        len(self.active))
            with contextlib.suppress(OSError):
                listener.sendto(encode_error(ErrorCode.NOT_DEFINED, "server busy"), addr)
            return
        try:
            sock = _transfer_socket(listener.family, local_addr, addr)
        except OSError as exc:
            log.error("%s: cannot open a transfer socket: %s", label, exc)
            return
        self.active[key] = None
        if self.threaded is not None:
            self.threaded.hand_over()  # no longer alone: back to the loop (the GIL)
            self.threaded = None
        self.stats.increment("requests")
        self.runtime.loop.create_task(self._serve(request, peer, sock, key))

    async def _serve(self, request: Request, peer: tuple[str, int], sock: socket.socket,
                     key: tuple[str, int, int, str]) -> None:
        label = format_peer(peer)
        asked = dict(request.options)
        served = ""
        try:
            if request.mode not in MODES:
                raise TftpError(ErrorCode.ILLEGAL_OPERATION,
                                f"unsupported transfer mode {request.mode!r}")
            name = normalize_request_path(request.filename)
            if request.is_write:
                transfer: Transfer = await self._start_write(request, name, peer, sock)
            else:
                transfer = await self._start_read(request, name, peer, sock)
            served = transfer.served
            transfer.key = key
            self.active[key] = transfer
            self.stats.active_sessions = sum(1 for t in self.active.values() if t)
            transfer.start()  # type: ignore[attr-defined]
        except (TftpError, SourceError) as exc:
            code, message = (exc.code, exc.message) if isinstance(exc, TftpError) else (
                ErrorCode.NOT_DEFINED, str(exc))
            self._refuse(sock, peer, request, code, message)
            self.active.pop(key, None)
            self._repeats.pop(key, None)
            self._report(TransferStats(peer, request.filename, served,
                                       "write" if request.is_write else "read", request.mode,
                                       asked, {}, 0, 0, 0, 0.0, "refused", message))
        except Exception:
            log.exception("%s: internal error serving %s", label, request.filename)
            self._refuse(sock, peer, request, ErrorCode.NOT_DEFINED, "internal error")
            self.active.pop(key, None)
            self._repeats.pop(key, None)

    def _refuse(self, sock: socket.socket, peer: tuple[str, int], request: Request, code: int,
                message: str) -> None:
        level = logging.INFO if code == ErrorCode.FILE_NOT_FOUND else logging.WARNING
        log.log(level, "%s: %s %s refused: ERROR %d %s", format_peer(peer),
                request.opcode.name, request.filename, code, message)
        self.stats.increment(f"error_{code}")
        with contextlib.suppress(OSError):
            sock.sendto(encode_error(code, message), peer)
        sock.close()

    async def _start_read(self, request: Request, name: str, peer: tuple[str, int],
                          sock: socket.socket) -> ReadTransfer:
        treq = TftpRequest(peer, name, request.filename, request.mode, dict(request.options))
        opened = await self.resolver.open(treq)
        source = NetasciiSource(opened.source) if request.mode == "netascii" else opened.source
        try:
            negotiated = negotiate(request.options, self.limits, size=source.size,
                                   is_write=False)
        except TftpError:
            source.close()
            raise
        session = ReadSession(negotiated, self.conf.retries)
        log.info("%s: RRQ %s%s %s%s", format_peer(peer), request.filename,
                 f" -> {opened.served}" if opened.served != name else "", request.mode,
                 "".join(f" {k}={v}" for k, v in negotiated.oack))
        kw = {"name": request.filename, "served": opened.served, "mode": request.mode,
              "asked": dict(request.options), "granted": dict(negotiated.oack),
              "on_done": self._transfer_done}
        if self._lone_lockstep(session, source):
            assert isinstance(source, PooledSource)
            self.threaded = ThreadedReadTransfer(self.runtime, sock, peer, session, source,
                                                 read_blocking=source.read_blocking,
                                                 busy_poll=self.conf.busy_poll / 1e6,
                                                 pump=self.pump, **kw)
            return self.threaded
        return ReadTransfer(self.runtime, sock, peer, session, source, self.pump, **kw)

    def _lone_lockstep(self, session: ReadSession, source: ChunkSource) -> bool:
        """A lock-step read of a local file or plugin while nothing else runs:
        its own thread (see pybootd.server.tftp_lockstep). Since that thread
        busy-polls, this holds for every blksize: at 65464 it measured 865
        MB/s against 608 from the loop (busybox; tftpd-hpa 707), and 757
        against 606 (atftp; tftpd-hpa 772), bench_tftp.py, best of 5."""
        return (session.windowsize == 1 and isinstance(source, PooledSource)
                and self.threaded is None and not any(t is not None for t in self.active.values()))

    async def _start_write(self, request: Request, name: str, peer: tuple[str, int],
                           sock: socket.socket) -> WriteTransfer:
        if not self.conf.allow_write or self.conf.upload_dir is None:
            raise TftpError(ErrorCode.ACCESS_VIOLATION, "uploads are not allowed")
        negotiated = negotiate(request.options, self.limits, size=None, is_write=True)
        upload = await self.runtime.blocking(DISK_TIMEOUT, local.Upload, self.conf.upload_dir,
                                             name, self.conf.overwrite)
        session = WriteSession(negotiated, self.conf.retries)
        log.info("%s: WRQ %s %s%s", format_peer(peer), request.filename, request.mode,
                 "".join(f" {k}={v}" for k, v in negotiated.oack))
        return WriteTransfer(self.runtime, sock, peer, session, upload,
                             self.conf.max_upload_size, name=request.filename, served=name,
                             mode=request.mode, asked=dict(request.options),
                             granted=dict(negotiated.oack), on_done=self._transfer_done)

    def _transfer_done(self, transfer: Transfer, stats: TransferStats) -> None:
        self.active.pop(transfer.key, None)
        repeat = self._repeats.pop(transfer.key, None)
        if transfer is self.threaded:
            self.threaded = None
        self.stats.active_sessions = sum(1 for t in self.active.values() if t)
        succeeded = stats.outcome.startswith("complete")
        aborted = stats.outcome == "aborted by client"
        rate = stats.bytes / stats.duration / 1e6 if stats.duration > 0 else 0.0
        log.log(logging.WARNING if not (succeeded or aborted) else logging.INFO,
                "%s: %s %s %s: %d bytes in %.3fs (%.1f MB/s), %d packets, %d retransmits%s",
                format_peer(transfer.peer), stats.direction, stats.filename, stats.outcome,
                stats.bytes, stats.duration, rate, stats.packets, stats.retransmits,
                f" ({stats.error})" if stats.error else "")
        self.stats.increment("transfers_" + ("ok" if succeeded else
                                             "aborted" if aborted else "failed"))
        self.stats.increment("bytes_sent" if stats.direction == "read" else "bytes_received",
                             stats.bytes)
        self.stats.increment("retransmits", stats.retransmits)
        self._report(stats)
        if (repeat is not None and aborted and self.listeners
                and self.runtime.loop.time() - repeat[0] <= REPEAT_AFTER_ABORT):
            # UEFI firmware probes tsize, answers the OACK with ERROR 8 and asks
            # again at once, from the same port: that request can reach the
            # loop before the ERROR has ended the probe (the lone lock-step
            # thread sees the ERROR, the loop the request). Not a repeat, then.
            self._on_datagram(*repeat[1])

    def _report(self, stats: TransferStats) -> None:
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


def _ipv6_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def _listener(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise PybootdError(f"cannot listen on {format_peer((host, port))} for TFTP: "
                           f"{exc.strerror}") from None
    return sock


def _local_address(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """The local address to answer from, and the interface (IP_PKTINFO)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            # ipi_spec_dst, not ipi_addr: Linux sets it to the destination of
            # a unicast to us and, for a broadcast or multicast (whatever the
            # netmask), to the receiving interface's preferred address (ip(7)).
            # It is 0.0.0.0 only without a route (then: the fallback below).
            ifindex, spec_dst, _dst = _IN_PKTINFO.unpack_from(data)
            if spec_dst == bytes(4):
                return None
            return socket.inet_ntop(socket.AF_INET, spec_dst), ifindex
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO \
                and len(data) >= _IN6_PKTINFO.size:
            dst, ifindex = _IN6_PKTINFO.unpack_from(data)
            return socket.inet_ntop(socket.AF_INET6, dst), ifindex
    return None


def _transfer_socket(family: int, local: tuple[str, int] | str,
                     peer: tuple[str, int]) -> socket.socket:
    """A socket on a new port (the TID), on the address the request came to,
    so a multi-homed host answers from the right address."""
    host, ifindex = (local, 0) if isinstance(local, str) else local
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        if family == socket.AF_INET6:
            scope = ifindex if host.lower().startswith("fe80") else 0
            sock.bind((host, 0, 0, scope))
        else:
            sock.bind((host, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock

