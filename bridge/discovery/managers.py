"""The swarm's managers, read one at a time: WHOOSH_DOCKER_HOST's addresses, in turn.

WHOOSH_DOCKER_HOST lists one address or several, and a tcp:// host name counts as one address
for each address it resolves to (`tasks.docker-api` in the stack: one docker-api proxy per
manager). The bridge reads one manager, the current one, for as long as it answers; a call that
fails there (it refuses or does not answer, is not a manager, has no leader, is locked, or its
proxy refuses) is made again on the next address, and that one becomes the current one, so the
loss of the manager being read costs no more than the swarm's own election. When every address
fails, the call fails (a failed round removes nothing), and the names are resolved again before
the next call. A "no such service" answer is the swarm's, not one manager's: it is not retried
elsewhere. The event stream follows the current manager: `moved` tells it when that changes.

With TLS (DOCKER_TLS_VERIFY) a host name is not resolved here: the engine's certificate
names it, and an address would not match.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from bridge.config import Settings
from bridge.edges.docker_api import DockerAPI, EventStream
from bridge.errors import DockerAPIError

__all__ = ["DockerManagers", "Resolve", "getaddrinfo_resolve"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
# A host name and port -> its addresses (IP literals), in the resolver's order.
Resolve = Callable[[str, int], Awaitable[list[str]]]
_RESOLVED_SCHEMES = ("tcp", "http", "https")
# The kinds that are a statement about the swarm as a whole, not about one manager.
_SWARM_WIDE = frozenset({"service_not_found"})


async def getaddrinfo_resolve(host: str, port: int) -> list[str]:
    """The addresses of `host` (the system resolver: in a Swarm task, Docker's DNS)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DockerManagers:
    """The Docker Engine addresses of WHOOSH_DOCKER_HOST, one DockerAPI each, read one at a
    time. close() frees every connection. Methods raise DockerAPIError."""

    def __init__(self, settings: Settings, *, resolve: Resolve | None = None) -> None:
        self.settings = settings
        self._resolve = resolve or getaddrinfo_resolve
        self._apis: dict[str, DockerAPI] = {}
        self._order: list[str] = []
        self._current = ""
        self._resolved = False
        self._moved = asyncio.Event()

    @property
    def current(self) -> str:
        """The address being read ("" before the first call)."""
        return self._current

    @property
    def addresses(self) -> list[str]:
        """Every address, in the order they are tried."""
        return list(self._order)

    async def tasks(self, filters: str) -> bytes:
        """GET /tasks on the current manager, or the next ones when it fails."""
        return await self._call(lambda api: api.tasks(filters))

    async def infos(self) -> list[tuple[str, dict[str, Any] | DockerAPIError]]:
        """GET /info of every address (what each engine says it is), in order."""
        await self._ensure_resolved()

        async def info(address: str) -> dict[str, Any] | DockerAPIError:
            try:
                return await self._apis[address].info()
            except DockerAPIError as exc:
                return exc

        answers = await asyncio.gather(*(info(address) for address in self._order))
        return list(zip(self._order, answers, strict=True))

    @contextlib.asynccontextmanager
    async def events(self, filters: str) -> AsyncIterator[tuple[str, EventStream]]:
        """GET /events on the current manager: (its address, the open stream)."""
        await self._ensure_resolved()
        address = self._current
        async with self._apis[address].events(filters) as stream:
            yield address, stream

    async def moved(self, address: str) -> None:
        """Return once the current manager is no longer `address`."""
        while self._current == address:
            await self._moved.wait()

    def close(self) -> None:
        for api in self._apis.values():
            api.close()
        self._apis.clear()

    async def _call(self, call: Callable[[DockerAPI], Awaitable[T]]) -> T:
        await self._ensure_resolved()
        start = self._order.index(self._current)
        failures: list[tuple[str, DockerAPIError]] = []
        for step in range(len(self._order)):
            address = self._order[(start + step) % len(self._order)]
            try:
                result = await call(self._apis[address])
            except DockerAPIError as exc:
                if exc.kind in _SWARM_WIDE:
                    raise
                failures.append((address, exc))
                continue
            if address != self._current:
                self._move_to(address, failures)
            return result
        self._resolved = False  # every address failed: resolve the names again next time
        raise _every_one_failed(failures)

    def _move_to(self, address: str, failures: list[tuple[str, DockerAPIError]]) -> None:
        failed = dict(failures).get(self._current)
        log.warning(
            "docker_manager_switched",
            was=self._current,
            now=address,
            kind=failed.kind if failed else None,
            error=str(failed) if failed else None,
        )
        self._current = address
        self._moved.set()
        self._moved = asyncio.Event()

    async def _ensure_resolved(self) -> None:
        if self._resolved and self._order:
            return
        order: list[str] = []
        for host in self.settings.docker_hosts:
            order.extend(a for a in await self._expand(host) if a not in order)
        for gone in self._apis.keys() - set(order):
            self._apis.pop(gone).close()
        for address in order:
            if address not in self._apis:
                self._apis[address] = DockerAPI(self.settings, address)
        if order != self._order and self._order:
            log.info("docker_managers_resolved", addresses=order)
        self._order, self._resolved = order, True
        if self._current not in order:
            self._current = order[0]

    async def _expand(self, host: str) -> list[str]:
        """The addresses a configured host stands for: itself, or one per resolved address."""
        parts = urlsplit(host)
        name = parts.hostname
        tls = self.settings.docker_tls_verify
        if parts.scheme not in _RESOLVED_SCHEMES or not name or _is_ip(name) or tls:
            return [host]
        port = parts.port or 2375
        try:
            found = await self._resolve(name, port)
        except OSError as exc:
            log.warning("docker_host_not_resolved", host=host, error=str(exc))
            return [host]  # the call will say that it cannot connect, naming it
        if not found:
            return [host]
        return [f"{parts.scheme}://{_bracketed(ip)}:{port}" for ip in found]


def _bracketed(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _every_one_failed(failures: list[tuple[str, DockerAPIError]]) -> DockerAPIError:
    """One address: its own error. Several: one error of the first one's kind, saying each
    address's error (once for those that failed the same way as the one before)."""
    if len(failures) == 1:
        return failures[0][1]
    parts: list[str] = []
    for index, (address, exc) in enumerate(failures):
        if index and exc.kind == failures[index - 1][1].kind:
            parts.append(f"{address}: the same ({exc.kind})")
        else:
            parts.append(str(exc))
    detail = "; ".join(parts)
    first = failures[0][1]
    return DockerAPIError(first.kind, f"every Docker manager failed ({len(failures)}): {detail}")
