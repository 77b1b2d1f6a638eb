"""The protocol-free compiled pump (pybootd/_pump.c, contract in _pump.pyi)
on real loopback UDP sockets.

The module is built here from its source with gcc into a temporary folder
(so the test sees the source as it is, whatever is installed), or imported
from PYBOOTD_PUMP_DIR when that is set: test_functional_tests_under_asan
builds it with AddressSanitizer and runs this file's other tests against
that build in a subprocess, which is how CI runs the pump under ASan.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import select
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pybootd._pump import Pump

SOURCE = Path(__file__).resolve().parents[2] / "pybootd" / "_pump.c"
DIR_ENV = "PYBOOTD_PUMP_DIR"  # a folder holding a built _pump.abi3.so: use it
LIMITED_API = "0x030B0000"
TIMEOUT = 2.0  # seconds any one expected datagram may take on loopback
QUIET = 0.05  # seconds to wait to be fairly sure nothing comes

Back = list[tuple[int, bytes]]  # what run() hands back


def missing(what: str) -> None:
    """Skip for want of a build tool; under CI (set, as .ci/run and GitHub
    set it) the tool is part of the image: its absence is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must be able to build pybootd/_pump.c)")
    pytest.skip(what)


def compile_pump(folder: Path, *flags: str) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        missing("gcc not found")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        missing(f"Python headers not found in {include}")
    target = folder / "_pump.abi3.so"
    # -Werror: a warning is a bug to fix, here as in the package build.
    command = [str(gcc), "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
               f"-DPy_LIMITED_API={LIMITED_API}", f"-I{include}", *flags, str(SOURCE),
               "-o", str(target)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return target


def load(path: Path) -> ModuleType:
    # Its own name, so an installed pybootd._pump is neither used nor replaced.
    spec = importlib.util.spec_from_file_location("pybootd._pump", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    given = os.environ.get(DIR_ENV)
    if given:
        return load(Path(given) / "_pump.abi3.so")
    return load(compile_pump(tmp_path_factory.mktemp("pump"), "-O2"))


@pytest.fixture
def pump(native: ModuleType) -> Iterator[Pump]:
    the_pump: Pump = native.Pump()
    yield the_pump
    the_pump.close()


def udp(family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.settimeout(TIMEOUT)
    return sock


@pytest.fixture
def sockets() -> Iterator[Callable[[int], socket.socket]]:
    """udp(family), each closed after the test."""
    made: list[socket.socket] = []

    def make(family: int = socket.AF_INET) -> socket.socket:
        made.append(udp(family))
        return made[-1]

    yield make
    for sock in made:
        sock.close()


def ack(n: int) -> bytes:
    return b"\x00\x04" + n.to_bytes(2, "big")


def header(n: int) -> bytes:
    return b"\x00\x03" + n.to_bytes(2, "big")


def drive(pump: Pump, until: Callable[[Back], bool],
          busy_poll: float = 0.0) -> Back:
    """run() whenever the pump is readable until `until(handed back so far)`,
    within TIMEOUT."""
    back: Back = []
    deadline = time.monotonic() + TIMEOUT
    while not until(back):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; handed back so far: {back}"
        readable, _, _ = select.select([pump.fileno()], [], [], left)
        if readable:
            back.extend(pump.run(1024, busy_poll))
    return back


def settle(pump: Pump) -> Back:
    """What the pump hands back of what arrives within QUIET."""
    back: Back = []
    deadline = time.monotonic() + QUIET
    while (left := deadline - time.monotonic()) > 0:
        if select.select([pump.fileno()], [], [], left)[0]:
            back.extend(pump.run(1024, 0.0))
    return back


def nothing_comes(sock: socket.socket) -> bool:
    return not select.select([sock], [], [], QUIET)[0]


def pair(pump: Pump, make: Callable[..., socket.socket],
         family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    """(the pump's socket, connected to its peer's), added."""
    served, client = make(family), make(family)
    served.connect(client.getsockname())
    pump.add(served.fileno())
    return served, client


def answered(pump: Pump, served: socket.socket, client: socket.socket, datagram: bytes) -> bytes:
    """Send `datagram` to the pump's socket and return what comes back."""
    client.sendto(datagram, served.getsockname())
    got: list[bytes] = []

    def replied(back: Back) -> bool:
        assert back == [], "handed back instead of answered"
        if select.select([client], [], [], 0)[0]:
            got.append(client.recv(70000))
        return bool(got)

    drive(pump, replied)
    return got[0]


def arm_blocks(pump: Pump, fd: int, count: int, body: bytes | memoryview = b"",
               stride: int = 0, first: int = 0) -> None:
    """Step i expects ack(first + i) and replies header(first + i + 1), then
    body[i * stride:(i + 1) * stride]."""
    blocks = range(first, first + count)
    expects, heads = b"".join(map(ack, blocks)), b"".join(header(n + 1) for n in blocks)
    pump.arm(fd, count, expects, heads, body, stride)


# --- the contract -----------------------------------------------------------

def test_a_matching_datagram_gets_exactly_the_prepared_bytes(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    chunk = os.urandom(3000)
    pump.arm(served.fileno(), 1, ack(7), header(8), memoryview(chunk)[512:1024], 512)
    before = time.monotonic()
    assert answered(pump, served, client, ack(7)) == header(8) + chunk[512:1024]
    done, last = pump.take(served.fileno())
    assert done == 1
    assert before <= last <= time.monotonic()  # the clock of time.monotonic()


def test_an_expect_may_be_any_length_and_a_reply_empty(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    pump.arm(fd, 2, b"hello, pumpHELLO, PUMP", b"", bytearray(b"one buffer"), 10)
    assert answered(pump, served, client, b"hello, pump") == b"one buffer"
    assert answered(pump, served, client, b"HELLO, PUMP") == b""  # the last stride is empty
    assert pump.take(fd)[0] == 2
    pump.arm(fd, 1, b"", b"", b"", 0)
    assert answered(pump, served, client, b"") == b""  # empty to empty: still a datagram
    assert pump.take(fd)[0] == 1


def test_steps_run_in_order(pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    chunk = os.urandom(512 * 3)
    arm_blocks(pump, served.fileno(), 3, memoryview(chunk), 512)
    for n in range(3):
        assert answered(pump, served, client, ack(n)) == header(n + 1) + chunk[n * 512:][:512]
    assert pump.take(served.fileno())[0] == 3


def test_out_of_order_datagrams_are_handed_back_in_order_and_disarm(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    arm_blocks(pump, fd, 3, b"xxx", 1)
    client.sendto(ack(1), served.getsockname())  # step 1 before step 0: not its turn
    client.sendto(ack(0), served.getsockname())  # right, but the socket is disarmed now
    client.sendto(b"\x00\x05\x00\x00oops\x00", served.getsockname())
    back = drive(pump, lambda back: len(back) == 3)
    assert back == [(fd, ack(1)), (fd, ack(0)), (fd, b"\x00\x05\x00\x00oops\x00")]
    assert nothing_comes(client)
    assert pump.take(fd) == (0, 0.0)


def test_a_datagram_from_another_port_never_reaches_the_pump(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    stranger = sockets()
    fd = served.fileno()
    arm_blocks(pump, fd, 1)
    stranger.sendto(ack(0), served.getsockname())  # the kernel drops it (connected)
    assert settle(pump) == []
    assert nothing_comes(stranger)
    assert answered(pump, served, client, ack(0)) == header(1)  # still armed


def test_a_datagram_after_the_last_step_is_handed_back(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    arm_blocks(pump, fd, 1)
    assert answered(pump, served, client, ack(0)) == header(1)
    client.sendto(ack(1), served.getsockname())
    client.sendto(ack(0), served.getsockname())  # even the first step's again
    back = drive(pump, lambda back: len(back) == 2)
    assert [data for _, data in back] == [ack(1), ack(0)]
    assert nothing_comes(client)
    assert pump.take(fd)[0] == 1


def test_an_unarmed_socket_hands_back_all(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    for n in range(5):
        client.sendto(ack(n), served.getsockname())
    back = drive(pump, lambda back: len(back) == 5)
    assert [data for _, data in back] == [ack(n) for n in range(5)]


def test_a_reply_that_cannot_be_sent_hands_the_datagram_back(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    too_long = bytes(70000)  # more than a UDP datagram holds: EMSGSIZE
    arm_blocks(pump, fd, 1, too_long, len(too_long))
    client.sendto(ack(0), served.getsockname())
    assert drive(pump, lambda back: len(back) == 1) == [(fd, ack(0))]
    assert pump.take(fd) == (0, 0.0)


def test_take_counts_and_times_and_resets(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    assert pump.take(fd) == (0, 0.0)
    arm_blocks(pump, fd, 5)
    for n in range(3):
        answered(pump, served, client, ack(n))
    after_third = time.monotonic()
    with pytest.raises(ValueError, match="take"):
        arm_blocks(pump, fd, 1, first=3)  # would lose the 3 answered
    done, last = pump.take(fd)
    assert done == 3 and 0 < last <= after_third
    assert pump.take(fd) == (0, 0.0)
    # take disarmed it: the fourth step is not answered.
    client.sendto(ack(3), served.getsockname())
    assert [data for _, data in drive(pump, lambda back: len(back) == 1)] == [ack(3)]
    with pytest.raises(KeyError):
        pump.take(served.fileno() + 1000)


def test_arm_again_before_any_answer_replaces_the_steps(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    pump.arm(fd, 1, ack(0), b"", b"old", 3)
    pump.arm(fd, 1, ack(0), b"", b"new", 3)
    assert answered(pump, served, client, ack(0)) == b"new"


def test_the_steps_are_cut_from_three_buffers(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    body = os.urandom(512 * 2 + 100)  # the last step's stride is short
    expects = b"".join(ack(n) for n in range(3))
    heads = b"".join(header(n + 1) for n in range(3))
    pump.arm(fd, 3, expects, memoryview(heads), body, 512)
    del heads
    for n in range(3):
        assert answered(pump, served, client, ack(n)) == header(n + 1) + body[n * 512:][:512]
    assert pump.take(fd)[0] == 3
    pump.arm(fd, 2, expects[:8], b"H1H2", body[:512], 512)  # ends in an empty stride
    assert answered(pump, served, client, ack(0)) == b"H1" + body[:512]
    assert answered(pump, served, client, ack(1)) == b"H2"
    client.sendto(ack(2), served.getsockname())  # after the last step
    assert [data for _, data in drive(pump, lambda back: len(back) == 1)] == [ack(2)]
    assert pump.take(fd)[0] == 2
    pump.arm(fd, 0, b"", b"", b"", 512)  # nothing to answer
    client.sendto(ack(0), served.getsockname())
    assert [data for _, data in drive(pump, lambda back: len(back) == 1)] == [ack(0)]


@pytest.mark.parametrize(("count", "expects", "heads", "body", "stride"), [
    (2, b"12345", b"hhhh", b"x" * 600, 512),  # 5 bytes are not 2 equal expects
    (2, b"1234", b"hhh", b"x" * 600, 512),  # nor 3 bytes 2 heads
    (2, b"1234", b"hhhh", b"x" * 1025, 512),  # the body goes on after the last step
    (3, b"123456", b"hhhhhh", b"x" * 1000, 512),  # ... or ends before it
    (0, b"", b"", b"x", 512),
    (1, b"12", b"hh", b"x", 0),
    (-1, b"", b"", b"", 512),
    (1, b"12", b"hh", b"x", -1),
    (2 ** 62, b"", b"", b"x" * 10, 2 ** 62),  # no overflow
])
def test_steps_that_do_not_add_up_are_refused(
        pump: Pump, sockets: Callable[..., socket.socket], count: int, expects: bytes,
        heads: bytes, body: bytes, stride: int) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    pump.arm(fd, 1, ack(0), b"", b"", 0)
    with pytest.raises(ValueError):
        pump.arm(fd, count, expects, heads, body, stride)
    client.sendto(ack(0), served.getsockname())  # the refused arm disarmed it
    assert [data for _, data in drive(pump, lambda back: len(back) == 1)] == [ack(0)]


@pytest.mark.parametrize("args", [
    (1, "not a buffer", b"", b"", 0),  # expects
    (1, ack(0), [b"h"], b"", 0),  # heads
    (1, ack(0), b"", 5, 0),  # body
])
def test_buffers_that_are_not_buffers_are_refused_and_leave_the_socket_disarmed(
        pump: Pump, sockets: Callable[..., socket.socket], args: tuple[Any, ...]) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    pump.arm(fd, 1, ack(0), b"ok", b"", 0)
    with pytest.raises(TypeError):
        pump.arm(fd, *args)
    client.sendto(ack(0), served.getsockname())
    assert [data for _, data in drive(pump, lambda back: len(back) == 1)] == [ack(0)]
    assert nothing_comes(client)


def test_remove_then_close_and_a_reused_number_gets_no_old_arm(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    arm_blocks(pump, fd, 1)
    with pytest.raises(ValueError, match="already"):
        pump.add(fd)
    assert pump.active() == 1
    pump.remove(fd)
    pump.remove(fd)  # again: nothing to do
    assert pump.active() == 0
    served.close()
    with pytest.raises(KeyError):
        pump.take(fd)
    reborn = sockets()
    if reborn.fileno() != fd:  # take the old number on purpose
        os.dup2(reborn.fileno(), fd)
        reborn.close()
        reborn = socket.socket(fileno=fd)
        reborn.settimeout(TIMEOUT)
    reborn.connect(client.getsockname())
    pump.add(fd)
    client.sendto(ack(0), reborn.getsockname())
    assert [data for _, data in drive(pump, lambda back: len(back) == 1)] == [ack(0)]
    assert nothing_comes(client)
    assert pump.take(fd) == (0, 0.0)
    pump.remove(fd)
    reborn.close()


def test_fifty_sockets_at_once(pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    pairs = [pair(pump, sockets) for _ in range(50)]
    chunks = [os.urandom(1468 * 2) for _ in pairs]
    for (served, _), chunk in zip(pairs, chunks, strict=True):
        arm_blocks(pump, served.fileno(), 2, memoryview(chunk), 1468)
    for step in range(2):
        for served, client in pairs:
            client.sendto(ack(step), served.getsockname())
        got: dict[int, bytes] = {}

        def all_replied(back: Back,
                        got: dict[int, bytes] = got) -> bool:
            assert back == []
            ready = select.select([client for _, client in pairs], [], [], 0)[0]
            for client in ready:
                got[client.fileno()] = client.recv(70000)
            return len(got) == len(pairs)

        drive(pump, all_replied)
        for (_, client), chunk in zip(pairs, chunks, strict=True):
            assert got[client.fileno()] == header(step + 1) + chunk[step * 1468:][:1468]
    assert all(pump.take(served.fileno())[0] == 2 for served, _ in pairs)


def test_budget_and_handback_max_leave_the_rest_for_the_next_run(
        pump: Pump, native: ModuleType, sockets: Callable[..., socket.socket]) -> None:
    pairs = [pair(pump, sockets) for _ in range(10)]
    for served, client in pairs:
        arm_blocks(pump, served.fileno(), 1)
        client.sendto(ack(0), served.getsockname())
    assert select.select([pump.fileno()], [], [], TIMEOUT)[0]
    time.sleep(QUIET)  # all ten are there (loopback delivers at once; this is a margin)
    assert pump.run(4, 0.0) == []
    assert sum(pump.take(served.fileno())[0] for served, _ in pairs) == 4
    # Level-triggered: the pump is still readable for the six left.
    assert select.select([pump.fileno()], [], [], 0)[0]
    served, client = pairs[0]
    many = native.HANDBACK_MAX + 36
    for n in range(many):
        client.sendto(n.to_bytes(2, "big"), served.getsockname())
    back = drive(pump, lambda back: sum(fd == served.fileno() for fd, _ in back) == many)
    assert [data for fd, data in back if fd == served.fileno()] == [
        n.to_bytes(2, "big") for n in range(many)]


def test_a_dual_stack_socket_matches_an_ipv4_mapped_peer(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        served.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        served.bind(("::", 0, 0, 0))
    except OSError as exc:
        served.close()
        pytest.skip(f"no dual-stack socket: {exc}")
    try:
        client = sockets()
        served.connect(("::ffff:127.0.0.1", client.getsockname()[1], 0, 0))
        pump.add(served.fileno())
        arm_blocks(pump, served.fileno(), 1)
        client.sendto(ack(0), ("127.0.0.1", served.getsockname()[1]))
        assert drive(pump, lambda back: bool(select.select([client], [], [], 0)[0])) == []
        assert client.recv(10) == header(1)
        client.sendto(b"?", ("127.0.0.1", served.getsockname()[1]))
        assert drive(pump, lambda back: len(back) == 1) == [(served.fileno(), b"?")]
    finally:
        pump.remove(served.fileno())
        served.close()


def test_a_call_from_another_thread_during_run_is_refused(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, _ = pair(pump, sockets)
    polling = threading.Thread(target=pump.run, args=(1024, 0.5), daemon=True)
    polling.start()
    time.sleep(0.1)  # well inside its poll (the first: the policy lets it poll)
    with pytest.raises(RuntimeError, match="another thread"):
        pump.take(served.fileno())
    polling.join(TIMEOUT)
    assert not polling.is_alive()
    assert pump.take(served.fileno()) == (0, 0.0)


def test_ipv6(pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    try:
        served, client = pair(pump, sockets, socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    fd = served.fileno()
    arm_blocks(pump, fd, 1)
    assert answered(pump, served, client, ack(0)) == header(1)
    client.sendto(b"other", served.getsockname())
    assert drive(pump, lambda back: len(back) == 1) == [(fd, b"other")]


# --- the buffers ---------------------------------------------------------------

def test_the_buffers_stay_valid_when_the_caller_drops_them(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    expected: list[bytes] = []

    def arm() -> None:  # every reference to the buffers is this function's
        payload = bytes(os.urandom(4096))
        expected.extend(header(n + 1) + payload[n * 1024:][:1024] for n in range(4))
        expects = bytearray(b"".join(ack(n) for n in range(4)))
        heads = bytes(b"".join(header(n + 1) for n in range(4)))
        pump.arm(fd, 4, expects, heads, memoryview(payload), 1024)
        expects[:] = bytes(len(expects))  # copied: changing it now changes nothing

    arm()
    gc.collect()
    junk = [os.urandom(1024) for _ in range(256)]  # reuse what was freed, were it freed
    for n in range(4):
        assert answered(pump, served, client, ack(n)) == expected[n]
    del junk


def test_buffers_are_held_while_armed_and_released_after(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    served, client = pair(pump, sockets)
    fd = served.fileno()
    data = bytearray(b"resizable")
    heads = b"head:" * 2
    refs = sys.getrefcount(heads)

    def arm() -> None:  # step 0: heads[:5] + data, step 1: heads[5:] and an empty stride
        pump.arm(fd, 2, ack(0) + ack(1), heads, data, len(data))

    arm()
    with pytest.raises(BufferError):  # exported: the pump reads it
        data.extend(b"!")
    assert sys.getrefcount(heads) > refs
    assert answered(pump, served, client, ack(0)) == b"head:resizable"
    pump.take(fd)
    assert sys.getrefcount(heads) == refs
    data.extend(b"!")
    # Disarmed inside run() (a datagram handed back): released right there,
    # the count still there for take().
    arm()
    assert answered(pump, served, client, ack(0)) == b"head:resizable!"
    client.sendto(b"else", served.getsockname())
    drive(pump, lambda back: len(back) == 1)
    assert sys.getrefcount(heads) == refs
    data.extend(b"!")
    assert pump.take(fd)[0] == 1
    # take releases them without any step answered too.
    arm()
    assert sys.getrefcount(heads) > refs
    with pytest.raises(BufferError):
        data.extend(b"!")
    assert pump.take(fd) == (0, 0.0)
    assert sys.getrefcount(heads) == refs
    # remove and close release too.
    arm()
    pump.remove(fd)
    assert sys.getrefcount(heads) == refs
    pump.add(fd)
    arm()
    pump.close()
    assert sys.getrefcount(heads) == refs
    data.extend(b"!")


# --- busy polling ---------------------------------------------------------------

def test_busy_poll_zero_returns_at_once(pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    pair(pump, sockets)
    start = time.monotonic()
    for _ in range(100):
        assert pump.run(1024, 0.0) == []
    assert time.monotonic() - start < 0.5  # 100 polls, none waited


def test_busy_poll_answers_a_fast_peer_in_one_run_without_the_gil(
        pump: Pump, sockets: Callable[..., socket.socket]) -> None:
    """The peer is a Python thread: it can answer during run() only because
    the pump lets the GIL go while it polls."""
    served, client = pair(pump, sockets)
    fd = served.fileno()
    steps = 20
    arm_blocks(pump, fd, steps)
    replies: list[bytes] = []

    def peer() -> None:
        with_timeout = select.select
        for n in range(steps):
            client.sendto(ack(n), served.getsockname())
            if not with_timeout([client], [], [], TIMEOUT)[0]:
                return
            replies.append(client.recv(100))

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    assert select.select([pump.fileno()], [], [], TIMEOUT)[0]
    assert pump.run(1024, 0.5) == []  # returns once a poll of 0.5 s sees nothing
    thread.join(TIMEOUT)
    assert replies == [header(n + 1) for n in range(steps)]
    assert pump.take(fd)[0] == steps


def test_busy_poll_stops_after_polls_that_see_nothing_and_probes_again(
        pump: Pump, native: ModuleType, sockets: Callable[..., socket.socket]) -> None:
    """The adaptive policy: after SPIN_MISSES empty polls in a row, only one
    call in SPIN_PROBE polls; a poll that sees something starts it over."""
    served, client = pair(pump, sockets)
    spin = 0.06

    def timed() -> float:
        start = time.monotonic()
        pump.run(1024, spin)
        return time.monotonic() - start

    for _ in range(native.SPIN_MISSES):
        assert timed() >= spin  # polled for the whole time: nothing came
    start = time.monotonic()
    for _ in range(native.SPIN_PROBE - 1):
        pump.run(1024, spin)
    assert time.monotonic() - start < spin * 20  # not polled: thousands of calls
    assert timed() >= spin  # the probe
    assert timed() < spin  # and it saw nothing: not again
    # A probe that sees a datagram resets the count of misses.
    for _ in range(native.SPIN_PROBE - 2):
        pump.run(1024, spin)
    arm_blocks(pump, served.fileno(), 1)
    threading.Timer(spin / 6, client.sendto, (ack(0), served.getsockname())).start()
    assert timed() >= spin  # polled, answered, polled on until nothing came
    assert client.recv(10) == header(1)
    assert timed() >= spin  # the misses started over: polling again


# --- misuse ---------------------------------------------------------------------

def test_closed_pump_and_bad_arguments(native: ModuleType) -> None:
    the_pump = native.Pump()
    with pytest.raises(TypeError):
        native.Pump(1)
    with pytest.raises(ValueError):
        the_pump.add(-1)
    with pytest.raises(TypeError):
        the_pump.add("0")
    with pytest.raises(ValueError):
        the_pump.run(-1, 0.0)
    with pytest.raises(ValueError):
        the_pump.run(10, -1.0)
    the_pump.close()
    the_pump.close()
    for call in (the_pump.fileno, lambda: the_pump.run(1, 0.0), lambda: the_pump.take(0),
                 lambda: the_pump.arm(0, 0, b"", b"", b"", 0)):
        with pytest.raises(ValueError, match="closed"):
            call()


# --- AddressSanitizer ---------------------------------------------------------------

def test_functional_tests_under_asan(tmp_path: Path) -> None:
    """Every test above, against the module built with -fsanitize=address,
    in a subprocess with gcc's libasan preloaded (Python itself is not built
    with it)."""
    if os.environ.get(DIR_ENV):
        pytest.skip("already the subprocess")
    gcc = shutil.which("gcc")
    if gcc is None:
        missing("gcc not found")
    libasan = subprocess.run([str(gcc), "-print-file-name=libasan.so"], capture_output=True,
                             text=True, timeout=30, check=False).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        missing("gcc's libasan not found")
    build = tmp_path / "build"
    build.mkdir()
    compile_pump(build, "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer")
    # Leaks: CPython frees not all at exit. PYTHONMALLOC=malloc: pymalloc's
    # arenas would hide an overrun of a small PyMem block from ASan. The
    # report goes to files: pytest captures the stderr of a test, and a
    # process that ASan stops never prints what it captured.
    env = dict(os.environ, LD_PRELOAD=libasan, PYTHONMALLOC="malloc",
               ASAN_OPTIONS=f"detect_leaks=0:log_path={tmp_path / 'asan'}",
               **{DIR_ENV: str(build)})
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__, "-k", "not asan"], env=env, capture_output=True, text=True,
                          timeout=300, check=False, cwd=SOURCE.parents[1])
    output = done.stdout + done.stderr
    for log in sorted(tmp_path.glob("asan*")):
        output += f"\n--- {log.name}\n" + log.read_text(errors="replace")
    assert "ERROR: AddressSanitizer" not in output, output
    assert done.returncode == 0, output
    assert " passed" in output and " failed" not in output, output
