"""The I/O edge: sockets, the event loop, disks and HTTP."""
