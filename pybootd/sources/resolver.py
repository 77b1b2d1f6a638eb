"""From a request to a source of bytes: plugin, filters, local root, HTTP root."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pybootd.api import FileResponse, Handler, ResponseData, TftpRequest
from pybootd.config import TftpConfig
from pybootd.errors import PybootdError, TftpError
from pybootd.runtime import Runtime
from pybootd.sources import local
from pybootd.sources.chunks import DISK_TIMEOUT, ChunkSource, PooledSource
from pybootd.sources.httpcache import HttpCache
from pybootd.tftp.filters import FilterSet, expand, indirect_template, split_confined
from pybootd.tftp.packets import ErrorCode
from pybootd.tftp.paths import normalize_request_path
from pybootd.udp import format_peer

log = logging.getLogger("pybootd.tftp")


@dataclass
class Opened:
    source: ChunkSource
    served: str  # what is served, for logs and stats


class Resolver:
    """What a read request is served from. Every file opened on behalf of a
    name is checked against the daemon's own files (:class:`local.Protected`,
    from ``runtime.config``), whatever the root and ``[filters]`` say."""

    def __init__(self, runtime: Runtime, tftp: TftpConfig, filters: FilterSet, config_dir: Path,
                 handler: Handler | None = None, http: HttpCache | None = None) -> None:
        self.runtime = runtime
        self.tftp = tftp
        self.filters = filters
        self.config_dir = config_dir
        self.handler = handler
        self.http = http
        self.protected = local.Protected.from_config(runtime.config)

    async def open(self, request: TftpRequest) -> Opened:
        """Raises TftpError (sent to the client) or SourceError."""
        if self.handler is not None:
            opened = await self._from_handler(request)
            if opened is not None:
                return opened
        match = self.filters.match(request.filename)
        if match is None:
            return await self._open_relative(request.filename, request)
        template = match.rule.target
        if match.rule.indirect:
            template = await self._indirect(template, request)
        log.debug("%s: filter line %d maps %s to %s", _peer(request), match.rule.line,
                  request.filename, expand(template, request.filename))
        return await self._open_target(template, request)

    async def _open_target(self, template: str, request: TftpRequest) -> Opened:
        """A filter's target: relative ones are read from the root like a
        request; an absolute one with ``{filename}`` only inside the folder
        before it (the client chose the rest); one without is a fixed file
        the administrator named."""
        target = expand(template, request.filename)
        if not os.path.isabs(template):
            return await self._open_relative(_normalized(target, request), request)
        confined = split_confined(template, request.filename)
        if confined is None:
            return await self._pooled(local.open_admin_file, target, request.filename,
                                      self.protected, served=target)
        folder, rest = confined
        return await self._pooled(local.open_in_root, folder, _normalized(rest, request),
                                  request.filename, self.protected, served=target)

    async def _indirect(self, name_file: str, request: TftpRequest) -> str:
        """The name template an indirection file holds (same confinement as
        a target: its path may hold ``{filename}`` too)."""
        path = name_file if os.path.isabs(name_file) else str(self.config_dir / name_file)
        confined = split_confined(path, request.filename)
        if confined is None:
            opener: Callable[..., FileResponse] = local.open_admin_file
            args: tuple[object, ...] = (path,)
        else:
            opener, args = local.open_in_root, (confined[0], _normalized(confined[1], request))
        data = await self.runtime.blocking(DISK_TIMEOUT, opener, *args, request.filename,
                                           self.protected)
        content = await self.runtime.blocking(DISK_TIMEOUT, local.read_small_text, data)
        template = indirect_template(content)
        if template is None:
            raise TftpError(ErrorCode.FILE_NOT_FOUND, f"file not found: {request.filename}",
                            f"{expand(path, request.filename)} names no file")
        return template

    async def _open_relative(self, relative: str, request: TftpRequest) -> Opened:
        if self.http is not None:
            source = await self.http.open(relative, _peer(request), request.filename)
            return Opened(source, self.http.url_for(relative))
        assert self.tftp.root_path is not None
        return await self._pooled(local.open_in_root, self.tftp.root_path, relative,
                                  request.filename, self.protected, served=relative)

    async def _pooled(self, opener: Callable[..., FileResponse], *args: object,
                      served: str) -> Opened:
        data = await self.runtime.blocking(DISK_TIMEOUT, opener, *args)
        return Opened(PooledSource(self.runtime, data, data.size()), served)

    async def _from_handler(self, request: TftpRequest) -> Opened | None:
        assert self.handler is not None
        try:
            data: ResponseData | None = await self.runtime.blocking(
                DISK_TIMEOUT, self.handler, request)
            if data is None:
                return None
            size = await self.runtime.blocking(DISK_TIMEOUT, data.size)
        except PybootdError:
            raise
        except Exception as exc:
            log.exception("%s: handler failed for %s", _peer(request), request.filename)
            raise TftpError(ErrorCode.NOT_DEFINED, f"handler failed: {exc}") from None
        return Opened(PooledSource(self.runtime, data, size), f"handler:{request.filename}")


def _normalized(name: str, request: TftpRequest) -> str:
    """A filter's expanded target normalized like a request; refused with
    the client's own name, not the target's (which is the administrator's)."""
    try:
        return normalize_request_path(name)
    except TftpError as exc:
        shown = request.filename
        message = (f"access violation: {shown!r}" if exc.code == ErrorCode.ACCESS_VIOLATION
                   else f"file not found: {shown}")
        raise TftpError(exc.code, message, f"filter target {name!r}: {exc.detail}") from None


def _peer(request: TftpRequest) -> str:
    return format_peer(request.peer)
