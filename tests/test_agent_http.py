"""HTTP to agents, against a real HTTP server on loopback: what an agent receives, what the
bridge reads back, and how failures surface."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from bridge.agent_http import MAX_RESPONSE_BYTES, USER_AGENT, AgentHTTP
from bridge.config import Settings


@pytest.fixture
async def agent() -> AsyncIterator[tuple[str, list[web.Request], list[bytes]]]:
    """An agent on 127.0.0.1: (base URL, requests it got, their bodies)."""
    seen: list[web.Request] = []
    bodies: list[bytes] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.read())
        return web.json_response({"role": "tpm", "agent_id": "a1"})

    async def huge(_request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(_request)
        for _ in range(64):  # 4 MiB, far past what the bridge reads
            await response.write(b"x" * 65536)
        return response

    async def moved(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def broken(_request: web.Request) -> web.Response:
        return web.Response(status=500, text="broken")

    async def cookie(request: web.Request) -> web.Response:
        seen.append(request)
        response = web.Response(text="{}")
        response.set_cookie("session", "agent-secret")
        return response

    app = web.Application()
    app.router.add_post("/op", record)
    app.router.add_post("/huge", huge)
    app.router.add_post("/moved", moved)
    app.router.add_post("/broken", broken)
    app.router.add_post("/cookie", cookie)
    app.router.add_get("/cookie", cookie)
    app.router.add_post("/elsewhere", record)
    app.router.add_get("/health", record)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen, bodies
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def agent_http() -> AsyncIterator[AgentHTTP]:
    async with AgentHTTP(Settings(http_timeout=2.0)) as http:
        yield http


async def test_post_sends_the_body_and_headers_and_reads_the_answer(
        agent: tuple[str, list[web.Request], list[bytes]]) -> None:
    base, seen, bodies = agent
    body = b'{"id": "council-1"}'
    async with agent_http() as http:
        headers = http.post_headers(body, {"Idempotency-Key": "council-1"})
        for _ in range(2):  # the same URL twice: parsed once, sent twice
            status, answer = await http.post(f"{base}/op", body, headers)
            assert (status, answer) == (200, b'{"role": "tpm", "agent_id": "a1"}')
    assert bodies == [body, body]
    sent = seen[0].headers
    assert sent["Idempotency-Key"] == "council-1"
    assert sent["Content-Type"] == "application/json"
    assert sent["Content-Length"] == str(len(body))
    assert sent["User-Agent"] == USER_AGENT
    assert sent["Host"] == base.removeprefix("http://")


async def test_an_answer_is_read_no_further_than_64_kib(
        agent: tuple[str, list[web.Request], list[bytes]]) -> None:
    base, _, _ = agent
    async with agent_http() as http:
        status, answer = await http.post(f"{base}/huge", b"{}", http.post_headers(b"{}", {}))
    assert status == 200 and len(answer) == MAX_RESPONSE_BYTES


async def test_statuses_come_back_as_they_are_and_redirects_are_not_followed(
        agent: tuple[str, list[web.Request], list[bytes]]) -> None:
    base, seen, _ = agent
    async with agent_http() as http:
        headers = http.post_headers(b"{}", {})
        assert (await http.post(f"{base}/broken", b"{}", headers))[0] == 500
        assert (await http.post(f"{base}/moved", b"{}", headers))[0] == 302
    assert seen == []  # /elsewhere was never called


async def test_a_refused_connection_is_an_httpx_error() -> None:
    async with agent_http() as http:
        with pytest.raises(httpx.TransportError):
            # Port 1 on loopback: nothing listens there.
            await http.post("http://127.0.0.1:1/op", b"{}", http.post_headers(b"{}", {}))


async def test_the_client_shares_the_transport(
        agent: tuple[str, list[web.Request], list[bytes]]) -> None:
    """Health checks go through `client`, an ordinary httpx client over the same pool."""
    base, seen, _ = agent
    async with agent_http() as http:
        response = await http.client.get(f"{base}/health")
        assert response.status_code == 200 and response.json()["role"] == "tpm"
    assert seen[0].headers["User-Agent"] == USER_AGENT


async def test_a_cookie_an_agent_sets_is_never_sent_back(
        agent: tuple[str, list[web.Request], list[bytes]]) -> None:
    """Neither path keeps cookies. By name (localhost, still loopback), because cookie jars
    refuse cookies from IP addresses by themselves."""
    base, seen, _ = agent
    by_name = base.replace("127.0.0.1", "localhost")
    async with agent_http() as http:
        headers = http.post_headers(b"{}", {})
        for _ in range(2):
            await http.post(f"{by_name}/cookie", b"{}", headers)
        for _ in range(2):
            await http.client.get(f"{by_name}/cookie")
    assert len(seen) == 4
    assert [r.headers.get("Cookie") for r in seen] == [None] * 4
