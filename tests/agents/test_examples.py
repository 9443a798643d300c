"""docs/agents.md's examples, run as an operator would run them, against the real bridge and
nats-server in the callout mode: the agent library's, the plain NATS client's and the HTTP
agent's join one council, each claims its role, and the bus agents leave on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.agent import connect_agent
from bridge.contract.messages import (
    COUNCIL_STATE_DECODER,
    CouncilOpportunity,
    CouncilRequest,
    Role,
    decode_reply,
    encode,
)
from tests.agents.support import NAMES, ROOT, callout_stack
from tests.callout_support import PASSWORDS
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)

EXAMPLES = ROOT / "docs" / "examples"
OPPORTUNITY = CouncilOpportunity(
    id="council-docs",
    roles=[Role(name="tpm", core=True), Role(name="qa-engineer"), Role(name="architect")],
)


def test_the_documented_examples_are_the_files() -> None:
    text = (ROOT / "docs" / "agents.md").read_text()
    blocks = dict(re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```", text, re.S))
    assert sorted(blocks) == sorted(f"docs/examples/{p.name}" for p in EXAMPLES.glob("*.py"))
    for path, block in blocks.items():
        assert block == (ROOT / path).read_text(), f"docs/agents.md's {path} is not the file"


class Example:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []

    async def line(self, pattern: str) -> str:
        for seen in self.out:
            if re.search(pattern, seen):
                return seen
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            while raw := await self.proc.stdout.readline():
                self.out.append(raw.decode().strip())
                if re.search(pattern, self.out[-1]):
                    return self.out[-1]
        raise AssertionError(f"the example ended before {pattern!r}: {self.out}")

    async def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        async with asyncio.timeout(15):
            return await self.proc.wait(), (await self.proc.stderr.read()).decode()


@contextlib.asynccontextmanager
async def example(name: str, python: str = sys.executable, **env: str) -> AsyncIterator[Example]:
    proc = await asyncio.create_subprocess_exec(
        python,
        str(EXAMPLES / name),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Example(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_the_examples_join_one_council(tmp_path: Path) -> None:
    http_port = free_port()
    async with callout_stack(tmp_path, 2, ports=[http_port]) as stack:
        library_id, plain_id, http_id = stack.agent_ids
        bus = {"NATS_URL": stack.server.url, "AGENT_PASS": PASSWORDS["AGENT_PASS"]}
        async with (
            example("agent.py", AGENT_ID=library_id, AGENT_ROLES="tpm", **bus) as library,
            example(
                "plain_nats_agent.py", AGENT_ID=plain_id, AGENT_ROLE="qa-engineer", **bus
            ) as plain,
            example(
                "http_agent.py",
                AGENT_ID=http_id,
                AGENT_ROLE="architect",
                HOST="127.0.0.1",
                PORT=str(http_port),
            ) as http,
        ):
            await library.line(f"joined as {library_id}")
            await plain.line(f"joined as {plain_id}")
            await wait_for(
                lambda: {library_id, plain_id} <= stack.on_bus(), timeout=10, what="on the bus"
            )
            answer = await stack.coordinator.request(
                NAMES.broadcast, encode(OPPORTUNITY), timeout=20
            )
            report = decode_reply(answer.data)
            assert not hasattr(report, "error"), report
            assert (report.via_bus, report.via_http, report.failed) == (2, 1, [])
            await library.line(r"council-docs tpm: granted")
            await plain.line(r"'granted': True")
            await http.line(r"council-docs: claimed architect")

            async def holders() -> dict[str, str | None]:
                request = encode(CouncilRequest(opportunity_id=OPPORTUNITY.id))
                msg = await stack.coordinator.request(NAMES.council, request, timeout=5)
                return {r.name: r.holder for r in COUNCIL_STATE_DECODER.decode(msg.data).roles}

            async def held() -> bool:
                return await holders() == {
                    "tpm": library_id,
                    "qa-engineer": plain_id,
                    "architect": http_id,
                }

            await wait_for(held, timeout=10, what="each example holding its role")
            async with connect_agent(
                stack.server.url,
                http_id,  # from 127.0.0.1 too, and named: the callout admits it as that agent
                user="agent",
                password=PASSWORDS["AGENT_PASS"],
            ) as asker:
                reply = await asker.request(library_id, "hello")
            assert reply.text() == f"{library_id} read: hello"
            for bus_example, agent_id in ((library, library_id), (plain, plain_id)):
                status, stderr = await bus_example.stop()
                assert status == 0 and "Traceback" not in stderr, stderr
                await wait_for(stack.announced(agent_id, False), timeout=5, what="its leave")
