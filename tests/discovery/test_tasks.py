"""Task lists into agents: only new or changed tasks are decoded, and the answer is the same
as decoding everything, whatever changed and in whatever order Docker lists the tasks."""

from __future__ import annotations

import json
import random

import msgspec
import pytest
import structlog

from bridge.config import Settings
from bridge.devkit.emulator import EmulatedSwarm
from bridge.devkit.emulator.filters import parse_filters
from bridge.discovery.base import SwarmRound
from bridge.discovery.tasks import MixedServicesError, TaskListDecoder
from tests.conftest import FIXTURES

RUNNING = parse_filters(json.dumps({"service": ["CHORUS_chorus"], "desired-state": ["running"]}))


def fresh(body: bytes) -> SwarmRound:
    """What a decoder with no previous list makes of the body: every task decoded."""
    return TaskListDecoder(Settings()).decode(body)


def same_round(a: SwarmRound, b: SwarmRound) -> bool:
    return (a.agents, sorted(a.without_address), a.pending) == (
        b.agents,
        sorted(b.without_address),
        b.pending,
    )


@pytest.fixture
def swarm() -> EmulatedSwarm:
    fleet = EmulatedSwarm(seed=7)
    fleet.add_tasks(40)
    return fleet


def test_an_identical_list_decodes_nothing() -> None:
    body = (FIXTURES / "tasks_running_34.json").read_bytes()
    decoder = TaskListDecoder(Settings())
    first = decoder.decode(body)
    assert decoder.decoded == 34 and len(first.agents) == 34
    again = decoder.decode(bytes(bytearray(body)))  # equal bytes, another object
    assert again is first
    assert decoder.decoded == 0


def test_only_the_changed_tasks_are_decoded(swarm: EmulatedSwarm) -> None:
    decoder = TaskListDecoder(Settings())
    before = decoder.decode(swarm.tasks_body(RUNNING))
    ids = swarm.running_ids()
    swarm.set_state(ids[5], "starting")
    swarm.drop_address(ids[9])
    swarm.remove_task(ids[20])
    added = swarm.add_tasks(2)
    body = swarm.tasks_body(RUNNING)

    after = decoder.decode(body)

    assert decoder.decoded == 4  # 2 changed, 2 new; the removed one is simply gone
    assert same_round(after, fresh(body))
    ids_now = {a.id for a in after.agents}
    assert ids[5] not in ids_now and after.pending == (ids[5],)
    assert after.without_address == (ids[9],)
    assert ids[20] not in ids_now and set(added) <= ids_now
    # An unchanged task keeps its Agent object: the registry's diff relies on it.
    kept = {a.id: a for a in before.agents}
    assert all(kept[a.id] is a for a in after.agents if a.id in kept)


def test_any_order_and_any_change_gives_what_a_full_decode_gives(swarm: EmulatedSwarm) -> None:
    """Docker lists tasks in a stable order, but nothing breaks when it does not."""
    rng = random.Random(3)
    decoder = TaskListDecoder(Settings())
    for _ in range(30):
        ids = swarm.running_ids()
        action = rng.choice(["scale", "state", "address", "replace", "nothing"])
        if action == "scale":
            swarm.scale(rng.randint(1, 60))
        elif action == "state":
            swarm.set_state(rng.choice(ids), rng.choice(["running", "starting", "preparing"]))
        elif action == "address":
            swarm.drop_address(rng.choice(ids))
        elif action == "replace":
            swarm.replace_tasks(rng.randint(1, 5))
        tasks = msgspec.json.decode(swarm.tasks_body(RUNNING))
        if rng.random() < 0.3:
            rng.shuffle(tasks)
        body = msgspec.json.encode(tasks)
        assert same_round(decoder.decode(body), fresh(body)), action


def test_a_bad_list_leaves_the_previous_one_in_place(swarm: EmulatedSwarm) -> None:
    decoder = TaskListDecoder(Settings())
    body = swarm.tasks_body(RUNNING)
    first = decoder.decode(body)
    for bad in (b"[{", b'{"ID": "x"}', b'[{"ID": 5}]', b"<html>"):
        with pytest.raises(msgspec.DecodeError):
            decoder.decode(bad)
    assert decoder.decode(body) is first
    assert decoder.decoded == 0


def test_replacing_tasks_keeps_the_replica_count(swarm: EmulatedSwarm) -> None:
    """The emulator's rolling replacement, which the discovery benchmark runs on."""
    old = set(swarm.running_ids())
    new = swarm.replace_tasks(3)
    now = set(swarm.running_ids())
    assert len(now) == 40 and len(new) == 3
    assert set(new) == now - old and len(old - now) == 3


