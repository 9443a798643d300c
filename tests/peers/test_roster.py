"""The roster (`chorus.bridge.agents`): pages that fit the server's max payload, for
coordinators (micro endpoint `agents`) and agents (answered on their own inbox only), from the
real bridge in the callout mode."""

from __future__ import annotations

import json
from pathlib import Path

import nats
import pytest

from bridge.agent import connect_agent
from bridge.contract.messages import PresenceEntry, encode, now_rfc3339
from bridge.contract.roster import PAGE_MARGIN, PEERS_DECODER, ROSTER_NEXT_HEADER, Peer, page
from tests.agents.support import NAMES, callout_stack
from tests.callout_support import PASSWORDS
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(180)


def _encoded(ids: list[str]) -> list[bytes]:
    return [encode(Peer(id=i, on_bus=False)) for i in ids]


def test_pages_fit_the_limit_and_cover_every_agent_once() -> None:
    ids = [f"agent-{i:04d}" for i in range(1000)]
    encoded = _encoded(ids)
    seen: list[str] = []
    after: str | None = None
    while True:
        body, after = page(ids, encoded, after, 4096)
        assert len(body) <= 4096
        seen += [p.id for p in PEERS_DECODER.decode(body)]
        if after is None:
            break
    assert seen == ids


def test_a_page_holds_one_agent_at_least_and_an_unknown_cursor_starts_after_it() -> None:
    ids = ["a", "c", "e"]
    body, after = page(ids, _encoded(ids), None, 10)  # smaller than one Peer
    assert [p.id for p in PEERS_DECODER.decode(body)] == ["a"] and after == "a"
    body, after = page(ids, _encoded(ids), "b", 10_000)  # "b" left meanwhile: from "c"
    assert [p.id for p in PEERS_DECODER.decode(body)] == ["c", "e"] and after is None
    assert page(ids, _encoded(ids), "z", 10_000) == (b"[]", None)


async def test_a_roster_over_the_max_payload_in_pages_for_coordinators_and_agents(
    tmp_path: Path,
) -> None:
    """13,000 agents are over 1 MB of roster (10,000 are about 0.85 MB): every page fits the
    server's max payload, and reading them all gives each agent once, sorted, with the roles
    of the one on the bus."""
    async with callout_stack(tmp_path, 13_000) as stack:
        me = stack.agent_ids[0]
        max_payload = stack.coordinator.max_payload
        pages, peers, after = 0, [], None
        while True:
            body = json.dumps({"after": after}).encode() if after else b""
            msg = await stack.coordinator.request(NAMES.roster, body, timeout=10)
            assert len(msg.data) <= max_payload - PAGE_MARGIN
            peers += PEERS_DECODER.decode(msg.data)
            pages += 1
            after = (msg.headers or {}).get(ROSTER_NEXT_HEADER)
            if not after:
                break
        assert pages >= 2
        assert [p.id for p in peers] == sorted(stack.agent_ids)
        async with connect_agent(
            stack.server.url,
            me,
            user="agent",
            password=PASSWORDS["AGENT_PASS"],
            roles=["tpm"],
        ) as agent:
            await wait_for(lambda: me in stack.on_bus(), timeout=10, what="on the bus")
            mine = await agent.peers()
        assert [p.id for p in mine] == [p.id for p in peers]
        assert [p for p in mine if p.on_bus] == [
            Peer(id=me, on_bus=True, healthy=None, source="static", roles=("tpm",))
        ]


async def test_agents_are_answered_on_an_inbox_only_and_bad_requests_refused(
    tmp_path: Path,
) -> None:
    async with callout_stack(tmp_path, 2) as stack:
        me, other = stack.agent_ids
        nc = await nats.connect(
            stack.server.url,
            user="agent",
            password=PASSWORDS["AGENT_PASS"],
            name=me,
            inbox_prefix=f"_INBOX.{me}",
            max_reconnect_attempts=0,
        )
        try:
            inbox = await nc.subscribe(f"_INBOX.{me}.>")
            await nc.publish(
                f"$KV.chorus_presence.{me}", encode(PresenceEntry(agent_id=me, at=now_rfc3339()))
            )
            await wait_for(lambda: me in stack.on_bus(), timeout=10, what="on the bus")
            for reply in ("_INBOX", f"_INBOX.{me}", "_INBOX.*.x", "chorus.agents.announce"):
                await nc.publish(NAMES.roster, b"", reply=reply)
            await nc.publish(NAMES.roster, b"", reply=f"_INBOX.{me}.r.1")
            msg = await inbox.next_msg(timeout=5)
            assert msg.subject == f"_INBOX.{me}.r.1"  # the first answer is the last request's
            assert {p.id for p in PEERS_DECODER.decode(msg.data)} == {me, other}
            await nc.publish(NAMES.roster, b"{not json", reply=f"_INBOX.{me}.r.2")
            refused = await inbox.next_msg(timeout=5)
            assert json.loads(refused.data)["field"] == "$.after"
        finally:
            await nc.close()
        answer = await stack.coordinator.request(NAMES.roster, b"[1]", timeout=5)
        assert (answer.headers or {}).get("Nats-Service-Error-Code") == "400"
