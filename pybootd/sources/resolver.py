"""From a request to a source of bytes: plugin, filters, local root, HTTP root."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pybootd.config import TftpConfig
from pybootd.errors import PybootdError, TftpError
from pybootd.server.runtime import Runtime
from pybootd.sources import local
from pybootd.sources.api import FileResponse, Handler, ResponseData, TftpRequest
from pybootd.sources.chunks import DISK_TIMEOUT, ChunkSource, PooledSource
from pybootd.sources.httpcache import HttpCache
from pybootd.tftp.filters import FilterSet, indirect_name
from pybootd.tftp.packets import ErrorCode
from pybootd.tftp.paths import normalize_request_path

log = logging.getLogger("pybootd.tftp")


@dataclass
class Opened:
    source: ChunkSource
    served: str  # what is served, for logs and stats


class Resolver:
    def __init__(self, runtime: Runtime, tftp: TftpConfig, filters: FilterSet, config_dir: Path,
                 handler: Handler | None = None, http: HttpCache | None = None) -> None:
        self.runtime = runtime
        self.tftp = tftp
        self.filters = filters
        self.config_dir = config_dir
        self.handler = handler
        self.http = http

    async def open(self, request: TftpRequest) -> Opened:
        """Raises TftpError (sent to the client) or SourceError."""
        if self.handler is not None:
            opened = await self._from_handler(request)
            if opened is not None:
                return opened
        match = self.filters.match(request.filename)
        if match is None:
            return await self._open_relative(request.filename)
        target = match.target
        if match.rule.indirect:
            target = await self._indirect(target, request.filename)
        log.debug("%s: filter line %d maps %s to %s", _peer(request), match.rule.line,
                  request.filename, target)
        if os.path.isabs(target):
            return await self._pooled(local.open_admin_file, target, served=target)
        return await self._open_relative(normalize_request_path(target))

    async def _indirect(self, name_file: str, filename: str) -> str:
        path = name_file if os.path.isabs(name_file) else str(self.config_dir / name_file)
        content = await self.runtime.blocking(DISK_TIMEOUT, local.read_small_text, path)
        target = indirect_name(content, filename)
        if target is None:
            raise TftpError(ErrorCode.FILE_NOT_FOUND, f"{path} names no file")
        return target

    async def _open_relative(self, relative: str) -> Opened:
        if self.http is not None:
            source = await self.http.open(relative)
            return Opened(source, self.http.url_for(relative))
        assert self.tftp.root_path is not None
        return await self._pooled(local.open_in_root, self.tftp.root_path, relative,
                                  served=relative)

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


def _peer(request: TftpRequest) -> str:
    return format_peer(request.peer)


def format_peer(peer: tuple[str, int]) -> str:
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
