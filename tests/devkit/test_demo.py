"""The demo, end to end, small; and `demo --keep` explored as its output says."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import nats
import pytest

from bridge.devkit.demo import run_demo
from tests.cli.test_cli import env
from tests.conftest import live_keys

pytestmark = pytest.mark.timeout(120)


async def test_demo_reaches_every_agent() -> None:
    """With 8 agents, 4 on the bus: 8 discovered, 4 on the bus, 8 of 8 reached, every role
    held (the non-core one too), each by another agent, and the council activated."""
    lines: list[str] = []
    result = await run_demo(8, 4, say=lines.append)
    assert result.discovered == 8 and result.on_bus == 4
    report = result.report
    assert report is not None
    assert (report.total_agents, report.success_count) == (8, 8)
    assert (report.via_bus, report.via_http, report.failed) == (4, 4, [])
    assert set(result.holders) == {
        "tpm",
        "senior-software-architect",
        "backend-developer",
        "qa-engineer",
    }
    holders = list(result.holders.values())
    assert None not in holders and len(set(holders)) == 4
    assert result.activated_ms is not None
    assert any(re.search(r"council-42 activated \d+ ms after the broadcast", x) for x in lines)
    assert any("reached 8 of 8 agents" in line for line in lines)
    assert any("discovered 8 of 8 agents via the Swarm API" in line for line in lines)
    assert any(re.search(r"role +qa-engineer +held by \w+", line) for line in lines)


async def test_demo_keep_runs_until_ctrl_c() -> None:
    """`demo --keep` stays up after its report, prints the nats commands with the URL (which
    reach the demo's bucket), and stops cleanly, exit 0, on Ctrl-C."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "demo",
        "--agents",
        "4",
        "--on-bus",
        "2",
        "--keep",
        env=env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        out: list[str] = []
        async with asyncio.timeout(60):
            while not any("/metrics" in line for line in out):
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo ended: " + "".join(out)
                out.append(line)
        command = next(line for line in out if "kv ls chorus_agents" in line)
        url = re.search(r"nats --server (\S+) kv ls", command)
        assert url is not None
        nc = await nats.connect(url.group(1), connect_timeout=2, max_reconnect_attempts=1)
        try:
            kv = await nc.jetstream().key_value("chorus_agents")
            keys = await live_keys(kv)
            assert len(keys) == 4
            assert any(f"kv get chorus_agents {min(keys)}" in line for line in out)
        finally:
            await nc.close()
        assert proc.returncode is None
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0
        assert b"stopped cleanly" in rest
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_demo_keep_lets_a_newcomer_kill_a_holder() -> None:
    """`kill` on the kept demo's stdin: the holder of tpm leaves, the council is degraded,
    an idle agent takes the role and the council is active again."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "demo",
        "--agents",
        "8",
        "--on-bus",
        "6",
        "--keep",
        env=env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        out: list[str] = []

        async def until(text: str, after: int = 0) -> None:
            """Until a line from the `after`-th on holds `text`."""
            async with asyncio.timeout(60):
                while not any(text in line for line in out[after:]):
                    line = (await proc.stdout.readline()).decode()  # type: ignore[union-attr]
                    assert line, "the demo ended: " + "".join(out)
                    out.append(line)

        await until("/metrics")
        holder = re.search(r"core role tpm +held by (\w+)", "".join(out))
        assert holder is not None
        proc.stdin.write(b"kill\n")
        await proc.stdin.drain()
        try:
            await until("event: activated")
        except TimeoutError:
            raise AssertionError("".join(out)) from None
        events = [line.split("event: ")[1].split()[0] for line in out if "event: " in line]
        assert events == ["released", "degraded", "granted", "activated"]
        assert any(f"killing {holder.group(1)} (holds tpm)" in line for line in out)
        said = "".join(out)
        assert said.index("event: degraded") < said.index("on the bus and idle, claims tpm")
        # A role that is not core: the table the demo prints shows its new holder.
        await until("role      qa-engineer", after=len(out))  # the kill's own table
        qa = re.search(r"role +qa-engineer +held by (\w+)", out[-1])
        assert qa is not None
        shown = len(out)
        proc.stdin.write(f"kill {qa.group(1)}\n".encode())
        await proc.stdin.drain()
        await until("role      qa-engineer", after=shown)
        table = next(line for line in out[shown:] if "role      qa-engineer" in line)
        assert "(nobody)" not in table and qa.group(1) not in table, "".join(out[shown:])
        os.killpg(proc.pid, signal.SIGINT)
        await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
