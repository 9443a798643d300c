"""Councils through the real bridge: agents on the bus all claiming every role at once.

A fleet process (`bench/_fleet.py`) runs N agents, all on the bus, and an emulated Docker
Engine whose tasks are those agents; `chorus-bridge run` discovers them. Then, as a
coordinator:

1. activation, with 34 and with 1,000 agents: subscribe to `chorus.council.<id>.events`, send
   the broadcast request, and time until `activated` arrives. Every agent claims each of the 3
   roles (2 core) as a request the moment the opportunity reaches it (3,000 claims at 1,000).
   Targets: p95 < 100 ms with 34 agents, < 500 ms with 1,000.
2. arbitration per claim, with 1,000 agents: the benchmark itself sends the 3,000 claims of
   1,000 agents (each claiming 3 roles, on its own inbox, over 10 connections) for a recorded
   opportunity, timed from the first claim sent to the last answer; against the baseline, in
   the same run: the same 3,000 claims as bare KV creates of the same Holder keys (each
   expecting no previous revision, answered by the server) in a bucket of the same settings.
   Target: the arbitration's median <= 1.5x the bare creates' median. Also timed (no
   target): the same claims again once the race is over, every role held (no write during
   them: what the race's grants cost shows as the difference). The CPU time each
   process spent per claim (the bridge, the fleet, nats-server, this benchmark; /proc) is
   printed beside it: on a machine of few cores the bridge's share is what the ratio follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
from common import (
    BENCH,
    Bench,
    Series,
    arguments,
    child_process,
    cpu_seconds,
    main,
    opportunity,
    quiet_logs,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.bus.registry import read_bucket
from bridge.contract.buckets import councils_bucket, holder_key
from bridge.contract.messages import COUNCIL_EVENT_DECODER, REPORT_DECODER, Claim, encode
from bridge.contract.names import Names
from bridge.edges.kv import ensure_bucket
from bridge.edges.nats_server import EmbeddedNats

NAMES = Names(prefix="chorus", agents_bucket="chorus_agents")
BASE = {34: "127.7.0.1", 1000: "127.8.0.1"}
CONNECTIONS = 10
START_TIMEOUT = 240.0
WAIT = 30.0
RATIO_LIMIT = 1.5
ACTIVATION_LIMIT_S = {34: 0.100, 1000: 0.500}
ROLES = [role.name for role in opportunity("x").roles]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _claims_decided(port: int) -> float:
    """Claims the bridge granted or refused so far (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    prefixes = (
        'chorus_bridge_claims_total{outcome="granted"',
        'chorus_bridge_claims_total{outcome="refused"',
    )
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefixes))


async def claims_decided(port: int, count: float) -> None:
    """Until the bridge has decided `count` claims: each race starts on an idle bridge."""
    async with asyncio.timeout(WAIT):
        while True:
            if await asyncio.to_thread(_claims_decided, port) >= count:
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def bridge_with_fleet(
    server: EmbeddedNats, agents: int, tmp: Path
) -> AsyncIterator[tuple[int, dict[str, int]]]:
    """The fleet process and `chorus-bridge run` on it, until every agent is on the bus;
    yields the port of the bridge's /metrics and the pids of the bridge and the fleet."""
    sock = tmp / f"docker-{agents}.sock"
    fleet_cmd = [
        sys.executable,
        str(BENCH / "_fleet.py"),
        *("--agents", str(agents), "--base", BASE[agents], "--on-bus", str(agents)),
        *("--nats-url", server.url, "--emulator-socket", str(sock), "--claims-for", "race-"),
    ]
    metrics_port = free_port()
    async with child_process("fleet", fleet_cmd, stderr_to=tmp / "fleet.log") as fleet:
        port = await fleet.line("READY", START_TIMEOUT)
        env = {
            "NATS_URL": server.url,
            "WHOOSH_DOCKER_HOST": f"unix://{sock}",
            "DISCOVERY_METHOD": "swarm",
            "WHOOSH_DNS_NAMES": "",
            "WHOOSH_AGENT_PORT": port,
            "BRIDGE_LISTEN": f"127.0.0.1:{metrics_port}",
            "BRIDGE_LOG_FORMAT": "console",
            "BRIDGE_LOG_LEVEL": "warning",
        }
        bridge_cmd = [str(Path(sys.executable).parent / "chorus-bridge"), "run"]
        log = tmp / f"bridge-{agents}.log"
        async with child_process("chorus-bridge run", bridge_cmd, env=env, stderr_to=log) as b:
            await _all_on_bus(server.url, agents)
            yield metrics_port, {"bridge": b.pid, "fleet": fleet.pid}
            if await b.stop() != 0:
                sys.stderr.write(log.read_text()[-4000:])


