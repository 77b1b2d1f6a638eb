"""Who may be served: ``[bootp] access = none | mac | uuid | http``.

* ``mac``: only MACs listed and enabled in ``[mac]``;
* ``uuid``: only UUIDs (as dmidecode prints them, upper case; ``[uuid]`` keys
  may be written in any case) listed and enabled in ``[uuid]``. A plain DHCP
  request carries no UUID: it is judged by the UUID its MAC showed in an
  earlier PXE request (the installer after its PXE boot);
* ``http``: ``GET {location}{pxe|dhcp}?mac=AA-BB-CC-DD-EE-FF&uuid=UUID``
  (``uuid`` upper case as dmidecode prints it, only when known): 200 grants,
  401 or 403 denies, anything else (a timeout, another status, no answer)
  ignores the request, so the client retries. Grants and denials are cached
  for :data:`CACHE_SECONDS`; a query already running is shared by the
  requests that need it.

The HTTP query runs in the daemon's thread pool: it never blocks the event
loop, and a slow answer for one client delays no other. ``[bootp] timeout`` is
one deadline counted from the request's arrival; it covers the wait for a
query slot, connecting and reading the answer. A request whose answer is not
known by then is ignored (logged), like an unanswered query. At most half the
pool's threads run queries; a thread whose query timed out keeps its slot
until it ends (``requests`` gives up after ``timeout`` for connecting and as
much for reading), so stuck queries never pile up in the pool: later requests
fail fast at their deadline instead. PXE firmware waits only a few seconds for
an offer (iPXE about 2 s for the proxy offer, PXE ROMs 4 s for the first
retry), so keep ``timeout`` at 1-1.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from enum import Enum
from urllib.parse import urlencode

import requests

from pybootd.config import Config
from pybootd.dhcp.pxe import ClientInfo
from pybootd.runtime import Runtime

log = logging.getLogger("pybootd.dhcp.acl")

CACHE_SECONDS = 10.0
_CACHE_LIMIT = 4096
_MEMORY_LIMIT = 65536


class Verdict(Enum):
    ALLOW = "allow"
    DENY = "deny"
    IGNORE = "ignore"  # no answer: stay silent, the client will ask again


class AccessControl:
    """The access policy of one DHCP service."""

    def __init__(self, config: Config, runtime: Runtime, *,
                 may_log: Callable[[str], bool] = lambda topic: True) -> None:
        """*may_log(topic)* rate-limits the warnings about failed queries."""
        assert config.bootp is not None
        self.mode = config.bootp.access
        self.timeout = config.bootp.timeout
        self.config = config
        self.runtime = runtime
        self._may_log = may_log
        self._uuid_of_mac: dict[str, str] = {}
        self._cache: dict[str, tuple[Verdict, float]] = {}
        self._running: dict[str, asyncio.Future[Verdict]] = {}
        # Leave half the shared pool to the other services (TFTP's HTTP sources).
        # A slot is held by a query's thread until the thread ends.
        self._slots = asyncio.Semaphore(max(1, config.daemon.workers // 2))

    def remember(self, client: ClientInfo) -> None:
        """Note the UUID a MAC showed, for its later plain DHCP requests."""
        if client.uuid is not None and self._uuid_of_mac.get(client.mac) != client.uuid:
            if len(self._uuid_of_mac) >= _MEMORY_LIMIT:  # made-up MACs: forget the oldest
                del self._uuid_of_mac[next(iter(self._uuid_of_mac))]
            self._uuid_of_mac[client.mac] = client.uuid

    def uuid_of(self, client: ClientInfo) -> str | None:
        """The UUID as dmidecode prints it (upper case), so matching ignores case."""
        uuid = client.uuid or self._uuid_of_mac.get(client.mac)
        return uuid.upper() if uuid is not None else None

    def quick(self, client: ClientInfo) -> Verdict | None:
        """The verdict when it needs no HTTP query (or is cached); else None."""
        self.remember(client)
        if self.mode == "none":
            return Verdict.ALLOW
        if self.mode == "mac":
            return Verdict.ALLOW if self.config.mac.get(client.mac) else Verdict.DENY
        if self.mode == "uuid":
            uuid = self.uuid_of(client)
            allowed = uuid is not None and self.config.uuid.get(uuid)
            return Verdict.ALLOW if allowed else Verdict.DENY
        cached = self._cache.get(self.url(client))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    def reason(self, client: ClientInfo, verdict: Verdict) -> str:
        """Why *client* got *verdict* other than ALLOW, for the operator's log line."""
        if self.mode == "mac":
            listed = self.config.mac.get(client.mac)
            return (f"{client.mac} is disabled in [mac]" if listed is False
                    else f"{client.mac} is not in [mac] (access = mac)")
        if self.mode == "uuid":
            uuid = self.uuid_of(client)
            if uuid is None:
                return "no UUID known for this client (access = uuid; option 97 not sent)"
            listed = self.config.uuid.get(uuid)
            return (f"UUID {uuid} is disabled in [uuid]" if listed is False
                    else f"UUID {uuid} is not in [uuid] (access = uuid)")
        if verdict is Verdict.DENY:
            return "the HTTP access service answered 401/403 (access = http)"
        return "no usable answer from the HTTP access service (access = http)"

    def adopt(self, old: AccessControl) -> None:
        """Keep what *old* learned (UUIDs of MACs) across a reload (SIGHUP)."""
        self._uuid_of_mac.update(old._uuid_of_mac)
        while len(self._uuid_of_mac) > _MEMORY_LIMIT:
            del self._uuid_of_mac[next(iter(self._uuid_of_mac))]

    def url(self, client: ClientInfo) -> str:
        http = self.config.http
        assert http is not None
        path = http.pxe if client.netboot else http.dhcp
        query = {"mac": client.mac.replace(":", "-").upper()}
        uuid = self.uuid_of(client)
        if uuid is not None:
            query["uuid"] = uuid
        return f"{http.location}{path}?{urlencode(query)}"

    async def ask(self, client: ClientInfo, arrived: float | None = None) -> Verdict:
        """Ask the HTTP service (one query per URL at a time).

        The answer must be known ``timeout`` seconds after *arrived* (the
        request's arrival, in ``loop.time()``; default: now), else IGNORE.
        """
        loop = self.runtime.loop
        deadline = (loop.time() if arrived is None else arrived) + self.timeout
        url = self.url(client)
        running = self._running.get(url)
        if running is not None:
            try:
                return await asyncio.wait_for(asyncio.shield(running),
                                              max(0.0, deadline - loop.time()))
            except TimeoutError:
                return self._timed_out(url)
        future: asyncio.Future[Verdict] = loop.create_future()
        self._running[url] = future
        try:
            verdict = await self._query(url, deadline)
            future.set_result(verdict)
        except asyncio.CancelledError:  # shutdown: the waiters are cancelled too
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: the waiters get it too
            raise
        finally:
            del self._running[url]
        return verdict

    async def _query(self, url: str, deadline: float) -> Verdict:
        if not await self._take_slot(deadline):
            self._warn("access query %s: no free query slot within %gs (slow HTTP service?): "
                       "request ignored", url, self.timeout)
            return Verdict.IGNORE
        loop = self.runtime.loop
        left = deadline - loop.time()
        if left <= 0:
            self._slots.release()
            return self._timed_out(url)
        try:
            thread: Future[int] = self.runtime.executor.submit(_http_status, url, left)
        except RuntimeError:  # the pool is shutting down
            self._slots.release()
            raise
        thread.add_done_callback(self._thread_done)
        try:
            status = await asyncio.wait_for(asyncio.wrap_future(thread, loop=loop), left)
        except TimeoutError:
            return self._timed_out(url)
        except requests.RequestException as exc:
            self._warn("access query %s failed (%s): request ignored", url, exc)
            return Verdict.IGNORE
        return self._judge(url, status)

    async def _take_slot(self, deadline: float) -> bool:
        """A query slot, waiting no later than *deadline*; False when none came."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            return True
        try:
            await asyncio.wait_for(self._slots.acquire(),
                                   max(0.0, deadline - self.runtime.loop.time()))
        except TimeoutError:
            return False
        return True

    def _thread_done(self, _thread: Future[int]) -> None:
        """In the worker thread: give the slot back, on the loop."""
        with contextlib.suppress(RuntimeError):  # the loop closed first (shutdown)
            self.runtime.loop.call_soon_threadsafe(self._slots.release)

    def _timed_out(self, url: str) -> Verdict:
        self._warn("access query %s: no answer within %gs: request ignored", url, self.timeout)
        return Verdict.IGNORE

    def _warn(self, message: str, *args: object) -> None:
        if self._may_log("access query failed"):
            log.warning(message, *args)

    def _judge(self, url: str, status: int) -> Verdict:
        if status == 200:
            verdict = Verdict.ALLOW
        elif status in (401, 403):
            verdict = Verdict.DENY
        else:
            self._warn("access query %s answered %d: request ignored", url, status)
            return Verdict.IGNORE
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[url] = (verdict, time.monotonic() + CACHE_SECONDS)
        return verdict


def _http_status(url: str, timeout: float) -> int:
    """Blocking GET, in a worker thread; redirects are not followed.

    *timeout* bounds connecting and, again, reading the status line and
    headers (the body is never read), so the thread ends within 2 * timeout.
    """
    with requests.get(url, timeout=(timeout, timeout), allow_redirects=False,
                      stream=True) as response:
        return response.status_code
