"""HTTP to agents, against a real HTTP server on loopback: what an agent receives, what the
bridge reads back, and how failures surface."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from bridge.config import Settings
from bridge.edges.agent_http import MAX_RESPONSE_BYTES, USER_AGENT, AgentHTTP, agent_url
from bridge.errors import AgentHTTPError


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


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_agent(handler: Handler) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that runs `handler` on each connection (then closes it);
    yields its base URL. On exit, every connection it accepted is closed."""
    done: list[asyncio.Event] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        finished = asyncio.Event()
        done.append(finished)
        try:
            await handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            finished.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()
        async with asyncio.timeout(5):
            for finished in done:
                await finished.wait()


@contextlib.asynccontextmanager
async def agent_http() -> AsyncIterator[AgentHTTP]:
    async with AgentHTTP(Settings(http_timeout=2.0)) as http:
        yield http


async def test_post_sends_the_body_and_headers_and_reads_the_answer(
    agent: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, seen, bodies = agent
    body = b'{"id": "council-1"}'
    async with agent_http() as http:
        headers = http.post_headers(body, {"Idempotency-Key": "council-1"})
        for _ in range(2):  # the same URL twice: parsed once, sent twice
            status, answer = await http.post(agent_url(base, "/op"), body, headers)
            assert (status, answer) == (200, b'{"role": "tpm", "agent_id": "a1"}')
    assert bodies == [body, body]
    sent = seen[0].headers
    assert sent["Idempotency-Key"] == "council-1"
    assert sent["Content-Type"] == "application/json"
    assert sent["Content-Length"] == str(len(body))
    assert sent["User-Agent"] == USER_AGENT
    assert sent["Host"] == base.removeprefix("http://")
    # Answers are read undecoded and bounded: no encoding is asked for (not gzip, deflate).
    assert sent["Accept-Encoding"] == "identity"


async def test_an_answer_is_read_no_further_than_64_kib(
    agent: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, _, _ = agent
    async with agent_http() as http:
        status, answer = await http.post(
            agent_url(base, "/huge"), b"{}", http.post_headers(b"{}", {})
        )
    assert status == 200 and len(answer) == MAX_RESPONSE_BYTES


async def test_statuses_come_back_as_they_are_and_redirects_are_not_followed(
    agent: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, seen, _ = agent
    async with agent_http() as http:
        headers = http.post_headers(b"{}", {})
        assert (await http.post(agent_url(base, "/broken"), b"{}", headers))[0] == 500
        assert (await http.post(agent_url(base, "/moved"), b"{}", headers))[0] == 302
    assert seen == []  # /elsewhere was never called


async def test_a_refused_connection_is_our_error_with_a_short_reason() -> None:
    async with agent_http() as http:
        with pytest.raises(AgentHTTPError) as caught:
            # Port 1 on loopback: nothing listens there.
            await http.post(
                agent_url("http://127.0.0.1:1", "/op"), b"{}", http.post_headers(b"{}", {})
            )
        assert (caught.value.reason, caught.value.retryable) == ("connection refused", True)
        with pytest.raises(AgentHTTPError) as caught:
            await http.get_status(agent_url("http://127.0.0.1:1", "/health"))
        assert caught.value.reason == "connection refused"


async def test_a_silent_agent_is_a_timeout_not_retried() -> None:
    """An agent that accepts the connection and never answers: "timeout", after the deadline."""

    async def silent(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the bridge gives up and closes

    async with raw_agent(silent) as base, AgentHTTP(Settings(http_timeout=0.3)) as http:
        with pytest.raises(AgentHTTPError) as caught:
            await http.post(agent_url(base, "/op"), b"{}", http.post_headers(b"{}", {}))
    assert (caught.value.reason, caught.value.retryable) == ("timeout", False)


async def test_a_dropped_connection_is_a_reset() -> None:
    """An agent that reads the request and closes without an answer: "connection reset"."""

    async def drop(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with raw_agent(drop) as base, agent_http() as http:
        with pytest.raises(AgentHTTPError) as caught:
            await http.post(agent_url(base, "/op"), b"{}", http.post_headers(b"{}", {}))
    assert (caught.value.reason, caught.value.retryable) == ("connection reset", True)


async def test_an_answer_that_is_not_http_is_reported_as_such() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async with raw_agent(garbage) as base, agent_http() as http:
        with pytest.raises(AgentHTTPError) as caught:
            await http.post(agent_url(base, "/op"), b"{}", http.post_headers(b"{}", {}))
    assert caught.value.reason.startswith("not HTTP"), caught.value.reason
    assert "\n" not in caught.value.reason and len(caught.value.reason) <= 200
    assert not caught.value.retryable


async def test_a_reason_phrase_that_is_not_utf8_is_an_answer_like_any() -> None:
    """The agent writes the status line: bytes that are not UTF-8 in its reason phrase are
    its 200 all the same, never an error outside AgentHTTPError (which would end the whole
    broadcast, not just this agent's delivery)."""

    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 \xff\xfe\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()

    async with raw_agent(odd) as base, agent_http() as http:
        status, body = await http.post(agent_url(base, "/op"), b"{}", http.post_headers(b"{}", {}))
    assert (status, body) == (200, b"{}")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.40.0.50:8080/admin/drop-all?confirm=yes#",
        "http://user:secret@127.0.0.1:8080",
        "http://127.0.0.1:8080?x=1",
        "http://127.0.0.1:8080#",
        "http://127.0.0.1:8080/admin",
        "ftp://127.0.0.1:21",
        "not a url",
    ],
)
def test_an_endpoint_with_more_than_scheme_host_and_port_is_refused(endpoint: str) -> None:
    with pytest.raises(AgentHTTPError) as caught:
        agent_url(endpoint, "/api/v1/opportunities/council")
    assert caught.value.reason.startswith("not an endpoint")


def test_the_url_is_the_endpoint_with_the_path() -> None:
    assert str(agent_url("http://127.0.0.1:8080", "/api/v1/opportunities/council")) == (
        "http://127.0.0.1:8080/api/v1/opportunities/council"
    )
    assert str(agent_url("http://127.0.0.1:8080/", "/health")) == "http://127.0.0.1:8080/health"


async def test_get_status_reads_the_status_only(
    agent: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, seen, _ = agent
    async with agent_http() as http:
        assert await http.get_status(agent_url(base, "/health")) == 200
    assert seen[0].headers["User-Agent"] == USER_AGENT


async def test_the_client_shares_the_transport(
    agent: tuple[str, list[web.Request], list[bytes]],
) -> None:
    """Health checks go through `client`, an ordinary httpx client over the same pool."""
    base, seen, _ = agent
    async with agent_http() as http:
        response = await http.client.get(f"{base}/health")
        assert response.status_code == 200 and response.json()["role"] == "tpm"
    assert seen[0].headers["User-Agent"] == USER_AGENT


async def test_a_cookie_an_agent_sets_is_never_sent_back(
    agent: tuple[str, list[web.Request], list[bytes]],
) -> None:
    """Neither path keeps cookies. By name (localhost, still loopback), because cookie jars
    refuse cookies from IP addresses by themselves."""
    base, seen, _ = agent
    by_name = base.replace("127.0.0.1", "localhost")
    async with agent_http() as http:
        headers = http.post_headers(b"{}", {})
        for _ in range(2):
            await http.post(agent_url(by_name, "/cookie"), b"{}", headers)
        for _ in range(2):
            await http.client.get(f"{by_name}/cookie")
    assert len(seen) == 4
    assert [r.headers.get("Cookie") for r in seen] == [None] * 4


async def test_no_call_asks_for_an_encoding(
    agent: tuple[str, list[web.Request], list[bytes]],
) -> None:
    """The health check and the shared client ask for no encoding either."""
    base, seen, _ = agent
    async with agent_http() as http:
        await http.get_status(agent_url(base, "/health"))
        await http.client.get(base + "/health")
    assert [r.headers.get("Accept-Encoding") for r in seen] == ["identity", "identity"]
