"""Type stub of the compiled module pybootd/_pump.c.

A protocol-free pump: on the connected UDP sockets added to it, when the
next datagram expected from a socket's peer arrives, it sends the next
prepared datagram, without Python; it hands everything else back.

The contract:

- ``add(fd)``: the pump reads *fd* from now on (nothing else may). *fd* is
  a UDP socket connected to its peer (``connect``): it receives only the
  peer's datagrams, and replies go to the peer, sent without an address.
  ``remove(fd)`` before the socket is closed; a socket closed without it
  keeps its number in the pump (``add`` of the reused number raises).
- ``arm(fd, count, expects, heads, body, stride)``: *count* steps in three
  buffers, without a Python object per step. While armed, when the next
  datagram on *fd* equals the i-th of *count* equal
  slices of *expects* byte for byte (any length, the same for every step),
  step i is answered: the i-th of *count* equal slices of *heads* followed
  by ``body[i * stride:(i + 1) * stride]`` is sent as ONE
  datagram (sendmsg), and step i+1 is next. The last step's body slice may
  be shorter, or empty: *body* must end within it. *expects* is copied;
  *heads* and *body* are held, not copied (the objects kept alive, a
  bytearray not resizable) until ``take``, ``remove``, ``close``, a new
  ``arm``, or the end of the ``run`` that disarmed the socket. ``arm``
  raises ValueError while steps answered are not taken yet (that count would
  be lost), or if the arguments are malformed: a negative count or stride,
  *expects* or *heads* not *count* equal slices, a *body* that does not end
  in the last step's stride (TypeError for an object that is not a buffer);
  the socket is left disarmed.
- Anything else on an armed socket -- another datagram, one after the last
  step, one whose reply could not be sent --
  disarms it, and it and every later datagram of that socket are handed
  back by ``run``, in the order they came, with nothing sent for them. A
  socket not armed hands back all it gets.
- ``take(fd) -> (steps_done, last_send)``: disarm; how many steps were
  answered since ``arm``, and when the last reply went out
  (``time.monotonic()``'s clock); ``(0, 0.0)`` if none. The count is reset.
- ``run(budget, busy_poll_seconds)``: call it when ``fileno()`` is readable
  (epoll, level-triggered). Reads every ready socket, answers what matches,
  returns ``[(fd, data)]`` handed back, having read at most *budget*
  datagrams and handed back at most HANDBACK_MAX; what is left keeps
  ``fileno()`` readable. When nothing is
  handed back and the budget is not spent, it polls for more for up to
  *busy_poll_seconds* before it returns, unless its last SPIN_MISSES polls
  in a row saw nothing: then it polls only once every SPIN_PROBE calls.
  The GIL is released meanwhile.
- One thread only (the event loop's): a call during ``run`` from another
  thread raises RuntimeError. After ``close()``, calls raise ValueError.
"""

from typing_extensions import Buffer  # collections.abc.Buffer is 3.12+

SPIN_MISSES: int
SPIN_PROBE: int
HANDBACK_MAX: int

class Pump:
    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def add(self, fd: int, /) -> None: ...
    def remove(self, fd: int, /) -> None: ...
    def arm(self, fd: int, count: int, expects: Buffer, heads: Buffer, body: Buffer,
            stride: int, /) -> None: ...
    def take(self, fd: int, /) -> tuple[int, float]: ...
    def run(self, budget: int, busy_poll_seconds: float,
            /) -> list[tuple[int, bytes]]: ...
    def active(self) -> int: ...
    def close(self) -> None: ...
