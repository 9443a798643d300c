"""The Docker Engine API edge: the only importer of `docker` and `requests`.

Only GET /info, /tasks and /events are called here (DESIGN.md also allows /_ping and /version),
which the stack's docker-api proxy on the managers lets through. One DockerAPI is one address:
several managers are several of them (bridge/discovery/managers.py chooses which to read).
Paths are unversioned: the engine then answers with its own API version, so no GET /version
round trip is needed to build the client and any engine works. Only public names of the SDK are
used: `APIClient` is a `requests.Session`, so a call is its `get(base_url + path, params=...,
timeout=...)`.

Every call is bounded: CONNECT_TIMEOUT seconds to connect (or `timeout`, when shorter) and
`timeout` seconds between two reads. The SDK is
blocking, so each call runs in a daemon thread of its own and is awaited: cancelling the
await abandons the thread (it ends by itself within its timeout), so a daemon that accepts
and never answers can neither freeze discovery nor delay the process's exit.

Errors of the SDK, of requests and of the OS are mapped here, once, to DockerAPIError (its
`kind` says which); anything else is a bug and propagates unchanged. An error answer is named
from its message (bridge/edges/docker_answers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, TypeVar

import docker
import docker.errors
import msgspec
import requests
import structlog
from docker.tls import TLSConfig

from bridge.config import Settings
from bridge.edges.docker_answers import ErrorAnswer, answer_error
from bridge.errors import ConfigError, DockerAPIError

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_DOCKER_HOST",
    "DockerAPI",
    "EventStream",
    "docker_error",
    "status_error",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_DOCKER_HOST = Settings().docker_host
# The API version the client is built with; only unversioned paths are ever called, so it
# is never sent (a fixed value just spares the SDK its GET /version at construction).
_CLIENT_VERSION = "1.41"
_OBJECT = msgspec.json.Decoder(dict[str, Any])
# Seconds to connect, at most (and never more than the call's timeout): a live engine or proxy
# accepts within milliseconds, and a manager that is gone (a crashed node drops the SYN) must
# not hold discovery for a whole call's timeout before the next manager is tried.
CONNECT_TIMEOUT = 3.0
# Seconds an event stream may stay quiet before it is asked again (at most): a manager that
# died with the connection open (a crashed node drops everything) is noticed within this and
# a connect timeout, sooner than the swarm elects another leader (about 10 s).
EVENTS_QUIET = 5.0


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes, and exceptions nested in args (how requests wraps OS errors)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(a for a in current.args if isinstance(a, BaseException))
        for linked in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(linked, BaseException):
                stack.append(linked)


def _is_timeout(exc: BaseException) -> bool:
    return any(isinstance(e, requests.exceptions.Timeout | TimeoutError) for e in _chain(exc))


def _os_reason(chain: list[BaseException], exc: BaseException) -> str:
    """The operating system's own words (e.g. "Connection refused") when the chain has them,
    else the whole error: what requests and urllib3 wrap around them says nothing more."""
    for error in chain:
        if type(error).__module__ == "builtins" and isinstance(error, OSError) and error.strerror:
            return error.strerror
    return str(exc)


def _socket_hint(settings: Settings) -> str:
    if settings.docker_host != DEFAULT_DOCKER_HOST:
        return "check WHOOSH_DOCKER_HOST"  # it was set: pointing at it again would not help
    return (
        "set WHOOSH_DOCKER_HOST to the managers' docker-api proxy (the stack's "
        "tcp://tasks.docker-api:2375), or mount /var/run/docker.sock into the bridge"
    )


def docker_error(
    exc: BaseException, settings: Settings, host: str | None = None
) -> DockerAPIError | None:
    """What the SDK, requests or the OS raised, as a DockerAPIError; None when unknown.

    host: the address that was called (default: the first of WHOOSH_DOCKER_HOST).
    """
    if isinstance(exc, DockerAPIError):
        return exc
    host = host or settings.docker_hosts[0]
    chain = list(_chain(exc))
    if any(isinstance(e, requests.exceptions.ConnectTimeout) for e in chain):
        return DockerAPIError(
            "timeout",
            f"could not connect to the Docker API at {host} within "
            f"{min(CONNECT_TIMEOUT, settings.docker_timeout):g}s; is that node down or cut off?",
        )
    if _is_timeout(exc):
        return DockerAPIError(
            "timeout",
            f"the Docker API at {host} did not answer within "
            f"{settings.docker_timeout:g}s; is the daemon hung or overloaded?",
        )
    if any(isinstance(e, FileNotFoundError) for e in chain):
        return DockerAPIError(
            "socket_missing", f"no Docker socket at {host}: {_socket_hint(settings)}"
        )
    if any(isinstance(e, PermissionError) for e in chain):
        return DockerAPIError(
            "permission_denied",
            f"permission denied on {host}: run the bridge as root or in the socket's group",
        )
    if any(
        isinstance(
            e,
            ConnectionError
            | requests.exceptions.ConnectionError
            | requests.exceptions.ChunkedEncodingError,
        )
        for e in chain
    ):
        return DockerAPIError(
            "unreachable", f"cannot connect to the Docker API at {host} ({_os_reason(chain, exc)})"
        )
    if isinstance(exc, docker.errors.DockerException | requests.exceptions.RequestException):
        return DockerAPIError("api_error", f"the Docker API call failed: {exc}")
    return None


def status_error(
    response: requests.Response, settings: Settings, host: str | None = None, call: str = ""
) -> DockerAPIError:
    """The error for a non-2xx answer, named from its message (bridge/edges/docker_answers.py).

    host: the address that was called (default: the first of WHOOSH_DOCKER_HOST); call: what
    was asked, e.g. "GET /tasks" (a proxy's 403 names it).
    """
    try:
        document: object = response.json()
    except ValueError:
        document = None
    return answer_error(
        ErrorAnswer(response.status_code, document, response.text, response.reason or ""),
        settings,
        host or settings.docker_hosts[0],
        call,
    )


async def _in_thread(fn: Callable[[], T], abandon: Callable[[T], None] | None = None) -> T:
    """fn() in a daemon thread of its own; cancelling abandons the thread (it is bounded).

    `abandon` gets a result that arrives after the caller gave up (to close it).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the caller gave up (cancelled)
            if result is not None and abandon is not None:
                abandon(result)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="docker-api", daemon=True).start()
    return await future


