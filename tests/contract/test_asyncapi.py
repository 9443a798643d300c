"""`chorus-bridge asyncapi`: the contract as AsyncAPI 3.0, current in docs/, valid for the
official parser."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import msgspec

from bridge.contract.asyncapi import asyncapi_document, asyncapi_yaml
from bridge.contract.messages import Agent, BroadcastReport, CouncilOpportunity
from bridge.contract.names import Names
from tests.cli.test_cli import command
from tests.js_support import JS_DIR, node_or_skip

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
NAMES = Names(prefix="chorus", agents_bucket="chorus_agents")


def test_docs_asyncapi_is_current() -> None:
    """docs/asyncapi.yaml is what the generator makes of the models today (regenerate it with
    `chorus-bridge asyncapi > docs/asyncapi.yaml`)."""
    assert DOC.read_text() == asyncapi_yaml(NAMES)


async def test_command_prints_the_document() -> None:
    """`chorus-bridge asyncapi` prints docs/asyncapi.yaml; --prefix renames every subject."""
    code, out, _ = await command("asyncapi")
    assert code == 0 and out == DOC.read_text()
    code, out, _ = await command("asyncapi", "--prefix", "team7", "--bucket", "t7_agents")
    assert code == 0
    addresses = [c["address"] for c in msgspec.yaml.decode(out)["channels"].values()]
    assert "team7.bridge.broadcast" in addresses and "$KV.t7_agents.{agentId}" in addresses
    assert not any(a and a.startswith("chorus.") for a in addresses)


def test_every_subject_bucket_and_payload() -> None:
    """Each subject and bucket key pattern of DESIGN.md, with its payload's schema."""
    doc = asyncapi_document(NAMES)
    channels = {c["address"]: c for c in doc["channels"].values()}
    expected = {
        "chorus.agents.announce": "Announcement",
        "chorus.bridge.broadcast": "CouncilOpportunity",
        "chorus.council.opportunities": "CouncilOpportunity",
        "chorus.council.{opportunityId}.acks.{agentId}": "Ack",
        "chorus.council.{opportunityId}.claims.{agentId}": "Claim",
        "$KV.chorus_agents.{agentId}": "Agent",
        "$KV.chorus_presence.{agentId}": "PresenceEntry",
        "$KV.chorus_bridge.leader": "Lease",
        "$SRV.PING.chorus-bridge": "MicroPing",
        "$SRV.INFO.chorus-bridge": "MicroInfo",
        "$SRV.STATS.chorus-bridge": "MicroStats",
        # DESIGN.md, "Councils"
        "chorus.bridge.council": "CouncilRequest",
        "chorus.council.{opportunityId}.events": "CouncilEvent",
        "$KV.chorus_councils.{opportunityId}": "CouncilRecord",
        "$KV.chorus_councils.{opportunityId}.{role}": "Holder",
        "$KV.chorus_councils.{opportunityId}.agents.{agentId}": "Seat",
    }
    for address, message in expected.items():
        assert list(channels[address]["messages"]) == [message], address
    by_id = doc["channels"]
    assert set(by_id["broadcastReply"]["messages"]) == {"BroadcastReport", "ErrorReply"}
    assert set(by_id["councilReply"]["messages"]) == {"CouncilState", "ErrorReply"}
    assert set(by_id["claimAnswer"]["messages"]) == {"ClaimAnswer"}
    assert doc["operations"]["receiveClaim"]["reply"]["channel"] == {
        "$ref": "#/channels/claimAnswer"
    }
    assert schemas_pattern(doc, "Role", "name") == "^[A-Za-z0-9_-]{1,64}$"
    assert set(channels["chorus.council.{opportunityId}.acks.{agentId}"]["parameters"]) == {
        "opportunityId",
        "agentId",
    }
    schemas = doc["components"]["schemas"]
    for model in (Agent, CouncilOpportunity, BroadcastReport):
        assert set(schemas[model.__name__]["properties"]) == set(model.__struct_fields__)
    assert schemas["CouncilOpportunity"]["properties"]["id"]["pattern"] == "^[A-Za-z0-9_-]{1,128}$"
    reply = doc["operations"]["serveBroadcast"]["reply"]
    assert reply["channel"] == {"$ref": "#/channels/broadcastReply"}


def schemas_pattern(doc: dict[str, Any], model: str, field: str) -> str:
    pattern: str = doc["components"]["schemas"][model]["properties"][field]["pattern"]
    return pattern


def test_subjects_come_from_names() -> None:
    """A subject that bridge/contract/names.py defines is taken from there, arguments and all."""

    @dataclasses.dataclass(frozen=True)
    class Renamed(Names):
        def acks(self, opportunity_id: str, agent_id: str = "*") -> str:
            return f"{self.prefix}.acks.{agent_id}.{opportunity_id}"

    doc = asyncapi_document(Renamed(prefix="p", agents_bucket="b"))
    assert doc["channels"]["acks"]["address"] == "p.acks.{agentId}.{opportunityId}"


async def _validate(path: Path) -> tuple[int, dict[str, object]]:
    proc = await asyncio.create_subprocess_exec(
        node_or_skip(),
        str(JS_DIR / "validate-asyncapi.mjs"),
        str(path),
        cwd=JS_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    assert out, err.decode()
    result: dict[str, object] = json.loads(out)
    return proc.returncode, result


async def test_official_parser_accepts_it(tmp_path: Path) -> None:
    """@asyncapi/parser reads docs/asyncapi.yaml without an error, every channel and operation
    included; a broken copy is refused (the check can fail)."""
    code, result = await _validate(DOC)
    assert code == 0 and result["valid"] is True, result["diagnostics"]
    assert result["version"] == "3.0.0"
    doc = asyncapi_document(NAMES)
    assert result["operations"] == list(doc["operations"])
    assert len(result["channels"]) == len(doc["channels"])  # type: ignore[arg-type]
    broken = asyncapi_document(NAMES)
    broken["operations"]["receiveAck"]["action"] = "listen"
    (tmp_path / "broken.yaml").write_bytes(msgspec.yaml.encode(broken))
    code, result = await _validate(tmp_path / "broken.yaml")
    assert code == 1 and result["valid"] is False
