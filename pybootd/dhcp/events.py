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
