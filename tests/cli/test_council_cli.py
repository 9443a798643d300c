"""`chorus-bridge council ID [--watch] [--json]` as a user runs it, against a running bridge."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
from nats.aio.client import Client as NATS

from bridge.cli.council import state_table
from bridge.config import Settings
from bridge.contract.messages import COUNCIL_STATE_DECODER, CouncilState, RoleState, encode
from bridge.devkit.emulator import EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.broadcast.test_broadcaster import stage
from tests.cli.test_cli import command, env
from tests.council.test_claims import OPPORTUNITY, Asker

pytestmark = pytest.mark.timeout(90)


async def test_council_prints_its_roles_and_follows_its_events(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    url, prefix = nats_server.url, settings.subject_prefix
    async with stage(settings, nats_server, swarm, 2, claim_policy=None) as s:
        asker = Asker(nc, s)
        await asker.start()
        a, b = (agent.id for agent in s.fleet.agents)
        await s.broadcast(nc, encode(OPPORTUNITY))
        assert (await asker.ask(a, "tpm")).granted
        code, out, err = await command(
            "council", OPPORTUNITY.id, NATS_URL=url, BRIDGE_SUBJECT_PREFIX=prefix
        )
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert lines[0].startswith(f"council {OPPORTUNITY.id}: active (active since ")
        assert lines[1].split() == ["ROLE", "CORE", "HOLDER"]
        assert lines[2].split() == ["tpm", "yes", a] and lines[3].split() == ["qa", "no", "-"]
        code, out, _ = await command(
            "council", OPPORTUNITY.id, "--json", NATS_URL=url, BRIDGE_SUBJECT_PREFIX=prefix
        )
        assert code == 0 and COUNCIL_STATE_DECODER.decode(out).roles[0].holder == a
        code, out, err = await command(
            "council", "council-none", NATS_URL=url, BRIDGE_SUBJECT_PREFIX=prefix
        )
        assert (code, out) == (1, "") and "no council 'council-none'" in err
        assert len(err.strip().splitlines()) == 1

        watch = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "council",
            OPPORTUNITY.id,
            "--watch",
            env=env(NATS_URL=url, BRIDGE_SUBJECT_PREFIX=prefix),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert watch.stdout is not None and watch.stderr is not None
        assert b"watching" in await asyncio.wait_for(watch.stderr.readline(), 20)
        assert (await asker.ask(b, "qa")).granted
        seen: list[str] = []
        while not any(line.split()[:1] == ["qa"] and b in line for line in seen):
            seen.append((await asyncio.wait_for(watch.stdout.readline(), 10)).decode())
        assert any(f"granted  qa {b}" in line for line in seen)
        watch.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(watch.wait(), 10) == 0


async def test_council_without_a_bridge_is_status_3(nats_server: EmbeddedNats, unique: str) -> None:
    code, out, err = await command(
        "council", "council-1", NATS_URL=nats_server.url, BRIDGE_SUBJECT_PREFIX=f"n{unique}"
    )
    assert (code, out) == (3, "")
    assert "no bridge is serving" in err and len(err.strip().splitlines()) == 1
    code, _out, err = await command("council")
    assert code == 64 and "usage" in err
    code, _out, err = await command("council", "bad id!")  # no broadcast could have it
    assert code == 64 and "no opportunity id" in err and len(err.strip().splitlines()) == 1


def test_a_degraded_council_says_when_it_was_last_active() -> None:
    roles = [RoleState(name="tpm", core=True, holder=None)]
    state = CouncilState(
        opportunity_id="council-1",
        state="degraded",
        roles=roles,
        activated_at="2026-12-08T02:29:25Z",
    )
    assert state_table(state).splitlines()[0] == (
        "council council-1: degraded (last activated 2026-12-08T02:29:25Z)"
    )
