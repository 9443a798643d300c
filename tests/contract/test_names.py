"""Names: the route of the bridge's answers to agents (DESIGN.md, "Trust")."""

from __future__ import annotations

import pytest

from bridge.contract.names import Names

NAMES = Names(prefix="chorus", agents_bucket="chorus_agents")


@pytest.mark.parametrize(
    ("reply", "route"),
    [
        ("_INBOX.t1.claim.1", "chorus.bridge.answers.t1.claim.1"),
        ("_INBOX.t1.Kx9.42", "chorus.bridge.answers.t1.Kx9.42"),
        ("_INBOX.t1.x", "chorus.bridge.answers.t1.x"),
    ],
)
def test_an_answer_goes_to_the_agents_own_inbox(reply: str, route: str) -> None:
    """nats.conf maps chorus.bridge.answers.<id>.<rest> onto _INBOX.<id>.<rest> in AGENTS."""
    assert NAMES.answer_subject("t1", reply) == route


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "_INBOX.t1",
        "_INBOX.t1.",
        "_INBOX.t2.claim.1",  # another agent's inbox
        "_INBOX.t10.x",  # an id that only starts like this one
        "_INBOX.t1.x..y",
        "_INBOX.t1.x.",
        "_INBOX.t1..x",
        "_INBOX.t1.x\ty",
        "_INBOX.t1.*",
        "_INBOX.t1.>",
        "_INBOX.t1.x y",
        "_INBOX.t1.x\n",
        "$KV.chorus_bridge.leader",
        "chorus.agents.announce",
        "chorus.agents.t1.messages.t2",
    ],
)
def test_no_answer_where_the_reply_is_not_the_agents_inbox(reply: str) -> None:
    assert NAMES.answer_subject("t1", reply) is None


def test_the_subjects_of_agents_on_the_bus() -> None:
    assert NAMES.roster == "chorus.bridge.agents"
    assert NAMES.messages("t2", "t1") == "chorus.agents.t2.messages.t1"
    assert NAMES.council_events("council-42") == "chorus.council.council-42.events"
    assert NAMES.presence_inbound == "chorus_presence_in"
    assert NAMES.presence_in("t1") == "chorus.presence.in.t1"
    assert NAMES.agent_inbox("t1") == "_INBOX.t1"
