"""Many simulated agents' HTTP APIs: one aiohttp app, one listening socket per agent address.

Every agent listens on its own loopback address and the same port; a request is routed to its
agent by the local address it arrived on, so a thousand agents cost one app and one runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from types import TracebackType

import msgspec
import structlog
from aiohttp import web

from bridge.contract.messages import OPPORTUNITY_DECODER, Claim, CouncilOpportunity, encode
from bridge.devkit.sim.agent import ClaimPolicy, SimAgent, claimed_roles
from bridge.devkit.sim.sockets import bind_all, close_all, ensure_fd_limit

__all__ = ["DEFAULT_OPPORTUNITY_PATH", "HUGE_BODY_BYTES", "HttpAgents"]

log = structlog.get_logger(__name__)

DEFAULT_OPPORTUNITY_PATH = "/api/v1/opportunities/council"
HUGE_BODY_BYTES = 10 * 1024 * 1024
_CHUNK = 64 * 1024
_RECEIVED = b'{"status":"received"}'
_JSON = "application/json"
# Handlers still running at shutdown (slow ones) get this long before they are cancelled.
SHUTDOWN_TIMEOUT = 1.0


class HttpAgents:
    """Serves the HTTP API of `agents` for as long as the context is open.

    Each agent that is not "down" gets a socket on (agent.address, port); `port=None` picks a
    free port once for all of them, and sets `agent.port`. When there is a single agent, every
    request is its own, whatever address it arrived on (a container listening on 0.0.0.0).
    """

    def __init__(
        self,
        agents: Sequence[SimAgent],
        *,
        opportunity_path: str = DEFAULT_OPPORTUNITY_PATH,
        claim_policy: ClaimPolicy | None = None,
        slow_delay: float = 2.0,
        port: int | None = None,
        on_started: Callable[[SimAgent], None] | None = None,
    ) -> None:
        self._agents = list(agents)
        self._by_address = {agent.address: agent for agent in self._agents}
        self._opportunity_path = opportunity_path
        self._claim_policy = claim_policy
        self._slow_delay = slow_delay
        self._requested_port = port
        self._on_started = on_started
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(self._opportunity_path, self._opportunity)
        app.router.add_get("/health", self._health)
        return app

    async def __aenter__(self) -> HttpAgents:
        listening = [agent for agent in self._agents if agent.behaviour != "down"]
        ensure_fd_limit(len(listening))
        self.port, socks = bind_all([agent.address for agent in listening], self._requested_port)
        for agent in self._agents:
            agent.port = self.port
        self._runner = web.AppRunner(
            self._app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        try:
            await self._runner.setup()
            await self._serve(listening, socks)
        except BaseException:
            close_all(socks)
            await self._runner.cleanup()
            raise
        return self

    async def _serve(self, listening: list[SimAgent], socks: list[socket.socket]) -> None:
        assert self._runner is not None
        by_agent = dict(zip(map(id, listening), socks, strict=True))
        for agent in self._agents:
            sock = by_agent.get(id(agent))
            if sock is not None:
                await web.SockSite(self._runner, sock).start()
            if self._on_started is not None:
                self._on_started(agent)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Hanging and slow handlers wait on this: they end (without an answer) at once.
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _agent_of(self, request: web.Request) -> SimAgent | None:
        if len(self._agents) == 1:
            return self._agents[0]
        transport = request.transport
        if transport is None:
            return None
        return self._by_address.get(transport.get_extra_info("sockname")[0])

    async def _health(self, request: web.Request) -> web.StreamResponse:
        agent = self._agent_of(request)
        if agent is None:
            return web.Response(status=404)
        status = 503 if agent.behaviour == "unhealthy" else 200
        body = {"status": "ok" if status == 200 else "unhealthy", "agent_id": agent.id}
        return web.Response(status=status, body=msgspec.json.encode(body), content_type=_JSON)

    async def _opportunity(self, request: web.Request) -> web.StreamResponse:
        agent = self._agent_of(request)
        if agent is None:
            return web.Response(status=404)
        try:
            opportunity = OPPORTUNITY_DECODER.decode(await request.read())
        except msgspec.DecodeError as exc:
            body = msgspec.json.encode({"error": str(exc)})
            return web.Response(status=400, body=body, content_type=_JSON)
        agent.record("http", opportunity, request.headers.get("Idempotency-Key"))
        return await self._answer(request, agent, opportunity)

    async def _answer(
        self, request: web.Request, agent: SimAgent, opportunity: CouncilOpportunity
    ) -> web.StreamResponse:
        match agent.behaviour:
            case "slow" | "hang":
                delay = self._slow_delay if agent.behaviour == "slow" else None
                if await self._interrupted(delay):
                    return _reset(request)
            case "500":
                body = msgspec.json.encode({"error": "simulated failure"})
                return web.Response(status=500, body=body, content_type=_JSON)
            case "reset":
                return _reset(request)
            case "huge":
                return await _huge(request)
        roles = claimed_roles(
            self._claim_policy(agent, opportunity) if self._claim_policy else None
        )
        if roles:
            claim = encode(Claim(role=roles[0], agent_id=agent.id))
            return web.Response(body=claim, content_type=_JSON)
        return web.Response(body=_RECEIVED, content_type=_JSON)

    async def _interrupted(self, delay: float | None) -> bool:
        """Wait `delay` seconds (None: forever); True when the agents stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()
                return True
        return False


def _reset(request: web.Request) -> web.StreamResponse:
    # abort() drops the connection with no response at all; aiohttp discards what is returned.
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=204)


async def _huge(request: web.Request) -> web.StreamResponse:
    head, tail = b'{"status":"received","padding":"', b'"}'
    response = web.StreamResponse(status=200)
    response.content_type = _JSON
    response.content_length = HUGE_BODY_BYTES
    await response.prepare(request)
    remaining = HUGE_BODY_BYTES - len(head) - len(tail)
    try:
        await response.write(head)
        while remaining > 0:
            size = min(_CHUNK, remaining)
            await response.write(b"x" * size)
            remaining -= size
        await response.write(tail)
        await response.write_eof()
    except ConnectionError:
        pass  # the client gave up on the body, as a careful client should
    return response
