"""The Swarm stack (docker-compose.swarm.yml) on the multi-node swarm, as README's deploy steps
do it: the images onto the nodes (`swarm-nodes.sh load`: docker save | docker load, no
registry), the secrets (passwords, the callout's keys, the stack's CA and NATS's certificate),
`docker stack deploy` through a manager, and everything removed again.

The host's own client (the coordinator's `chorus-bridge`) runs in the hub's network namespace
(`swarm-nodes.sh hub`), where NATS's host-mode port answers on its node's address; the
certificate names every node's address. Blocking calls: async tests use asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors

from tests.multinode.swarm import SCRIPT, MultiNodeSwarm, Node, script, wait_until

__all__ = ["IMAGE_VARIABLES", "NODE_SOCKET", "DeployedStack", "deployed_stack"]

ROOT = Path(__file__).resolve().parents[2]
# What each node's engine answers on inside its own mount namespace (swarm-nodes.sh): the path
# the proxy's bind mount names there, as /var/run/docker.sock on a machine of its own.
NODE_SOCKET = "/run/chorus-node/docker.sock"
IMAGE_VARIABLES = {
    "BRIDGE_IMAGE": "CHORUS_TEST_BRIDGE_IMAGE",
    "NATS_IMAGE": "CHORUS_TEST_NATS_IMAGE",
    "DOCKER_API_IMAGE": "CHORUS_TEST_DOCKER_API_IMAGE",
}
USERS = ("bridge", "agent", "coord", "ops", "sys")
CLEANUP_DEADLINE = 120.0


def make_secrets(directory: Path, addresses: list[str]) -> Path:
    """README's step 1 in `directory`: passwords, the callout's keys, the CA and NATS's
    certificate (naming the nodes' addresses, where its published port answers)."""
    directory.mkdir(mode=0o700)
    for user in USERS:
        (directory / f"nats_{user}_password").write_text(secrets.token_urlsafe(18) + "\n")
    for command in (
        [sys.executable, str(ROOT / "scripts" / "callout-keys.py"), str(directory)],
        ["bash", str(ROOT / "scripts" / "nats-tls.sh"), str(directory), *addresses],
    ):
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    return directory


@dataclasses.dataclass
class DeployedStack:
    """A stack deployed on the nodes; `tasks` and `exec` reach its containers on their nodes."""

    swarm: MultiNodeSwarm
    name: str
    secrets: Path
    agents: int

    @property
    def network(self) -> str:
        return f"{self.name}_net"

    def tasks(self, service: str) -> list[dict[str, Any]]:
        """The running tasks of `service` (bridge, agent, nats, docker-api)."""
        tasks: list[dict[str, Any]] = self.swarm.engine(self.swarm.leader()).api.tasks(
            filters={"service": f"{self.name}_{service}", "desired-state": "running"}
        )
        return [t for t in tasks if t["Status"]["State"] == "running"]

    def node_of(self, task: dict[str, Any]) -> Node:
        name = self.swarm.node_ids()[task["NodeID"]]
        return next(n for n in self.swarm.nodes if n.hostname == name)

    def container(self, task: dict[str, Any]) -> Any:
        """The task's container, from its node's engine."""
        engine = self.swarm.engine(self.node_of(task))
        return engine.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])

    def exec(self, task: dict[str, Any], *command: str) -> str:
        """Run `command` in the task's container; its output (AssertionError if it failed)."""
        code, output = self.container(task).exec_run(list(command), demux=False)
        text = output.decode(errors="replace") if output else ""
        assert code == 0, f"{' '.join(command)[:80]} in {task['ID']}: exit {code}: {text[-500:]}"
        return text

    def coordinator(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`chorus-bridge ARGS` as the coordinator, from the hub's network namespace, to NATS's
        published port on its node, over TLS verified against the stack's CA."""
        (nats,) = self.tasks("nats")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "BRIDGE_"))}
        env |= {
            "NATS_URL": f"nats://{self.node_of(nats).address}:4222",
            "NATS_USER": "coordinator",
            "NATS_PASSWORD": (self.secrets / "nats_coord_password").read_text().strip(),
            "NATS_TLS_CA": str(self.secrets / "nats_tls_ca.pem"),
        }
        return subprocess.run(
            ["bash", str(SCRIPT), "hub", sys.executable, "-m", "bridge", *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def bucket(self) -> list[dict[str, Any]]:
        """The agents bucket as the coordinator reads it (empty while it cannot be read)."""
        done = self.coordinator("agents", "--json")
        if done.returncode != 0:
            return []
        agents: list[dict[str, Any]] = json.loads(done.stdout)
        return agents


def deploy_environment(
    swarm: MultiNodeSwarm, name: str, directory: Path, images: dict[str, str], agents: int
) -> dict[str, str]:
    """README's variables for this stack: the agents on the workers only, the proxy's socket
    the node's own engine."""
    gid = os.stat(swarm.managers[0].socket.removeprefix("unix://")).st_gid
    return {
        **os.environ,
        **images,
        "AGENT_IMAGE": images["BRIDGE_IMAGE"],
        "STACK": name,
        "CHORUS_NETWORK": f"{name}_net",
        "CHORUS_SECRETS_DIR": str(directory),
        "AGENT_REPLICAS": str(agents),
        "AGENT_CONSTRAINT": "node.role == worker",
        "DOCKER_SOCKET": NODE_SOCKET,
        "DOCKER_GID": str(gid),
    }


def load_images(images: dict[str, str]) -> None:
    """README's step 0: the bridge's and NATS's images on every node, the proxy's on the
    managers (docker save | docker -H <node> load; a node that has that build already is
    skipped)."""
    script("load", images["BRIDGE_IMAGE"], images["NATS_IMAGE"], timeout=600)
    script("load", "--managers", images["DOCKER_API_IMAGE"], timeout=600)


@contextlib.contextmanager
def deployed_stack(
    swarm: MultiNodeSwarm, name: str, workdir: Path, images: dict[str, str], agents: int
) -> Iterator[DeployedStack]:
    """The stack deployed through a manager; removed on exit with everything it made."""
    load_images(images)
    directory = make_secrets(workdir / "secrets", [n.address for n in swarm.nodes])
    env = deploy_environment(swarm, name, directory, images, agents)
    manager = swarm.leader()
    try:
        subprocess.run(
            [
                *("docker", "-H", manager.socket, "stack", "deploy", "--resolve-image", "never"),
                *("-c", str(ROOT / "docker-compose.swarm.yml"), name),
            ],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield DeployedStack(swarm, name, directory, agents)
    finally:
        remove_stack(swarm, name)


def remove_stack(swarm: MultiNodeSwarm, name: str) -> None:
    """docker stack rm, then wait until no node has a container of it; its networks and
    volumes go after them."""
    manager = swarm.leader()
    subprocess.run(
        ["docker", "-H", manager.socket, "stack", "rm", name],
        capture_output=True,
        timeout=60,
        check=False,
    )
    namespace = {"label": f"com.docker.stack.namespace={name}"}

    def nothing_left() -> bool:
        engines = [swarm.engine(n) for n in swarm.nodes]
        return not any(e.containers.list(all=True, filters=namespace) for e in engines)

    wait_until(nothing_left, CLEANUP_DEADLINE, f"the containers of stack {name} to go", 1.0)
    for node in swarm.nodes:
        engine = swarm.engine(node)
        for volume in engine.volumes.list(filters=namespace):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)
    leader = swarm.engine(swarm.leader())

    def networks_gone() -> bool:
        for network in leader.networks.list(filters=namespace):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
        return not leader.networks.list(filters=namespace)

    wait_until(networks_gone, CLEANUP_DEADLINE, f"the networks of stack {name} to go", 1.0)
