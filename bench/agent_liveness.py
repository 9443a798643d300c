"""Leaving seen at once: kill -9 of an agent process, until the bridge announces it off the
bus (`updated`, `on_bus: false`), p50 and p95 over 20 kills.

Subject: nats-callout.conf and `chorus-bridge run` serving the callout, which follows the
server's advisories of the agents' connections: the last one closing is a departure. Baseline,
in the same run: nats.conf alone (no callout: agents share one user, and the server cannot say
which agent a connection was), where the presence entry's 15 s TTL tells. Each mode runs 20
agents (docs/examples/agent.py, bridge.agent) in processes of their own, discovered as known
endpoints on 127.0.0.1; the subject's are killed one after another, the baseline's all at once
(each waits out its TTL). Timed from the SIGKILL to the announcement's arrival at a
coordinator.

Target: p95 < 1 s with the callout.

    python bench/agent_liveness.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from _agents import agent_env, agent_ids, agent_script, stack
from common import Bench, Child, Series, arguments, child_process, main, quiet_logs

LIMIT_P95_S = 1.0


async def _wait(predicate: object, timeout: float) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("waited too long")
        await asyncio.sleep(0.005)


async def kills(directory: Path, count: int, *, callout: bool) -> Series:
    name = "callout: advisory" if callout else "no callout: the 15 s TTL (baseline)"
    series = Series(name)
    ids = agent_ids(count)
    async with stack(directory, count, callout=callout) as s, contextlib.AsyncExitStack() as run:
        agents: list[Child] = []
        for agent_id in ids:
            agent = await run.enter_async_context(
                child_process(agent_id, agent_script(), env=agent_env(s.server, agent_id))
            )
            agents.append(agent)
        for agent in agents:
            await agent.line("joined as", timeout=30)
        await _wait(lambda: s.on_bus == set(ids), timeout=30)
        killed: dict[str, float] = {}
        for agent_id, agent in zip(ids, agents, strict=True):
            killed[agent_id] = time.perf_counter()
            agent.proc.kill()
            if callout:  # one after another: each kill is timed alone
                await _wait(lambda a=agent_id: s.off_bus_at.get(a, 0) > killed[a], timeout=20)
        await _wait(lambda: all(s.off_bus_at.get(a, 0) > killed[a] for a in ids), timeout=40)
        for agent in agents:
            await agent.proc.wait()
        for agent_id in ids:
            series.add(s.off_bus_at[agent_id] - killed[agent_id])
    return series


async def run() -> int:
    args = arguments(__doc__ or "")
    quiet_logs()
    count = 5 if args.quick else 20
    bench = Bench("Agents: kill -9 until announced off the bus")
    with tempfile.TemporaryDirectory(prefix="bench-liveness-") as tmp:
        subject = await kills(Path(tmp) / "callout", count, callout=True)
        baseline = await kills(Path(tmp) / "open", count, callout=False)
    bench.table("kill -9 -> on_bus false announced", [subject, baseline], baseline)
    bench.target(
        "advisory p95 < 1 s",
        subject.p95 < LIMIT_P95_S,
        f"p95 {subject.p95 * 1000:.0f} ms (baseline p95 {baseline.p95 * 1000:.0f} ms)",
    )
    return bench.exit_code()


if __name__ == "__main__":
    main(run, limit=600)
