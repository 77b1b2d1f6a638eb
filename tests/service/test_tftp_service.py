"""The TFTP service on loopback, in process: API, stats, TIDs, uploads,
start-up checks."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import wait_for
from tftpclient import Client, TftpFailure, encode
from tftpserver import Server, ini, start_error

from pybootd import udp
from pybootd.api import BytesResponse, ServerStats, TftpRequest, TransferStats
from pybootd.errors import TftpError
from pybootd.server import tftp, tftp_pump
from pybootd.server.tftp_transfer import GSO_BATCH, gso_segments
from pybootd.sources import local
from pybootd.tftp.packets import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Oack,
    Opcode,
    Request,
    encode_ack,
    parse_packet_untrusted,
)
from pybootd.udp import IP_PKTINFO


@pytest.fixture
def root(root: Path, tmp_path: Path) -> Path:
    """tests/conftest.py's, with a subfolder and symbolic links."""
    folder = root
    (folder / "sub").mkdir()
    (folder / "sub" / "file").write_bytes(b"in sub")
    (tmp_path / "secret").write_bytes(b"secret")
    (folder / "escape").symlink_to(tmp_path / "secret")
    (folder / "inside").symlink_to(folder / "sub" / "file")
    return folder


@pytest.fixture
def server(root: Path, tmp_path: Path) -> Iterator[Server]:
    srv = Server(ini(root), tmp_path / "t.ini")
    yield srv
    srv.stop()


def test_get_small_and_big(server: Server, root: Path) -> None:
    with Client("127.0.0.1", server.port) as client:
        assert client.get("small").data == b"hello"
        got = client.get("/big", options=(("blksize", "1400"), ("windowsize", "4"),
                                          ("tsize", "0")))
    assert got.data == (root / "big").read_bytes()
    assert got.oack == {"blksize": "1400", "windowsize": "4", "tsize": "300000"}


def test_reply_comes_from_a_new_tid(server: Server) -> None:
    with Client("127.0.0.1", server.port) as client:
        result = client.get("small")
    assert result.server[0] == "127.0.0.1" and result.server[1] != server.port


def test_symlinks_inside_ok_outside_refused(server: Server) -> None:
    with Client("127.0.0.1", server.port) as client:
        assert client.get("inside").data == b"in sub"
        with pytest.raises(TftpFailure) as info:
            client.get("escape")
        # "not found", as for a missing file: nothing said about outside the root
        assert info.value.code == ErrorCode.FILE_NOT_FOUND
        with pytest.raises(TftpFailure) as info:
            client.get("sub")  # a folder
        assert info.value.code == ErrorCode.FILE_NOT_FOUND


def test_unsupported_mode_is_illegal_operation(server: Server) -> None:
    with Client("127.0.0.1", server.port) as client, pytest.raises(TftpFailure) as info:
        client.get("small", mode="mail")
    assert info.value.code == ErrorCode.ILLEGAL_OPERATION


def test_unusable_option_value_is_ignored(server: Server) -> None:
    """Not refused (ERROR 8): left out of the OACK, the defaults apply."""
    with Client("127.0.0.1", server.port) as client:
        got = client.get("small", options=(("blksize", "4"), ("tsize", "0")))
    assert got.data == b"hello" and got.oack == {"tsize": "5"}


def test_foreign_tid_gets_error_5_and_transfer_goes_on(server: Server, root: Path) -> None:
    with Client("127.0.0.1", server.port) as client, Client("127.0.0.1", server.port) as intruder:
        client.request("big")
        packet, tid = client.receive()
        intruder.sock.sendto(encode_ack(1), tid)
        error, _ = intruder.receive()
        assert isinstance(error, Error) and error.code == ErrorCode.UNKNOWN_TID
        chunks = [packet.data]  # type: ignore[union-attr]
        block = 1
        while len(chunks[-1]) == 512:
            client.sock.sendto(encode_ack(block), tid)
            packet, _ = client.receive()
            block += 1
            chunks.append(packet.data)  # type: ignore[union-attr]
    assert b"".join(chunks) == (root / "big").read_bytes()


