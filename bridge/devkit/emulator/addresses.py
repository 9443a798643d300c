"""Addresses of the service's network, handed out the way Docker's IPAM does: sequentially."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["AddressPool"]


class AddressPool:
    """Sequential addresses of one subnet, skipping its network address and gateway.

    Only loopback addresses are accepted unless `allow_non_loopback`: whatever an emulated task's
    address is, some test will send traffic to it, and that must never leave this machine.
    """

    def __init__(self, subnet: str, *, allow_non_loopback: bool = False) -> None:
        self.subnet = ipaddress.IPv4Network(subnet)
        self._allow_non_loopback = allow_non_loopback
        self.check(self.subnet.network_address)
        self.gateway = str(self.subnet.network_address + 1)
        self._next_offset = 2
        self._in_use: set[str] = set()

    def allocate(self) -> str:
        """The next free address, as "IP/prefix", marked in use."""
        base, size = int(self.subnet.network_address), self.subnet.num_addresses
        for _ in range(size):
            offset = self._next_offset
            # Docker keeps going past freed addresses before it wraps; the broadcast is skipped.
            self._next_offset = offset + 1 if offset + 2 < size else 2
            ip = socket.inet_ntoa((base + offset).to_bytes(4, "big"))
            if ip not in self._in_use:
                self._in_use.add(ip)
                return f"{ip}/{self.subnet.prefixlen}"
        raise RuntimeError(f"no free address left in {self.subnet}; use a larger subnet")

    def claim(self, ip: str) -> str:
        """Mark a chosen address ("IP" or "IP/prefix") in use; returns it as "IP/prefix"."""
        bare, _, prefix = ip.partition("/")
        self.check(ipaddress.IPv4Address(bare))
        self._in_use.add(bare)
        return f"{bare}/{prefix or self.subnet.prefixlen}"

    def release(self, address: str | None) -> None:
        """Free an address ("IP/prefix") for later reuse."""
        if address:
            self._in_use.discard(address.split("/", 1)[0])

    def check(self, ip: ipaddress.IPv4Address) -> None:
        if not (ip.is_loopback or self._allow_non_loopback):
            raise ValueError(
                f"{ip} is not a loopback address: emulated tasks live on "
                "127.0.0.0/8 so that no test sends traffic off this machine "
                "(pass allow_non_loopback=True for addresses never contacted)"
            )
