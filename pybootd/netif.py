"""Interface discovery: the one module that talks to netifaces."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address

import netifaces

from pybootd.errors import NetworkConfigError


@dataclass(frozen=True)
class LocalNetwork:
    """One IPv4 address configured on a local interface."""

    interface: str
    address: IPv4Address
    network: IPv4Network

    @property
    def netmask(self) -> IPv4Address:
        return self.network.netmask

    @property
    def broadcast(self) -> IPv4Address:
        return self.network.broadcast_address

    def __str__(self) -> str:
        return f"{self.interface} {self.address}/{self.network.prefixlen}"


def local_networks() -> list[LocalNetwork]:
    """Every IPv4 address of every interface, in interface order."""
    found = []
    for name in netifaces.interfaces():
        for entry in netifaces.ifaddresses(name).get(netifaces.AF_INET, []):
            try:
                iface = IPv4Interface(f"{entry['addr']}/{entry.get('netmask', '255.255.255.255')}")
            except (KeyError, ValueError):
                continue
            found.append(LocalNetwork(name, iface.ip, iface.network))
    return found


def find_network(
    address: IPv4Address, interface: str | None = None, netmask: IPv4Address | None = None,
    what: str = "pool_start",
) -> LocalNetwork:
    """The local network that holds *address* (a pool start, a listen address).

    *what* names the configuration key *address* came from, for the error.

    Raises :class:`NetworkConfigError` listing what was found when none does.
    """
    networks = local_networks()
    for net in networks:
        if interface is not None and net.interface != interface:
            continue
        wanted = IPv4Network(f"{net.address}/{netmask}", strict=False) if netmask else net.network
        if address in wanted:
            return LocalNetwork(net.interface, net.address, wanted)
    found = ", ".join(str(n) for n in networks) or "no IPv4 address at all"
    where = f" on interface {interface}" if interface else ""
    raise NetworkConfigError(
        f"Unable to detect network configuration: {what} {address} is in no local "
        f"network{where} (found: {found})"
    )


def interface_address(interface: str) -> IPv4Address | None:
    """The first IPv4 address of *interface*, if any."""
    for net in local_networks():
        if net.interface == interface:
            return net.address
    return None


def interface_names() -> list[str]:
    """The names of this host's network interfaces."""
    return list(netifaces.interfaces())


def local_addresses() -> set[str]:
    """Every IPv4 and IPv6 address of this host, as ``ip_address`` prints them."""
    found = {str(net.address) for net in local_networks()}
    for name in netifaces.interfaces():
        for entry in netifaces.ifaddresses(name).get(netifaces.AF_INET6, []):
            # netifaces writes a link-local address's scope: fe80::1%eth0
            text = str(entry.get("addr", "")).split("%")[0]
            with contextlib.suppress(ValueError):
                found.add(str(ip_address(text)))
    return found