def test_repeated_request_does_not_start_a_second_transfer(server: Server) -> None:
    with Client("127.0.0.1", server.port) as client:
        client.request("big")
        client.request("big")
        _, first = client.receive()
        client.sock.settimeout(0.1)
        sources = {first}
        try:
            while True:
                _, addr = client.receive()
                sources.add(addr)
        except TimeoutError:
            pass
    assert sources == {first}  # retransmissions only, from one TID


def test_two_clients_sharing_one_port_are_both_served(root: Path, server: Server) -> None:
    """busybox sets SO_REUSEADDR, so Linux may give two of its clients one
    ephemeral port; each connects to the TID that answers it first. Once the
    first has answered, the second's identical RRQ is a new request (seen in
    bench_tftp.py: 1 in 100 busybox clients was never served)."""
    content = (root / "big").read_bytes()

    def shared(port: int = 0) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.settimeout(2.0)
        return sock

    with shared() as one, shared(one.getsockname()[1]) as two:
        request = encode(Request(Opcode.RRQ, "big", "octet"))
        one.sendto(request, ("127.0.0.1", server.port))
        ready, _, _ = select.select([one, two], [], [], 2.0)
        assert ready, "no DATA 1"
        answered, other = (one, two) if ready[0] is one else (two, one)
        data, tid = answered.recvfrom(600)
        assert parse_packet_untrusted(data) == Data(1, content[:512])
        answered.connect(tid)  # as busybox does
        answered.send(encode_ack(1))  # the first client has answered
        assert parse_packet_untrusted(answered.recv(600)) == Data(2, content[512:1024])
        other.sendto(request, ("127.0.0.1", server.port))  # the same RRQ, the same port
        data, new_tid = other.recvfrom(600)
        assert new_tid != tid and parse_packet_untrusted(data) == Data(1, content[:512])


