"""HTTP to agents: the only module that imports httpx and aiohttp.

httpx is the API; the transport under it is aiohttp's client, reached through aiohttp's public
API only (`ClientSession`, `TCPConnector`, `DummyCookieJar`, `ClientTimeout`). On a fan-out to
1,000 agents the client's CPU per call decides how fast a broadcast is: httpcore's pool took
seconds for a fan-out to 1,000 hosts, aiohttp's takes a fraction of that. So:
- `AgentTransport` is an `httpx.AsyncBaseTransport` that hands each request to aiohttp as it
  is (headers, URL and body that httpx already holds are not re-encoded);
- the broadcast's POST (`AgentHTTP.post`) builds its `httpx.Request` from parts made once per
  broadcast and sends it straight through the transport. What `AsyncClient.send` adds on top
  (cookie jar, auth, redirects, default headers, URL merging) is nothing a POST to an agent
  needs: a redirect is not followed anyway, and no cookie is ever kept;
- health checks use `AgentHTTP.get_status`, the same way in.
`AgentHTTP.client` is an ordinary `httpx.AsyncClient` over the same transport, for anything
else. Neither path keeps cookies: what one agent sets must not reach another.

Errors: aiohttp's are mapped to httpx's in the transport (so `client` behaves as httpx does),
and `post`/`get_status` map those to `AgentHTTPError` with a short reason, once, here: the rest
of the bridge never sees either library's exceptions. An error neither library documents is
re-raised as it is: a bug must not look like an agent that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Self, TypeAlias

import aiohttp
import httpx
import yarl

from bridge import __version__
from bridge.config import Settings
from bridge.errors import AgentHTTPError

__all__ = [
    "MAX_RESPONSE_BYTES",
    "USER_AGENT",
    "AgentHTTP",
    "AgentTransport",
    "AgentURL",
    "PostHeaders",
    "agent_url",
]

# An agent's HTTP answer is read up to this size: a huge body costs that agent nothing more.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = f"chorus-bridge/{__version__}"
# Agents' URLs seen lately, built once: a fleet gets every broadcast at the same URLs. About
# 1.1 KB per URL (11 MB at 10,000 agents); a larger fleet only loses the saving (about 30 us
# per URL, of a POST's 0.5 ms of CPU).
_URL_CACHE = 16_384
# The broadcast's POST runs under one deadline of its own (AgentHTTP.post), so aiohttp is given
# no timer per phase: each would be one more timer to set and cancel on every call.
_ONE_DEADLINE: dict[str, object] = {
    "timeout": {"connect": None, "read": None, "write": None, "pool": None}
}
_READ_CHUNK = 16 * 1024

# Answers are read as they come (auto_decompress is off, and at most 64 KiB is read): a
# compressed answer would be no claim, and a decompressed one no longer bounded. So the bridge
# asks for no encoding at all (aiohttp and httpx would otherwise offer gzip and deflate).
_IDENTITY = {"Accept-Encoding": "identity"}

AgentURL: TypeAlias = httpx.URL
PostHeaders: TypeAlias = httpx.Headers


@functools.lru_cache(maxsize=_URL_CACHE)
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


@functools.lru_cache(maxsize=_URL_CACHE)
def _aiohttp_url(url: str) -> yarl.URL:
    # httpx has already encoded it: yarl need not encode it again.
    return yarl.URL(url, encoded=True)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes about 20 ms: once per process, not once per client.
    return httpx.create_ssl_context(trust_env=False)


@functools.lru_cache(maxsize=64)
def _client_timeout(
    connect: float | None, read: float | None, pool: float | None
) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(sock_connect=connect, sock_read=read, connect=pool)


def _os_reason(error: OSError | None, fallback: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError | BrokenPipeError):
        return "connection reset"
    text = (error.strerror if error is not None else None) or str(fallback)
    return f"connection failed: {text}" if text else "connection failed"


def _to_httpx(exc: Exception) -> httpx.HTTPError | None:
    """aiohttp's documented client errors as httpx's, with our short reason as the message;
    None for anything else. httpx.NetworkError means no answer came: worth one retry."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout("timeout")
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx.ReadTimeout("timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(_os_reason(exc.os_error, exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.ReadError("connection reset")
    if isinstance(exc, aiohttp.ClientOSError):
        return httpx.ReadError(_os_reason(exc, exc))
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(f"broken answer: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(f"not HTTP: {exc.message}")
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(f"bad URL: {exc}")
    return None


@contextlib.contextmanager
def _aiohttp_errors() -> Iterator[None]:
    try:
        yield
    except (aiohttp.ClientError, TimeoutError) as exc:
        mapped = _to_httpx(exc)
        if mapped is None:
            raise
        raise mapped from exc


class _ResponseStream(httpx.AsyncByteStream):
    """An aiohttp response's body as httpx reads it. Closing it before the end closes the
    connection, so the rest of a huge answer is never read."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, in chunks of up to 16 KiB."""
        with _aiohttp_errors():
            async for chunk in self._response.content.iter_chunked(_READ_CHUNK):
                yield chunk

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AgentTransport(httpx.AsyncBaseTransport):
    """httpx's transport over an aiohttp ClientSession (public API only); create it in a
    running event loop. No cookie jar: nothing an agent sets is sent back, to it or to
    another agent, and an empty jar would still be searched on every call."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float | None = 5.0) -> None:
        connector = aiohttp.TCPConnector(
            limit=max_connections, keepalive_timeout=keepalive_expiry, ssl=_ssl_context()
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        stream = request.stream
        # A body given as bytes is one chunk: no need to go through the async iterator.
        data = b"".join(stream) if isinstance(stream, httpx.ByteStream) else await request.aread()
        with _aiohttp_errors():
            response = await self._session.request(
                request.method,
                _aiohttp_url(str(request.url)),
                headers=[
                    (key.decode("latin-1"), value.decode("latin-1"))
                    for key, value in request.headers.raw
                ],
                data=data or None,
                allow_redirects=False,
                compress=None,
                timeout=_client_timeout(
                    timeout.get("connect"), timeout.get("read"), timeout.get("pool")
                ),
            )
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            # Agents choose it: bytes that are not UTF-8 come back as lone surrogates.
            extensions["reason_phrase"] = response.reason.encode("utf-8", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        await self._session.close()


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
    if limit <= 0 or not isinstance(stream, _ResponseStream):
        return b""
    received = bytearray()
    async with contextlib.aclosing(stream.chunks()) as chunks:
        async for chunk in chunks:
            received += chunk
            if len(received) >= limit:
                break
    return bytes(received[:limit])