def test_no_network_configured_skips_ingress() -> None:
    """WHOOSH_NETWORK_NAME empty: the first address not on ingress (no container can be
    reached there), even when Docker lists ingress first."""
    fleet = EmulatedSwarm(seed=11)
    (task,) = fleet.add_tasks(1)
    fleet.attach(task, "ingress", "127.60.0.2", before=True)
    found = TaskListDecoder(Settings(network_names=())).decode(fleet.tasks_body(RUNNING))
    (agent,) = found.agents
    assert agent.address == fleet.address_of(task) and agent.network == "chorus_default"
    assert found.addresses == {"127.60.0.2", agent.address}


def test_tasks_of_another_service_are_ignored() -> None:
    """Whatever the engine's filter let through, only the service's own tasks count: its ID
    is learned from a list of its own tasks; a list mixing services before that is refused."""
    ours, theirs = EmulatedSwarm(seed=12), EmulatedSwarm(service="CHORUS_other", seed=13)
    own = ours.add_tasks(2)
    theirs.add_tasks(2, addresses=["127.10.9.2", "127.10.9.3"])
    mixed = _join(ours.tasks_body(RUNNING), theirs.tasks_body({}))

    decoder = TaskListDecoder(Settings())
    decoder.decode(ours.tasks_body(RUNNING))
    assert {a.id for a in decoder.decode(mixed).agents} == set(own)
    assert "127.10.9.2" not in decoder.decode(mixed).addresses

    with pytest.raises(MixedServicesError):
        TaskListDecoder(Settings()).decode(mixed)


def test_a_re_created_service_is_taken_from_its_lists() -> None:
    """`docker stack rm` and deploy: the filtered list names a new service ID, and its tasks
    are the agents (the engine resolved the name; the change is said in one line)."""
    ours, again = EmulatedSwarm(seed=14), EmulatedSwarm(seed=15)
    ours.add_tasks(2)
    new = again.add_tasks(3)
    decoder = TaskListDecoder(Settings())
    decoder.decode(ours.tasks_body(RUNNING))
    with structlog.testing.capture_logs() as logs:
        assert {a.id for a in decoder.decode(again.tasks_body(RUNNING)).agents} == set(new)
    assert [(e["event"], e["new"]) for e in logs] == [
        ("docker_service_id_changed", again.service_id)
    ]


LISTED = parse_filters(
    json.dumps({"service": ["CHORUS_chorus"], "desired-state": ["running", "ready"]})
)


def test_waiting_tasks_are_counted_by_slot_and_host_network_tasks_apart() -> None:
    """Desired ready (a replacement waiting to start), pending, and running without an
    address are waiting, each with its slot; a task on the host network or with only a
    host-mode port is neither an agent nor waiting: it is said apart."""
    fleet = EmulatedSwarm(seed=16)
    worker = fleet.add_node()
    fleet.add_tasks(2, node=fleet.node_id)
    running, pending, unaddressed, on_host, by_port = fleet.add_tasks(5, node=worker)
    fleet.set_state(pending, "starting")
    fleet.drop_address(unaddressed)
    fleet.host_mode(on_host, "network")
    fleet.host_mode(by_port, "port")
    replacements = fleet.node_down(fleet.node_id)
    found = TaskListDecoder(Settings()).decode(fleet.tasks_body(LISTED))
    assert {a.id for a in found.agents} == {running}
    assert set(found.ready) == set(replacements) and found.pending == (pending,)
    assert found.without_address == (unaddressed,)
    assert sorted(found.on_host) == sorted([(on_host, "host_network"), (by_port, "host_port")])
    slots = {fleet.task(t)["Slot"] for t in (*replacements, pending, unaddressed)}
    assert set(found.slots.values()) == {f"slot {n}" for n in slots}


def test_the_recorded_host_network_and_host_port_tasks() -> None:
    """The real engine's answers: a running task on the host network, and one with only a
    host-mode port, are said apart, not taken for tasks still waiting for an address."""
    for name, how in (
        ("tasks_host_network.json", "host_network"),
        ("tasks_host_port_only.json", "host_port"),
    ):
        body = (FIXTURES / name).read_bytes()
        found = TaskListDecoder(Settings()).decode(body)
        (task,) = json.loads(body)
        assert found.on_host == ((task["ID"], how),), name
        assert found.agents == () and found.not_running == ()


def _join(*bodies: bytes) -> bytes:
    return msgspec.json.encode([t for b in bodies for t in msgspec.json.decode(b)])