class DockerAPI:
    """The Docker Engine API at one address. close() frees its connections.

    host: the address (unix:// or tcp://); default: the first of WHOOSH_DOCKER_HOST. Each
    method raises DockerAPIError (kind: socket_missing, permission_denied, not_manager,
    swarm_locked, manager_not_ready, no_leader, forbidden, service_not_found, server_error,
    bad_response, timeout, unreachable, api_error).
    """

    def __init__(self, settings: Settings, host: str | None = None) -> None:
        self.settings = settings
        self.host = host or settings.docker_hosts[0]
        tls: TLSConfig | bool = False
        if settings.docker_tls_verify and settings.docker_cert_path:
            path = settings.docker_cert_path
            tls = TLSConfig(
                client_cert=(f"{path}/cert.pem", f"{path}/key.pem"),
                ca_cert=f"{path}/ca.pem",
                verify=True,
            )
        host = self.host.replace("tcp://", "https://") if tls else self.host
        # Building the client does no I/O (the version is given); a bad host is a config error.
        try:
            self._client = docker.APIClient(
                base_url=host, version=_CLIENT_VERSION, timeout=settings.docker_timeout, tls=tls
            )
        except docker.errors.DockerException as exc:
            raise ConfigError("WHOOSH_DOCKER_HOST", self.host, str(exc)) from exc
        self._timeout = settings.docker_timeout
        self._connect_timeout = min(CONNECT_TIMEOUT, settings.docker_timeout)
        self._socket_path = host.removeprefix("unix://") if host.startswith("unix://") else None

    def _get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        stream: bool = False,
        read_timeout: float | None = None,
    ) -> requests.Response:
        """GET an unversioned path; a non-2xx answer raises DockerAPIError."""
        if self._socket_path is not None and not os.path.exists(self._socket_path):
            # Asked first: the SDK's unix connection leaks its socket when connect() fails.
            raise self._mapped(FileNotFoundError(2, "No such file", self._socket_path))
        try:
            response: requests.Response = self._client.get(
                self._client.base_url + path,
                params=params,
                stream=stream,
                timeout=(self._connect_timeout, read_timeout or self._timeout),
            )
        except Exception as exc:
            raise self._mapped(exc) from exc
        if response.status_code >= 300:
            with response:
                raise status_error(response, self.settings, self.host, f"GET {path}")
        return response

    def _mapped(self, exc: Exception) -> Exception:
        return docker_error(exc, self.settings, self.host) or exc

    def _body(self, path: str, params: Mapping[str, str] | None) -> bytes:
        with self._get(path, params) as response:
            try:
                body: bytes = response.content
            except Exception as exc:
                raise self._mapped(exc) from exc
        return body

    async def info(self) -> dict[str, Any]:
        """GET /info as a JSON object; DockerAPIError(bad_response) when it is not one."""
        body = await _in_thread(lambda: self._body("/info", None))
        try:
            return _OBJECT.decode(body)
        except msgspec.DecodeError as exc:
            raise DockerAPIError(
                "bad_response",
                f"GET /info did not answer a JSON object ({exc}); is {self.host} a Docker Engine?",
            ) from exc

    async def tasks(self, filters: str) -> bytes:
        """The raw body of GET /tasks?filters=<filters JSON>."""
        return await _in_thread(lambda: self._body("/tasks", {"filters": filters}))

    @contextlib.asynccontextmanager
    async def events(self, filters: str) -> AsyncIterator[EventStream]:
        """GET /events?filters=..., open: entering raises DockerAPIError when it cannot be."""
        stream = EventStream(self, filters)
        await stream.open()
        try:
            yield stream
        finally:
            stream.close()

    def close(self) -> None:
        self._client.close()


