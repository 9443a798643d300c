"""Health verification against real HTTP servers on loopback addresses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from bridge.config import Settings
from bridge.contract.messages import Agent
from bridge.discovery.base import endpoint_for, host_agent_id
from bridge.discovery.health import check_health, with_health
from bridge.edges.agent_http import AgentHTTP

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def agent_server(host: str, handler: Handler) -> AsyncIterator[int]:
    """An HTTP server on `host` (loopback) answering GET /health with `handler`; yields its port."""
    app = web.Application()
    app.router.add_get("/health", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def hanging_server(host: str) -> AsyncIterator[int]:
    """A server that accepts /health and never answers until the test ends."""
    release = asyncio.Event()

    async def hang(_request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="too late")

    async with agent_server(host, hang) as port:
        try:
            yield port
        finally:
            release.set()


def agent(host: str, port: int, name: str | None = None) -> Agent:
    return Agent(
        id=name or host_agent_id(host, port),
        endpoint=endpoint_for(host, port),
        address=host,
        port=port,
        source="dns",
    )


async def ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def broken(_request: web.Request) -> web.Response:
    return web.Response(status=500, text="broken")


async def test_health_of_ok_error_hung_and_closed_agents() -> None:
    """200 is healthy; 500, a hang and a closed port are not; hangs cost one timeout in all."""
    async with (
        agent_server("127.0.0.2", ok) as ok_port,
        agent_server("127.0.0.3", broken) as broken_port,
        hanging_server("127.0.0.4") as hang_port,
    ):
        hung = [agent("127.0.0.4", hang_port, f"hung-{n}") for n in range(4)]
        agents = [
            agent("127.0.0.2", ok_port),
            agent("127.0.0.3", broken_port),
            agent("127.0.0.5", ok_port),
            *hung,
        ]  # nothing listens on 127.0.0.5
        started = time.monotonic()
        async with AgentHTTP(Settings()) as client:
            results = await check_health(client, agents, timeout=1.0, concurrency=16)
        elapsed = time.monotonic() - started

    assert results == {
        agents[0].id: True,
        agents[1].id: False,
        agents[2].id: False,
        **{a.id: False for a in hung},
    }
    # Four hung agents one after the other would take at least 4 s.
    assert elapsed < 3.5


async def test_concurrency_bounds_the_checks_in_flight() -> None:
    """With concurrency 1, three hung agents take three timeouts: the bound is respected."""
    async with hanging_server("127.0.0.6") as port:
        agents = [agent("127.0.0.6", port, f"hung-{n}") for n in range(3)]
        started = time.monotonic()
        async with AgentHTTP(Settings()) as client:
            results = await check_health(client, agents, timeout=0.3, concurrency=1)
        elapsed = time.monotonic() - started

    assert results == {a.id: False for a in agents}
    assert elapsed >= 0.85


async def test_health_is_checked_on_the_health_path() -> None:
    """The check calls `{endpoint}/health`; any 2xx (here 204) counts as healthy."""
    paths: list[str] = []

    async def no_content(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.Response(status=204)

    async with agent_server("127.0.0.7", no_content) as port:
        target = agent("127.0.0.7", port)
        async with AgentHTTP(Settings()) as client:
            results = await check_health(client, [target], timeout=2.0, concurrency=4)

    assert results == {target.id: True}
    assert paths == ["/health"]


def test_with_health_sets_only_the_checked_agents() -> None:
    """Checked agents get `healthy` true or false; an unchecked one keeps null; facts stay."""
    up, down, unchecked = (agent(f"127.0.0.{n}", 8080) for n in (2, 3, 4))

    marked = with_health([up, down, unchecked], {up.id: True, down.id: False})

    assert [a.healthy for a in marked] == [True, False, None]
    assert [(a.id, a.endpoint, a.source) for a in marked] == [
        (a.id, a.endpoint, a.source) for a in (up, down, unchecked)
    ]
