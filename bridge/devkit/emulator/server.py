"""The emulated Docker Engine API: an aiohttp server on a unix socket (or a loopback TCP port).

Serves GET /_ping, /version, /info, /tasks and /events, bare and under any `/vX.Y/` prefix, with
Docker 20.10's headers, bodies and error answers, as one node of the swarm sees it: several
servers of one EmulatedSwarm are several managers (and workers) of one swarm, each on its own
socket, each with its own failure switch. Every request is counted on the swarm
(`swarm.requests`) and on the server (`requests`), and any other method or path is recorded in
`swarm.unexpected`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog
from aiohttp import web

from bridge.devkit.emulator.answers import error, error_answer, json_answer
from bridge.devkit.emulator.documents import (
    COMMON_HEADERS,
    PING_HEADERS,
    info_document,
    not_manager_message,
    swarm_header,
    version_document,
)
from bridge.devkit.emulator.faults import ErrorMode, FaultSwitch
from bridge.devkit.emulator.filters import EngineError, parse_filters
from bridge.devkit.emulator.nodes import NodeRecord
from bridge.devkit.emulator.state import EmulatedSwarm

__all__ = ["DockerEmulator"]

log = structlog.get_logger(__name__)

_VERSIONED = re.compile(r"^/v[0-9][0-9.]*(/.*)$")
_TRUNCATED_EVENT = b'{"Type":"service","Action":"upd'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DockerEmulator:
    """Serves an EmulatedSwarm, as one of its nodes, on a unix socket while the context is open.

    node: the node served (default: the swarm's first); tcp=(host, port): listen on that
    loopback address instead of the socket (port 0: any free one).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None,
        swarm: EmulatedSwarm | None = None,
        *,
        churn: int = 0,
        node: str | None = None,
        tcp: tuple[str, int] | None = None,
    ) -> None:
        if (socket_path is None) == (tcp is None):
            raise ValueError("DockerEmulator listens on a socket path or on tcp=(host, port)")
        self.socket_path = Path(socket_path) if socket_path is not None else None
        self.swarm = swarm if swarm is not None else EmulatedSwarm()
        self.node_id = node or self.swarm.node_id
        self._tcp = tcp
        # Tasks replaced before each task list is served: a fleet that never stands still.
        self.churn = churn
        self.faults = FaultSwitch(self._on_change)
        self.requests: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._change = asyncio.Event()
        self._closing = False
        self._routes: dict[str, Handler] = {
            "/_ping": self._ping,
            "/version": self._version,
            "/info": self._info,
            "/tasks": self._tasks,
            "/events": self._events,
        }

    @property
    def node(self) -> NodeRecord:
        return self.swarm.nodes[self.node_id]

    @property
    def base_url(self) -> str:
        """What to give docker.APIClient as base_url (or WHOOSH_DOCKER_HOST)."""
        if self._tcp is not None:
            return f"tcp://{self._tcp[0]}:{self._tcp[1]}"
        return f"unix://{self.socket_path}"

    @property
    def event_streams(self) -> int:
        """How many /events streams this server has open."""
        return self.swarm.hub.count_of(self)

    def set_error(
        self, mode: ErrorMode | None, *, paths: Iterable[str] | None = ("/tasks",)
    ) -> None:
        """Make this node's answers to the paths (None: every path) fail with `mode`."""
        self.faults.set(mode, paths)

    def error_for(self, path: str) -> ErrorMode | None:
        """The failure a request to `path` gets here: this node's, else the swarm's."""
        return self.faults.for_path(path) or self.swarm.error_for(path)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on the socket (a stale socket file there is replaced) or the TCP address."""
        if self._runner is not None:
            raise RuntimeError("this DockerEmulator is already serving")
        self._loop = asyncio.get_running_loop()
        self._closing = False
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_response_prepare.append(self._add_headers)
        # Cancelling handlers when the client goes away ends abandoned hangs and event streams.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        site: web.BaseSite
        if self._tcp is not None:
            site = web.TCPSite(runner, self._tcp[0], self._tcp[1], reuse_address=True)
        else:
            assert self.socket_path is not None
            self.socket_path.unlink(missing_ok=True)
            site = web.UnixSite(runner, str(self.socket_path))
        await site.start()
        if self._tcp is not None and self._tcp[1] == 0:
            self._tcp = (self._tcp[0], _bound_port(runner))
        self._runner = runner
        self.swarm.add_watcher(self._on_change)
        log.info(
            "docker_emulator_started",
            at=self.base_url,
            node=self.node.hostname,
            role=self.node.role,
            service=self.swarm.service,
            tasks=self.swarm.replicas,
        )

    async def stop(self) -> None:
        """Release hung requests, end event streams, stop listening, remove the socket (as a
        daemon that stops, or a node that dies, does)."""
        if self._runner is None:
            return
        self._closing = True
        self._wake()
        self.swarm.remove_watcher(self._on_change)
        self.swarm.close_event_streams(self)
        await self._runner.cleanup()
        self._runner = None
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)
        log.info("docker_emulator_stopped", at=self.base_url)

    # -- plumbing ---------------------------------------------------------------------------

    def _on_change(self) -> None:
        # Called from whichever thread mutated the swarm.
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        if response.headers.get("Server") != "haproxy":  # a proxy's own answer
            response.headers.update(COMMON_HEADERS)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        match = _VERSIONED.match(request.path)
        path = match.group(1) if match else request.path
        handler = self._routes.get(path)
        self.swarm.record_request(
            request.method, path, expected=handler is not None and request.method == "GET"
        )
        self.requests[path] += 1
        if handler is None:
            return error(404, "page not found")
        if request.method not in ("GET", "HEAD") or (request.method == "HEAD" and path != "/_ping"):
            return error(405, f"{request.method} is not allowed on {path}")
        mode = self.error_for(path)
        try:
            if mode is not None and (failure := await self._fail(mode, path, request)):
                return failure
            response = await handler(request)
        except EngineError as exc:
            return error(exc.status, exc.message)
        if self.error_for(path) == "bad_json" and isinstance(response, web.Response):
            body = response.body if isinstance(response.body, bytes) else b""
            response.body = body[: len(body) // 2]
        return response

    async def _fail(self, mode: ErrorMode, path: str, request: web.Request) -> web.Response | None:
        """The error answer for `mode`, or None to answer normally (bad_json, close, a released
        hang)."""
        if mode == "hang":
            while self.error_for(path) == "hang" and not self._closing:
                await self._change.wait()
            return None
        service = self.swarm.service
        if mode == "service_not_found":  # the one the request names
            services = parse_filters(request.query.get("filters")).get("service")
            service = min(services) if services else service
        return error_answer(mode, service)

    # -- endpoints --------------------------------------------------------------------------

    async def _ping(self, request: web.Request) -> web.Response:
        headers = {**PING_HEADERS, "Swarm": swarm_header(self.swarm, self.node)}
        return web.Response(text="OK", content_type="text/plain", charset="utf-8", headers=headers)

    async def _version(self, request: web.Request) -> web.Response:
        return json_answer(version_document())

    async def _info(self, request: web.Request) -> web.Response:
        locked = self.faults.mode == "swarm_locked" or self.swarm.error == "swarm_locked"
        return json_answer(info_document(self.swarm, self.node, locked=locked))

    async def _tasks(self, request: web.Request) -> web.Response:
        # Docker parses the filters before it asks the cluster: a bad one is a 500 anywhere.
        args = parse_filters(request.query.get("filters"))
        if not (self.swarm.active and self.node.role == "manager"):
            raise EngineError(503, not_manager_message(self.swarm))
        if self.churn:
            self.swarm.replace_tasks(self.churn)
        return web.Response(body=self.swarm.tasks_body(args), content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        args = parse_filters(request.query.get("filters"))
        # Subscribe before the headers go out: a client that saw them must see what follows.
        subscription = self.swarm.hub.subscribe(
            args, _since_ns(request.query.get("since")), node=self.node_id, owner=self
        )
        try:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            mode = self.error_for("/events")
            if mode == "bad_json":
                await response.write(_TRUNCATED_EVENT)
                return response
            if mode == "close":
                return response
            while (line := await subscription.queue.get()) is not None:
                await response.write(line)
            return response
        finally:
            self.swarm.hub.unsubscribe(subscription)


def _since_ns(raw: str | None) -> int | None:
    """Docker's `since` ("SECONDS[.NANOSECONDS]") in nanoseconds; None when absent."""
    if not raw:
        return None
    seconds, _, fraction = raw.partition(".")
    try:
        return int(seconds) * 1_000_000_000 + int(fraction[:9].ljust(9, "0") or 0)
    except ValueError:
        raise EngineError(400, f"failed to parse value {raw} as a timestamp") from None


def _bound_port(runner: web.AppRunner) -> int:
    """The port the runner's one TCP site listens on (asked for port 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("the emulator's TCP site has no bound port")
