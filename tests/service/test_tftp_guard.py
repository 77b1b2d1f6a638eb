"""The TFTP service under abuse and at shutdown, on loopback: per-address
bounds, clients that never answer, a full server, floods of bogus packets
(bounded logs), one instance per port, the listener's buffer, shutdown of
running transfers, missing boot files, reload and summary."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
from pathlib import Path

import pytest
from netlab import wait_for
from tftpclient import Client, TftpFailure, encode
from tftpserver import Server, start_error

from pybootd.api import BytesResponse, ServerStats, TftpRequest, TransferStats
from pybootd.config import parse_config
from pybootd.errors import PybootdError, SourceError
from pybootd.server.tftp import REFUSAL_BURST
from pybootd.tftp.packets import (
    Data,
    Error,
    ErrorCode,
    Oack,
    Opcode,
    Packet,
    Request,
    encode_ack,
    parse_packet_untrusted,
)


def config(root: Path, port: int = 0, extra: str = "", stats_interval: float = 60,
           **tftp: object) -> str:
    """An ini with [tftp] *tftp* (timeout 0.2 s, 2 retries unless given) on
    *port* (0: the kernel picks a free one, Server.port tells which)."""
    values: dict[str, object] = {"address": "127.0.0.1", "port": port,
                                 "root": root, "timeout": 0.2, "retries": 2, **tftp}
    lines = "".join(f"{key} = {value}\n" for key, value in values.items())
    return f"[tftp]\n{lines}{extra}\n[daemon]\nstats_interval = {stats_interval}\n"


def rrq(name: str, options: tuple[tuple[str, str], ...] = ()) -> bytes:
    return encode(Request(Opcode.RRQ, name, "octet", options))


class Raw:
    """A bare UDP socket on loopback: sends what it is told, reads what comes."""

    def __init__(self, port: int, timeout: float = 3.0) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        self.sock.sendto(data, to or self.server)

    def receive(self) -> tuple[Packet, tuple[str, int]]:
        data, addr = self.sock.recvfrom(70000)
        return parse_packet_untrusted(data), addr

    def pending(self) -> list[Packet]:
        """Whatever already waits in the socket, without waiting."""
        got: list[Packet] = []
        self.sock.setblocking(False)
        try:
            for _ in range(10_000):
                try:
                    data = self.sock.recv(70000)
                except BlockingIOError:
                    break
                got.append(parse_packet_untrusted(data))
        finally:
            self.sock.settimeout(3.0)
        return got


def until_error(raw: Raw, limit: int = 10) -> Error:
    """Read past DATA (retransmissions) to the ERROR that must come."""
    for _ in range(limit):
        packet = raw.receive()[0]
        if isinstance(packet, Error):
            return packet
    raise AssertionError(f"no ERROR in {limit} packets")


def errors(packets: list[Packet]) -> list[str]:
    return [f"ERROR {p.code}: {p.message}" for p in packets if isinstance(p, Error)]


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --- item 3: bounded sessions per address, unanswered sessions, a full server ---------------
def test_one_address_gets_at_most_max_client_sessions(root: Path, tmp_path: Path,
                                                      logs: pytest.LogCaptureFixture) -> None:
    srv = Server(config(root, max_client_sessions=3, timeout=1.0, retries=5),
                 tmp_path / "t.ini")
    socks = [Raw(srv.port) for _ in range(30)]
    try:
        for sock in socks:
            sock.send(rrq("big"))  # never ACKed
        answers = [sock.receive()[0] for sock in socks]
        served = [a for a in answers if isinstance(a, Data)]
        refused = errors(answers)
        assert len(served) == 3
        assert refused == ["ERROR 0: too many transfers from this address"] * 27
        # A refusal a client can cause at will: rate-limited (10 lines per 10 s).
        assert len(lines(logs, "transfers from this address running")) == 10
        with Client("127.0.0.1", srv.port) as late, pytest.raises(TftpFailure) as info:
            late.get("small")
        assert info.value.message == "too many transfers from this address"
    finally:
        srv.stop()
        for sock in socks:
            sock.sock.close()
    assert lines(logs, "more lines not logged")  # said at close


@pytest.mark.parametrize("options", [(), (("windowsize", "4"),), (("blksize", "1024"),)],
                         ids=["lockstep", "window", "oack"])
def test_a_request_never_answered_ends_in_seconds(root: Path, tmp_path: Path,
                                                  logs: pytest.LogCaptureFixture,
                                                  options: tuple[tuple[str, str], ...]) -> None:
    """Timeout 1 s and 5 retries: 31 s of retransmissions for a client that
    answers; one that never did is dropped after 3 s, with a log line."""
    seen: list[TransferStats] = []
    srv = Server(config(root, timeout=1.0, retries=5), tmp_path / "t.ini",
                 session_stats=seen.append)
    try:
        with Raw(srv.port) as silent:
            started = time.monotonic()
            silent.send(rrq("big", options))
            wait_for(lambda: seen, 10, what="the unanswered transfer to end")
            ended = time.monotonic() - started
    finally:
        srv.stop()
    assert 2.5 < ended < 4.5, ended
    assert seen[0].outcome == "timed out" and "no answer to the first packet" in seen[0].error
    assert lines(logs, "read big timed out")


def test_a_flood_of_unanswered_requests_does_not_keep_a_client_out(
        root: Path, tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    """max_sessions 8, RRQs that are never ACKed at 100/s from many ports:
    before, every slot stayed taken for the retry budget (31 s) and every
    real client got "server busy"; now the oldest unanswered one makes room."""
    srv = Server(config(root, max_sessions=8, max_client_sessions=1000, timeout=1.0,
                        retries=5), tmp_path / "t.ini")
    stop = threading.Event()

    def flood() -> None:
        flooders = [Raw(srv.port) for _ in range(50)]
        try:
            for i in range(1000):  # at most 10 s
                if stop.is_set():
                    return
                flooders[i % 50].send(rrq(f"big?{i}" if i % 2 else "big"))
                time.sleep(0.01)
        finally:
            for one in flooders:
                one.sock.close()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        time.sleep(0.5)  # every slot is taken by now
        with Client("127.0.0.1", srv.port) as client:
            got = client.get("big")
        assert got.data == (root / "big").read_bytes()
        assert lines(logs, "evicted for a new request")
    finally:
        stop.set()
        flooder.join(15)
        srv.stop()


def test_when_every_session_is_established_a_newcomer_is_busy(root: Path, tmp_path: Path,
                                                              ) -> None:
    srv = Server(config(root, max_sessions=2, timeout=1.0, retries=5), tmp_path / "t.ini")
    try:
        with Raw(srv.port) as one, Raw(srv.port) as two, Raw(srv.port) as three:
            for client in (one, two):
                client.send(rrq("big"))
                packet, tid = client.receive()
                assert isinstance(packet, Data)
                client.send(encode_ack(1), tid)  # established: never evicted
                assert isinstance(client.receive()[0], Data)
            three.send(rrq("big"))
            assert errors([three.receive()[0]]) == ["ERROR 0: server busy"]
    finally:
        srv.stop()


def test_an_unanswered_session_is_evicted_for_a_newcomer(root: Path, tmp_path: Path) -> None:
    srv = Server(config(root, max_sessions=2, timeout=1.0, retries=5), tmp_path / "t.ini")
    try:
        with Raw(srv.port) as silent, Raw(srv.port) as live, Client("127.0.0.1",
                                                                      srv.port) as new:
            silent.send(rrq("big"))
            assert isinstance(silent.receive()[0], Data)  # and never ACKed
            live.send(rrq("big"))
            _data, tid = live.receive()
            live.send(encode_ack(1), tid)
            assert new.get("small").data == b"hello"
            # The silent one was told, and the established one goes on.
            assert errors([until_error(silent)]) == ["ERROR 0: server busy"]
            live.send(encode_ack(2), tid)
            assert isinstance(live.receive()[0], Data)
    finally:
        srv.stop()


# --- item 4: logging a client cannot inflate ------------------------------------------------
def test_a_60_kb_file_name_makes_a_short_log_line(root: Path, tmp_path: Path,
                                                  logs: pytest.LogCaptureFixture) -> None:
    srv = Server(config(root), tmp_path / "t.ini")
    name = "x" * 60_000
    try:
        with Raw(srv.port) as client:
            client.send(rrq(name, (("blksize", "y" * 2000),)))
            assert isinstance(client.receive()[0], Error)
            client.send(rrq("small", (("tsize", "0"), ("z" * 3000, "1"))))
            packet, tid = client.receive()
            assert isinstance(packet, Oack)
            client.send(encode(Error(0, "E" * 30_000)), tid)  # the client's own text
            wait_for(lambda: lines(logs, "aborted by client"), 5, what="the abort line")
    finally:
        srv.stop()
    assert lines(logs, "refused: ERROR")
    assert max(len(r.getMessage()) for r in logs.records) < 1000


def test_a_burst_of_bogus_datagrams_logs_a_bounded_number_of_lines(
        root: Path, tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    srv = Server(config(root, max_client_sessions=1000, timeout=1.0, retries=5),
                 tmp_path / "t.ini")
    try:
        with Raw(srv.port) as junk, Raw(srv.port) as client, Raw(srv.port) as intruder:
            for i in range(2000):
                junk.send(b"\x00\x09" + i.to_bytes(4, "big"))  # an unknown opcode
            for i in range(200):  # read in order: once these are answered, so is the junk
                junk.send(rrq(f"missing-{i}"))
            answers = [junk.receive()[0] for _ in range(200)]
            assert all(isinstance(a, Error) and a.code == ErrorCode.FILE_NOT_FOUND
                       for a in answers)
            client.send(rrq("big", (("blksize", "512"),)))
            _, tid = client.receive()
            client.send(encode_ack(0), tid)
            for _ in range(300):
                intruder.send(encode_ack(1), tid)
            assert errors([intruder.receive()[0] for _ in range(300)]) == [
                "ERROR 5: Unknown transfer ID"] * 300
    finally:
        srv.stop()
    assert len(lines(logs, "malformed request dropped")) == 10
    assert len(lines(logs, "refused: ERROR 1")) == REFUSAL_BURST  # refusals have more
    assert len(lines(logs, "answered with ERROR 5")) == 10
    counts = {line.split(": ")[0]: int(line.split(": ")[1].split()[0])
              for line in lines(logs, "more lines not logged")}
    assert counts["malformed requests dropped"] >= 1000, counts  # the kernel may drop a few
    assert counts["TFTP requests refused with ERROR 1"] == 200 - REFUSAL_BURST
    assert counts["packet from a foreign TID"] == 290
    assert len(logs.records) < 80 + REFUSAL_BURST


def test_a_source_error_tells_the_client_no_url(root: Path, tmp_path: Path,
                                                logs: pytest.LogCaptureFixture) -> None:
    """At the request and mid-transfer (lock-step, window): the client gets
    "source unavailable", the log the reason (it names the mirror)."""

    class Failing(BytesResponse):
        _started = False

        def read(self, n: int) -> bytes:
            if self._started:
                raise SourceError("mirror http://mirror.example/secret stalled")
            self._started = True
            return super().read(1024)

    def handler(request: TftpRequest) -> BytesResponse | None:
        if request.filename == "down":
            raise SourceError("download from http://mirror.example/secret failed")
        return Failing(bytes(100_000)) if request.filename == "half" else None

    srv = Server(config(root), tmp_path / "t.ini", handler=handler)
    try:
        for options in ((), (("windowsize", "4"),)):
            with Client("127.0.0.1", srv.port) as client:
                with pytest.raises(TftpFailure) as info:
                    client.get("down")
                assert info.value.message == "source unavailable"
                with pytest.raises(TftpFailure) as info:
                    client.get("half", options=options)
                assert info.value.message == "source unavailable"
    finally:
        srv.stop()
    assert lines(logs, "download from http://mirror.example/secret failed")
    assert len(lines(logs, "http://mirror.example/secret stalled")) == 2


# --- item 7: one instance per port ---------------------------------------------------------
def test_a_second_service_on_the_same_port_fails_to_start(root: Path, tmp_path: Path) -> None:
    first = Server(config(root), tmp_path / "t.ini")
    port = first.port  # held by the first service
    try:
        assert start_error(config(root, port), tmp_path / "t.ini") == (
            f"cannot listen on 127.0.0.1:{port} for TFTP: Address already in use (another "
            "TFTP server, or another pybootd, runs on this port)")
        with Client("127.0.0.1", port) as client:
            assert client.get("small").data == b"hello"  # the first one serves on
    finally:
        first.stop()


def ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def on_every_address(root: Path, path: Path) -> tuple[Server, str]:
    """A Server on every address (IPv4 and IPv6), on one configured port,
    and its ini. Not port = 0: each family would get its own. A port below
    the kernel's ephemeral range (no port = 0 socket takes those), another
    one if something holds it: nothing is freed and reused."""
    for port in random.sample(range(20_000, 32_768), 20):
        text = config(root, port).replace("address = 127.0.0.1\n", "")
        try:
            return Server(text, path), text
        except PybootdError as exc:
            if "Address already in use" not in str(exc):
                raise
    raise AssertionError("20 ports in use")


def test_every_address_ipv4_and_ipv6_bind_one_port_once(root: Path, tmp_path: Path) -> None:
    first, text = on_every_address(root, tmp_path / "t.ini")
    port = first.port
    try:
        assert len(first.ports) == (2 if ipv6_works() else 1)
        assert set(first.ports) == {port}
        assert "Address already in use" in start_error(text, tmp_path / "t.ini")
        with Client("127.0.0.1", port) as client:
            assert client.get("small").data == b"hello"
    finally:
        first.stop()


# --- item 10: the listener's receive buffer -------------------------------------------------
def test_500_requests_at_once_are_all_answered(root: Path, tmp_path: Path) -> None:
    """Before, the kernel dropped what the default buffer (208 KiB) could
    not hold while the loop worked: about 200 of 500."""
    srv = Server(config(root, max_sessions=1000, max_client_sessions=1000), tmp_path / "t.ini")
    try:
        with Raw(srv.port, timeout=5.0) as client:
            requests = [rrq(f"missing-{i:03d}" + "-" * 400) for i in range(500)]
            for request in requests:  # as fast as the socket takes them
                client.send(request)
            answers = 0
            with pytest.raises(TimeoutError):
                for _ in range(600):
                    client.receive()
                    answers += 1
        assert answers >= 500
    finally:
        srv.stop()


# --- item 8: every transfer running at shutdown is told and logged --------------------------
def start_slow_reader(port: int, count: int) -> list[tuple[Raw, tuple[str, int]]]:
    """*count* lock-step reads of "big", each 3 blocks in, then silent (a slow firmware)."""
    readers = []
    for _ in range(count):
        raw = Raw(port)
        raw.send(rrq("big"))
        block, tid = 0, ("", 0)
        while block < 3:
            packet, tid = raw.receive()
            assert isinstance(packet, Data)
            block = packet.block
            raw.send(encode_ack(block), tid)
        readers.append((raw, tid))
    return readers


@pytest.mark.parametrize("count", [1, 2, 3], ids=["one", "two", "three"])
def test_transfers_running_at_close_get_an_error_and_a_log_line(
        root: Path, tmp_path: Path, logs: pytest.LogCaptureFixture, count: int) -> None:
    """As the daemon does: drain(grace) that times out, then close(), then
    the process ends: every transfer is told and logged before close()
    returns, nothing is left for a later turn of the loop."""
    srv = Server(config(root, timeout=1.0, retries=5), tmp_path / "t.ini")
    readers = start_slow_reader(srv.port, count)
    try:
        asyncio.run_coroutine_threadsafe(srv.service.drain(0.3), srv.loop).result(10)
        srv.call(srv.service.close)
        # Right when close() returns: the daemon's process is about to end.
        for raw, _tid in readers:
            assert "ERROR 0: server shutting down" in errors(raw.pending())
        ended = lines(logs, "read big failed")
        assert len(ended) == count and all("(server shutting down)" in e for e in ended)
    finally:
        srv.stop()
        for raw, _ in readers:
            raw.sock.close()


def test_a_request_still_opening_its_file_at_close_is_told(
        root: Path, tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    """A file still being opened (a slow mirror or plugin) when close() comes."""
    opening = threading.Event()

    def slow(request: TftpRequest) -> BytesResponse:
        opening.set()
        time.sleep(1.0)
        return BytesResponse(b"late")

    srv = Server(config(root), tmp_path / "t.ini", handler=slow)
    try:
        with Raw(srv.port) as client:
            client.send(rrq("slow"))
            assert opening.wait(5)
            srv.call(srv.service.close)
            assert errors(client.pending()) == ["ERROR 0: server shutting down"]
            assert lines(logs, "slow not served: server shutting down")
            time.sleep(1.2)  # the open ends: nothing more is sent
            assert client.pending() == []
    finally:
        srv.stop()


# --- item 14: a configured boot file missing from the root ---------------------------------
def test_a_missing_boot_file_is_a_warning_once_per_client(root: Path, tmp_path: Path,
                                                          logs: pytest.LogCaptureFixture) -> None:
    bootfiles = "[bootfile]\nefi-x64 = /EFI/grubx64.efi\nipxe = boot.ipxe\n"
    srv = Server(config(root) + bootfiles, tmp_path / "t.ini")
    try:
        with Client("127.0.0.1", srv.port) as one, Client("127.0.0.1", srv.port) as two:
            for client in (one, one, two):
                with pytest.raises(TftpFailure):
                    client.get("EFI/grubx64.efi")
            with pytest.raises(TftpFailure):
                one.get("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff")  # a probe: INFO only
    finally:
        srv.stop()
    warnings = [r for r in logs.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["127.0.0.1"]
    assert "boot file EFI/grubx64.efi not found" in warnings[0].getMessage()
    probe = lines(logs, "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff refused")
    assert [r.levelno for r in logs.records if r.getMessage() in probe] == [logging.INFO]


# --- reload (SIGHUP) and summary (SIGUSR1) --------------------------------------------------
def test_reload_applies_filters_and_boot_files(root: Path, tmp_path: Path,
                                               logs: pytest.LogCaptureFixture) -> None:
    srv = Server(config(root), tmp_path / "t.ini")
    try:
        with Client("127.0.0.1", srv.port) as client:
            with pytest.raises(TftpFailure):
                client.get("alias")
            new = parse_config(config(root, srv.port) + "[filters]\nalias = small\n"
                               "[bootfile]\nbios = lpxelinux.0\n", tmp_path / "t.ini")
            srv.call(lambda: srv.service.reload(new))
            assert client.get("alias").data == b"hello"
            with pytest.raises(TftpFailure):
                client.get("lpxelinux.0")
    finally:
        srv.stop()
    assert lines(logs, "1 filter rule(s) and 1 boot file name(s) reloaded")
    assert lines(logs, "boot file lpxelinux.0 not found")


def test_summary_counts_since_start(root: Path, tmp_path: Path) -> None:
    emitted: list[dict[str, int]] = []  # what server_stats got, every stats_interval

    def on_server(stats: ServerStats) -> None:
        emitted.append(stats.get_and_reset_all_counters())

    srv = Server(config(root, stats_interval=0.2, timeout=1.0, retries=5), tmp_path / "t.ini",
                 server_stats=on_server)
    try:
        assert srv.call(srv.service.summary) == (
            "0 running, 0 finished (0 ok, 0 failed, 0 aborted), 0 bytes sent, 0 received")
        with Client("127.0.0.1", srv.port) as client, Raw(srv.port) as held:
            assert client.get("small").data == b"hello"
            assert client.get("big").data == (root / "big").read_bytes()
            client.request("big", options=(("tsize", "0"),))
            _oack, tid = client.receive()
            client.sock.sendto(encode(Error(8, "tsize probe")), tid)
            held.send(rrq("big"))
            held.receive()
            wait_for(lambda: "1 aborted" in srv.call(srv.service.summary), 5,
                     what="the abort")
            reported = len(emitted)
            wait_for(lambda: len(emitted) > reported, 5,
                     what="a stats_interval to pass (server_stats reads and resets the counters)")
            assert srv.call(srv.service.summary) == (
                "1 running, 3 finished (2 ok, 0 failed, 1 aborted), 300005 bytes sent, "
                "0 received")
    finally:
        srv.stop()
    # The interval's counters were handed over and reset; the summary was not.
    assert sum(counters.get("transfers_ok", 0) for counters in emitted) == 2
