"""The multi-node swarm of scripts/swarm-nodes.sh, for the tests and the benchmarks.

Five real Docker Engines on this machine (3 managers, 2 workers), each in its own namespaces,
reached through their unix sockets. scripts/test.sh brings them up (as root) and sets
CHORUS_TEST_MULTINODE=1; without it the tests that need them are skipped, except under CI=true,
where they fail. Faults are the script's own commands (crash, start, stop, partition, heal,
drain, active), so a test does what an operator's machine does, and `restore` undoes them all.

Nothing here connects to a node's overlay or 10.250.x address: they are only read from the
Docker API. Every call is blocking (the docker SDK, subprocesses): async code runs them with
asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from tests.swarm_support import in_ci

__all__ = [
    "MULTINODE_VARIABLE",
    "NETWORK",
    "SCRIPT",
    "MultiNodeSwarm",
    "MultiNodeUnavailable",
    "Node",
    "wait_until",
]

MULTINODE_VARIABLE = "CHORUS_TEST_MULTINODE"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "swarm-nodes.sh"
# The overlay network swarm-nodes.sh makes (NETWORK there).
NETWORK = "chorus_mn"
# A fault's command (a node's dockerd starting, a drain) is bounded by the script's own
# deadlines; this bounds the script as a whole.
SCRIPT_DEADLINE = 180.0
ENGINE_TIMEOUT = 10


class MultiNodeUnavailable(Exception):
    """The multi-node swarm is not there (not brought up, or not root)."""


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Block until `predicate()` holds; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclasses.dataclass(frozen=True)
class Node:
    """One node: its number in the script, swarm role, address on the nodes' link (only
    reported, never connected to), and the engine's socket (`unix://...`)."""

    number: int
    manager: bool
    address: str
    socket: str

    @property
    def hostname(self) -> str:
        """The node's name in `docker node ls` (swarm-nodes.sh sets the hostname)."""
        return f"chorus-node-{self.number}"


