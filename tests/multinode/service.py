"""A service of busybox httpd agents on the multi-node swarm's overlay (blocking calls)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors

from tests.multinode.swarm import NETWORK, MultiNodeSwarm, Node, wait_until
from tests.swarm_support import AGENT_COMMAND, AGENT_IMAGE, TEST_LABELS

__all__ = ["NodeService", "node_service", "task_address"]

# httpd as pid 1 ignores SIGTERM: without this, each removed task lingers 10 s.
STOP_GRACE_NS = 1_000_000_000


def task_address(task: dict[str, Any], network: str = NETWORK) -> str | None:
    for attachment in task.get("NetworksAttachments") or ():
        if attachment["Network"]["Spec"]["Name"] == network and attachment.get("Addresses"):
            return str(attachment["Addresses"][0]).split("/", 1)[0]
    return None


class NodeService:
    """A dnsrr service of busybox httpd agents on the nodes' overlay, kept off `avoid` (the
    node whose engine the bridge reads: in production it runs no agent). Blocking calls."""

    def __init__(self, swarm: MultiNodeSwarm, name: str, avoid: tuple[Node, ...] = ()) -> None:
        self.swarm = swarm
        self.name = name
        self.avoid = avoid

    def _api(self) -> Any:
        return self.swarm.engine(self.swarm.leader()).api

    def create(self, replicas: int) -> None:
        self._api().create_service(
            docker.types.TaskTemplate(
                container_spec=docker.types.ContainerSpec(
                    AGENT_IMAGE, command=AGENT_COMMAND, stop_grace_period=STOP_GRACE_NS
                ),
                placement=docker.types.Placement(
                    constraints=[f"node.hostname!={n.hostname}" for n in self.avoid]
                ),
                networks=[docker.types.NetworkAttachmentConfig(NETWORK)],
                # The default restart delay (5 s), as production has it.
                restart_policy=docker.types.RestartPolicy(condition="any"),
            ),
            name=self.name,
            labels=TEST_LABELS,
            mode=docker.types.ServiceMode("replicated", replicas=replicas),
            endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
        )

    def scale(self, replicas: int) -> None:
        """Change the replica count only (the task template stays: no rolling update)."""
        api = self._api()
        current = api.inspect_service(self.name)
        spec = current["Spec"]
        api.update_service(
            current["ID"],
            current["Version"]["Index"],
            name=spec["Name"],
            labels=spec.get("Labels"),
            mode=docker.types.ServiceMode("replicated", replicas=replicas),
            task_template=spec["TaskTemplate"],
            endpoint_spec=spec.get("EndpointSpec"),
        )

    def roll(self, parallelism: int = 3) -> None:
        """A rolling update: every task replaced (`docker service update --force`),
        `parallelism` at a time, each new one started before its old one stops."""
        api = self._api()
        current = api.inspect_service(self.name)
        spec = current["Spec"]
        template = dict(spec["TaskTemplate"])
        template["ForceUpdate"] = int(template.get("ForceUpdate", 0)) + 1
        api.update_service(
            current["ID"],
            current["Version"]["Index"],
            name=spec["Name"],
            labels=spec.get("Labels"),
            mode=spec["Mode"],
            task_template=template,
            endpoint_spec=spec.get("EndpointSpec"),
            update_config=docker.types.UpdateConfig(
                parallelism=parallelism, order="start-first", monitor=1_000_000_000
            ),
        )

    def tasks(self) -> list[dict[str, Any]]:
        """The manager's list: tasks desired running or ready (replacements waiting)."""
        tasks: list[dict[str, Any]] = self._api().tasks(
            filters={"service": self.name, "desired-state": ["running", "ready"]}
        )
        return tasks

    def running(self) -> dict[str, str]:
        """task id -> overlay address of the tasks desired running and running."""
        return {
            t["ID"]: address
            for t in self.tasks()
            if t["DesiredState"] == "running"
            and t["Status"]["State"] == "running"
            and (address := task_address(t)) is not None
        }

    def nodes_of(self) -> dict[str, str]:
        """task id -> hostname of its node, for the running tasks."""
        names = self.swarm.node_ids()
        return {
            t["ID"]: names.get(t["NodeID"], t["NodeID"])
            for t in self.tasks()
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
        }

    def wait_running(self, replicas: int, timeout: float = 120.0) -> dict[str, str]:
        """Block until exactly `replicas` tasks run, none waiting."""
        result: dict[str, str] = {}

        def settled() -> bool:
            nonlocal result
            result = self.running()
            return len(result) == replicas and len(self.tasks()) == replicas

        wait_until(settled, timeout, f"{replicas} tasks of {self.name} running", interval=0.25)
        return result

    def remove(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self._api().remove_service(self.name)


@contextlib.contextmanager
def node_service(
    swarm: MultiNodeSwarm, name: str, replicas: int, avoid: tuple[Node, ...] = ()
) -> Iterator[NodeService]:
    """A running NodeService, removed on exit."""
    service = NodeService(swarm, name, avoid)
    try:
        service.create(replicas)
        service.wait_running(replicas)
        yield service
    finally:
        service.remove()
