"""HTTP to agents: one pooled connection pool, httpx's API over it, and the broadcast's POST.

On a fan-out to 1,000 agents the client's CPU per call decides how fast a broadcast is, and
on loopback it was about 1 ms per POST through `httpx.AsyncClient`: twice what the HTTP work
itself costs. So:
- the pool is aiohttp's, through httpx-aiohttp's transport (httpcore's pool took seconds for a
  fan-out to 1,000 hosts);
- `AgentTransport` hands requests to aiohttp without re-encoding what httpx already holds
  (headers, URL, body) on every call;
- the broadcast's POST (`AgentHTTP.post`) builds its `httpx.Request` from parts made once per
  broadcast and sends it straight through the transport. What `AsyncClient.send` adds on top
  (cookie jar, auth, redirects, default headers, URL merging) is nothing a POST to an agent
  needs: a redirect is not followed anyway, and no cookie is ever kept.
Health checks and anything else use `AgentHTTP.client`, an ordinary `httpx.AsyncClient` over
the same transport. Neither path keeps cookies: what one agent sets must not reach another.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Self

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

from bridge import __version__
from bridge.config import Settings

__all__ = ["MAX_RESPONSE_BYTES", "USER_AGENT", "AgentHTTP", "AgentTransport"]

# An agent's HTTP answer is read up to this size: a huge body costs that agent nothing more.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = f"chorus-bridge/{__version__}"
# Agents' URLs seen lately, parsed once: a fleet gets every broadcast at the same URLs. Both
# caches together take about 1.1 KB per URL (11 MB at 10,000 agents); a fleet larger than this
# only loses the saving: parsing a new URL costs about 30 us, of a POST's 0.5 ms of CPU.
_URL_CACHE = 16_384
# The broadcast's POST runs under one deadline of its own (AgentHTTP.post), so aiohttp is given
# no timer per phase: each would be one more timer to set and cancel on every call.
_ONE_DEADLINE: dict[str, object] = {
    "timeout": {"connect": None, "read": None, "write": None, "pool": None}}


@functools.lru_cache(maxsize=_URL_CACHE)
def _httpx_url(url: str) -> httpx.URL:
    return httpx.URL(url)


@functools.lru_cache(maxsize=_URL_CACHE)
def _aiohttp_url(url: str) -> yarl.URL:
    # httpx has already encoded it: yarl need not encode it again.
    return yarl.URL(url, encoded=True)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes about 20 ms: once per process, not once per client.
    return httpx.create_ssl_context(trust_env=False)


@functools.lru_cache(maxsize=64)
def _client_timeout(connect: float | None, read: float | None,
                    pool: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(sock_connect=connect, sock_read=read, connect=pool)


class AgentTransport(AiohttpTransport):
    """httpx-aiohttp's transport, handing each request to aiohttp as it is.

    The response streams from aiohttp as in httpx-aiohttp; only the way in is leaner.
    """

    def get_client(self) -> aiohttp.ClientSession:
        # No cookie jar: nothing an agent sets is ever sent back, to it or to another agent,
        # and an empty jar would still be searched on every call.
        connector = aiohttp.TCPConnector(limit=self.limits.max_connections or 0,
                                         keepalive_timeout=self.limits.keepalive_expiry,
                                         ssl=self.ssl_context)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        stream = request.stream
        # A body given as bytes is one chunk: no need to go through the async iterator.
        data = b"".join(stream) if isinstance(stream, httpx.ByteStream) else request.content
        with map_aiohttp_exceptions():
            response = await self.client.request(
                method=request.method, url=_aiohttp_url(str(request.url)),
                headers=[(key.decode("latin-1"), value.decode("latin-1"))
                         for key, value in request.headers.raw],
                data=data or None, allow_redirects=False, auto_decompress=False,
                compress=False,
                timeout=_client_timeout(timeout.get("connect"), timeout.get("read"),
                                        timeout.get("pool"))).__aenter__()
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(status_code=response.status, headers=response.raw_headers,
                              stream=AiohttpResponseStream(response), request=request,
                              extensions=extensions)


class AgentHTTP:
    """The bridge's HTTP to agents, closed with the context.

    trust_env=False: a proxy variable must never route calls to agents elsewhere.
    """

    def __init__(self, settings: Settings) -> None:
        limits = httpx.Limits(max_connections=settings.http_concurrency,
                              max_keepalive_connections=settings.http_concurrency)
        self.transport = AgentTransport(verify=_ssl_context(), trust_env=False, limits=limits)
        # A jar whose policy takes no cookie: what one agent sets is never sent back.
        no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        self.client = httpx.AsyncClient(timeout=settings.http_timeout, trust_env=False,
                                        transport=self.transport, cookies=no_cookies,
                                        headers={"User-Agent": USER_AGENT})
        self._deadline = settings.http_timeout

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.client.__aexit__(exc_type, exc, tb)

    @staticmethod
    def post_headers(body: bytes, extra: dict[str, str]) -> httpx.Headers:
        """The headers of a JSON POST of `body`: made once, used for every agent."""
        return httpx.Headers({"User-Agent": USER_AGENT, "Accept": "*/*",
                              "Content-Type": "application/json",
                              "Content-Length": str(len(body)), **extra})

    async def post(self, url: str, body: bytes, headers: httpx.Headers) -> tuple[int, bytes]:
        """POST `body` (with headers from post_headers) and read at most MAX_RESPONSE_BYTES of
        the answer: (status, body). httpx errors as httpx raises them.

        BRIDGE_HTTP_TIMEOUT covers the whole call, connection and body included, so a slow
        trickle cannot hold a slot: past it, httpx.ReadTimeout("timeout").
        """
        request = httpx.Request("POST", _httpx_url(url), headers=headers,
                                stream=httpx.ByteStream(body), extensions=_ONE_DEADLINE)
        try:
            async with asyncio.timeout(self._deadline):
                return await self._exchange(request)
        except TimeoutError:
            raise httpx.ReadTimeout("timeout", request=request) from None

    async def _exchange(self, request: httpx.Request) -> tuple[int, bytes]:
        response = await self.transport.handle_async_request(request)
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)  # what AgentTransport returns
        try:
            received = bytearray()
            async for chunk in stream:
                received += chunk
                if len(received) >= MAX_RESPONSE_BYTES:
                    break
            return response.status_code, bytes(received[:MAX_RESPONSE_BYTES])
        finally:
            await response.aclose()