class EventStream:
    """The daemon's events as decoded JSON objects, until the stream breaks.

    Docker sends nothing on a quiet stream, so a read that waits EVENTS_QUIET seconds (or
    `timeout`, when shorter) ends the HTTP response, and the stream is opened again at once
    with `since` set to the daemon's time of that moment: a silent daemon is asked again (a
    hung one then fails to answer, which raises), and no event between the two responses is
    lost. The daemon's time is its `Date` header plus the time elapsed here (so the two clocks
    need not agree), and
    never before the last event read plus 1 ns (so no event comes twice).
    """

    def __init__(self, api: DockerAPI, filters: str) -> None:
        self._api = api
        self._filters = filters
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._daemon_clock: tuple[float, float] | None = None  # (Date, monotonic) at open
        self._last_event_ns = 0  # the daemon's timeNano of the last event read
        self._closed = False

    async def open(self, since: str | None = None) -> None:
        params = {"filters": self._filters}
        if since is not None:
            params["since"] = since
        response = await _in_thread(
            lambda: self._api._get(
                "/events", params, stream=True, read_timeout=min(EVENTS_QUIET, self._api._timeout)
            ),
            abandon=lambda late: late.close(),
        )
        if self._closed:
            response.close()
            return
        date = response.headers.get("Date")
        stamp = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
        self._daemon_clock = (stamp, time.monotonic())
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._read, args=(response, loop), name="docker-events", daemon=True
        ).start()

    def _read(self, response: requests.Response, loop: asyncio.AbstractEventLoop) -> None:
        """Reader thread: lines to the queue, then None (quiet) or the error that ended it."""
        end: bytes | BaseException | None
        buffer = b""
        try:
            for chunk in response.iter_content(chunk_size=None):
                if self._closed:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        loop.call_soon_threadsafe(self._queue.put_nowait, line)
            end = DockerAPIError("unreachable", "the Docker daemon closed the event stream")
        except Exception as exc:
            end = None if _is_timeout(exc) else self._api._mapped(exc)
        finally:
            response.close()
        if not self._closed:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads
                loop.call_soon_threadsafe(self._queue.put_nowait, end)

    def _since(self) -> str:
        """The daemon's time now, less a second for its Date header's rounding, but never
        before the last event read (which would come again)."""
        assert self._daemon_clock is not None
        stamp, at = self._daemon_clock
        estimate = int((stamp + (time.monotonic() - at) - 1.0) * 1e9)
        since = max(estimate, self._last_event_ns + 1)
        return f"{since // 1_000_000_000}.{since % 1_000_000_000:09d}"

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            item = await self._queue.get()
            if item is None:  # quiet for `timeout` seconds: ask again from now
                await self.open(self._since())
                continue
            if isinstance(item, BaseException):
                raise item
            try:
                event = _OBJECT.decode(item)
            except msgspec.DecodeError as exc:
                raise DockerAPIError(
                    "bad_response",
                    f"the Docker event stream sent a line that is not a JSON object ({exc})",
                ) from exc
            stamp = event.get("timeNano")
            if isinstance(stamp, int):
                self._last_event_ns = max(self._last_event_ns, stamp)
            return event

    def close(self) -> None:
        """Stop reading. The reader thread closes the response itself when its current read
        returns (within `timeout`): closing it from here would wait for that read anyway,
        since the reader holds the response's buffer, and it would block the event loop."""
        self._closed = True
