"""httpx's transport over aiohttp's client (public API only), and aiohttp's errors as httpx's:
the half of the HTTP edge that talks to the network (bridge/edges/agent_http/__init__.py says
why aiohttp is under httpx)."""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

import aiohttp
import httpx
import yarl

__all__ = ["URL_CACHE", "AgentTransport", "ResponseStream"]

# Agents' URLs seen lately, built once: a fleet gets every broadcast at the same URLs. About
# 1.1 KB per URL (11 MB at 10,000 agents); a larger fleet only loses the saving (about 30 us
# per URL, of a POST's 0.5 ms of CPU).
URL_CACHE = 16_384
_READ_CHUNK = 16 * 1024


@functools.lru_cache(maxsize=URL_CACHE)
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


class ResponseStream(httpx.AsyncByteStream):
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
            stream=ResponseStream(response),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        await self._session.close()
