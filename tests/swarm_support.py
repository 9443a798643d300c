"""The real Docker Engine (swarm mode) for the swarm and stack tests.

The engine is used only when CHORUS_TEST_DOCKER_HOST names it (scripts/test.sh sets it after
scripts/swarm-up.sh). Without it the tests are skipped, except under CI=true, where they fail:
CI must prove them. Services made here carry the label chorus.test=1, so that
scripts/swarm-down.sh (or swarm-up.sh --clean) removes whatever a killed run left behind.

Overlay addresses are only read from the Docker API: nothing here ever connects to them.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, NoReturn

import docker
import docker.errors
from docker.models.services import Service
from docker.types import ServiceMode

__all__ = [
    "AGENT_COMMAND",
    "AGENT_IMAGE",
    "ENGINE_VARIABLE",
    "NETWORK",
    "TEST_LABELS",
    "AgentService",
    "EngineUnavailable",
    "connect_engine",
    "engine_host",
    "in_ci",
    "open_engine",
    "unavailable",
]

ENGINE_VARIABLE = "CHORUS_TEST_DOCKER_HOST"
AGENT_IMAGE = "chorus-agent:test"
AGENT_COMMAND = ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
NETWORK = "chorus_default"
TEST_LABELS = {"chorus.test": "1"}
STOP_GRACE_NS = 1_000_000_000


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI=true (where the engine must be there)."""
    import pytest  # here, not at the top: bench/swarm_latency.py uses this module without it

    if in_ci():
        pytest.fail(
            f"{reason}. CI=true: these tests must run in CI, where .ci/run brings the "
            "engine up with scripts/swarm-up.sh; see its output above",
            pytrace=False,
        )
    pytest.skip(reason)


def engine_host() -> str:
    """The engine's address from CHORUS_TEST_DOCKER_HOST, or skip (fail under CI)."""
    host = os.environ.get(ENGINE_VARIABLE, "").strip()
    if not host:
        unavailable(
            f"no Docker swarm for the tests: {ENGINE_VARIABLE} is not set (run "
            "`bash scripts/test.sh`, which sets it after scripts/swarm-up.sh)"
        )
    return host


class EngineUnavailable(Exception):
    """The engine does not answer, is not a swarm manager, or lacks the test image/network."""


def open_engine(host: str) -> docker.DockerClient:
    """A client of a swarm manager that has the agent image and the test network, or
    EngineUnavailable saying what is missing."""
    try:
        client = docker.DockerClient(base_url=host, version="auto", timeout=60)
    except docker.errors.DockerException as exc:
        raise EngineUnavailable(f"the Docker Engine at {host} does not answer ({exc})") from exc
    try:
        swarm = client.info().get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise EngineUnavailable(
                f"the Docker Engine at {host} is not a swarm manager (run scripts/swarm-up.sh)"
            )
        missing = _missing(client)
        if missing:
            raise EngineUnavailable(
                f"the swarm at {host} has no {missing} (run scripts/swarm-up.sh)"
            )
    except BaseException:
        client.close()
        raise
    return client


def connect_engine(host: str) -> docker.DockerClient:
    """open_engine, or skip the test (fail it under CI=true)."""
    try:
        return open_engine(host)
    except EngineUnavailable as exc:
        unavailable(str(exc))


def _missing(client: docker.DockerClient) -> str | None:
    try:
        client.images.get(AGENT_IMAGE)
    except docker.errors.ImageNotFound:
        return f"image {AGENT_IMAGE}"
    try:
        client.networks.get(NETWORK)
    except docker.errors.NotFound:
        return f"network {NETWORK}"
    return None


def _address(task: dict[str, Any], network: str) -> str | None:
    for attachment in task.get("NetworksAttachments") or ():
        if attachment["Network"]["Spec"]["Name"] == network and attachment.get("Addresses"):
            return str(attachment["Addresses"][0]).split("/", 1)[0]
    return None


class AgentService:
    """A service of busybox httpd agents on the test network; blocking calls (use a thread)."""

    def __init__(self, client: docker.DockerClient, name: str) -> None:
        self.client = client
        self.name = name
        self._service: Service | None = None

    def create(self, replicas: int) -> None:
        self._service = self.client.services.create(
            AGENT_IMAGE,
            command=AGENT_COMMAND,
            name=self.name,
            labels=TEST_LABELS,
            networks=[NETWORK],
            mode=ServiceMode("replicated", replicas=replicas),
            # httpd as pid 1 ignores SIGTERM: without this, each removed task lingers 10 s.
            stop_grace_period=STOP_GRACE_NS,
        )

    def scale(self, replicas: int) -> None:
        """Change the replica count only, as `docker service scale` does.

        The SDK's Service.scale() sends the spec with the engine's defaults filled in, which
        changes the task template and makes Swarm replace every task (a rolling update).
        """
        current = self.client.api.inspect_service(self.name)
        spec = current["Spec"]
        self.client.api.update_service(
            current["ID"],
            current["Version"]["Index"],
            name=spec["Name"],
            labels=spec.get("Labels"),
            mode=ServiceMode("replicated", replicas=replicas),
            task_template=spec["TaskTemplate"],
            update_config=spec.get("UpdateConfig"),
            rollback_config=spec.get("RollbackConfig"),
            endpoint_spec=spec.get("EndpointSpec"),
        )

    def force_update(self, order: str = "stop-first") -> None:
        """A rolling restart of every task, one at a time, as `docker service update --force
        --update-order ORDER` does (stop-first: the old task stops before its replacement
        starts; start-first: the other way round)."""
        current = self.client.api.inspect_service(self.name)
        spec = current["Spec"]
        template = dict(spec["TaskTemplate"])
        template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
        update = {**(spec.get("UpdateConfig") or {}), "Parallelism": 1, "Order": order}
        self.client.api.update_service(
            current["ID"],
            current["Version"]["Index"],
            name=spec["Name"],
            labels=spec.get("Labels"),
            mode=spec["Mode"],
            task_template=template,
            update_config=update,
            rollback_config=spec.get("RollbackConfig"),
            endpoint_spec=spec.get("EndpointSpec"),
        )

    def update_done(self) -> bool:
        """Whether the last update of the service has completed."""
        status = self.client.api.inspect_service(self.name).get("UpdateStatus") or {}
        return status.get("State") == "completed"

    def tasks(self) -> list[dict[str, Any]]:
        """Tasks whose desired state is running (what `docker service ps` shows as current)."""
        tasks: list[dict[str, Any]] = self.client.api.tasks(
            filters={"service": self.name, "desired-state": "running"}
        )
        return tasks

    def running(self) -> dict[str, str]:
        """task id -> address on the test network (CIDR stripped) of the running tasks."""
        return {
            t["ID"]: address
            for t in self.tasks()
            if t["Status"]["State"] == "running" and (address := _address(t, NETWORK)) is not None
        }

    def wait_running(self, replicas: int, timeout: float = 90.0) -> dict[str, str]:
        """Block until exactly `replicas` tasks run (scaling takes seconds in Docker)."""
        deadline = time.monotonic() + timeout
        while True:
            running = self.running()
            if len(running) == replicas and len(self.tasks()) == replicas:
                return running
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"service {self.name}: {len(running)} tasks running, not "
                    f"{replicas}, after {timeout:g}s"
                )
            time.sleep(0.2)

    def remove(self) -> None:
        if self._service is None:
            return
        with contextlib.suppress(docker.errors.NotFound):
            self._service.remove()
        self._service = None
