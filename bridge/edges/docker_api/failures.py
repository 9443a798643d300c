"""The SDK's, requests' and the operating system's errors, and the engine's error answers, as
DockerAPIError (its `kind` says which): mapped here, once."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import docker.errors
import requests

from bridge.config import Settings
from bridge.edges.docker_api.answers import ErrorAnswer, answer_error
from bridge.errors import DockerAPIError

__all__ = ["CONNECT_TIMEOUT", "DEFAULT_DOCKER_HOST", "docker_error", "is_timeout", "status_error"]

DEFAULT_DOCKER_HOST = Settings().docker_host

# Seconds to connect, at most (and never more than the call's timeout): a live engine or proxy
# accepts within milliseconds, and a manager that is gone (a crashed node drops the SYN) must
# not hold discovery for a whole call's timeout before the next manager is tried.
CONNECT_TIMEOUT = 3.0


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


def is_timeout(exc: BaseException) -> bool:
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
    if is_timeout(exc):
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
    """The error for a non-2xx answer, named from its message (answers.py).

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
