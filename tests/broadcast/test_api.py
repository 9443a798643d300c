"""The broadcast API: validation of requests (DESIGN.md: id, roles, size), and the NATS
micro service that serves them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import nats.errors
import pytest
import structlog
from nats.aio.client import Client as NATS

from bridge.broadcast.api import (
    BROADCAST_QUEUE,
    MAX_IN_FLIGHT,
    MAX_WAITING,
    encode_report,
    validate_request,
)
from bridge.config import Settings
from bridge.contract.messages import (
    BroadcastReport,
    CouncilOpportunity,
    ErrorReply,
    FailedDelivery,
    decode_reply,
    encode,
)
from bridge.contract.micro_answers import MicroInfo, MicroPing, MicroStats
from bridge.contract.names import SERVICE_NAME
from bridge.devkit.emulator import EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.broadcast.test_broadcaster import stage
from tests.conftest import OPPORTUNITY, run_bridge, wait_for

GOOD = (
    b'{"id": "council-42", "project": "whoosh", "title": "Build the API", "roles": '
    b'[{"name": "tpm", "core": true}, {"name": "qa-engineer", "core": false}], '
    b'"deadline": "2026-11-27T01:00:00Z", "details": {}}'
)


def test_design_example_is_accepted() -> None:
    """The opportunity of DESIGN.md decodes with its roles."""
    opp = validate_request(GOOD)
    assert isinstance(opp, CouncilOpportunity)
    assert opp.id == "council-42"
    assert [r.name for r in opp.roles if r.core] == ["tpm"]


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (b"not json", "$", "not valid JSON"),
        (b'{"id": 42, "roles": [{"name": "tpm"}]}', "$.id", "Expected `str`"),
        (b'{"id": "bad id!", "roles": [{"name": "tpm"}]}', "$.id", "[A-Za-z0-9_-]{1,128}"),
        (b'{"id": "' + b"x" * 129 + b'", "roles": [{"name": "tpm"}]}', "$.id", "{1,128}"),
        (b'{"id": "c1", "roles": []}', "$.roles", "length >= 1"),
        (b'{"id": "c1"}', "$", "missing required field `roles`"),
        (b'{"id": "c1", "roles": [{"name": ""}]}', "$.roles[0].name", "[A-Za-z0-9_-]{1,64}"),
        # a role name is a key token of the councils bucket (DESIGN.md, "Councils")
        (b'{"id": "c1", "roles": [{"name": "a.b"}]}', "$.roles[0].name", "[A-Za-z0-9_-]{1,64}"),
        (
            b'{"id": "c1", "roles": [{"name": "' + b"r" * 65 + b'"}]}',
            "$.roles[0].name",
            "{1,64}",
        ),
        (
            b'{"id": "c1", "roles": [{"name": "tpm"}, {"name": "qa"}, {"name": "tpm"}]}',
            "$.roles[2].name",
            "named twice",
        ),
        (
            b'{"id": "c1", "roles": [{"name": "tpm"}], "deadline": "tomorrow"}',
            "$.deadline",
            "RFC 3339",
        ),
        (
            b'{"id": "c1", "roles": [{"name": "tpm"}], "deadline": "2026-11-27T01:00:00"}',
            "$.deadline",
            "offset",
        ),
        (b'{"id": "c1", "roles": [{"name": "tpm", "core": "yes"}]}', "$.roles[0].core", "bool"),
        (b"[1, 2]", "$", "Expected `object`"),
        # re's $ would let a final newline through, and the id goes into subjects
        (b'{"id": "c1\\n", "roles": [{"name": "tpm"}]}', "$.id", "[A-Za-z0-9_-]{1,128}"),
        # 10 KB nested 5,000 deep: msgspec raises RecursionError, no DecodeError
        (
            b'{"id": "c1", "roles": [{"name": "tpm"}], "details": {"x": '
            + b"[" * 5000
            + b"]" * 5000
            + b"}}",
            "$",
            "nested too deeply",
        ),
    ],
)
def test_bad_requests_name_the_field(body: bytes, field: str, says: str) -> None:
    """A request that breaks the schema is refused with what is wrong and where."""
    reply = validate_request(body)
    assert isinstance(reply, ErrorReply)
    assert reply.field == field
    assert says in reply.error


def test_larger_than_64_kib_is_refused() -> None:
    """A 1 MiB request is refused before it is decoded."""
    filler = b"a" * (1 << 20)
    body = b'{"id": "c1", "roles": [{"name": "tpm"}], "details": {"x": "' + filler + b'"}}'
    reply = validate_request(body)
    assert isinstance(reply, ErrorReply)
    assert "64 KiB" in reply.error and reply.field == "$"


def test_a_report_too_large_for_the_server_lists_the_failures_that_fit() -> None:
    """11,500 failures are over 1 MiB: the reply lists the first that fit in the limit, and
    its counts stay exact (a reply over the server's max_payload would reach nobody)."""
    failed = [
        FailedDelivery(
            agent_id=f"agent-{i:05d}",
            endpoint=f"http://127.9.{i // 250}.{i % 250}:8080",
            error="connection refused",
        )
        for i in range(11_500)
    ]
    report = BroadcastReport(
        opportunity_id="c1",
        total_agents=11_600,
        success_count=100,
        via_bus=100,
        via_http=0,
        failed=failed,
        unregistered_acks=0,
        duration_ms=1.0,
        at="2026-11-30T00:00:00Z",
    )
    limit = (1 << 20) - 1024
    assert len(encode(report)) > limit
    with structlog.testing.capture_logs() as logs:
        data = encode_report(report, limit)
    assert len(data) <= limit
    cut = decode_reply(data)
    assert isinstance(cut, BroadcastReport)
    assert (cut.total_agents, cut.success_count) == (11_600, 100)
    assert 0 < len(cut.failed) < 11_500 and cut.failed == failed[: len(cut.failed)]
    # One more failure would not have fitted.
    longer = msgspec.structs.replace(report, failed=failed[: len(cut.failed) + 1])
    assert len(encode(longer)) > limit
    assert [e["event"] for e in logs] == ["broadcast_report_cut"]
    small = msgspec.structs.replace(report, failed=failed[:3])
    assert encode_report(small, limit) == encode(small)


# --- the NATS micro service, served by a real bridge on a real nats-server ---


async def _ask(nc: NATS, subject: str) -> dict[str, Any]:
    reply = await nc.request(subject, b"", timeout=5)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def test_micro_service_is_found_with_its_counts(
    nats_server: EmbeddedNats, nc: NATS, settings: Settings
) -> None:
    """`nats micro info|stats` find chorus-bridge and its endpoints (broadcast, council, agents); a
    refusal carries the micro error headers and the JSON error, and counts as a request and
    an error of its endpoint."""
    async with run_bridge(settings, nats_server.url):
        info = await _ask(nc, f"$SRV.INFO.{SERVICE_NAME}")
        msgspec.convert(info, MicroInfo)  # what docs/asyncapi.yaml says it is
        msgspec.convert(await _ask(nc, f"$SRV.PING.{SERVICE_NAME}"), MicroPing)
        assert info["type"] == "io.nats.micro.v1.info_response"
        assert info["name"] == "chorus-bridge"
        assert [(e["name"], e["subject"], e["queue_group"]) for e in info["endpoints"]] == [
            ("broadcast", f"{settings.subject_prefix}.bridge.broadcast", BROADCAST_QUEUE),
            ("council", f"{settings.subject_prefix}.bridge.council", BROADCAST_QUEUE),
            ("agents", f"{settings.subject_prefix}.bridge.agents", BROADCAST_QUEUE),
        ]
        refused = await nc.request(
            f"{settings.subject_prefix}.bridge.broadcast", b'{"id": "c1", "roles": []}', timeout=10
        )
        assert refused.headers is not None
        assert refused.headers["Nats-Service-Error-Code"] == "400"
        assert "length >= 1" in refused.headers["Nats-Service-Error"]
        assert json.loads(refused.data)["field"] == "$.roles"
        ok = await nc.request(
            f"{settings.subject_prefix}.bridge.broadcast",
            b'{"id": "c2", "roles": [{"name": "tpm"}]}',
            timeout=10,
        )
        assert not ok.headers and json.loads(ok.data)["opportunity_id"] == "c2"
        stats = await _ask(nc, f"$SRV.STATS.{SERVICE_NAME}.{info['id']}")
        msgspec.convert(stats, MicroStats)
        endpoint, council, agents = stats["endpoints"]
        assert (endpoint["num_requests"], endpoint["num_errors"]) == (2, 1)
        assert (council["num_requests"], council["num_errors"]) == (0, 0)
        assert (agents["num_requests"], agents["num_errors"]) == (0, 0)
        assert "length >= 1" in endpoint["last_error"]
        assert endpoint["processing_time"] > 0
    with pytest.raises(nats.errors.NoRespondersError):  # stopped: gone from the bus
        await nc.request(f"$SRV.PING.{SERVICE_NAME}", b"", timeout=2)


async def test_only_the_leader_serves(
    nats_server: EmbeddedNats, nc: NATS, settings: Settings
) -> None:
    """Two bridges: one instance of the micro service answers pings, the leader's."""
    async with (
        run_bridge(settings, nats_server.url) as first,
        run_bridge(settings, nats_server.url, first_round=False) as second,
    ):
        standby = second.bridge
        await wait_for(lambda: standby.election.leader is not None, what="the standby")
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.PING.{SERVICE_NAME}", b"", reply=inbox)
        pings = [json.loads((await sub.next_msg(timeout=5)).data)]
        with pytest.raises(nats.errors.TimeoutError):
            pings.append(await sub.next_msg(timeout=0.5))
        assert first.bridge.election.is_leader.is_set()
        assert not standby.election.is_leader.is_set()
        assert pings[0]["name"] == SERVICE_NAME


async def test_broadcasts_beyond_the_cap_are_refused_as_busy_at_once(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """Against agents that never answer (each broadcast takes the HTTP timeout), 4 broadcasts
    are served at once and 16 wait their turn: of 21 sent together, one is refused at once
    with "busy" (503), the 20 others get their reports."""
    async with stage(settings, nats_server, swarm, 2, behaviours={0: "hang", 1: "hang"}) as s:
        loop = asyncio.get_running_loop()
        started = loop.time()
        timings: list[tuple[float, bytes]] = []

        async def send(i: int) -> None:
            data = encode(msgspec.structs.replace(OPPORTUNITY, id=f"council-busy-{i}"))
            answer = await s.request(nc, data)
            timings.append((loop.time() - started, answer))

        async with asyncio.TaskGroup() as tg:
            for i in range(MAX_IN_FLIGHT + MAX_WAITING + 1):
                tg.create_task(send(i))
    replies = [decode_reply(data) for _, data in timings]
    busy = [r for r in replies if isinstance(r, ErrorReply)]
    assert len(busy) == 1 and busy[0].error.startswith("busy:"), busy
    assert sum(isinstance(r, BroadcastReport) for r in replies) == MAX_IN_FLIGHT + MAX_WAITING
    first_answer = min(t for t, _ in timings)
    assert decode_reply(next(d for t, d in timings if t == first_answer)) == busy[0]
