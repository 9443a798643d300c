"""Several managers of one emulated swarm, each on its own socket (or loopback address): the
bridge reads one at a time, moves to the next when it fails, its event stream follows; when
every one fails nothing is removed and /healthz says why, in Docker's own terms."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import structlog

from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm, ErrorMode
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import RunningBridge, run_bridge, wait_for

# A manager lost costs no more than the swarm's own election (about 10 s): here the other
# managers answer at once, so the bucket must follow within a few seconds.
TAKEOVER = 5.0


class Managers:
    """3 managers and a worker of one swarm, each served on its own socket; the agents run
    on the worker and on a second worker that is not served."""

    def __init__(
        self, swarm: EmulatedSwarm, managers: list[DockerEmulator], worker: DockerEmulator
    ):
        self.swarm, self.managers, self.worker = swarm, managers, worker

    def host(self) -> str:
        return ",".join(m.base_url for m in self.managers)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Managers]:
    swarm = EmulatedSwarm(seed=41)
    nodes = [swarm.node_id, swarm.add_node(manager=True), swarm.add_node(manager=True)]
    worker = swarm.add_node()
    swarm.add_node()
    for node in nodes:
        swarm.drain(node)
    swarm.add_tasks(4)
    managers = [DockerEmulator(tmp_path / f"m{i}.sock", swarm, node=n) for i, n in enumerate(nodes)]
    served_worker = DockerEmulator(tmp_path / "w.sock", swarm, node=worker)
    for emulator in (*managers, served_worker):
        await emulator.start()
    try:
        yield Managers(swarm, managers, served_worker)
    finally:
        for emulator in (*managers, served_worker):
            await emulator.stop()


def settings_for(host: str, unique: str, poll: float = 60.0) -> Settings:
    return Settings(
        docker_host=host,
        discovery_method="swarm",
        subject_prefix=f"t{unique}",
        kv_bucket=f"agents_{unique}",
        poll_interval=poll,
        listen_host="127.0.0.1",
        listen_port=0,
        docker_timeout=1.0,
        dns_names=(),
    )


def published(running: RunningBridge) -> set[str]:
    return set(running.bridge.registry.published)


async def healthz(running: RunningBridge) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{running.bridge.http_port}/healthz"
    async with httpx.AsyncClient(trust_env=False) as client:
        answer = await client.get(url)
    body: dict[str, object] = answer.json()
    return answer.status_code, body


async def test_the_manager_read_dies_and_the_next_takes_over(
    cluster: Managers, unique: str, nats_server: EmbeddedNats
) -> None:
    """WHOOSH_DOCKER_HOST lists 3 managers; the bridge reads the first. It dies (its socket
    gone, its streams closed): a scale right after reaches the bucket within a few seconds,
    read from the next manager, whose /events stream the bridge now follows."""
    settings = settings_for(cluster.host(), unique)
    first, second, third = cluster.managers
    with structlog.testing.capture_logs() as logs:
        async with run_bridge(settings, nats_server.url) as running:
            assert published(running) == set(cluster.swarm.running_ids())
            await wait_for(lambda: first.event_streams == 1, what="the stream on the first")
            assert (second.requests["/tasks"], third.requests["/tasks"]) == (0, 0)
            await first.stop()
            loop = asyncio.get_running_loop()
            killed = loop.time()
            added = cluster.swarm.add_tasks(2)
            await wait_for(
                lambda: published(running) == set(cluster.swarm.running_ids()),
                timeout=TAKEOVER,
                what="the bucket to follow, read from another manager",
            )
            took = loop.time() - killed
            await wait_for(lambda: second.event_streams == 1, what="the stream on the second")
            assert third.requests["/tasks"] == 0 and set(added) <= published(running)
    switched = [e for e in logs if e["event"] == "docker_manager_switched"]
    assert [(e["was"], e["now"]) for e in switched] == [(first.base_url, second.base_url)]
    print(f"first manager gone: the bucket followed {took:.2f}s later, from the second")


async def test_every_manager_failing_removes_nothing_and_healthz_says_why(
    cluster: Managers, unique: str, nats_server: EmbeddedNats
) -> None:
    """The swarm loses quorum (every manager answers Docker's "no leader"): nothing leaves
    the bucket, /healthz turns 503 within 3 polls naming it, and the bucket follows again as
    soon as a leader is back."""
    settings = settings_for(cluster.host(), unique, poll=1.0)
    async with run_bridge(settings, nats_server.url) as running:
        before = published(running)
        assert (await healthz(running))[0] == 200
        cluster.swarm.set_error("no_leader")
        cluster.swarm.scale(2)  # Swarm would not do it without a leader; the list says it did

        async def unhealthy() -> bool:
            return (await healthz(running))[0] == 503

        await wait_for(unhealthy, timeout=3 * settings.poll_interval + 3, what="/healthz 503")
        _, body = await healthz(running)
        assert published(running) == before
        reasons = " ".join(str(r) for r in body["reasons"])  # type: ignore[attr-defined]
        assert "no leader" in reasons and "lost quorum" in reasons, reasons
        assert all(m.base_url in reasons for m in cluster.managers)
        cluster.swarm.set_error(None)
        await wait_for(
            lambda: published(running) == set(cluster.swarm.running_ids()),
            timeout=TAKEOVER,
            what="the bucket to follow again",
        )
        await wait_for(lambda: _healthy(running), what="/healthz 200 again")


async def _healthy(running: RunningBridge) -> bool:
    return (await healthz(running))[0] == 200


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("swarm_locked", "docker swarm unlock"),
        ("manager_preparing", "not ready"),
        ("no_leader", "lost quorum"),
        ("forbidden", "refused GET /tasks"),
    ],
)
async def test_one_failing_manager_is_named_and_left_for_the_next(
    cluster: Managers, unique: str, nats_server: EmbeddedNats, mode: ErrorMode, says: str
) -> None:
    """The first manager is locked, not ready, without a leader, or behind a proxy that
    refuses the call: the bridge says so in those words, and reads the next one."""
    cluster.managers[0].set_error(mode)
    settings = settings_for(cluster.host(), unique)
    with structlog.testing.capture_logs() as logs:
        async with run_bridge(settings, nats_server.url) as running:
            assert published(running) == set(cluster.swarm.running_ids())
            assert (await healthz(running))[0] == 200
    (switched,) = [e for e in logs if e["event"] == "docker_manager_switched"]
    assert switched["now"] == cluster.managers[1].base_url
    assert says in switched["error"] and "place the bridge" not in switched["error"]


async def test_a_workers_address_says_not_a_manager(
    cluster: Managers, unique: str, nats_server: EmbeddedNats
) -> None:
    """Pointed at a worker: /healthz is 503 and its reason says "not a manager"; the start
    says so too."""
    settings = settings_for(cluster.worker.base_url, unique)
    with structlog.testing.capture_logs() as logs:
        async with run_bridge(settings, nats_server.url) as running:
            status, body = await healthz(running)
            # The start's GET /info runs beside the first round, which may end first.
            await wait_for(
                lambda: any(e["event"] == "docker_engine_not_manager" for e in logs),
                what="the start's word on the engine",
            )
    assert status == 503
    reasons = " ".join(str(r) for r in body["reasons"])  # type: ignore[attr-defined]
    assert "not a manager" in reasons and "worker" in reasons, reasons
    (start,) = [e for e in logs if e["event"] == "docker_engine_not_manager"]
    assert start["host"] == cluster.worker.base_url and "worker" in start["hint"]


async def test_a_name_with_several_addresses_counts_one_each_and_is_resolved_again(
    unique: str, nats_server: EmbeddedNats
) -> None:
    """tcp://docker-api:PORT, a name with an address per manager (tasks.docker-api in the
    stack): each address is a manager to read. When every address it had fails, the name is
    resolved again, and a manager that came up at a new address is read."""
    swarm = EmulatedSwarm(seed=42)
    second_node = swarm.add_node(manager=True)
    swarm.add_tasks(3)
    first = DockerEmulator(None, swarm, tcp=("127.0.0.2", 0))
    await first.start()
    port = int(first.base_url.rsplit(":", 1)[1])
    second = DockerEmulator(None, swarm, node=second_node, tcp=("127.0.0.3", port))
    third = DockerEmulator(None, swarm, node=second_node, tcp=("127.0.0.4", port))
    await second.start()
    answers = {"docker-api": ["127.0.0.2", "127.0.0.3"]}
    asked: list[str] = []

    async def resolve(name: str, _port: int) -> list[str]:
        asked.append(name)
        return answers[name]

    settings = settings_for(f"tcp://docker-api:{port}", unique)
    try:
        async with run_bridge(settings, nats_server.url, resolve=resolve) as running:
            assert published(running) == set(swarm.running_ids())
            await first.stop()
            swarm.scale(4)
            await wait_for(
                lambda: published(running) == set(swarm.running_ids()),
                timeout=TAKEOVER,
                what="the second address to be read",
            )
            assert second.requests["/tasks"] >= 1 and asked == ["docker-api"]
            # The second goes too; the name now gives a third address.
            answers["docker-api"] = ["127.0.0.4"]
            await third.start()
            await second.stop()
            swarm.scale(5)
            await wait_for(
                lambda: published(running) == set(swarm.running_ids()),
                timeout=TAKEOVER + 5,
                what="the name resolved again and its new address read",
            )
            assert asked == ["docker-api", "docker-api"] and third.requests["/tasks"] >= 1
    finally:
        for emulator in (first, second, third):
            await emulator.stop()
