"""The docker-api proxy's image on a node of the multi-node swarm, as the stack runs it.

The image (scripts/build-images.sh: chorus-docker-api:test, named by
CHORUS_TEST_DOCKER_API_IMAGE) is built on the host's engine and reaches the managers the way an
operator without a registry does it: `docker save | docker -H <node> load` (swarm-nodes.sh load
--managers: the stack runs it on the managers). It runs on a manager with that node's socket,
as uid 10002 with the socket's gid, read-only, no capabilities, no network; it listens on a
unix socket in a shared directory, so the test reaches it without any network at all.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.docker_api_proxy import request, send
from tests.multinode.swarm import MultiNodeSwarm, Node, script, wait_until
from tests.swarm_support import unavailable

IMAGE_VARIABLE = "CHORUS_TEST_DOCKER_API_IMAGE"
UID = 10002


@pytest.fixture
def proxy_image() -> str:
    image = os.environ.get(IMAGE_VARIABLE, "").strip()
    if not image:
        unavailable(f"{IMAGE_VARIABLE} is not set (scripts/test.sh builds the image and sets it)")
    return image


@pytest.fixture
async def proxy_socket(
    multinode: MultiNodeSwarm, bridge_node: Node, proxy_image: str, tmp_path: Path
) -> AsyncIterator[Path]:
    """The proxy running on the bridge's manager; the path of its socket."""
    await asyncio.to_thread(script, "load", "--managers", proxy_image)
    shared = tmp_path / "api"
    shared.mkdir()
    shared.chmod(0o777)  # the proxy's uid creates its socket here
    node_socket = bridge_node.socket.removeprefix("unix://")
    gid = os.stat(node_socket).st_gid
    engine = multinode.engine(bridge_node)
    container = await asyncio.to_thread(
        engine.containers.run,
        proxy_image,
        detach=True,
        user=f"{UID}:{gid}",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        network_mode="none",
        environment={"DOCKER_API_BIND": "/run/api/docker-api.sock"},
        volumes={
            node_socket: {"bind": "/var/run/docker.sock", "mode": "rw"},
            str(shared): {"bind": "/run/api", "mode": "rw"},
        },
        labels={"chorus.test": "1"},
    )
    try:
        path = shared / "docker-api.sock"
        await asyncio.to_thread(wait_until, path.exists, 30, "the proxy's socket")
        yield path
    finally:
        await asyncio.to_thread(container.remove, force=True)


def containers(multinode: MultiNodeSwarm, node: Node) -> list[str]:
    return [c.id for c in multinode.engine(node).containers.list(all=True)]


async def test_the_image_lets_the_five_reads_through_and_nothing_else(
    multinode: MultiNodeSwarm, bridge_node: Node, proxy_socket: Path
) -> None:
    before = await asyncio.to_thread(containers, multinode, bridge_node)
    body = b'{"Image": "chorus-agent:test"}'
    create = request(
        "POST",
        "/v1.41/containers/create",
        headers=("Content-Type: application/json", f"Content-Length: {len(body)}"),
        body=body,
    )
    cases = [
        (request("GET", "/_ping"), 200),
        (request("GET", "/v1.41/version"), 200),
        (request("GET", "/info"), 200),
        (request("GET", '/v1.41/tasks?filters={"desired-state":["running"]}'), 200),
        (request("GET", "/containers/json"), 403),
        (create, 403),
        (request("POST", "/v1.41/swarm/leave?force=1"), 403),
        (request("GET", "/swarm/unlockkey"), 403),
    ]
    statuses = [(await send(proxy_socket, [[req]]))[0].status for req, _ in cases]
    assert statuses == [status for _, status in cases]
    # What a refused create would have left: nothing new on the node.
    assert await asyncio.to_thread(containers, multinode, bridge_node) == before
