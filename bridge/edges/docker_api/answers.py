"""Docker's error answers, named as what they are, from the engine's own message.

The engine answers a manager-only call it cannot serve with its own text (moby's
daemon/cluster/errors.go and Cluster.errNoManager; swarmkit's raft when the managers have no
leader): a worker, an engine outside any swarm, a locked swarm, a manager being prepared, a swarm
without a leader. An answer whose body is not the engine's JSON is a proxy's: HAProxy answers
403 (an HTML page) when it refuses a call, and 502/503/504 when no engine answers behind it.
Pure: the client (client.py) hands the answer over.
"""

from __future__ import annotations

import dataclasses
import re

from bridge.config import Settings
from bridge.errors import DockerAPIError

__all__ = ["ENGINE_STATES", "ErrorAnswer", "answer_error"]

# The calls the bridge makes, for the advice a proxy's 403 gets.
_ALLOWED_CALLS = "GET and HEAD of /_ping, /version, /info, /tasks and /events"
_TAGS = re.compile(r"<[^>]*>")


@dataclasses.dataclass(frozen=True)
class ErrorAnswer:
    """A non-2xx answer: its status, its body decoded as JSON (None if it is not), its text."""

    status: int
    document: object
    text: str
    reason: str = ""

    def message(self) -> tuple[str, bool]:
        """(the message, on one line; whether it is the engine's own JSON `message`)."""
        document = self.document
        if isinstance(document, dict) and isinstance(document.get("message"), str):
            return " ".join(document["message"].split()), True
        text = " ".join(_TAGS.sub(" ", self.text).split())
        return (text[:200] or self.reason or "no message"), False


# The engine's texts, each with the kind it is and what it means; matched in order.
ENGINE_STATES: tuple[tuple[str, str, str], ...] = (
    (
        "Swarm is encrypted and needs to be unlocked",
        "swarm_locked",
        "the swarm is locked on {host} (autolock, after a restart of that manager): run "
        "`docker swarm unlock` there with the unlock key",
    ),
    (
        "Worker nodes can't be used",
        "not_manager",
        "{host} is not a manager: it is a worker node, and the task list is manager-only; "
        "point WHOOSH_DOCKER_HOST at the managers (the stack's docker-api proxy runs on them)",
    ),
    (
        "Manager is being prepared or has trouble connecting",
        "manager_not_ready",
        "the manager at {host} is not ready: it is joining the swarm, or cannot reach the "
        "other managers",
    ),
    (
        "does not have a leader",
        "no_leader",
        "the swarm has no leader (asked at {host}): too few managers are online, so the "
        "managers lost quorum, or an election is under way",
    ),
    (
        "Swarm certificates have expired",
        "not_manager",
        "{host} is not a manager while its swarm certificates have expired: leave the swarm "
        "and join again",
    ),
    (
        "This node is not a swarm manager",
        "not_manager",
        "{host} is not a manager: its engine is not part of a swarm (docker swarm init or "
        "join); point WHOOSH_DOCKER_HOST at a manager",
    ),
)


def answer_error(answer: ErrorAnswer, settings: Settings, host: str, call: str) -> DockerAPIError:
    """The DockerAPIError for an error answer of `call` (e.g. "GET /tasks") at `host`."""
    status = answer.status
    message, from_engine = answer.message()
    said = f"HTTP {status}: {message}"
    asked = call or "the call"
    if from_engine:
        for text, kind, meaning in ENGINE_STATES:
            if text in message:
                return DockerAPIError(kind, f"{meaning.format(host=host)} ({said})")
    if status == 403:
        return DockerAPIError(
            "forbidden",
            f"the Docker API at {host} refused {asked} ({said}): a proxy in front of the "
            f"engine must let {_ALLOWED_CALLS} through",
        )
    if status == 404 and from_engine:
        return DockerAPIError(
            "service_not_found",
            f"service {settings.service_name!r} not found (HTTP 404: {message}); check "
            "WHOOSH_SERVICE_NAME",
        )
    if status in (502, 503, 504) and not from_engine:
        return DockerAPIError(
            "timeout" if status == 504 else "unreachable",
            f"the proxy at {host} has no Docker Engine answering behind it ({said})",
        )
    if status == 503:
        return DockerAPIError("not_manager", f"{host} cannot answer {asked} ({said})")
    if status >= 500:
        return DockerAPIError("server_error", f"the Docker API at {host} failed {asked} ({said})")
    return DockerAPIError("api_error", f"the Docker API at {host} refused {asked} ({said})")
