"""A broadcast to 10,000 agents on the bus, through the real request path of the real bridge.

Three processes besides this one and nats-server: the agents (SimFleet, 10,000 agents from
127.6.0.1 sharing 20 NATS connections, with an emulated Docker Engine whose service's tasks
are those agents: their addresses and task ids, as `chorus-bridge demo` wires them) and
`chorus-bridge run`, which discovers the 10,000 tasks, sees them all present on the bus and
marks them `on_bus` in its bucket. Then, as a coordinator would:
`nc.request("chorus.bridge.broadcast", opportunity)`, timed until the BroadcastReport is back.

Baseline, measured in the same run, interleaved: a bare nats-py publish of the same
opportunity on `chorus.council.opportunities`, timed until the 10,000th ack arrives on the
agents' own ack subjects (`chorus.council.<id>.acks.<agent id>`, one subscription to
`....acks.*`), each counted for the agent its subject names, as the bridge counts them.

Target: every BroadcastReport back within 1 s (p95 of the wall time; with fewer than 20
broadcasts that is the slowest one), each counting 10,000 agents reached over the bus.

    python bench/broadcast_bus.py [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
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
from bridge.contract.messages import (
    BroadcastReport,
    CouncilOpportunity,
    ErrorReply,
    decode_reply,
    encode,
)
from bridge.contract.names import Names
from bridge.edges.nats_server import EmbeddedNats

AGENTS = 10_000
CONNECTIONS = 20
BASE = "127.6.0.1"
LIMIT_S = 1.0
START_TIMEOUT = 240.0
REQUEST_TIMEOUT = 10.0
NAMES = Names(prefix="chorus", agents_bucket="chorus_agents")


async def wait_until_on_bus(nc: NATS, bench: Bench, started: float) -> None:
    """Until the bridge's bucket lists every agent, each marked on the bus."""
    js = nc.jetstream()
    last = (-1, -1)
    while True:
        elapsed = time.monotonic() - started
        if elapsed > START_TIMEOUT:
            raise RuntimeError(
                f"after {START_TIMEOUT:.0f}s the bucket lists {last[0]} agents, "
                f"{last[1]} on the bus; expected {AGENTS} and {AGENTS}"
            )
        try:
            agents, _ = await read_bucket(await js.key_value(NAMES.agents_bucket))
        except nats.js.errors.NotFoundError:
            agents = {}
        last = (len(agents), sum(a.on_bus for a in agents.values()))
        if last == (AGENTS, AGENTS):
            bench.info(
                "bridge ready",
                f"{AGENTS:,} agents in its bucket, all on the bus, "
                f"{elapsed:.1f} s after it started",
            )
            return
        await asyncio.sleep(1.0)


def _memory(pid: int) -> str:
    status = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    rss, hwm = (int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))
    return f"VmRSS {rss:.1f} MB, VmHWM {hwm:.1f} MB"


async def idle_cpu(bench: Bench, pid: int, seconds: float) -> None:
    """What the bridge spends with no broadcast: following 10,000 agents' presence."""
    before, started = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    share = (cpu_seconds(pid) - before) / (time.monotonic() - started)
    bench.info(
        "bridge CPU between broadcasts",
        f"{share:.0%} of one core over {seconds:g} s "
        f"({AGENTS:,} agents refreshing their presence every 5 s)",
    )


async def bare_broadcast(nc: NATS, offer: CouncilOpportunity) -> int:
    """Publish and wait for every agent's ack on its ack subject; returns the acks counted."""
    acked: set[str] = set()
    everyone = asyncio.Event()
    head = len(NAMES.acks(offer.id, ""))

    async def on_ack(msg: Msg) -> None:
        acked.add(msg.subject[head:])  # the subject names the agent
        if len(acked) >= AGENTS:
            everyone.set()

    sub = await nc.subscribe(NAMES.acks(offer.id, "*"), cb=on_ack)
    try:
        await nc.publish(NAMES.opportunities, encode(offer))
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await everyone.wait()
    finally:
        await sub.unsubscribe()
    return len(acked)


async def bridge_broadcast(nc: NATS, offer: CouncilOpportunity) -> BroadcastReport:
    msg = await nc.request(NAMES.broadcast, encode(offer), timeout=REQUEST_TIMEOUT)
    reply = decode_reply(msg.data)
    if isinstance(reply, ErrorReply):
        raise RuntimeError(f"the bridge refused the opportunity: {reply.error}")
    return reply


