"""A broadcast to 1,000 agents reachable by HTTP only, on loopback, at three answer latencies.

The agents (SimFleet) run in a process of their own, one listening socket per loopback address
from 127.5.0.1, so their CPU is not the broadcaster's. For each latency (0, 10 and 50 ms per
answer) the same 1,000 POSTs are made by:
- the Broadcaster (its bus step runs against a real nats-server; with no agent on the bus it
  costs next to nothing), with the bridge's HTTP to agents, `AgentHTTP(settings)`;
- the same with CPython's collector thresholds left as they are, for reference: what
  `bridge.broadcast.gc_tuning.fewer_collections` saves;
- a bare httpx fan-out, asyncio.gather + Semaphore(256) around `client.post`, on
  `AgentHTTP.client` (the same transport and limits);
- a bare httpx fan-out with a default httpx.AsyncClient and the same limits;
- the same fan-out straight on an aiohttp.ClientSession (no httpx): for reference;
- one POST after another with the same client: the Broadcaster itself with
  BRIDGE_HTTP_CONCURRENCY=1 (at 50 ms on a subset of 100 agents, the time per call
  extrapolated to 1,000 and labelled so).
Every measurement uses a fresh client, so every run opens its connections as a broadcast does.
The CPU time this process spends per run is printed too: where it is close to the wall time,
the fan-out is bound by the client's CPU, not by the agents' latency.

Targets: the Broadcaster's median within 1.5x of the faster bare httpx fan-out at every latency;
and, where agents take time to answer (10 and 50 ms), at least 20x faster than sequential
calls. With agents that answer at once a fan-out on loopback is bound by CPU (client and
agents share 2 cores), so concurrency cannot buy much there: that ratio is reported, not judged.

    python bench/broadcast_http.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import unittest.mock
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import nats
from common import (
    BENCH,
    Bench,
    Series,
    arguments,
    child_process,
    main,
    opportunity,
    quiet_logs,
    timed,
)
from nats.aio.client import Client as NATS

import bridge.broadcast.broadcaster
from bridge.broadcast.acks import AckDesk
from bridge.broadcast.broadcaster import Broadcaster
from bridge.broadcast.targets import Target
from bridge.config import Settings
from bridge.contract.messages import ClaimAnswer, CouncilOpportunity, Via, encode
from bridge.contract.names import Names
from bridge.devkit.sim import allocate_addresses
from bridge.edges.agent_http import AgentHTTP
from bridge.edges.nats_server import EmbeddedNats

AGENTS = 1_000
BASE = "127.5.0.1"
SPEEDUP_MIN = 20.0
RATIO_LIMIT = 1.5
FLEET_START_TIMEOUT = 120.0


class _NoCouncils:
    """Delivery alone is measured here: no opportunity is recorded and the claims in the
    agents' answers are not arbitrated (bench/council.py measures the councils)."""

    async def record(self, opportunity: CouncilOpportunity) -> None:
        return None

    async def claim(
        self, opportunity_id: str, agent_id: str, role: str, *, via: Via
    ) -> ClaimAnswer | None:
        return None


