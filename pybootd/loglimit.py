"""Bounded logging: what a client can make pybootd write stays small.

A flood of bogus datagrams must not fill the disk, and a client-chosen
string (a 60 KB file name, a host name) must not make a 60 KB line. Every
service uses the same three tools:

* :class:`LogLimiter`: at most *burst* lines per *window* seconds for each
  topic, then one line with the count of those not written;
* :class:`OncePer`: a lasting condition (a refused MAC, a missing boot file)
  logged once per key per window, with bounded memory;
* :func:`clip`: a client-chosen string cut to a sane length for a log line.

The clock is always the caller's (``now``), so these are tested on values.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

log = logging.getLogger("pybootd")

LOG_WINDOW = 10.0  # seconds: per-packet warnings, at most LOG_BURST lines per window and topic
LOG_BURST = 10
CLIP = 200  # characters of a client-chosen string shown in a log line
ONCE_WINDOW = 300.0  # seconds: a lasting condition is logged again after this
ONCE_LIMIT = 4096  # keys remembered by OncePer (made-up MACs cannot grow it)


def clip(text: str, limit: int = CLIP) -> str:
    """*text* cut to *limit* characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text) - limit} more characters)"


@dataclass
class _Window:
    until: float
    level: int
    written: int = 0
    suppressed: int = 0


class LogLimiter:
    """At most *burst* lines per *window* seconds for each topic; the rest are counted.

    The count of lines not written is logged when the topic's next window
    starts, and by :meth:`flush` (at shutdown). Topics are fixed strings, so
    the state stays small whatever the traffic.
    """

    def __init__(self, window: float = LOG_WINDOW, burst: int = LOG_BURST,
                 logger: logging.Logger | None = None) -> None:
        self.window = window
        self.burst = burst
        self.log = logger or log
        self._windows: dict[str, _Window] = {}

    def allow(self, topic: str, now: float, level: int = logging.WARNING) -> bool:
        """May one more line of *topic* be written at *now*?"""
        state = self._windows.get(topic)
        if state is None or now >= state.until:
            if state is not None:
                self._report(topic, state)
            state = self._windows[topic] = _Window(now + self.window, level)
        if state.written < self.burst:
            state.written += 1
            return True
        state.suppressed += 1
        return False

    def flush(self) -> None:
        for topic, state in self._windows.items():
            self._report(topic, state)
        self._windows.clear()

    def _report(self, topic: str, state: _Window) -> None:
        if state.suppressed:
            self.log.log(state.level, "%s: %d more lines not logged (at most %d per %gs)",
                         topic, state.suppressed, self.burst, self.window)


class OncePer:
    """Is it the first time in *window* seconds that *key* is seen?

    For lasting conditions (a MAC refused by access control, a boot file
    missing from the root): one line per key per window, not one per
    packet. At most *limit* keys are remembered; the oldest go first.
    """

    def __init__(self, window: float = ONCE_WINDOW, limit: int = ONCE_LIMIT) -> None:
        self.window = window
        self.limit = limit
        self._seen: OrderedDict[Hashable, float] = OrderedDict()

    def first(self, key: Hashable, now: float) -> bool:
        last = self._seen.get(key)
        if last is not None and now - last < self.window:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return True