def script(*args: str, timeout: float = SCRIPT_DEADLINE) -> str:
    """Run scripts/swarm-nodes.sh; its stdout, or AssertionError with its output."""
    done = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(
            f"swarm-nodes.sh {' '.join(args)} failed ({done.returncode}): "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout


class MultiNodeSwarm:
    """The nodes, a client of each engine, and the faults."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self._clients: dict[int, docker.DockerClient] = {}

    @classmethod
    def from_environment(cls) -> MultiNodeSwarm:
        """The swarm scripts/test.sh brought up, or MultiNodeUnavailable saying why not."""
        if os.environ.get(MULTINODE_VARIABLE, "").strip() != "1":
            raise MultiNodeUnavailable(
                f"no multi-node swarm: {MULTINODE_VARIABLE} is not 1 (run `bash "
                "scripts/test.sh` as root, which sets it after scripts/swarm-nodes.sh up)"
            )
        return cls.discover()

    @classmethod
    def discover(cls) -> MultiNodeSwarm:
        """The swarm of scripts/swarm-nodes.sh, whoever brought it up (MultiNodeUnavailable
        when it does not answer, or this process is not root: the faults need it)."""
        if os.geteuid() != 0:
            raise MultiNodeUnavailable("the multi-node faults need root")
        nodes = [
            Node(int(n), role == "manager", address, sock)
            for n, role, address, sock in (
                line.split() for line in script("describe").splitlines() if line.strip()
            )
        ]
        swarm = cls(nodes)
        swarm.check()
        return swarm

    @property
    def managers(self) -> list[Node]:
        return [n for n in self.nodes if n.manager]

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if not n.manager]

    def node(self, number: int) -> Node:
        return self.nodes[number - 1]

    def engine(self, node: Node) -> docker.DockerClient:
        """A client of the node's own engine (kept for the session)."""
        client = self._clients.get(node.number)
        if client is None:
            client = docker.DockerClient(
                base_url=node.socket, version="1.41", timeout=ENGINE_TIMEOUT
            )
            self._clients[node.number] = client
        return client

    def docker(self, node: Node, *args: str, timeout: float = 60.0) -> str:
        """Run the docker command line against the node's engine; its stdout."""
        done = subprocess.run(
            ["docker", "-H", node.socket, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"docker -H {node.socket} {' '.join(args)}: {done.stderr}")
        return done.stdout

    def leader(self) -> Node:
        """The first manager whose engine answers as a manager (ControlAvailable)."""
        for node in self.managers:
            with contextlib.suppress(docker.errors.DockerException, OSError):
                swarm = self.engine(node).info().get("Swarm") or {}
                if swarm.get("ControlAvailable"):
                    return node
        raise AssertionError("no manager of the multi-node swarm answers")

    def raft_leader(self) -> Node:
        """The manager that leads the raft (`docker node ls`: Leader)."""
        for entry in self.engine(self.leader()).api.nodes():
            if (entry.get("ManagerStatus") or {}).get("Leader"):
                name = entry["Description"]["Hostname"]
                return next(n for n in self.managers if n.hostname == name)
        raise AssertionError("no manager is the raft leader")

    def check(self) -> None:
        """MultiNodeUnavailable unless every node answers and the swarm lists it Ready."""
        try:
            listed = self.node_states()
        except (AssertionError, docker.errors.DockerException, OSError) as exc:
            raise MultiNodeUnavailable(f"the multi-node swarm does not answer: {exc}") from exc
        missing = [n.hostname for n in self.nodes if listed.get(n.hostname, ("",))[0] != "ready"]
        if missing:
            raise MultiNodeUnavailable(
                f"nodes not Ready: {', '.join(missing)} (run scripts/swarm-nodes.sh restore)"
            )

    def node_states(self) -> dict[str, tuple[str, str]]:
        """hostname -> (Status.State, Spec.Availability), as a manager lists them."""
        return {
            n["Description"]["Hostname"]: (n["Status"]["State"], n["Spec"]["Availability"])
            for n in self.engine(self.leader()).api.nodes()
        }

    def node_ids(self) -> dict[str, str]:
        """node ID -> hostname."""
        return {
            n["ID"]: n["Description"]["Hostname"] for n in self.engine(self.leader()).api.nodes()
        }

    def wait_node(self, node: Node, state: str, timeout: float = 60.0) -> float:
        """Block until a manager lists the node in `state` (ready, down, ...); the seconds it
        took."""
        start = time.monotonic()

        def reached() -> bool:
            with contextlib.suppress(AssertionError, docker.errors.DockerException, OSError):
                return self.node_states().get(node.hostname, ("",))[0] == state
            return False

        wait_until(reached, timeout, f"{node.hostname} to be {state}", interval=0.2)
        return time.monotonic() - start

    # -- faults: the script's own commands ---------------------------------------------------

    def crash(self, node: Node) -> None:
        """SIGKILL everything of the node, like a machine losing power."""
        self._forget(node)
        script("crash", str(node.number))

    def stop(self, node: Node) -> None:
        """A clean shutdown of the node's dockerd."""
        self._forget(node)
        script("stop", str(node.number))

    def start(self, node: Node) -> None:
        """Start the node's dockerd again (it rejoins the swarm by itself)."""
        script("start", str(node.number))

    def partition(self, node: Node) -> None:
        """Cut the node's link: it runs on, but no other node reaches it."""
        script("partition", str(node.number))

    def heal(self, node: Node) -> None:
        script("heal", str(node.number))

    def drain(self, node: Node) -> None:
        script("drain", str(node.number))

    def activate(self, node: Node) -> None:
        script("active", str(node.number))

    def restore(self) -> None:
        """Undo every fault: links up, nodes started and active, every node Ready."""
        script("restore")

    def _forget(self, node: Node) -> None:
        client = self._clients.pop(node.number, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        for number in list(self._clients):
            self._clients.pop(number).close()


def unavailable_message(exc: MultiNodeUnavailable) -> str:
    suffix = (
        ". CI=true: these tests must run in CI, where scripts/test.sh brings the nodes up "
        "with scripts/swarm-nodes.sh; see its output above"
    )
    return f"{exc}{suffix if in_ci() else ''}"