async def measure(bench: Bench, nc: NATS, warmup: int, reps: int) -> None:
    bare = Series("bare publish + 10,000 acks (nats-py)")
    wall = Series("bridge request -> BroadcastReport (wall)")
    inside = Series("  report.duration_ms (inside the bridge)")
    reports: list[BroadcastReport] = []
    number = 0
    for index in range(warmup + reps):
        for step in ("bare", "bridge") if index % 2 == 0 else ("bridge", "bare"):
            number += 1
            offer = opportunity(f"bench-bus-{number}")
            started = time.perf_counter()
            if step == "bare":
                count = await bare_broadcast(nc, offer)
                elapsed = time.perf_counter() - started
                if count != AGENTS:
                    raise RuntimeError(f"bare broadcast: {count} acks of {AGENTS}")
                if index >= warmup:
                    bare.add(elapsed)
            else:
                report = await bridge_broadcast(nc, offer)
                elapsed = time.perf_counter() - started
                if index >= warmup:
                    wall.add(elapsed)
                    inside.add(report.duration_ms / 1000)
                    reports.append(report)
    bench.table(
        f"{AGENTS:,} agents on the bus over {CONNECTIONS} connections, {reps} "
        f"broadcasts after {warmup} warm-up",
        [bare, wall, inside],
        bare,
    )
    for n, report in enumerate(reports, 1):
        bench.say(
            f"  report {n}: total_agents={report.total_agents} via_bus={report.via_bus} "
            f"via_http={report.via_http} failed={len(report.failed)} "
            f"duration_ms={report.duration_ms}"
        )
    complete = all(
        r.total_agents == AGENTS and r.via_bus == AGENTS and not r.failed for r in reports
    )
    bench.target(
        "every report counts 10,000 agents reached over the bus",
        complete,
        "all complete" if complete else "some report is short (see above)",
    )
    bench.target(
        f"BroadcastReport within {LIMIT_S:g} s (p95 of wall time)",
        wall.p95 < LIMIT_S,
        f"median {wall.median * 1000:.0f} ms, p95 "
        f"{wall.p95 * 1000:.0f} ms, max {wall.max * 1000:.0f} ms; bare baseline median "
        f"{bare.median * 1000:.0f} ms, ratio {wall.median / bare.median:.2f}x",
    )
    bench.info(
        "report.duration_ms, median", f"{statistics.median(r.duration_ms for r in reports):.1f} ms"
    )


async def run() -> int:
    args = arguments(__doc__ or "")
    quiet_logs()
    warmup, reps = (1, 3) if args.quick else (2, 10)
    bench = Bench(f"broadcast_bus: {AGENTS:,} agents on the bus, through the real bridge")
    with tempfile.TemporaryDirectory(prefix="bench-bus-") as tmp_name:
        tmp = Path(tmp_name)
        sock = tmp / "docker.sock"
        async with EmbeddedNats(port=0, store_dir=tmp / "nats") as server:
            fleet_cmd = [
                sys.executable,
                str(BENCH / "_fleet.py"),
                "--agents",
                str(AGENTS),
                "--base",
                BASE,
                "--on-bus",
                str(AGENTS),
                "--connections",
                str(CONNECTIONS),
                "--nats-url",
                server.url,
                "--prefix",
                NAMES.prefix,
                "--emulator-socket",
                str(sock),
            ]
            started = time.monotonic()
            async with child_process("fleet", fleet_cmd, stderr_to=tmp / "fleet.log") as fleet:
                port = await fleet.line("READY", START_TIMEOUT)
                bench.info(
                    "agents ready",
                    f"{AGENTS:,} agents (HTTP on port {port}, all on the "
                    f"bus) {time.monotonic() - started:.1f} s after start",
                )
                env = {
                    "NATS_URL": server.url,
                    "WHOOSH_DOCKER_HOST": f"unix://{sock}",
                    "DISCOVERY_METHOD": "swarm",
                    "WHOOSH_DNS_NAMES": "",
                    "WHOOSH_AGENT_PORT": port,
                    "BRIDGE_LISTEN": "127.0.0.1:0",
                    "BRIDGE_LOG_FORMAT": "console",
                    "BRIDGE_LOG_LEVEL": "info",
                }
                bridge_cmd = [str(Path(sys.executable).parent / "chorus-bridge"), "run"]
                async with child_process(
                    "chorus-bridge run", bridge_cmd, env=env, stderr_to=tmp / "bridge.log"
                ) as bridge:
                    nc = await nats.connect(server.url, name="bench-coordinator")
                    try:
                        await wait_until_on_bus(nc, bench, time.monotonic())
                        await idle_cpu(bench, bridge.pid, 5.0 if args.quick else 10.0)
                        await measure(bench, nc, warmup, reps)
                        bench.info("bridge memory after the broadcasts", _memory(bridge.pid))
                    finally:
                        await nc.drain()
                    code = await bridge.stop()
                bench.target("bridge exits 0 on SIGTERM", code == 0, f"exit status {code}")
                if code != 0:
                    sys.stderr.write((tmp / "bridge.log").read_text()[-4000:])
    return bench.exit_code()


if __name__ == "__main__":
    main(run, limit=900)
