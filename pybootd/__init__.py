"""pybootd: an all-in-one BOOTP/DHCP/PXE and TFTP network-boot daemon."""

__version__ = "2.0.0"