@pytest.fixture(params=["pump", "python"])
def carrier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Lock-step reads through the compiled pump, or through Python alone."""
    if request.param == "python":
        monkeypatch.setenv(tftp_pump.DISABLE_ENV, "1")
    elif not tftp_pump.available():
        assert not os.environ.get("CI"), "the pump must build under .ci/run"
        pytest.skip("pybootd._pump is not built")
    return str(request.param)


def lockstep_to(client: Client, tid: tuple[str, int], packet: object, last: int) -> None:
    """ACK each DATA up to block *last* (not included) of a lock-step read."""
    while not (isinstance(packet, Data) and packet.block == last):
        assert isinstance(packet, (Data, Oack)), packet
        client.sock.sendto(encode_ack(packet.block if isinstance(packet, Data) else 0), tid)
        packet, _ = client.receive()


@pytest.mark.parametrize("ending", ["error", "final-ack", "none"])
def test_same_request_behind_its_transfers_end_is_served_a_repeat_is_not(
        root: Path, tmp_path: Path, carrier: str, ending: str) -> None:
    """UEFI's tsize probe (OACK, ERROR 8, the same RRQ again from the same
    port) and tftp-hpa (final ACK, then the next RRQ from the same port): the
    listener may read that RRQ while the ERROR or ACK still waits unread on
    the transfer's socket (here: the loop is held, and another datagram to
    the listener makes it run first). The transfer reads its socket first,
    ends, and the request is served. Without an ending it is a repeat."""
    (root / "four").write_bytes(os.urandom(3 * 512 + 100))
    srv = Server(ini(root), tmp_path / "t.ini")
    options = (("tsize", "0"),) if ending == "error" else ()
    try:
        with Client("127.0.0.1", srv.port) as client, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            client.request("four", options=options)
            packet, tid = client.receive()
            if ending == "final-ack":
                lockstep_to(client, tid, packet, 4)
            release = srv.held()
            other.sendto(b"\x00\x09", ("127.0.0.1", srv.port))  # read first: malformed
            if ending == "error":
                client.sock.sendto(encode(Error(8, "User aborted the transfer")), tid)
            elif ending == "final-ack":
                client.sock.sendto(encode_ack(4), tid)
            client.request("four", options=options)
            release.set()
            client.sock.settimeout(0.5)
            if ending == "none":
                packets = []
                with contextlib.suppress(TimeoutError):
                    for _ in range(20):
                        packets.append(client.receive())
                assert packets and {addr for _, addr in packets} == {tid}  # resends only
                return
            again, new_tid = client.receive()
            assert new_tid != tid
            assert isinstance(again, Oack if options else Data), again
            client.sock.sendto(encode(Error(8, "enough")), new_tid)
    finally:
        srv.stop()


def test_client_error_after_oack_is_quiet_abort(root: Path, tmp_path: Path) -> None:
    seen: list[TransferStats] = []
    srv = Server(ini(root), tmp_path / "t.ini", session_stats=seen.append)
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.request("big", options=(("tsize", "0"),))
            _oack, tid = client.receive()
            client.sock.sendto(b"\x00\x05\x00\x08User aborted the transfer\x00", tid)
            assert client.get("small").data == b"hello"
    finally:
        srv.stop()
    outcomes = {s.filename: s.outcome for s in seen}
    assert outcomes == {"big": "aborted by client", "small": "complete"}


def test_lost_acks_are_recovered_and_counted(root: Path, tmp_path: Path) -> None:
    seen: list[TransferStats] = []
    srv = Server(ini(root), tmp_path / "t.ini", session_stats=seen.append)
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.request("small")
            first, tid = client.receive()
            second, _ = client.receive()  # we did not ACK: the server resent
            assert first == second
            client.sock.sendto(encode_ack(1), tid)
    finally:
        srv.stop()
    (stats,) = seen
    assert stats.outcome == "complete" and stats.retransmits == 1 and stats.bytes == 5


def test_plugin_handler_and_stats(root: Path, tmp_path: Path) -> None:
    seen: list[TransferStats] = []
    server_stats: list[dict[str, int]] = []

    def handler(request: TftpRequest) -> BytesResponse | None:
        if request.filename.startswith("gen/"):
            return BytesResponse(f"generated for {request.peer[0]}: {request.filename}".encode())
        if request.filename == "forbidden":
            raise TftpError(ErrorCode.ACCESS_VIOLATION, "not for you")
        return None

    def on_server(stats: ServerStats) -> None:
        server_stats.append(stats.get_and_reset_all_counters())

    srv = Server(ini(root), tmp_path / "t.ini", handler=handler, session_stats=seen.append,
                 server_stats=on_server)
    try:
        with Client("127.0.0.1", srv.port) as client:
            assert client.get("gen/x", options=(("tsize", "0"),)).data == \
                b"generated for 127.0.0.1: gen/x"
            assert client.get("small").data == b"hello"  # falls through to files
            with pytest.raises(TftpFailure) as info:
                client.get("forbidden")
            assert info.value.code == ErrorCode.ACCESS_VIOLATION
        deadline = 50
        while not any(s.get("transfers_ok") for s in server_stats) and deadline:
            threading.Event().wait(0.1)
            deadline -= 1
    finally:
        srv.stop()
    gen = next(s for s in seen if s.filename == "gen/x")
    assert gen.served == "handler:gen/x" and gen.options_granted == {"tsize": "30"}
    assert gen.packets == 1 and gen.bytes == 30 and gen.duration >= 0
    assert sum(s.get("transfers_ok", 0) for s in server_stats) == 2


def test_filters_and_indirection(root: Path, tmp_path: Path) -> None:
    admin = tmp_path / "admin.cfg"
    admin.write_text("ADMIN FILE")
    (tmp_path / "names").mkdir()
    (tmp_path / "names" / "startup.cfg").write_text("# which file\nsub/file\n")
    rules = (f"[filters]\npxelinux.cfg/* = {admin}\n*.alias = {{filename}}.real\n"
             "startup = [names/{filename}.cfg]\n")
    (root / "x.alias.real").write_bytes(b"real")
    srv = Server(ini(root) + rules, tmp_path / "t.ini")
    try:
        with Client("127.0.0.1", srv.port) as client:
            assert client.get("pxelinux.cfg/01-aa-bb").data == b"ADMIN FILE"
            assert client.get("x.alias").data == b"real"
            assert client.get("startup").data == b"in sub"
    finally:
        srv.stop()


def test_upload(root: Path, tmp_path: Path) -> None:
    uploads = tmp_path / "up"
    uploads.mkdir()
    (uploads / "exists").write_bytes(b"old")
    extra = f"allow_write = on\nupload_dir = {uploads}\nmax_upload_size = 100000\n"
    srv = Server(ini(root, extra), tmp_path / "t.ini")
    payload = os.urandom(5000)
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.put("new.bin", payload)
            with pytest.raises(TftpFailure) as info:
                client.put("exists", b"x")
            assert info.value.code == ErrorCode.FILE_EXISTS
            with pytest.raises(TftpFailure) as info:
                client.put("huge", os.urandom(100_600))
            assert info.value.code == ErrorCode.DISK_FULL
            with pytest.raises(TftpFailure) as info:
                client.put("../escape", b"x")
            assert info.value.code == ErrorCode.ACCESS_VIOLATION
    finally:
        srv.stop()
    assert hashlib.sha256((uploads / "new.bin").read_bytes()).digest() == \
        hashlib.sha256(payload).digest()
    assert (uploads / "exists").read_bytes() == b"old"
    assert sorted(p.name for p in uploads.iterdir()) == ["exists", "new.bin"]


def test_writes_refused_by_default(server: Server) -> None:
    with Client("127.0.0.1", server.port) as client, pytest.raises(TftpFailure) as info:
        client.put("x", b"data")
    assert info.value.code == ErrorCode.ACCESS_VIOLATION


def test_malformed_request_does_not_stop_service(server: Server) -> None:
    with Client("127.0.0.1", server.port) as client:
        for junk in (b"", b"\x00", b"\x00\x01abc", os.urandom(100), b"\x00\x04\x00\x01"):
            client.sock.sendto(junk, client.server)
        assert client.get("small").data == b"hello"


def test_ack_packet_types_via_generic_parser(server: Server) -> None:
    with Client("127.0.0.1", server.port) as client:
        client.request("small")
        _packet, tid = client.receive()
        client.sock.sendto(b"\x00\x04\x00\x01\x00", tid)  # ACK with a stray byte
        client.sock.settimeout(1)
        try:
            again, _ = client.receive()  # maybe a retransmit; never an error
            assert not isinstance(again, Error)
        except TimeoutError:
            pass
    assert isinstance(Ack(1), Ack)


def test_ipv6_and_ipv4_on_the_default_address(root: Path, tmp_path: Path) -> None:
    # port = 0: each listener gets the kernel's choice (IPv4 first, then IPv6).
    srv = Server(f"[tftp]\nport = 0\nroot = {root}\n", tmp_path / "t.ini")
    try:
        with Client("127.0.0.1", srv.port) as client:
            assert client.get("small").data == b"hello"
        if len(srv.ports) == 2:
            with Client("::1", srv.ports[1]) as client:
                result = client.get("small", options=(("blksize", "1024"),))
            assert result.data == b"hello" and result.server[0] == "::1"
            with Client("::1", srv.ports[1]) as client:  # a window in GSO batches, over IPv6
                result = client.get("big", options=(("blksize", "1400"), ("windowsize", "16")))
            assert result.data == (root / "big").read_bytes()
            assert result.packets == 300_000 // 1400 + 1
    finally:
        srv.stop()


def test_reply_leaves_from_the_address_the_request_came_to(root: Path, tmp_path: Path) -> None:
    # Every 127/8 address is local: a multi-homed host in miniature.
    srv = Server(f"[tftp]\naddress = 0.0.0.0\nport = 0\nroot = {root}\n", tmp_path / "t.ini")
    try:
        for address in ("127.0.0.1", "127.0.0.2", "127.1.2.3"):
            with Client(address, srv.port) as client:
                result = client.get("small")
            assert result.server[0] == address
    finally:
        srv.stop()


def test_broadcast_request_answered_from_our_own_address(root: Path, tmp_path: Path) -> None:
    srv = Server(f"[tftp]\naddress = 0.0.0.0\nport = 0\nroot = {root}\n", tmp_path / "t.ini")
    try:
        with Client("127.255.255.255", srv.port) as client:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            result = client.get("small")
        assert result.data == b"hello" and result.server[0] == "127.0.0.1"
    finally:
        srv.stop()


def pktinfo(ifindex: int, spec_dst: str, dst: str) -> list[tuple[int, int, bytes]]:
    data = struct.pack("=i4s4s", ifindex, socket.inet_aton(spec_dst), socket.inet_aton(dst))
    return [(socket.IPPROTO_IP, IP_PKTINFO, data)]


def test_reply_address_is_ipi_spec_dst() -> None:
    # ip(7): the destination for a unicast to us; the interface's address for
    # a broadcast, whatever the netmask (192.0.2.127 is a /25's broadcast).
    assert tftp._local_address(pktinfo(3, "192.0.2.10", "192.0.2.10")) == ("192.0.2.10", 3)
    assert tftp._local_address(pktinfo(3, "192.0.2.1", "192.0.2.127")) == ("192.0.2.1", 3)
    assert tftp._local_address(pktinfo(3, "192.0.2.1", "255.255.255.255")) == ("192.0.2.1", 3)
    assert tftp._local_address(pktinfo(3, "10.0.0.255", "10.0.0.255")) == ("10.0.0.255", 3)
    assert tftp._local_address(pktinfo(0, "0.0.0.0", "192.0.2.1")) is None  # no route
    assert tftp._local_address([]) is None


# --- uploads: commit, abort, leftovers -----------------------------------------------
@pytest.fixture
def upload_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "up"
    folder.mkdir()
    return folder


def upload_ini(root: Path, upload_dir: Path) -> str:
    return ini(root, f"allow_write = on\nupload_dir = {upload_dir}\n")


def test_final_ack_only_once_the_upload_is_stored(root: Path, tmp_path: Path, upload_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # An fsync slower than the dally (timeout 0.2 s): the final ACK waits
    # for the file, and a repeated final DATA gets no early ACK.
    commit = local.Upload.commit

    def slow_commit(upload: local.Upload) -> None:
        time.sleep(1.0)
        commit(upload)

    monkeypatch.setattr(local.Upload, "commit", slow_commit)
    seen: list[TransferStats] = []
    srv = Server(upload_ini(root, upload_dir), tmp_path / "t.ini", session_stats=seen.append)
    target = upload_dir / "slow.bin"
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.request("slow.bin", write=True)
            _ack0, tid = client.receive()
            client.sock.sendto(encode(Data(1, b"x" * 512)), tid)
            assert client.receive()[0] == Ack(1)
            client.sock.settimeout(0.15)
            for _ in range(30):
                client.sock.sendto(encode(Data(2, b"end")), tid)
                try:
                    reply, _ = client.receive()
                    break
                except TimeoutError:
                    pass
            assert reply == Ack(2)
            assert target.read_bytes() == b"x" * 512 + b"end"  # stored before the ACK
        wait_for(lambda: seen, 5, what="the transfer to end")
    finally:
        srv.stop()
    assert seen[0].outcome == "complete" and seen[0].bytes == 515
    assert sorted(p.name for p in upload_dir.iterdir()) == ["slow.bin"]


def test_commit_failure_sends_the_error(root: Path, tmp_path: Path, upload_dir: Path) -> None:
    srv = Server(upload_ini(root, upload_dir), tmp_path / "t.ini")
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.request("late.bin", write=True)
            _ack0, tid = client.receive()
            (upload_dir / "late.bin").write_bytes(b"appeared meanwhile")
            client.sock.sendto(encode(Data(1, b"new")), tid)
            reply, _ = client.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.FILE_EXISTS
    finally:
        srv.stop()
    assert (upload_dir / "late.bin").read_bytes() == b"appeared meanwhile"
    assert sorted(p.name for p in upload_dir.iterdir()) == ["late.bin"]


def test_abort_waits_for_a_running_write(root: Path, tmp_path: Path, upload_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The client gives up while a write runs in the pool: the abort comes
    # after it, so no write ever meets a closed file.
    write = local.Upload.write
    failures: list[BaseException] = []

    def slow_write(upload: local.Upload, data: bytes) -> None:
        time.sleep(0.5)
        try:
            write(upload, data)
        except BaseException as exc:
            failures.append(exc)
            raise

    monkeypatch.setattr(local.Upload, "write", slow_write)
    seen: list[TransferStats] = []
    srv = Server(upload_ini(root, upload_dir), tmp_path / "t.ini", session_stats=seen.append)
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.request("gone.bin", options=(("blksize", "1468"),), write=True)
            _oack, tid = client.receive()
            for block in range(1, 200):  # 285 KiB: one write of 256 KiB starts
                client.sock.sendto(encode(Data(block, bytes(1468))), tid)
                client.receive()
            client.sock.sendto(encode(Error(0, "changed my mind")), tid)
        wait_for(lambda: seen and not list(upload_dir.iterdir()), 5,
                 what="the temporary file removed")
        time.sleep(0.6)  # any queued write would have run by now
    finally:
        srv.stop()
    assert seen[0].outcome == "aborted by client"
    assert failures == []
    assert list(upload_dir.iterdir()) == []


def test_shutdown_removes_a_running_upload_at_once(root: Path, tmp_path: Path,
                                                   upload_dir: Path) -> None:
    srv = Server(upload_ini(root, upload_dir), tmp_path / "t.ini")
    with Client("127.0.0.1", srv.port) as client:
        client.request("half.bin", write=True)
        _ack0, tid = client.receive()
        client.sock.sendto(encode(Data(1, bytes(512))), tid)
        client.receive()
        assert len(list(upload_dir.iterdir())) == 1  # the temporary file
        srv.stop()
        assert list(upload_dir.iterdir()) == []  # not left to the pool


def test_start_sweeps_stale_temporary_uploads(root: Path, tmp_path: Path,
                                              upload_dir: Path) -> None:
    dead = ".vmlinuz.pybootd-999999999-7f0a1b2c.part"  # no such process
    ours = f".a b.pybootd-{os.getpid()}-1.part"  # this process has not uploaded yet
    alive = ".c.pybootd-1-2.part"  # pid 1 runs: another pybootd may be writing it
    (upload_dir / "sub").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    for path in (upload_dir / dead, upload_dir / ours, upload_dir / "sub" / dead,
                 upload_dir / alive, outside / dead):
        path.write_bytes(b"partial")
    keep = ["keep.bin", ".keep.part", ".x.pybootd-12-zz.part", "x.pybootd-1-2.part"]
    for name in keep:
        (upload_dir / name).write_bytes(b"data")
    (upload_dir / ".l.pybootd-999999999-1.part").symlink_to(outside / dead)
    (upload_dir / "linked").symlink_to(outside)  # not followed
    srv = Server(upload_ini(root, upload_dir), tmp_path / "t.ini")
    srv.stop()
    assert sorted(p.name for p in upload_dir.iterdir()) == sorted(
        [*keep, alive, ".l.pybootd-999999999-1.part", "linked", "sub"])
    assert list((upload_dir / "sub").iterdir()) == []
    assert (outside / dead).read_bytes() == b"partial"


def test_upload_write_loops_on_partial_writes(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    upload = local.Upload(tmp_path, "file", overwrite=False)
    upload.write(b"0123456789")
    upload.commit()
    assert (tmp_path / "file").read_bytes() == b"0123456789"


# --- start-up checks ----------------------------------------------------------------------
def test_start_fails_on_a_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    text = f"[tftp]\naddress = 127.0.0.1\nport = 0\nroot = {missing}\n"
    assert start_error(text, tmp_path / "t.ini") == \
        f"{tmp_path / 't.ini'}:4: tftp.root: {missing} does not exist (expected an existing folder)"
    (tmp_path / "file").write_bytes(b"")
    text = "[tftp]\naddress = 127.0.0.1\nport = 0\nroot = file\n"
    assert "tftp.root: " + str(tmp_path / "file") + " is not a folder" in \
        start_error(text, tmp_path / "t.ini")


def test_start_fails_on_a_missing_upload_dir(root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "up"
    text = upload_ini(root, missing)
    message = start_error(text, tmp_path / "t.ini")
    assert f"tftp.upload_dir: {missing} does not exist" in message
    # Without allow_write, upload_dir is not used: no error.
    srv = Server(ini(root, f"upload_dir = {missing}\n"), tmp_path / "t.ini")
    srv.stop()


# --- windows sent in UDP GSO batches (tftp_transfer.gso_segments) ----------------------
def test_gso_batch_sizes() -> None:
    assert gso_segments(1468, 1) == 1  # lock-step: one block at a time
    assert gso_segments(1468, 8) == 2  # a quarter of the window
    assert gso_segments(1468, 64) == GSO_BATCH
    assert gso_segments(8192, 64) == 7  # what one 64 KiB send takes
    assert gso_segments(65464, 64) == 1


@pytest.mark.parametrize("blksize, windowsize", [(1468, 64), (512, 16), (1000, 8)])
def test_windowed_read_in_gso_batches(root: Path, tmp_path: Path, blksize: int,
                                      windowsize: int) -> None:
    """Each datagram of a batch is one whole DATA packet, the last one short."""
    seen: list[TransferStats] = []
    srv = Server(ini(root, "blocksize = 1468\n"), tmp_path / "t.ini", session_stats=seen.append)
    big = (root / "big").read_bytes()
    try:
        with Client("127.0.0.1", srv.port) as client:
            got = client.get("big", options=(("blksize", str(blksize)),
                                             ("windowsize", str(windowsize))))
        blocks = len(big) // blksize + 1
        assert got.data == big and got.packets == blocks
        wait_for(lambda: len(seen) == 1, 5, what="the transfer to end")
        assert seen[0].outcome == "complete" and seen[0].packets == blocks
    finally:
        srv.stop()


def test_gso_refused_falls_back_block_by_block(root: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A kernel or route that refuses the GSO send (here: a malformed
    UDP_SEGMENT, EINVAL) gets the same window one datagram per block."""
    monkeypatch.setattr(logging.getLogger("pybootd"), "propagate", True)  # the CLI's tests
    caplog.set_level(logging.DEBUG, logger="pybootd.tftp")
    monkeypatch.setattr(udp, "gso_cmsg", lambda blksize: [(17, 103, b"\0\0\0\0")])
    srv = Server(ini(root), tmp_path / "t.ini")
    try:
        with Client("127.0.0.1", srv.port) as client:
            got = client.get("big", options=(("blksize", "1468"), ("windowsize", "16")))
        assert got.data == (root / "big").read_bytes()
        assert got.packets == 300_000 // 1468 + 1
        assert "UDP GSO refused (Invalid argument), sending block by block" in caplog.text
    finally:
        srv.stop()


