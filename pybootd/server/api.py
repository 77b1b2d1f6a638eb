"""The control plane (``[api]``): Prometheus metrics, a JSON API, a status page.

A listener of its own, apart from ``[httpd]``: firmware fetches boot files
without credentials, and this API must not be reachable from the boot LAN
unless the operator says so (a non-loopback address needs a token, which
the configuration checks). With a token every request but the status page
itself (static HTML, no data) needs ``Authorization: Bearer TOKEN``; the
page sends the token it was given in its URL (``/#token=...``).

``/metrics`` is prometheus_client's text exposition; ``/api/v1/...`` is JSON:
``leases``, ``transfers`` (running and the last finished), ``machines`` and
``machines/{mac}`` (one boot timeline), ``status`` (what the page shows).
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from pybootd import configvalues
from pybootd.config import ApiConfig, Config
from pybootd.dhcp.pool import PERMANENT, Lease
from pybootd.errors import PybootdError
from pybootd.observe.observer import Observer
from pybootd.observe.timeline import Machine, Source
from pybootd.udp import format_peer

log = logging.getLogger("pybootd.api")

API = "/api/v1"
ERROR_WINDOW = 600.0  # seconds of refusals and failures the status page lists
Health = Callable[[], dict[str, bool]]  # service name -> serving
Leases = Callable[[], list[Lease]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiService:
    """Implements :class:`pybootd.runtime.Service`."""

    name = "api"

    def __init__(self, conf: ApiConfig, observer: Observer, health: Health,
                 leases: Leases | None = None, pool_size: Callable[[], int] | None = None
                 ) -> None:
        self.conf, self.observer, self.health, self.leases = conf, observer, health, leases
        self.pool_size = pool_size
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", _page)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get(f"{API}/leases", self._leases)
        app.router.add_get(f"{API}/transfers", self._transfers)
        app.router.add_get(f"{API}/machines", self._machines)
        app.router.add_get(f"{API}/machines/{{mac}}", self._machine)
        app.router.add_get(f"{API}/status", self._status)
        self._runner = runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        assert runner.server is not None
        address = (self.conf.address, self.conf.port)
        try:
            self._server = await asyncio.get_running_loop().create_server(
                runner.server, *address, reuse_address=True)
        except OSError as exc:
            raise PybootdError(f"cannot listen on {format_peer(address)} for [api]: "
                               f"{exc.strerror or exc} (another pybootd runs on this port?)"
                               ) from None
        where = ", ".join(format_peer(s.getsockname()[:2]) for s in self._server.sockets)
        log.info("API on %s (%s)", where, "token required" if self.conf.token else "no token")

    @property
    def ports(self) -> list[int]:
        return [] if self._server is None else [
            s.getsockname()[1] for s in self._server.sockets]

    def reload(self, config: Config) -> None:
        """[api] changes need a restart (the daemon says so)."""

    def summary(self) -> str:
        return f"{len(self.observer.timeline.machines())} machines seen"

    def stop_accepting(self) -> None:
        """The API answers until the end: it is how an operator watches a stop."""

    async def drain(self, timeout: float) -> None:
        return None

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None and self._runner.server is not None:
            for connection in self._runner.server.connections:
                connection.force_close()

    # --- access ----------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self.conf.token
        if token is None or request.path == "/":
            return await handler(request)
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return web.json_response({"error": "unauthorized: expected Authorization: Bearer "
                                               "TOKEN ([api] token)"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="pybootd"'})
        return await handler(request)

    # --- the endpoints -----------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.observer.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        services = self.health()
        ok = bool(services) and all(services.values())
        return web.json_response({"status": "ok" if ok else "unavailable",
                                  "services": services}, status=200 if ok else 503)

    async def _leases(self, request: web.Request) -> web.Response:
        leases = [] if self.leases is None else self.leases()
        return web.json_response({"leases": [self._lease(lease) for lease in sorted(
            leases, key=lambda lease: int(lease.ip)) if lease.mac is not None]})

    def _lease(self, lease: Lease) -> dict[str, Any]:
        machine = self.observer.timeline.machine(lease.mac or "")
        boot = None if machine is None else next(
            (e.file for e in reversed(machine.events)
             if e.source in (Source.DHCP, Source.PROXY) and e.file), None) or lease.bootfile
        return {"mac": lease.mac, "address": str(lease.ip), "state": str(lease.state),
                "expires": None if lease.expires >= PERMANENT else _iso(lease.expires),
                "hostname": lease.hostname, "uuid": lease.uuid, "boot_file": boot}

    async def _transfers(self, request: web.Request) -> web.Response:
        now = time.time()
        return web.json_response({
            "running": [r.as_json(now) for r in self.observer.running.values()],
            "finished": list(reversed(self.observer.finished))})

    async def _machines(self, request: web.Request) -> web.Response:
        return web.json_response({"machines": [_summary(m) for m in
                                               self.observer.timeline.machines()]})

    async def _machine(self, request: web.Request) -> web.Response:
        try:
            mac = configvalues.mac(request.match_info["mac"])
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        machine = self.observer.timeline.machine(mac)
        if machine is None:
            return web.json_response({"error": f"no event of {mac} (kept: the last "
                                               f"{self.observer.timeline.limit} machines)"},
                                     status=404)
        return web.json_response({**_summary(machine),
                                  "events": [e.as_json() for e in machine.events]})

    async def _status(self, request: web.Request) -> web.Response:
        now = time.time()
        pool: dict[str, int] = {}
        for lease in [] if self.leases is None else self.leases():
            state = str(lease.state) if lease.active(now) else "free"
            pool[state] = pool.get(state, 0) + 1
        errors = [e for e in self.observer.errors if now - e["ended"] <= ERROR_WINDOW]
        return web.json_response({
            "services": self.health(), "pool": pool,
            "pool_size": None if self.pool_size is None else self.pool_size(),
            "machines": [_summary(m) for m in self.observer.timeline.machines()[:100]],
            "running": [r.as_json(now) for r in self.observer.running.values()],
            "errors": list(reversed(errors))[:50], "now": now})


def _summary(machine: Machine) -> dict[str, Any]:
    return {"mac": machine.mac, "ip": machine.ip, "phase": machine.phase,
            "last_seen": machine.last.at, "events": len(machine.events)}


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")


async def _page(request: web.Request) -> web.Response:
    html = resources.files("pybootd").joinpath("status.html").read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html", charset="utf-8")
