"""DHCP option codes and the option-area codec (RFC 2132, RFC 3396).

Sans-IO: bytes in, bytes out. Decoding raises only :class:`BadPacket`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum

from pybootd.errors import BadPacket

# RFC 2131 section 3: the four octets that open the options field.
MAGIC_COOKIE = b"\x63\x82\x53\x63"


class DhcpOption(IntEnum):
    """Option codes used by pybootd; comments cite the defining section."""

    PAD = 0  # RFC 2132 3.1
    SUBNET_MASK = 1  # RFC 2132 3.3
    ROUTER = 3  # RFC 2132 3.5
    DNS = 6  # RFC 2132 3.8
    HOST_NAME = 12  # RFC 2132 3.14
    DOMAIN_NAME = 15  # RFC 2132 3.17
    BROADCAST = 28  # RFC 2132 5.3
    VENDOR_SPECIFIC = 43  # RFC 2132 8.4; PXE 2.1 table 2-1
    REQUESTED_IP = 50  # RFC 2132 9.1
    LEASE_TIME = 51  # RFC 2132 9.2
    OVERLOAD = 52  # RFC 2132 9.3
    MESSAGE_TYPE = 53  # RFC 2132 9.6
    SERVER_ID = 54  # RFC 2132 9.7
    PARAM_REQUEST_LIST = 55  # RFC 2132 9.8
    MESSAGE = 56  # RFC 2132 9.9
    MAX_MESSAGE_SIZE = 57  # RFC 2132 9.10
    RENEWAL_TIME = 58  # RFC 2132 9.11
    REBINDING_TIME = 59  # RFC 2132 9.12
    VENDOR_CLASS = 60  # RFC 2132 9.13
    CLIENT_ID = 61  # RFC 2132 9.14
    TFTP_SERVER = 66  # RFC 2132 9.4
    BOOTFILE = 67  # RFC 2132 9.5
    USER_CLASS = 77  # RFC 3004
    RELAY_AGENT = 82  # RFC 3046
    CLIENT_ARCH = 93  # RFC 4578 2.1
    CLIENT_NDI = 94  # RFC 4578 2.2
    CLIENT_UUID = 97  # RFC 4578 2.3
    IPXE_ENCAP = 175  # iPXE encapsulated options (iPXE's own assignment)
    END = 255  # RFC 2132 3.2


class MessageType(IntEnum):
    """Values of option 53 (RFC 2132 section 9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


# RFC 2132 section 9.3: option 52 says which fixed fields also hold options.
OVERLOAD_FILE = 1
OVERLOAD_SNAME = 2


def decode_options(data: bytes, options: dict[int, bytes] | None = None) -> dict[int, bytes]:
    """Decode one option area into ``{code: value}``.

    Repeated options are concatenated (RFC 3396 section 5). A missing END is
    tolerated (some firmware stops at the field's end); an option whose length
    runs past the area is a :class:`BadPacket`.
    """
    found: dict[int, bytes] = {} if options is None else options
    pos = 0
    size = len(data)
    while pos < size:
        code = data[pos]
        if code == 0:  # PAD
            pos += 1
            continue
        if code == 255:  # END
            break
        if pos + 1 >= size:
            raise BadPacket(f"option {code} at offset {pos} has no length")
        length = data[pos + 1]
        end = pos + 2 + length
        if end > size:
            raise BadPacket(f"option {code} at offset {pos} runs past the end ({length} bytes)")
        value = data[pos + 2 : end]
        previous = found.get(code)
        found[code] = value if previous is None else previous + value
        pos = end
    return found


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """Encode ``(code, value)`` pairs, then END.

    Values over 255 bytes are split into several instances of the same option
    (RFC 3396 section 6); an empty value is sent as a zero-length option.
    """
    out = bytearray()
    for code, value in options:
        if not value:
            out += bytes((code, 0))
            continue
        for start in range(0, len(value), 255):
            chunk = value[start : start + 255]
            out += bytes((code, len(chunk)))
            out += chunk
    out.append(255)
    return bytes(out)


def param_request_list(options: Mapping[int, bytes]) -> frozenset[int]:
    """The codes a client asked for in option 55 (RFC 2132 section 9.8)."""
    return frozenset(options.get(DhcpOption.PARAM_REQUEST_LIST, b""))