# --- busy-polling ([tftp] busy_poll): CPU only while the client answers that fast ----------
def test_busy_poll_spends_no_cpu_on_a_slow_client(root: Path, tmp_path: Path,
                                                  carrier: str) -> None:
    """busy_poll 2 ms, a client that takes 20 ms for each ACK: polling
    stops after a few misses, so 60 blocks cost far less CPU than 60 polls
    (120 ms); the transfer completes."""
    srv = Server(ini(root, "busy_poll = 2000\n"), tmp_path / "t.ini")
    try:
        with Client("127.0.0.1", srv.port) as client:
            client.request("big")
            packet, tid = client.receive()
            block, chunks = 0, []
            cpu = time.process_time()
            for _ in range(700):  # 587 blocks, and a few retransmissions at most
                assert isinstance(packet, Data)
                if packet.block == (block + 1) & 0xFFFF:
                    block += 1
                    chunks.append(packet.data)
                if block == 70:
                    cpu = time.process_time() - cpu
                if 10 <= block < 70:
                    time.sleep(0.02)
                client.sock.sendto(encode_ack(block), tid)
                if len(packet.data) < 512:
                    break
                packet, tid = client.receive()
        assert b"".join(chunks) == (root / "big").read_bytes()
        assert cpu < 0.06, f"{cpu * 1000:.0f} ms of CPU for 60 slow blocks"
    finally:
        srv.stop()
