"""A tiny authoritative DNS server on loopback, UDP and TCP, for discovery tests.

It answers A and AAAA queries from a table of names, and can misbehave the ways a real
resolver does: UDP answers over 512 bytes are truncated with the TC bit set (as Docker's
embedded DNS does for a client without EDNS), or without it (`set_tc = False`, as some
resolvers do), and a name can be made to answer NXDOMAIN,
SERVFAIL, REFUSED, or nothing at all (the client times out).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Iterable
from types import TracebackType
from typing import Literal, cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["Behaviour", "DnsTestServer"]

Behaviour = Literal["answer", "nxdomain", "servfail", "refused", "drop"]

# Docker's embedded DNS truncates UDP answers at this size when the query has no EDNS(0).
UDP_LIMIT = 512


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsTestServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is a datagram transport without subclassing it (3.11).
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._server.udp_queries += 1
        wire = self._server.answer(data, udp=True)
        if wire is not None and self._transport is not None:
            self._transport.sendto(wire, addr)


class DnsTestServer:
    """Serves `records` on 127.0.0.1:`port` over UDP and TCP while the context is open."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.records: dict[str, list[str]] = {}
        self.behaviour: dict[str, Behaviour] = {}
        self.truncate_udp = True
        # False: cut UDP answers without setting TC, as some resolvers do.
        self.set_tc = True
        self.udp_queries = 0
        self.tcp_queries = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def set(self, name: str, addresses: Iterable[str]) -> None:
        """Make `name` answer with these addresses (A for IPv4, AAAA for IPv6)."""
        self.records[_key(name)] = list(addresses)
        self.behaviour[_key(name)] = "answer"

    def fail(self, name: str, behaviour: Behaviour) -> None:
        """Make `name` answer NXDOMAIN, SERVFAIL, REFUSED, or not at all ("drop")."""
        self.behaviour[_key(name)] = behaviour

    async def __aenter__(self) -> DnsTestServer:
        # UDP and TCP must share a port, as a resolver retries over TCP on the same one.
        for _ in range(20):
            with contextlib.suppress(OSError):
                await self._bind()
                return self
        raise RuntimeError("could not bind UDP and TCP on one free loopback port")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        tcp = await asyncio.start_server(self._serve_tcp, self.host, 0)
        port = tcp.sockets[0].getsockname()[1]
        try:
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, port), family=socket.AF_INET
            )
        except OSError:
            tcp.close()
            await tcp.wait_closed()
            raise
        self._tcp, self._udp, self.port = tcp, udp, port

    async def _close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        for writer in list(self._writers):
            writer.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                data = await reader.readexactly(length)
                self.tcp_queries += 1
                wire = self.answer(data, udp=False)
                if wire is not None:
                    writer.write(struct.pack("!H", len(wire)) + wire)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def answer(self, data: bytes, *, udp: bool) -> bytes | None:
        """The wire answer to one query, or None to stay silent."""
        query = dns.message.from_wire(data)
        question = query.question[0]
        key = _key(question.name.to_text())
        behaviour = self.behaviour.get(key, "nxdomain")
        if behaviour == "drop":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        rcodes = {
            "nxdomain": dns.rcode.NXDOMAIN,
            "servfail": dns.rcode.SERVFAIL,
            "refused": dns.rcode.REFUSED,
        }
        if behaviour in rcodes:
            response.set_rcode(rcodes[behaviour])
            return response.to_wire()
        addresses = _of_type(self.records.get(key, []), question.rdtype)
        if not udp or not self.truncate_udp:
            return _with_answer(response, question.name, question.rdtype, addresses)
        return _truncated(response, question.name, question.rdtype, addresses, set_tc=self.set_tc)


def _key(name: str) -> str:
    return name.rstrip(".").lower()


def _of_type(addresses: list[str], rdtype: int) -> list[str]:
    version = 6 if rdtype == dns.rdatatype.AAAA else 4
    return [a for a in addresses if ipaddress.ip_address(a).version == version]


def _with_answer(
    response: dns.message.Message, name: dns.name.Name, rdtype: int, addresses: list[str]
) -> bytes:
    response.answer = []
    if addresses:
        response.answer.append(
            dns.rrset.from_text_list(
                name, 600, dns.rdataclass.IN, dns.rdatatype.RdataType(rdtype), addresses
            )
        )
    return response.to_wire()


def _truncated(
    response: dns.message.Message,
    name: dns.name.Name,
    rdtype: int,
    addresses: list[str],
    *,
    set_tc: bool,
) -> bytes:
    # Keep as many records as fit and set TC, as Docker does: a client that ignores TC
    # silently sees only the first ~30 of the addresses.
    for count in range(len(addresses), -1, -1):
        wire = _with_answer(response, name, rdtype, addresses[:count])
        if len(wire) <= UDP_LIMIT:
            if count < len(addresses) and set_tc:
                response.flags |= dns.flags.TC
                wire = response.to_wire()
            return wire
    raise AssertionError("unreachable: an empty answer always fits")
