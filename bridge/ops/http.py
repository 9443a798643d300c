"""The bridge's own HTTP: GET /healthz and GET /metrics (BRIDGE_LISTEN)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.errors import ConfigError
from bridge.ops.metrics import Metrics

__all__ = ["listening_socket", "serve_http"]

log = structlog.get_logger(__name__)

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


def _app(metrics: Metrics, health: HealthCheck) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        ok, details = health()
        return web.json_response(
            {"status": "ok" if ok else "unavailable", **details}, status=200 if ok else 503
        )

    async def metrics_view(_request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    return app


@contextlib.contextmanager
def listening_socket(host: str, port: int) -> Iterator[socket.socket]:
    """A TCP socket bound to BRIDGE_LISTEN (port 0: one the OS chooses), closed on exit.

    Bound before the bridge is built, so the bridge knows its port from the start. Raises
    ConfigError naming BRIDGE_LISTEN when the address cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _name, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(
            "BRIDGE_LISTEN", f"{host}:{port}", f"cannot listen there ({exc.strerror or exc})"
        ) from exc
    with sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError as exc:
            raise ConfigError(
                "BRIDGE_LISTEN", f"{host}:{port}", f"cannot listen there ({exc.strerror or exc})"
            ) from exc
        sock.setblocking(False)
        yield sock


@contextlib.asynccontextmanager
async def serve_http(
    sock: socket.socket, metrics: Metrics, health: HealthCheck
) -> AsyncIterator[None]:
    """Serve /healthz and /metrics on `sock` (see listening_socket) while the context is open."""
    runner = web.AppRunner(_app(metrics, health), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        log.info("http_listening", host=host, port=port, paths="/healthz,/metrics")
        yield
    finally:
        await runner.cleanup()
