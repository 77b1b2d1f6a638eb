"""The events of a DHCP exchange: what a client sent, what pybootd decided.

The values are the words of the ``[bootp] notify`` lines (see
:mod:`pybootd.server.notify`) and the keys of the request statistics
(SIGUSR1); they must not change.
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    """One event of a DHCP exchange; its value is the word written on the wire and in logs."""

    # --- what a client sent (notified as it arrives) ---
    DISCOVER = "discover"  # DHCPDISCOVER: RFC 2131 section 4.3.1
    REQUEST = "request"  # DHCPREQUEST: RFC 2131 section 4.3.2
    DECLINE = "decline"  # DHCPDECLINE: RFC 2131 section 4.3.3 (also the decision: quarantine)
    RELEASE = "release"  # DHCPRELEASE: RFC 2131 section 4.3.4 (also the decision: lease ends)
    INFORM = "inform"  # DHCPINFORM: RFC 2131 section 4.3.5
    # A BOOTP request (no option 53): RFC 2131 section 1 (interoperation, RFC 1534); RFC 951
    BOOTP = "bootp"
    # --- what pybootd did ---
    OFFER = "offer"  # DHCPOFFER: RFC 2131 section 4.3.1
    ACK = "ack"  # DHCPACK: RFC 2131 section 4.3.2, and the reply to INFORM (section 4.3.5)
    NAK = "nak"  # DHCPNAK: RFC 2131 section 4.3.2
    # No reply: RFC 2131 section 4.3.2 ("MUST remain silent"); the client retransmits (4.1)
    IGNORE = "ignore"
    # Refused by access control, no reply: RFC 2131 section 4.2 (server administrative
    # controls: a server need not answer every DISCOVER and REQUEST)
    DENIED = "denied"


# Decisions that send a reply to the client (a BOOTREPLY is notified as an ack).
REPLY_EVENTS = frozenset({Event.OFFER, Event.ACK, Event.NAK})


class Ignored(StrEnum):
    """Why a request got no answer (RFC 2131 section 4.3: the server stays
    silent); the label of ``pybootd_dhcp_ignored_total``."""

    MALFORMED = "malformed"  # not a BOOTREQUEST, no hardware address
    RELAY_OUTSIDE = "relay_outside_network"  # giaddr not in the pool's network
    PLAIN_CLIENT = "plain_dhcp_client"  # not PXE, and allow_simple_dhcp is off
    NOT_PXE = "not_pxe"  # proxy mode and the boot service serve PXE clients only
    NOT_FOR_SERVER = "not_for_this_server"  # a message a server (or this port) does not take
    OTHER_SERVER = "other_server"  # the client chose, declined or released another server
    UNKNOWN_CLIENT = "unknown_client"  # no record of the lease it names (4.3.2)
    BAD_REQUEST = "bad_request"  # a REQUEST or INFORM without the address it needs
    POOL_EXHAUSTED = "pool_exhausted"
    RESERVATION = "reservation"  # a [static_dhcp] address that cannot be served now
    NO_HTTP_URL = "no_http_url"  # a UEFI HTTP Boot client with no URL to give
    BOOT_FILE_TOO_LONG = "boot_file_too_long"  # longer than the BOOTP file field
    # Decided by the service, before the responder:
    DENIED = "access_denied"  # access control refused it
    UNANSWERED = "access_unanswered"  # the access service did not answer in time
    OVERLOAD = "overload"  # too many requests waiting
    STORE_CONTENDED = "store_contended"  # a shared store refused every decision, for now
