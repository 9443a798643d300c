"""The stack deployed on the multi-node swarm as README says: the images loaded onto the nodes
(no registry), the secrets, `docker stack deploy` through a manager; the agents on the workers
only, so the managers (where the proxies run) carry none.

What an operator checks: every running agent in the bucket and on the bus, a broadcast that
reaches them all (the coordinator's client over TLS with the stack's CA); from inside a
bridge's container the proxy at each manager answers GET /tasks and refuses POST
/containers/create; every container runs as a user that is not root, read-only, with no
capabilities and no new privileges; two bridges, a leader and a standby.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.multinode.stack import IMAGE_VARIABLES, DeployedStack, deployed_stack
from tests.multinode.swarm import MultiNodeSwarm, wait_until
from tests.swarm_support import unavailable

pytestmark = pytest.mark.timeout(600)

AGENTS = 6
CONVERGE = 240.0
# How long a node may take to learn every proxy's address (the overlay's gossip).
GOSSIP = 60.0
PROXY_PROBE = """
import http.client, json, socket
answers = []
addresses = sorted({info[4][0] for info in socket.getaddrinfo("tasks.docker-api", 2375)})
for address in addresses:
    statuses = []
    for method, path, body in (
        ("GET", "/v1.41/tasks", None),
        ("POST", "/v1.41/containers/create",
         b'{"Image": "chorus-agent:test", "Labels": {"chorus.refused": "1"}}'),
    ):
        conn = http.client.HTTPConnection(address, 2375, timeout=10)
        headers = {"Content-Type": "application/json"} if body else {}
        conn.request(method, path, body=body, headers=headers)
        statuses.append(conn.getresponse().status)
        conn.close()
    answers.append(statuses)
print(json.dumps(answers))
"""
HEALTH_PROBE = """
import json, urllib.request
print(json.loads(urllib.request.urlopen("http://127.0.0.1:8090/healthz", timeout=5).read())["role"])
"""


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    found = {name: os.environ.get(var, "").strip() for name, var in IMAGE_VARIABLES.items()}
    missing = [IMAGE_VARIABLES[name] for name, image in found.items() if not image]
    if missing:
        unavailable(
            f"the stack's images were not built: {', '.join(missing)} not set "
            "(scripts/test.sh sets them after scripts/build-images.sh)"
        )
    return found


@pytest.fixture(scope="module")
def stack(
    multinode: MultiNodeSwarm, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeployedStack]:
    workdir = tmp_path_factory.mktemp("stack")
    name = f"chorus_mn{os.getpid() % 10000}"
    with deployed_stack(multinode, name, workdir, images, AGENTS) as deployed:
        converged(deployed)
        yield deployed


def converged(stack: DeployedStack) -> None:
    """Wait until every service runs its tasks and the bucket lists every agent, on the bus."""

    last = {"state": "nothing yet"}

    def settled() -> bool:
        managers = len(stack.swarm.managers)
        counts = [len(stack.tasks(s)) for s in ("nats", "docker-api", "bridge", "agent")]
        last["state"] = f"running nats, docker-api, bridge, agent: {counts}"
        if counts != [1, managers, 2, AGENTS]:
            return False
        running = {t["ID"] for t in stack.tasks("agent")}
        bucket = stack.bucket()
        last["state"] += f"; bucket {len(bucket)}, {sum(a['on_bus'] for a in bucket)} on the bus"
        return {a["id"] for a in bucket} == running and all(a["on_bus"] for a in bucket)

    try:
        wait_until(settled, CONVERGE, "the stack's services and every agent in the bucket", 3.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last: {last['state']}") from None


async def test_the_agents_run_on_the_workers_and_are_all_in_the_bucket(
    stack: DeployedStack,
) -> None:
    agents = await asyncio.to_thread(stack.tasks, "agent")
    nodes = {(await asyncio.to_thread(stack.node_of, t)).hostname for t in agents}
    assert nodes == {w.hostname for w in stack.swarm.workers}, "spread over both workers"
    bucket = await asyncio.to_thread(stack.bucket)
    assert {a["id"] for a in bucket} == {t["ID"] for t in agents}
    assert all(a["on_bus"] for a in bucket)


async def test_a_broadcast_reaches_every_agent(stack: DeployedStack) -> None:
    opportunity = {
        "id": "multinode-stack",
        "project": "chorus",
        "title": "stack on several nodes",
        "roles": [{"name": "tpm", "core": True}, {"name": "qa-engineer", "core": False}],
        "details": {},
    }
    done = await asyncio.to_thread(
        stack.coordinator, "broadcast", "--json", "-", stdin=json.dumps(opportunity)
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["total_agents"], report["success_count"], report["failed"]) == (
        AGENTS,
        AGENTS,
        [],
    )
    assert report["via_bus"] == AGENTS  # each acked on its own subject, through the callout


async def test_from_a_bridge_the_proxies_refuse_a_create_and_answer_the_task_list(
    stack: DeployedStack,
) -> None:
    want = [[200, 403]] * len(stack.swarm.managers)
    for bridge in await asyncio.to_thread(stack.tasks, "bridge"):
        # One proxy per manager, each: GET /tasks 200, POST /containers/create 403. A name's
        # records reach each node by the overlay's gossip: a node that was down or cut off
        # a moment ago may list fewer proxies for a while.
        answers = await asyncio.to_thread(_probe_until, stack, bridge, want)
        assert answers == want, f"the proxies answered {answers}, want {want}"
    created = await asyncio.to_thread(_refused_containers, stack)
    assert created == 0, "a refused create left a container"


def _probe_until(stack: DeployedStack, bridge: dict[str, Any], want: list[Any]) -> list[Any]:
    """The proxies' answers from inside `bridge`, asked again until they are `want` or GOSSIP
    seconds have passed."""
    deadline = time.monotonic() + GOSSIP
    while True:
        answers: list[Any] = json.loads(stack.exec(bridge, "python3", "-c", PROXY_PROBE))
        if answers == want or time.monotonic() > deadline:
            return answers
        time.sleep(2.0)


def _refused_containers(stack: DeployedStack) -> int:
    """Containers the probe's create would have made (its label), on every manager."""
    label = {"label": "chorus.refused=1"}
    return sum(
        len(stack.swarm.engine(m).containers.list(all=True, filters=label))
        for m in stack.swarm.managers
    )


def _least_power(stack: DeployedStack, task: dict[str, Any]) -> tuple[str, bool, list[str], str]:
    attrs = stack.container(task).attrs
    nnp = stack.exec(task, "grep", "NoNewPrivs", "/proc/1/status").split()[-1]
    host = attrs["HostConfig"]
    return attrs["Config"]["User"], host["ReadonlyRootfs"], host["CapDrop"], nnp


async def test_every_container_has_least_power(stack: DeployedStack) -> None:
    for service in ("nats", "docker-api", "bridge", "agent"):
        for task in await asyncio.to_thread(stack.tasks, service):
            user, read_only, cap_drop, nnp = await asyncio.to_thread(_least_power, stack, task)
            assert user.split(":")[0] not in {"", "0", "root"}, (service, user)
            assert (read_only, cap_drop, nnp) == (True, ["ALL"], "1"), service


async def test_two_bridges_a_leader_and_a_standby(stack: DeployedStack) -> None:
    roles = [
        (await asyncio.to_thread(stack.exec, t, "python3", "-c", HEALTH_PROBE)).strip()
        for t in await asyncio.to_thread(stack.tasks, "bridge")
    ]
    assert sorted(roles) == ["leader", "standby"]
