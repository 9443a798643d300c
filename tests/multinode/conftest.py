"""Fixtures of the multi-node swarm (tests/multinode/swarm.py): the nodes, a service of agents
spread over them, the manager's task list sampled over time, and a restore after every fault.

Every test here is marked `multinode`; it is skipped when scripts/test.sh did not bring the
nodes up (CHORUS_TEST_MULTINODE is not 1), and fails instead under CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.multinode.service import NodeService, node_service
from tests.multinode.swarm import (
    MultiNodeSwarm,
    MultiNodeUnavailable,
    Node,
    unavailable_message,
)
from tests.multinode.timeline import TaskSampler, task_listers
from tests.swarm_support import in_ci


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/multinode/" in item.nodeid:
            item.add_marker(pytest.mark.multinode)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(300))


@pytest.fixture(scope="session")
def multinode() -> Iterator[MultiNodeSwarm]:
    """The nodes (skipped without them; a failure under CI=true)."""
    try:
        swarm = MultiNodeSwarm.from_environment()
    except MultiNodeUnavailable as exc:
        if in_ci():
            pytest.fail(unavailable_message(exc), pytrace=False)
        pytest.skip(str(exc))
    yield swarm
    swarm.close()


@pytest.fixture
def faults(multinode: MultiNodeSwarm) -> Iterator[MultiNodeSwarm]:
    """The swarm, restored after the test whatever it did (crashed, partitioned, drained)."""
    try:
        yield multinode
    finally:
        multinode.restore()


@pytest.fixture
def bridge_node(multinode: MultiNodeSwarm) -> Node:
    """The manager the bridge reads: it runs no agent (as in production)."""
    return multinode.managers[0]


@pytest.fixture
def agents(multinode: MultiNodeSwarm, bridge_node: Node, unique: str) -> Iterator[NodeService]:
    """12 agents on every node but the bridge's, removed at the end."""
    with node_service(multinode, f"chorus-mn-{unique}", 12, avoid=(bridge_node,)) as service:
        yield service


@pytest.fixture
def task_list(multinode: MultiNodeSwarm, agents: NodeService) -> Iterator[TaskSampler]:
    """The agents' task list as the managers show it, sampled every 50 ms during the test
    (from one manager, the next one in order when it fails)."""
    with task_listers(multinode.managers, agents.name) as listers, TaskSampler(listers) as sampler:
        yield sampler
