"""The agent-id rule: one pattern, and every reader of an agent id applies it."""

from __future__ import annotations

import msgspec
import pytest

from bridge.contract.agent_id import AgentId, check_agent_id, is_agent_id

VALID = ["0jig50gaxfdp5tlel09i565ab", "dns-10-0-1-6-8080", "agent_1", "A", "a" * 256]
INVALID = ["", "a=b", "a/b", "a.b", "a b", "a*", "a>", "é", "a\n", "a" * 257]


@pytest.mark.parametrize("agent_id", VALID)
def test_task_ids_and_dns_ids_are_agent_ids(agent_id: str) -> None:
    """A Swarm task ID and a DNS agent's id pass, as does anything of the same characters."""
    assert is_agent_id(agent_id)
    assert check_agent_id(agent_id) == agent_id


@pytest.mark.parametrize("agent_id", INVALID)
def test_anything_a_key_or_a_token_could_not_be_is_refused(agent_id: str) -> None:
    """`=` and `/` are KV-key characters but not agent-id ones: one side could write such an
    id and the other would refuse it, so both refuse it."""
    assert not is_agent_id(agent_id)
    with pytest.raises(ValueError, match="agent id"):
        check_agent_id(agent_id)


@pytest.mark.parametrize("agent_id", INVALID)
def test_a_struct_field_of_type_agent_id_refuses_the_same(agent_id: str) -> None:
    """Decoding applies the same rule as `is_agent_id`."""

    class Holder(msgspec.Struct):
        agent_id: AgentId

    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode({"agent_id": agent_id}), type=Holder)
