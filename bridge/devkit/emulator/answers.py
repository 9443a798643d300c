"""The engine's answers as aiohttp responses: a JSON document, an error, and the error each
failure mode answers with (Docker 20.10's texts, recorded; HAProxy's page for a refused call)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from bridge.devkit.emulator.documents import (
    MANAGER_PREPARING,
    NO_LEADER,
    NOT_IN_SWARM,
    PROXY_FORBIDDEN,
    SWARM_LOCKED,
)
from bridge.devkit.emulator.faults import ErrorMode

__all__ = ["error", "error_answer", "json_answer"]

_SERVER_ERROR = "rpc error: code = Unknown desc = emulated engine failure"
# status and message of the modes that are one engine error each
_ENGINE_ERRORS: dict[str, tuple[int, str]] = {
    "not_manager": (503, NOT_IN_SWARM),
    "swarm_locked": (503, SWARM_LOCKED),
    "manager_preparing": (503, MANAGER_PREPARING),
    "no_leader": (500, NO_LEADER),
    "server_error": (500, _SERVER_ERROR),
}


def json_answer(document: Any, status: int = 200) -> web.Response:
    # Go's json.Encoder ends every document with a newline.
    return web.Response(
        status=status, body=msgspec.json.encode(document) + b"\n", content_type="application/json"
    )


def error(status: int, message: str) -> web.Response:
    """The engine's error answer: `{"message": ...}`."""
    return json_answer({"message": message}, status)


def error_answer(mode: ErrorMode, service: str) -> web.Response | None:
    """The answer of a request failing with `mode` (`service`: the one its filter names);
    None for the modes answered otherwise (hang, bad_json, close)."""
    if mode == "service_not_found":
        return error(404, f"service {service} not found")
    if mode == "forbidden":
        # HAProxy's page: HTML, none of the engine's headers.
        return web.Response(
            status=403,
            text=PROXY_FORBIDDEN,
            content_type="text/html",
            headers={"Server": "haproxy", "Cache-Control": "no-cache"},
        )
    if mode in _ENGINE_ERRORS:
        return error(*_ENGINE_ERRORS[mode])
    return None
