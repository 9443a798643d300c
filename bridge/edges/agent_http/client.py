"""The bridge's calls to agents: their URLs, the broadcast's POST and the health check's GET,
each bounded by one deadline and read up to a limit, with httpx's errors mapped once to
AgentHTTPError (bridge/edges/agent_http/__init__.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Self, TypeAlias

import httpx

from bridge import __version__
from bridge.config import Settings
from bridge.edges.agent_http.transport import URL_CACHE, AgentTransport, ResponseStream
from bridge.errors import AgentHTTPError

__all__ = [
    "MAX_RESPONSE_BYTES",
    "USER_AGENT",
    "AgentHTTP",
    "AgentURL",
    "PostHeaders",
    "agent_url",
]

# An agent's HTTP answer is read up to this size: a huge body costs that agent nothing more.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = f"chorus-bridge/{__version__}"
# The broadcast's POST runs under one deadline of its own (AgentHTTP.post), so aiohttp is given
# no timer per phase: each would be one more timer to set and cancel on every call.
_ONE_DEADLINE: dict[str, object] = {
    "timeout": {"connect": None, "read": None, "write": None, "pool": None}
}
# Answers are read as they come (auto_decompress is off, and at most 64 KiB is read): a
# compressed answer would be no claim, and a decompressed one no longer bounded. So the bridge
# asks for no encoding at all (aiohttp and httpx would otherwise offer gzip and deflate).
_IDENTITY = {"Accept-Encoding": "identity"}

AgentURL: TypeAlias = httpx.URL
PostHeaders: TypeAlias = httpx.Headers


@functools.lru_cache(maxsize=URL_CACHE)
def agent_url(endpoint: str, path: str) -> AgentURL:
    """`path` on an agent's `endpoint` (`http[s]://host:port`), built with httpx's URL.

    Raises AgentHTTPError("not an endpoint: ...") for anything but scheme, host and port:
    user info, a query, a fragment or a path would let whoever wrote the endpoint choose the
    URL (a `#` would drop `path` altogether).
    """
    try:
        base = httpx.URL(endpoint)
    except httpx.InvalidURL as exc:
        raise AgentHTTPError(f"not an endpoint: {exc}", retryable=False) from None
    if (
        base.scheme not in ("http", "https")
        or not base.host
        or base.userinfo
        or "?" in endpoint
        or "#" in endpoint
        or base.path not in ("", "/")
    ):
        raise AgentHTTPError(
            f"not an endpoint: {endpoint!r} (expected http://host:port)", retryable=False
        )
    try:
        return base.copy_with(path=path)
    except httpx.InvalidURL as exc:
        raise AgentHTTPError(f"bad path {path!r}: {exc}", retryable=False) from None


def _agent_error(exc: httpx.HTTPError) -> AgentHTTPError:
    # One short line: the text may quote what the agent sent (a bad status line), and it
    # ends up in reports and logs.
    reason = " ".join((str(exc) or type(exc).__name__).split())[:200]
    if isinstance(exc, httpx.TimeoutException):
        reason = "timeout"
    return AgentHTTPError(
        reason,
        retryable=isinstance(exc, httpx.NetworkError)
        and not isinstance(exc, httpx.TimeoutException),
    )


class AgentHTTP:
    """The bridge's HTTP to agents; create it in a running event loop, close it with the
    context. trust_env=False: a proxy variable must never route calls to agents elsewhere."""

    def __init__(self, settings: Settings) -> None:
        self.transport = AgentTransport(max_connections=settings.http_concurrency)
        # A jar whose policy takes no cookie: what one agent sets is never sent back.
        no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        self.client = httpx.AsyncClient(
            timeout=settings.http_timeout,
            trust_env=False,
            transport=self.transport,
            cookies=no_cookies,
            headers={"User-Agent": USER_AGENT, **_IDENTITY},
        )
        self._deadline = settings.http_timeout

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.client.__aexit__(exc_type, exc, tb)

    @staticmethod
    def post_headers(body: bytes, extra: dict[str, str]) -> PostHeaders:
        """The headers of a JSON POST of `body`: made once, used for every agent."""
        return httpx.Headers(
            {
                "User-Agent": USER_AGENT,
                "Accept": "*/*",
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                **_IDENTITY,
                **extra,
            }
        )

    async def post(self, url: AgentURL, body: bytes, headers: PostHeaders) -> tuple[int, bytes]:
        """POST `body` (with headers from post_headers) to `url` (from agent_url) and read at
        most MAX_RESPONSE_BYTES of the answer: (status, body).

        BRIDGE_HTTP_TIMEOUT covers the whole call, connection and body included, so a slow
        trickle cannot hold a slot. Raises AgentHTTPError ("timeout", "connection refused",
        "connection reset", ...; `retryable` when no answer came at all).
        """
        request = httpx.Request(
            "POST", url, headers=headers, stream=httpx.ByteStream(body), extensions=_ONE_DEADLINE
        )
        return await self._exchange(request, self._deadline, MAX_RESPONSE_BYTES)

    async def get_status(self, url: AgentURL, *, timeout: float | None = None) -> int:
        """GET `url` and return the status; the body is not read. `timeout` (seconds, default
        BRIDGE_HTTP_TIMEOUT) bounds the whole call. Raises AgentHTTPError as `post` does."""
        request = httpx.Request(
            "GET", url, headers={"User-Agent": USER_AGENT, **_IDENTITY}, extensions=_ONE_DEADLINE
        )
        status, _ = await self._exchange(request, timeout or self._deadline, 0)
        return status

    async def _exchange(
        self, request: httpx.Request, deadline: float, limit: int
    ) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(deadline):
                response = await self.transport.handle_async_request(request)
                try:
                    return response.status_code, await _read(response, limit)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise AgentHTTPError("timeout", retryable=False) from None
        except httpx.HTTPError as exc:
            raise _agent_error(exc) from exc


async def _read(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of the body, straight from the transport's stream."""
    stream = response.stream
    if limit <= 0 or not isinstance(stream, ResponseStream):
        return b""
    received = bytearray()
    async with contextlib.aclosing(stream.chunks()) as chunks:
        async for chunk in chunks:
            received += chunk
            if len(received) >= limit:
                break
    return bytes(received[:limit])
