"""The emulated Docker Engine API: an aiohttp server on a unix socket.

Serves GET /_ping, /version, /info, /tasks and /events, bare and under any `/vX.Y/` prefix, with
Docker 20.10's headers, bodies and error answers. Every request is counted on the swarm
(`swarm.requests`), and any other method or path is recorded in `swarm.unexpected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import msgspec
import structlog
from aiohttp import web

from bridge.devkit.emulator.documents import (
    COMMON_HEADERS,
    NOT_IN_SWARM,
    PING_HEADERS,
    info_document,
    not_manager_message,
    swarm_header,
    version_document,
)
from bridge.devkit.emulator.filters import EngineError, parse_filters
from bridge.devkit.emulator.state import EmulatedSwarm, ErrorMode

__all__ = ["DockerEmulator", "serve_in_thread"]

log = structlog.get_logger(__name__)

_VERSIONED = re.compile(r"^/v[0-9][0-9.]*(/.*)$")
_SERVER_ERROR = "rpc error: code = Unknown desc = emulated engine failure"
_TRUNCATED_EVENT = b'{"Type":"service","Action":"upd'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(document: Any, status: int = 200) -> web.Response:
    # Go's json.Encoder ends every document with a newline.
    return web.Response(
        status=status, body=msgspec.json.encode(document) + b"\n", content_type="application/json"
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"message": message}, status)


class DockerEmulator:
    """Serves an EmulatedSwarm on a unix socket while the context is open."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        swarm: EmulatedSwarm | None = None,
        *,
        churn: int = 0,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.swarm = swarm if swarm is not None else EmulatedSwarm()
        # Tasks replaced before each task list is served: a fleet that never stands still.
        self.churn = churn
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
    def base_url(self) -> str:
        """What to give docker.APIClient as base_url."""
        return f"unix://{self.socket_path}"

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
        """Listen on the socket (a stale socket file there is replaced)."""
        if self._runner is not None:
            raise RuntimeError("this DockerEmulator is already serving")
        self._loop = asyncio.get_running_loop()
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
        self.socket_path.unlink(missing_ok=True)
        await web.UnixSite(runner, str(self.socket_path)).start()
        self._runner = runner
        self.swarm.add_watcher(self._on_change)
        log.info(
            "docker_emulator_started",
            socket=str(self.socket_path),
            service=self.swarm.service,
            tasks=self.swarm.replicas,
        )

    async def stop(self) -> None:
        """Release hung requests, end event streams, stop listening, remove the socket."""
        if self._runner is None:
            return
        self._closing = True
        self._wake()
        self.swarm.remove_watcher(self._on_change)
        self.swarm.close_event_streams()
        await self._runner.cleanup()
        self._runner = None
        self.socket_path.unlink(missing_ok=True)
        log.info("docker_emulator_stopped", socket=str(self.socket_path))

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
        response.headers.update(COMMON_HEADERS)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        match = _VERSIONED.match(request.path)
        path = match.group(1) if match else request.path
        handler = self._routes.get(path)
        self.swarm.record_request(
            request.method, path, expected=handler is not None and request.method == "GET"
        )
        if handler is None:
            return _error(404, "page not found")
        if request.method not in ("GET", "HEAD") or (request.method == "HEAD" and path != "/_ping"):
            return _error(405, f"{request.method} is not allowed on {path}")
        mode = self.swarm.error_for(path)
        try:
            if mode is not None and (failure := await self._fail(mode, path, request)):
                return failure
            response = await handler(request)
        except EngineError as exc:
            return _error(exc.status, exc.message)
        if self.swarm.error_for(path) == "bad_json" and isinstance(response, web.Response):
            body = response.body if isinstance(response.body, bytes) else b""
            response.body = body[: len(body) // 2]
        return response

    async def _fail(self, mode: ErrorMode, path: str, request: web.Request) -> web.Response | None:
        """The error answer for `mode`, or None to answer normally (bad_json, a released hang)."""
        if mode == "hang":
            while self.swarm.error_for(path) == "hang" and not self._closing:
                await self._change.wait()
            return None
        if mode == "not_manager":
            return _error(503, NOT_IN_SWARM)
        if mode == "service_not_found":
            services = parse_filters(request.query.get("filters")).get("service")
            name = min(services) if services else self.swarm.service
            return _error(404, f"service {name} not found")
        if mode == "server_error":
            return _error(500, _SERVER_ERROR)
        return None

    # -- endpoints --------------------------------------------------------------------------

    async def _ping(self, request: web.Request) -> web.Response:
        headers = {**PING_HEADERS, "Swarm": swarm_header(self.swarm)}
        return web.Response(text="OK", content_type="text/plain", charset="utf-8", headers=headers)

    async def _version(self, request: web.Request) -> web.Response:
        return _json(version_document())

    async def _info(self, request: web.Request) -> web.Response:
        return _json(info_document(self.swarm))

    async def _tasks(self, request: web.Request) -> web.Response:
        # Docker parses the filters before it asks the cluster: a bad one is a 500 anywhere.
        args = parse_filters(request.query.get("filters"))
        if not (self.swarm.active and self.swarm.manager):
            raise EngineError(503, not_manager_message(self.swarm))
        if self.churn:
            self.swarm.replace_tasks(self.churn)
        return web.Response(body=self.swarm.tasks_body(args), content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        args = parse_filters(request.query.get("filters"))
        # Subscribe before the headers go out: a client that saw them must see what follows.
        subscription = self.swarm.hub.subscribe(args, _since_ns(request.query.get("since")))
        try:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            if self.swarm.error_for("/events") == "bad_json":
                await response.write(_TRUNCATED_EVENT)
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


@contextlib.contextmanager
def serve_in_thread(
    socket_path: str | os.PathLike[str],
    swarm: EmulatedSwarm | None = None,
    *,
    timeout: float = 10.0,
) -> Iterator[DockerEmulator]:
    """Run a DockerEmulator on its own loop in a background thread, for blocking callers."""
    emulator = DockerEmulator(socket_path, swarm)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(emulator.start())
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="docker-emulator", daemon=True)
    thread.start()
    try:
        if not started.wait(timeout) or failure:
            raise RuntimeError(
                f"the Docker emulator did not start on {socket_path}: "
                f"{failure[0] if failure else 'timed out'}"
            )
        yield emulator
    finally:
        if thread.is_alive() and not failure:
            asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()