class Run:
    """The measurements at one latency, against one fleet."""

    def __init__(self, nc: NATS, settings: Settings, targets: list[Target]) -> None:
        self.nc = nc
        self.settings = settings
        self.targets = targets
        self.names = Names(prefix="bench", agents_bucket="bench_agents")
        self.number = 0
        self.unreached: list[str] = []

    def _next(self) -> CouncilOpportunity:
        self.number += 1
        return opportunity(f"bench-http-{self.number}")

    def _check(self, what: str, ok: int, expected: int) -> None:
        if ok != expected:
            self.unreached.append(f"{what}: {ok} of {expected}")

    async def _broadcast(self, settings: Settings, targets: list[Target], what: str) -> None:
        acks = AckDesk(self.nc, self.names)
        async with AgentHTTP(settings) as http, acks.taking():
            broadcaster = Broadcaster(
                self.nc,
                self.names,
                settings,
                http,
                lambda: targets,
                acks=acks,
                councils=_NoCouncils(),
            )
            report = await broadcaster.broadcast(self._next())
        self._check(what, report.success_count, len(targets))

    async def broadcaster(self) -> None:
        await self._broadcast(self.settings, self.targets, "broadcaster")

    async def broadcaster_default_gc(self) -> None:
        """The Broadcaster with CPython's collector thresholds as they are: what
        bridge.broadcast.gc_tuning.fewer_collections saves."""
        with unittest.mock.patch.object(
            bridge.broadcast.broadcaster, "fewer_collections", contextlib.nullcontext
        ):
            await self._broadcast(self.settings, self.targets, "broadcaster, default gc")

    def _default_client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(
            max_connections=self.settings.http_concurrency,
            max_keepalive_connections=self.settings.http_concurrency,
        )
        return httpx.AsyncClient(timeout=self.settings.http_timeout, limits=limits, trust_env=False)

    async def _fan_out(self, client: httpx.AsyncClient, what: str) -> None:
        offer = self._next()
        payload = encode(offer)
        headers = {"Idempotency-Key": offer.id, "Content-Type": "application/json"}
        path = self.settings.opportunity_path
        limit = asyncio.Semaphore(self.settings.http_concurrency)

        async def post(target: Target) -> bool:
            async with limit:
                try:
                    response = await client.post(
                        f"{target.endpoint}{path}", content=payload, headers=headers
                    )
                except httpx.HTTPError:
                    # httpcore's pool can time out connecting on a loaded machine: that call
                    # is counted as not delivered (and fails the run), not a crash.
                    return False
                return response.is_success

        async with client:
            results = await asyncio.gather(*(post(t) for t in self.targets))
        self._check(what, sum(results), len(self.targets))

    async def bare_same_client(self) -> None:
        await self._fan_out(AgentHTTP(self.settings).client, "bare fan-out, AgentHTTP.client")

    async def bare_default_httpx(self) -> None:
        await self._fan_out(self._default_client(), "bare fan-out, default httpx")

    async def bare_aiohttp(self) -> None:
        """The same fan-out straight on aiohttp, without httpx's layer: the floor."""
        offer = self._next()
        payload = encode(offer)
        headers = {"Idempotency-Key": offer.id, "Content-Type": "application/json"}
        path = self.settings.opportunity_path
        limit = asyncio.Semaphore(self.settings.http_concurrency)
        connector = aiohttp.TCPConnector(limit=self.settings.http_concurrency)
        timeout = aiohttp.ClientTimeout(total=self.settings.http_timeout)

        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def post(target: Target) -> bool:
                async with (
                    limit,
                    session.post(
                        f"{target.endpoint}{path}", data=payload, headers=headers
                    ) as response,
                ):
                    await response.read()
                    return response.ok

            results = await asyncio.gather(*(post(t) for t in self.targets))
        self._check("bare fan-out, aiohttp", sum(results), len(self.targets))

    async def sequential(self, subset: int) -> None:
        """One POST after another: the Broadcaster with one call in flight."""
        one_at_a_time = self.settings.replace(http_concurrency=1)
        await self._broadcast(one_at_a_time, self.targets[:subset], "sequential")