async def _all_on_bus(url: str, agents: int) -> None:
    nc = await nats.connect(url)
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                try:
                    found, _ = await read_bucket(
                        await nc.jetstream().key_value(NAMES.agents_bucket)
                    )
                except Exception:  # the bucket is not there yet
                    found = {}
                if sum(a.on_bus for a in found.values()) == agents:
                    return
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def activation(nc: NATS, opportunity_id: str) -> float:
    """Seconds from the broadcast request to the council's `activated` event."""
    activated = asyncio.Event()

    async def on_event(msg: Msg) -> None:
        if COUNCIL_EVENT_DECODER.decode(msg.data).event == "activated":
            activated.set()

    sub = await nc.subscribe(NAMES.council_events(opportunity_id), cb=on_event)
    await nc.flush()
    started = time.perf_counter()
    reply = asyncio.ensure_future(
        nc.request(NAMES.broadcast, encode(opportunity(opportunity_id)), timeout=WAIT)
    )
    async with asyncio.timeout(WAIT):
        await activated.wait()
    took = time.perf_counter() - started
    REPORT_DECODER.decode((await reply).data)
    await sub.unsubscribe()
    return took


class Claimers:
    """1,000 agents' claims (or bare creates), sent over CONNECTIONS connections at once,
    each answered on its agent's own inbox; timed from the first sent to the last answer."""

    def __init__(self, conns: list[NATS], agent_ids: list[str]) -> None:
        self._conns = conns
        self._agents = agent_ids
        self._tokens = [uuid.uuid4().hex[:10] for _ in conns]  # one inbox token per connection
        self._numbers = itertools.count()

    async def run(self, subject_of: dict[str, str], expect: bool) -> tuple[float, int]:
        """(seconds, answers granted or stored): `subject_of` maps a role to its subject
        prefix; `expect` adds a header that expects no previous revision (a bare create)."""
        pending = len(self._agents) * len(ROLES)
        done = asyncio.Event()
        stored = 0

        async def on_answer(msg: Msg) -> None:
            nonlocal pending, stored
            data = msg.data
            stored += b'"granted":true' in data or (b'"seq"' in data and b'"error"' not in data)
            pending -= 1
            if pending == 0:
                done.set()

        subs = [
            await c.subscribe(f"_INBOX.*.{token}.*", cb=on_answer)
            for c, token in zip(self._conns, self._tokens, strict=True)
        ]
        for c in self._conns:
            await c.flush()
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"} if expect else None
        started = time.perf_counter()
        for index, agent_id in enumerate(self._agents):
            conn = self._conns[index % len(self._conns)]
            token = self._tokens[index % len(self._conns)]
            for role in ROLES:
                reply = f"_INBOX.{agent_id}.{token}.{next(self._numbers)}"
                body = encode(Claim(role=role, agent_id=agent_id))
                subject = subject_of[role].replace("{agent}", agent_id)
                await conn.publish(subject, body, reply=reply, headers=headers)
        async with asyncio.timeout(WAIT):
            await done.wait()
        took = time.perf_counter() - started
        for sub in subs:
            await sub.unsubscribe()
        return took, stored


