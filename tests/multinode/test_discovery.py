"""The bridge on the multi-node swarm, reading a manager that runs no agent.

The bridge runs in this process with a real nats-server on loopback; it reads the first
manager's socket. The agents' addresses (the nodes' overlay) are only read from the Docker API
and compared with the bucket: nothing connects to them.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from bridge.bus.registry import read_bucket
from bridge.config import Settings
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import run_bridge
from tests.multinode.service import NodeService
from tests.multinode.swarm import NETWORK, Node
from tests.multinode.timeline import TaskSampler, watching_bucket

POLL_INTERVAL = 30.0


def bridge_settings(node: Node, agents: NodeService, unique: str) -> Settings:
    return Settings(
        docker_host=node.socket,
        discovery_method="swarm",
        service_name=agents.name,
        network_names=(NETWORK,),
        dns_names=(),
        poll_interval=POLL_INTERVAL,
        subject_prefix=f"t{unique}",
        kv_bucket=f"agents_{unique}",
        listen_host="127.0.0.1",
        listen_port=0,
    )


async def test_every_agent_on_every_node_is_in_the_bucket(
    agents: NodeService,
    bridge_node: Node,
    task_list: TaskSampler,
    nats_server: EmbeddedNats,
    nc: NATS,
    unique: str,
) -> None:
    """The first round finds all 12 agents, though the manager it reads runs none of them
    and sees none of their container events; each with its overlay address."""
    settings = bridge_settings(bridge_node, agents, unique)
    async with run_bridge(settings, nats_server.url):
        kv = await nc.jetstream().key_value(settings.kv_bucket)
        async with watching_bucket(kv) as bucket:
            listed = task_list.wait_for(lambda s: len(s.running) == 12, 10, "12 running")
            assert bucket.keys == listed.running
        stored, _ = await read_bucket(kv)
    running = await asyncio.to_thread(agents.running)
    assert {key: agent.address for key, agent in stored.items()} == running
