"""The Swarm stack, deployed for real by scripts/stack-test.sh on the one-node swarm: NATS with
TLS, the docker-api proxy, a leader and a standby bridge, 10 agents. (On several nodes:
tests/multinode/test_stack.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from tests.swarm_support import connect_engine, engine_host, unavailable

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "stack-test.sh"
IMAGE_VARIABLES = {
    "BRIDGE_IMAGE": "CHORUS_TEST_BRIDGE_IMAGE",
    "NATS_IMAGE": "CHORUS_TEST_NATS_IMAGE",
    "DOCKER_API_IMAGE": "CHORUS_TEST_DOCKER_API_IMAGE",
}


@pytest.fixture
def stack_env(unique: str) -> dict[str, str]:
    """The script's environment: the engine and the images that scripts/test.sh prepared."""
    host = engine_host()
    connect_engine(host).close()
    images = {name: os.environ.get(variable, "") for name, variable in IMAGE_VARIABLES.items()}
    missing = [IMAGE_VARIABLES[name] for name, image in images.items() if not image]
    if missing:
        unavailable(
            f"the stack's images were not built: {', '.join(missing)} not set "
            "(scripts/test.sh sets them after scripts/build-images.sh)"
        )
    return {**os.environ, **images, "DOCKER_HOST": host, "STACK": f"chorus_st{unique[:6]}"}


def _run_stack(env: dict[str, str]) -> str:
    """scripts/stack-test.sh's output, after checking what every variant must show: the 10
    agents in the bucket, each admitted through the auth callout as itself only, a broadcast
    that reaches (and is acked by) all 10 (the host's client over TLS with the stack's CA), the
    proxy refusing a container's creation and answering the task list from inside a bridge,
    every container non-root, read-only, without capabilities or new privileges, a leader and
    a standby, and nothing of the stack left afterwards."""
    result = subprocess.run(
        ["bash", str(SCRIPT), "--skip-build"],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=840,
        check=False,
    )
    sys.stdout.write(result.stdout)  # shown by pytest when the test fails
    tail = "\n".join(result.stdout.splitlines()[-40:])
    assert result.returncode == 0, f"scripts/stack-test.sh exited {result.returncode}:\n{tail}"
    assert "check: the bucket lists the 10 running tasks" in result.stdout, tail
    assert "check: the broadcast reached 10 of 10 agents" in result.stdout, tail
    # The NATS auth callout is on in the stack: each agent is admitted as itself only.
    assert (
        "check: NATS sees the 10 agents at their task addresses, each admitted as itself"
        in result.stdout
    ), tail
    assert (
        "check: an agent publishes as itself; as another agent, 3 of 3 publishes are denied"
        in result.stdout
    ), tail
    assert "check: 10 of 10 agents acked on the bus, each on its own subject" in result.stdout, tail
    assert "docker-api proxies answer GET /tasks 200 and POST /containers/create 403" in (
        result.stdout
    ), tail
    assert (
        "containers run as non-root, read-only, without capabilities, with no-new-privileges"
        in result.stdout
    ), tail
    assert "check: two bridges answer /healthz 200: leader standby" in result.stdout, tail

    stack = env["STACK"]
    client = docker.DockerClient(base_url=env["DOCKER_HOST"], version="auto")
    try:
        namespace = {"label": f"com.docker.stack.namespace={stack}"}
        assert client.services.list(filters=namespace) == []
        assert client.containers.list(all=True, filters=namespace) == []
        assert client.volumes.list(filters=namespace) == []
        assert client.networks.list(names=[f"{stack}_net"]) == []
    finally:
        client.close()
    return result.stdout


def test_stack_brings_up_ten_agents_that_a_broadcast_reaches(stack_env: dict[str, str]) -> None:
    """The deployed stack (one NATS server) admits its 10 agents through the auth callout,
    each as itself, and a broadcast reaches all 10."""
    _run_stack(stack_env)


def test_stack_on_a_nats_cluster_admits_agents_through_the_callout(
    stack_env: dict[str, str],
) -> None:
    """With docker-compose.cluster.yml (three NATS servers running nats-cluster-callout.conf),
    the same holds: agents on any member are admitted by the bridge, each as itself."""
    output = _run_stack({**stack_env, "CLUSTER": "1"})
    assert "cluster 1" in output
