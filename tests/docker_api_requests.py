"""The requests tests/test_docker_api_proxy.py sends through the docker-api proxy, as a table.

Each row is written as raw bytes (tests/docker_api_proxy.py: `request`, `Req`), so nothing
cleans it up on the way: percent-encoded, dotted and doubled-slash paths, absolute-form
targets, bodies and upgrades on a GET, pipelined and kept-alive pairs. `expect` says, per
request, PASS (the proxy lets it through: the daemon's own answer) or the proxy's status.
"""

from __future__ import annotations

import dataclasses

from tests.docker_api_proxy import Req, request

__all__ = ["PASS", "TABLE", "Row"]

PASS = 0  # the daemon's own answer, whatever it is


@dataclasses.dataclass(frozen=True)
class Row:
    """`batches` go on one connection, each written at once; `expect` has one entry per
    request: PASS (it reaches the daemon) or the proxy's own status."""

    name: str
    batches: list[list[Req]]
    expect: list[int]

    @property
    def requests(self) -> list[Req]:
        return [req for batch in self.batches for req in batch]


def one(name: str, req: Req, status: int) -> Row:
    return Row(name, [[req]], [status])


def raw(name: str, data: bytes, status: int) -> Row:
    return Row(name, [[Req(data)]], [status])


ALLOWED = [
    one(f"{method} {prefix}{path}", request(method, f"{prefix}{path}"), PASS)
    for method in ("GET", "HEAD")
    for prefix in ("", "/v1.41", "/v1.24")
    for path in ("/_ping", "/version", "/info", "/tasks", "/events?until=1")
] + [
    one("query string", request("GET", '/tasks?filters={"service":["x"]}'), PASS),
    one(
        "encoded query", request("GET", "/tasks?filters=%7B%22service%22%3A%5B%22x%22%5D%7D"), PASS
    ),
    one("empty query", request("GET", "/info?"), PASS),
    one("dots in the query", request("GET", "/tasks?x=/../containers/json"), PASS),
    one("HTTP/1.0", request("GET", "/_ping", version="HTTP/1.0"), PASS),
]

REFUSED_METHODS = [
    one(f"{method} /tasks", request(method, "/tasks"), 403)
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "get", "PROPFIND")
] + [
    one(
        "POST /containers/create",
        request(
            "POST",
            "/containers/create",
            headers=("Content-Type: application/json", "Content-Length: 2"),
            body=b"{}",
        ),
        403,
    ),
    one("POST /v1.41/swarm/leave", request("POST", "/v1.41/swarm/leave?force=1"), 403),
    one("DELETE /services/x", request("DELETE", "/services/x"), 403),
    # HAProxy refuses these as malformed before any rule: not a request it would forward.
    one("CONNECT", request("CONNECT", "docker:2375"), 400),
]

REFUSED_PATHS = [
    one(f"GET {target}", request("GET", target), 403)
    for target in (
        "/",
        "/containers/json",
        "/v1.41/containers/json",
        "/services",
        "/nodes",
        "/secrets",
        "/configs",
        "/swarm",
        "/swarm/unlockkey",
        "/tasks/abc",
        "/tasks/abc/logs?stdout=1",
        "/images/json",
        "/exec/abc/json",
        "/containers/abc/archive?path=/etc/shadow",
        "/v2.0/tasks",
        "/v1/tasks",
        "/v1.41",
        "/tasks/",
        "/_ping/",
        "/Tasks",
        "/TASKS",
        "/tasks;x",
        "/tasks.json",
        "/tasksx",
        "/info/../containers/json",
        # percent-encoded
        "/%74asks",
        "/tasks%3Fx",
        "/%2e/tasks",
        "/%2E%2E/containers/json",
        "/v1.41%2Ftasks",
        "/tasks%2F..%2Fcontainers%2Fjson",
        "/tasks%00",
        # dotted
        "/./tasks",
        "/v1.41/./tasks",
        "/tasks/.",
        "/tasks/../containers/json",
        "/v1.41/../containers/json",
        "/../tasks",
        # doubled slashes
        "//tasks",
        "/v1.41//tasks",
        "//containers/json",
        "//v1.41/tasks",
        # absolute-form and other forms of the target
        "http://docker/tasks",
        "http://docker/containers/json",
        "*",
    )
] + [
    one("GET tasks (no slash)", request("GET", "tasks"), 400),
    one("backslash", request("GET", "/tasks\\..\\containers\\json"), 403),
]

REFUSED_SMUGGLING = [
    one(
        "GET with a body",
        request("GET", "/tasks", headers=("Content-Length: 4",), body=b"abcd"),
        403,
    ),
    one(
        "GET with a chunked body",
        request("GET", "/tasks", headers=("Transfer-Encoding: chunked",), body=b"0\r\n\r\n"),
        403,
    ),
    raw(
        "body hiding a second request",
        (
            b"GET /_ping HTTP/1.1\r\nHost: docker\r\nContent-Length: 38\r\n\r\n"
            b"DELETE /containers/x HTTP/1.1\r\nHost: d\r\n\r\n"
        ),
        403,
    ),
    # HAProxy drops the Content-Length (RFC 9112 6.3): then it is a chunked body.
    raw(
        "Content-Length and chunked",
        (
            b"GET /_ping HTTP/1.1\r\nHost: docker\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        403,
    ),
    one(
        "upgrade",
        request("GET", "/events", headers=("Connection: Upgrade", "Upgrade: tcp"), close=False),
        403,
    ),
    raw(
        "absolute-form, other host",
        (b"GET http://elsewhere/tasks HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"),
        400,
    ),
    raw("space in the target", b"GET /tasks /containers/json HTTP/1.1\r\nHost: d\r\n\r\n", 400),
    raw(
        "not HTTP",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32 + b"\r\n\r\n",
        400,
    ),
]

KEEP = dataclasses.replace  # shorthand below: the same request, kept alive


def kept(req: Req) -> Req:
    """The request without `Connection: close`, so another can follow on its connection."""
    return KEEP(req, raw=req.raw.replace(b"Connection: close\r\n", b""))


PIPELINED = [
    Row(
        "pipelined: allowed, then POST",
        [
            [
                kept(request("GET", "/_ping")),
                request("POST", "/containers/create", headers=("Content-Length: 2",), body=b"{}"),
            ]
        ],
        [PASS, 403],
    ),
    Row(
        "pipelined: allowed, then a refused path",
        [[kept(request("GET", "/info")), request("GET", "/containers/json")]],
        [PASS, 403],
    ),
    Row(
        "pipelined: allowed, then dotted",
        [[kept(request("GET", "/version")), request("GET", "/tasks/../containers/json")]],
        [PASS, 403],
    ),
    Row(
        "pipelined: two allowed",
        [[kept(request("GET", "/_ping")), request("GET", "/v1.41/version")]],
        [PASS, PASS],
    ),
    Row(
        "kept alive: allowed, then DELETE",
        [[kept(request("GET", "/_ping"))], [request("DELETE", "/containers/x")]],
        [PASS, 403],
    ),
    Row(
        "kept alive: allowed, then encoded",
        [[kept(request("GET", "/_ping"))], [request("GET", "/%63ontainers/json")]],
        [PASS, 403],
    ),
    Row(
        "kept alive: refused, then allowed",
        [[kept(request("GET", "/secrets"))], [request("GET", "/_ping")]],
        [403, PASS],
    ),
]

TABLE = ALLOWED + REFUSED_METHODS + REFUSED_PATHS + REFUSED_SMUGGLING + PIPELINED
