"""Type stub of the compiled module pybootd/_pump.c.

A protocol-free pump: on the UDP sockets added to it, when the next
datagram expected from a socket's peer arrives, it sends the next prepared
datagram, without Python; it hands everything else back.

The contract:

- ``add(fd, peer)``: the pump reads *fd* from now on (nothing else may);
  *peer* is ``(host, port)``, or ``(host, port, flowinfo, scope_id)`` for
  IPv6, host numeric. Only datagrams from *peer* can be answered.
  ``remove(fd)`` before the socket is closed; a socket closed without it
  keeps its number in the pump (``add`` of the reused number raises).
- ``arm(fd, steps)``: *steps* is a sequence of ``(expect, reply)``. While
  armed, when the next datagram on *fd* comes from the peer and equals
  ``steps[i][0]`` byte for byte (any length), ``steps[i][1]`` is sent to the
  peer as ONE datagram (sendmsg: a buffer, or a sequence of buffers as an
  iovec, e.g. a header and a memoryview slice, not copied) and step i+1 is
  next. *expect* is copied; the reply buffers are held (the objects kept
  alive, a bytearray not resizable) until ``take``, ``remove``, ``close``, a
  new ``arm``, or the end of the ``run`` that disarmed the socket.
  ``arm`` raises ValueError while steps answered are not taken yet (that
  count would be lost), or if *steps* is malformed (the socket is left
  disarmed).
- ``arm_strided(fd, count, expects, heads, body, stride)``: the same as
  ``arm`` with *count* steps in three buffers, for the common case without
  a Python object per step: step i expects the i-th of *count* equal
  slices of *expects* and replies with the i-th of *count* equal slices of
  *heads*, then ``body[i * stride:(i + 1) * stride]`` (the last step's may
  be shorter, or empty: *body* must end within it). *heads* and *body* are
  held, not copied.
- Anything else on an armed socket -- another datagram, one from another
  address, one after the last step, one whose reply could not be sent --
  disarms it, and it and every later datagram of that socket are handed
  back by ``run``, in the order they came, with nothing sent for them. A
  socket not armed hands back all it gets.
- ``take(fd) -> (steps_done, last_send)``: disarm; how many steps were
  answered since ``arm``, and when the last reply went out
  (``time.monotonic()``'s clock); ``(0, 0.0)`` if none. The count is reset.
- ``run(budget, busy_poll_seconds)``: call it when ``fileno()`` is readable
  (epoll, level-triggered). Reads every ready socket, answers what matches,
  returns ``[(fd, data, addr)]`` handed back (addr as the socket module gives
  it), having read at most *budget* datagrams and handed back at most
  HANDBACK_MAX; what is left keeps ``fileno()`` readable. When nothing is
  handed back and the budget is not spent, it polls for more for up to
  *busy_poll_seconds* before it returns, unless its last SPIN_MISSES polls
  in a row saw nothing: then it polls only once every SPIN_PROBE calls.
  The GIL is released meanwhile.
- One thread only (the event loop's): a call during ``run`` from another
  thread raises RuntimeError. After ``close()``, calls raise ValueError.
"""

from collections.abc import Sequence

from typing_extensions import Buffer  # collections.abc.Buffer is 3.12+

SPIN_MISSES: int
SPIN_PROBE: int
HANDBACK_MAX: int

_Peer = tuple[str, int] | tuple[str, int, int, int]
_Reply = Buffer | Sequence[Buffer]

class Pump:
    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def add(self, fd: int, peer: _Peer, /) -> None: ...
    def remove(self, fd: int, /) -> None: ...
    def arm(self, fd: int, steps: Sequence[tuple[Buffer, _Reply]], /) -> None: ...
    def arm_strided(self, fd: int, count: int, expects: Buffer, heads: Buffer, body: Buffer,
                    stride: int, /) -> None: ...
    def take(self, fd: int, /) -> tuple[int, float]: ...
    def run(self, budget: int, busy_poll_seconds: float,
            /) -> list[tuple[int, bytes, _Peer]]: ...
    def active(self) -> int: ...
    def close(self) -> None: ...
