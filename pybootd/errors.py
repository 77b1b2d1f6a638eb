"""The one exception tree of pybootd.

Everything pybootd raises on purpose derives from :class:`PybootdError`, so a
caller (the CLI, an embedder) can tell "pybootd refused this" from a bug.
"""

from __future__ import annotations


class PybootdError(Exception):
    """Base class of every error pybootd raises on purpose."""


class ConfigError(PybootdError):
    """The configuration is wrong. ``str()`` reads ``FILE:LINE: section.key: ...``."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.section = section
        self.key = key
        self.message = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = ""
        if section is not None:
            what = f"{section}.{key}: " if key is not None else f"[{section}]: "
        super().__init__(f"{where}{what}{message}")


class NetworkConfigError(ConfigError):
    """The host's network does not match the configuration."""


class BadPacket(PybootdError):
    """Bytes from the network that cannot be decoded.

    The only exception a ``*_untrusted`` parser may raise.
    """


class ProtocolError(PybootdError):
    """A well-formed packet that is not acceptable in the current state."""


class TftpError(PybootdError):
    """A TFTP transfer must end with an ERROR packet (RFC 1350 section 5).

    ``message`` goes to the client, so it names only what the client asked
    for: never an absolute path, a mirror URL or whether a file exists
    outside the root. ``detail`` (default: the message) is for the log.
    """

    def __init__(self, code: int, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail if detail is not None else message


class SourceError(PybootdError):
    """A data source (disk, HTTP mirror, plugin) failed to deliver bytes."""


class AccessDenied(PybootdError):
    """A client is not allowed to be served."""


class PrivilegeError(PybootdError):
    """Privileges could not be dropped as configured."""


class LeaseStoreError(PybootdError):
    """The lease store cannot be used: a damaged or locked file, an unreachable database."""
