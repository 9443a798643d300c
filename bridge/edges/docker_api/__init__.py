"""The Docker Engine API edge: the only importer of `docker` and `requests` (this package).

`client` (DockerAPI: one address, every call bounded), `events` (the /events stream),
`failures` (the SDK's, requests' and the OS's errors as DockerAPIError), `answers` (an error
answer named from the engine's message).


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
from its message (answers.py).
"""

from bridge.edges.docker_api.client import DockerAPI
from bridge.edges.docker_api.events import EVENTS_QUIET, EventStream
from bridge.edges.docker_api.failures import (
    CONNECT_TIMEOUT,
    DEFAULT_DOCKER_HOST,
    docker_error,
    status_error,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_DOCKER_HOST",
    "EVENTS_QUIET",
    "DockerAPI",
    "EventStream",
    "docker_error",
    "status_error",
]
