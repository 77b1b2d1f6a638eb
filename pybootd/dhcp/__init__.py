"""Sans-IO BOOTP/DHCP/PXE: codecs, lease pool and reply decisions.

Nothing in this package imports socket, asyncio or time: callers pass ``now``.
"""
