"""The bridge's own HTTP: GET /healthz and GET /metrics (BRIDGE_LISTEN)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.errors import ConfigError
from bridge.metrics import Metrics

__all__ = ["serve_http"]

log = structlog.get_logger(__name__)

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


def _app(metrics: Metrics, health: HealthCheck) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        ok, details = health()
        return web.json_response({"status": "ok" if ok else "unavailable", **details},
                                 status=200 if ok else 503)

    async def metrics_view(_request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    return app


@contextlib.asynccontextmanager
async def serve_http(host: str, port: int, metrics: Metrics,
                     health: HealthCheck) -> AsyncIterator[int]:
    """Serve /healthz and /metrics while the context is open; yields the bound port."""
    runner = web.AppRunner(_app(metrics, health), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError("BRIDGE_LISTEN", f"{host}:{port}",
                              f"cannot listen there ({exc.strerror or exc})") from exc
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info("http_listening", host=host, port=bound, paths="/healthz,/metrics")
        yield bound
    finally:
        await runner.cleanup()