class CpuUse:
    """CPU seconds spent by each of some processes, summed over the runs of each series."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self.spent: dict[tuple[str, str], float] = {}

    @contextlib.contextmanager
    def counting(self, series: str) -> Iterator[None]:
        before = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        yield
        for name, pid in self._pids.items():
            key = (series, name)
            self.spent[key] = self.spent.get(key, 0.0) + cpu_seconds(pid) - before[name]

    def report(self, bench: Bench, claims: int) -> None:
        """One line per series: CPU microseconds per claim of each process."""
        for series in dict.fromkeys(series for series, _ in self.spent):
            parts = [
                f"{name} {self.spent[(series, name)] / claims * 1e6:.1f} us" for name in self._pids
            ]
            bench.info(f"CPU per claim, {series}", ", ".join(parts))


async def measure_arbitration(
    bench: Bench, nc: NATS, url: str, reps: int, pids: dict[str, int]
) -> None:
    agents, _ = await read_bucket(await nc.jetstream().key_value(NAMES.agents_bucket))
    conns = [await nats.connect(url, name=f"bench-claims-{i}") for i in range(CONNECTIONS)]
    bare_names = Names(prefix="bare", agents_bucket="bare_agents")
    await ensure_bucket(nc, councils_bucket(bare_names))  # the same settings, another name
    claimers = Claimers(conns, sorted(agents))
    arbitrated = Series("arbitration (bridge), per 1,000 claims")
    bare = Series("bare KV create, per 1,000 claims")
    held = Series("the same claims again, roles held, per 1,000")
    claims = len(agents) * len(ROLES)
    cpu = CpuUse(pids)
    try:
        for rep in range(reps + 1):
            arb_id, bare_id = f"arb-{rep}", f"bare-{rep}"
            await nc.request(NAMES.broadcast, encode(opportunity(arb_id)), timeout=WAIT)
            claimed = {r: NAMES.claims(arb_id, "{agent}") for r in ROLES}
            race = [(arbitrated, claimed, False), (held, claimed, False)]
            keys = {r: f"$KV.bare_councils.{holder_key(bare_id, r)}" for r in ROLES}
            creates = [(bare, keys, True)]
            for series, subjects, expect in race + creates if rep % 2 == 0 else creates + race:
                with cpu.counting(series.name):
                    took, stored = await claimers.run(subjects, expect)
                if stored != len(ROLES):
                    raise RuntimeError(f"{series.name}: {stored} stored or granted, not 3")
                if rep > 0:  # the first is a warm-up
                    series.add(took / claims * 1000)
    finally:
        for conn in conns:
            await conn.close()
    bench.table(f"{claims:,} claims of {len(ROLES)} roles at once", [arbitrated, held, bare], bare)
    cpu.report(bench, claims * (reps + 1))
    ratio = arbitrated.median / bare.median
    bench.target(
        "arbitration per claim <= 1.5x a bare KV create",
        ratio <= RATIO_LIMIT,
        f"{ratio:.2f}x ({arbitrated.median * 1e3:.1f} us vs {bare.median * 1e3:.1f} us a claim)",
    )


async def measure_activation(
    bench: Bench, nc: NATS, agents: int, reps: int, metrics_port: int
) -> None:
    series = Series(f"broadcast -> activated, {agents:,} agents")
    decided = await asyncio.to_thread(_claims_decided, metrics_port)
    for rep in range(reps + 1):
        took = await activation(nc, f"race-{agents}-{rep}")
        decided += agents * len(ROLES)
        await claims_decided(metrics_port, decided)  # the race's last claims, answered
        if rep > 0:
            series.add(took)
    bench.table(f"activation, {agents:,} agents each claiming 3 roles", [series], series)
    limit = ACTIVATION_LIMIT_S[agents]
    bench.target(
        f"activated p95 < {limit * 1000:.0f} ms with {agents:,} agents",
        series.p95 < limit,
        f"p95 {series.p95 * 1000:.1f} ms, median {series.median * 1000:.1f} ms",
    )


async def run() -> int:
    args = arguments(__doc__ or "")
    quiet_logs()
    reps = 5 if args.quick else 20
    bench = Bench("council: agents on the bus claiming every role, through the real bridge")
    with tempfile.TemporaryDirectory(prefix="bench-council-") as tmp_name:
        tmp = Path(tmp_name)
        async with EmbeddedNats(port=0, store_dir=tmp / "nats") as server:
            for agents in (34, 1000):
                async with bridge_with_fleet(server, agents, tmp) as (metrics_port, pids):
                    nc = await nats.connect(server.url, name="bench-coordinator")
                    try:
                        await measure_activation(bench, nc, agents, reps, metrics_port)
                        if agents == 1000:
                            pids["nats-server"] = server.pid or 0
                            pids["benchmark"] = os.getpid()
                            await measure_arbitration(bench, nc, server.url, reps, pids)
                    finally:
                        await nc.drain()
    return bench.exit_code()


if __name__ == "__main__":
    main(run, limit=900)
