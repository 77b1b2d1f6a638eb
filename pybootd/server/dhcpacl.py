"""Who may be served: ``[bootp] access = none | mac | uuid | http``.

* ``mac``: only MACs listed and enabled in ``[mac]``;
* ``uuid``: only UUIDs (as dmidecode prints them) listed and enabled in
  ``[uuid]``. A plain DHCP request carries no UUID: it is judged by the UUID
  its MAC showed in an earlier PXE request (the installer after its PXE boot);
* ``http``: ``GET {location}{pxe|dhcp}?mac=AA-BB-CC-DD-EE-FF&uuid=UUID``
  (``uuid`` only when known): 200 grants, 401 or 403 denies, anything else
  (a timeout, another status, no answer) ignores the request, so the client
  retries. Grants and denials are cached for :data:`CACHE_SECONDS`; a query
  already running is shared by the requests that need it.

The HTTP query runs in the daemon's thread pool with ``[bootp] timeout``: it
never blocks the event loop, and a slow answer for one client delays no other.
PXE firmware waits only a few seconds for an offer (iPXE about 2 s for the
proxy offer, PXE ROMs 4 s for the first retry), so keep ``timeout`` at 1-1.5 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import Enum
from urllib.parse import urlencode

import requests

from pybootd.config import Config
from pybootd.dhcp.pxe import ClientInfo
from pybootd.errors import SourceError
from pybootd.server.runtime import Runtime

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

    def __init__(self, config: Config, runtime: Runtime) -> None:
        assert config.bootp is not None
        self.mode = config.bootp.access
        self.timeout = config.bootp.timeout
        self.config = config
        self.runtime = runtime
        self._uuid_of_mac: dict[str, str] = {}
        self._cache: dict[str, tuple[Verdict, float]] = {}
        self._running: dict[str, asyncio.Future[Verdict]] = {}
        # Leave half the shared pool to the other services (TFTP's HTTP sources).
        self._slots = asyncio.Semaphore(max(1, config.daemon.workers // 2))

    def remember(self, client: ClientInfo) -> None:
        """Note the UUID a MAC showed, for its later plain DHCP requests."""
        if client.uuid is not None and self._uuid_of_mac.get(client.mac) != client.uuid:
            if len(self._uuid_of_mac) >= _MEMORY_LIMIT:  # made-up MACs: forget the oldest
                del self._uuid_of_mac[next(iter(self._uuid_of_mac))]
            self._uuid_of_mac[client.mac] = client.uuid

    def uuid_of(self, client: ClientInfo) -> str | None:
        return client.uuid or self._uuid_of_mac.get(client.mac)

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

    def url(self, client: ClientInfo) -> str:
        http = self.config.http
        assert http is not None
        path = http.pxe if client.netboot else http.dhcp
        query = {"mac": client.mac.replace(":", "-").upper()}
        uuid = self.uuid_of(client)
        if uuid is not None:
            query["uuid"] = uuid
        return f"{http.location}{path}?{urlencode(query)}"

    async def ask(self, client: ClientInfo) -> Verdict:
        """Ask the HTTP service (one query per URL at a time)."""
        url = self.url(client)
        running = self._running.get(url)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Verdict] = self.runtime.loop.create_future()
        self._running[url] = future
        try:
            verdict = await self._query(url)
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

    async def _query(self, url: str) -> Verdict:
        try:
            async with self._slots:
                status = await self.runtime.blocking(self.timeout + 0.5, _http_status, url,
                                                     self.timeout)
        except (SourceError, requests.RequestException) as exc:
            log.warning("access query %s failed (%s): request ignored", url, exc)
            return Verdict.IGNORE
        if status == 200:
            verdict = Verdict.ALLOW
        elif status in (401, 403):
            verdict = Verdict.DENY
        else:
            log.warning("access query %s answered %d: request ignored", url, status)
            return Verdict.IGNORE
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[url] = (verdict, time.monotonic() + CACHE_SECONDS)
        return verdict


def _http_status(url: str, timeout: float) -> int:
    """Blocking GET, in a worker thread; redirects are not followed."""
    with requests.get(url, timeout=timeout, allow_redirects=False, stream=True) as response:
        return response.status_code