async def measure(
    bench: Bench, nc: NATS, delay: float, reps: int, seq_subset: int, seq_reps: int, tmp: Path
) -> bool:
    # httpcore's pool is slow on a fan-out to many hosts (seconds per run): fewer runs of it.
    slow_reps = min(reps, 3)
    """One latency: returns whether its targets were met."""
    fleet_cmd = [
        sys.executable,
        str(BENCH / "_fleet.py"),
        "--agents",
        str(AGENTS),
        "--base",
        BASE,
        "--delay",
        str(delay),
    ]
    async with child_process("fleet", fleet_cmd, stderr_to=tmp / "fleet.log") as fleet:
        port = int(await fleet.line("READY", FLEET_START_TIMEOUT))
        targets = [
            Target(agent_id=f"sim-{i}", endpoint=f"http://{address}:{port}")
            for i, address in enumerate(allocate_addresses(AGENTS, BASE))
        ]
        run = Run(nc, Settings(), targets)
        scale = AGENTS / seq_subset
        label = f"{delay * 1000:g} ms"
        broadcaster = Series("Broadcaster.broadcast")
        default_gc = Series("Broadcaster, default gc thresholds", note="(no target)")
        same = Series("bare httpx fan-out, AgentHTTP.client")
        default = Series("bare httpx fan-out, default httpx.AsyncClient")
        floor = Series("bare fan-out, aiohttp.ClientSession", note="(no target)")
        sequential = Series(
            "sequential: Broadcaster, concurrency 1",
            note=(f"EXTRAPOLATED: {seq_subset} agents x{scale:g}" if seq_subset < AGENTS else ""),
        )
        fan_outs: list[tuple[Series, Callable[[], Awaitable[None]]]] = [
            (broadcaster, run.broadcaster),
            (default_gc, run.broadcaster_default_gc),
            (same, run.bare_same_client),
            (floor, run.bare_aiohttp),
            (default, run.bare_default_httpx),
        ]
        for _series, call in fan_outs:  # warm-up: imports, the server's first connections
            await call()
        await run.sequential(min(seq_subset, 20))
        cpu: dict[str, list[float]] = {}
        for index in range(reps):
            shift = index % len(fan_outs)
            for series, call in fan_outs[shift:] + fan_outs[:shift]:
                if series is not default or default.n < slow_reps:
                    started = time.process_time()
                    await timed(series, call)
                    cpu.setdefault(series.name, []).append(time.process_time() - started)
        for _ in range(seq_reps):
            part = Series("part")
            await timed(part, lambda: run.sequential(seq_subset))
            sequential.add(part.seconds[0] * scale)

    bench.table(
        f"{AGENTS:,} HTTP agents answering after {label}",
        [broadcaster, default_gc, same, default, floor, sequential],
        broadcaster,
    )
    for series in (broadcaster, default_gc, same, floor):
        spent = statistics.median(cpu[series.name])
        bench.info(
            f"[{label}] CPU of this process, {series.name}",
            f"{spent * 1000:.0f} ms per run of {AGENTS:,} calls "
            f"({spent / AGENTS * 1e6:.0f} us per call; wall {series.median * 1000:.0f} ms)",
        )
    fastest = min(same, default, key=lambda s: s.median)
    ratio = broadcaster.median / fastest.median
    speedup = sequential.median / broadcaster.median
    ok = bench.target(
        f"[{label}] Broadcaster <= {RATIO_LIMIT:g}x bare fan-out (median)",
        ratio <= RATIO_LIMIT,
        f"{broadcaster.median * 1000:.0f} ms / "
        f"{fastest.median * 1000:.0f} ms ({fastest.name}) = {ratio:.2f}x",
    )
    seq_text = (
        f"sequential {sequential.median * 1000:.0f} ms"
        f"{' (extrapolated)' if seq_subset < AGENTS else ''} / Broadcaster "
        f"{broadcaster.median * 1000:.0f} ms = {speedup:.1f}x faster"
    )
    if delay > 0:
        ok &= bench.target(
            f"[{label}] Broadcaster >= {SPEEDUP_MIN:g}x faster than sequential",
            speedup >= SPEEDUP_MIN,
            seq_text,
        )
    else:
        bench.info(
            f"[{label}] speed-up over sequential (no target: CPU-bound on loopback, "
            "~2x is the physical best with instant answers)",
            seq_text,
        )
    ok &= bench.target(
        f"[{label}] every call reached its agent",
        not run.unreached,
        "all delivered" if not run.unreached else "; ".join(run.unreached),
    )
    return ok


async def run() -> int:
    args = arguments(__doc__ or "")
    quiet_logs()
    reps = 3 if args.quick else 7
    bench = Bench(f"broadcast_http: {AGENTS:,} HTTP-only loopback agents")
    bench.say(
        f"agents: SimFleet in a separate process, {BASE} upward; client concurrency "
        f"{Settings().http_concurrency}; a fresh client per measurement"
    )
    # (answer delay, agents called sequentially, sequential repetitions)
    plan = [
        (0.0, AGENTS, 2 if args.quick else 3),
        (0.010, 100 if args.quick else AGENTS, 1 if args.quick else 2),
        (0.050, 100, 2 if args.quick else 3),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        async with EmbeddedNats(port=0, store_dir=Path(tmp) / "nats") as server:
            nc = await nats.connect(server.url, name="bench-broadcast-http")
            try:
                for delay, subset, seq_reps in plan:
                    await measure(bench, nc, delay, reps, subset, seq_reps, Path(tmp))
            finally:
                await nc.drain()
    return bench.exit_code()


if __name__ == "__main__":
    main(run, limit=900)
