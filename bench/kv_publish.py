"""The first publish of 10,000 agents into the agents bucket, the quiet round after it, and the
memory of the real bridge holding 10,000 agents.

1. `AgentRegistry.sync` on an empty bucket (real nats-server from the wheel, file storage),
   against two raw nats-py put loops with the same encoded Agent records, each on a fresh
   bucket of the same configuration: (a) asyncio.gather of kv.put, (b) js.publish_async to
   `$KV.<bucket>.<key>` then awaiting every ack. The faster raw loop is the baseline.
2. A quiet sync with the same agents: it must write nothing (the stream's last sequence).
3. `chorus-bridge run` as a subprocess, on an emulated engine (its own process) serving
   10,000 tasks: once the bucket holds them all, VmRSS and VmHWM from /proc/<pid>/status;
   then SIGTERM, which must end it with status 0.

Targets: sync median <= 1.5x the faster raw loop's median; quiet sync writes nothing;
bridge RSS < 150 MB with 10,000 agents published; exit status 0 on SIGTERM.

    python bench/kv_publish.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import nats
from common import Bench, Series, arguments, child_process, main, quiet_logs
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from bridge.bus.registry import AgentRegistry
from bridge.config import Settings
from bridge.contract.messages import Agent, encode, now_rfc3339
from bridge.contract.names import Names
from bridge.devkit.emulator import EmulatedSwarm
from bridge.devkit.emulator.filters import parse_filters
from bridge.discovery.tasks import TaskListDecoder
from bridge.edges.nats_server import EmbeddedNats

AGENTS = 10_000
RATIO_LIMIT = 1.5
RSS_LIMIT_MB = 150.0
BRIDGE_START_TIMEOUT = 120.0
RSS_SAMPLES, RSS_INTERVAL = 20, 0.25


def emulated_agents(n: int) -> list[Agent]:
    """The agents discovery makes of n emulated tasks (the same records the bridge writes)."""
    swarm = EmulatedSwarm(seed=1)
    swarm.add_tasks(n)
    filters = json.dumps({"service": [swarm.service], "desired-state": ["running"]})
    body = swarm.tasks_body(parse_filters(filters))
    return list(TaskListDecoder(Settings()).decode(body).agents)


def bucket_config(nc: NATS, bucket: str) -> KeyValueConfig:
    """The agents bucket's configuration, exactly as the registry creates it."""
    return AgentRegistry(nc, Names(prefix="bench", agents_bucket=bucket)).bucket_config()


def records(agents: list[Agent]) -> list[tuple[str, bytes]]:
    """(key, value) as the registry writes them on a first publish."""
    at = now_rfc3339()
    return [(a.id, encode(msgspec.structs.replace(a, on_bus=False, first_seen=at))) for a in agents]


async def raw_gather_put(nc: NATS, bucket: str, payloads: list[tuple[str, bytes]]) -> None:
    kv = await nc.jetstream().key_value(bucket)
    await asyncio.gather(*(kv.put(key, value) for key, value in payloads))


async def raw_publish_async(nc: NATS, bucket: str, payloads: list[tuple[str, bytes]]) -> None:
    js = nc.jetstream()
    prefix = f"$KV.{bucket}."
    futures = [await js.publish_async(prefix + key, value) for key, value in payloads]
    await asyncio.gather(*futures)


async def _values(nc: NATS, bucket: str) -> tuple[int, int]:
    """(messages, last sequence) of the bucket's stream."""
    kv = await nc.jetstream().key_value(bucket)
    state = (await kv.status()).stream_info.state
    return int(state.messages), int(state.last_seq)


async def measure_publish(
    bench: Bench, nc: NATS, agents: list[Agent], warmup: int, reps: int
) -> None:
    payloads = records(agents)
    desired = {a.id: a for a in agents}
    js = nc.jetstream()
    gather = Series("raw (a) asyncio.gather(kv.put)")
    pipelined = Series("raw (b) js.publish_async + await acks")
    sync = Series("AgentRegistry.sync, empty bucket")
    quiet = Series("AgentRegistry.sync, quiet (same agents)")
    quiet_ok = True
    counter = 0

    async def fresh_bucket() -> str:
        nonlocal counter
        counter += 1
        bucket = f"bench_kv_{counter}"
        await js.create_key_value(bucket_config(nc, bucket))
        return bucket

    async def check_full(bucket: str, what: str) -> None:
        messages, _ = await _values(nc, bucket)
        if messages != AGENTS:
            raise RuntimeError(f"{what} left {messages} of {AGENTS} values in {bucket}")

    async def raw(series: Series, writer: Callable[..., Awaitable[None]], timed: bool) -> None:
        bucket = await fresh_bucket()
        started = time.perf_counter()
        await writer(nc, bucket, payloads)
        elapsed = time.perf_counter() - started
        await check_full(bucket, series.name)
        if timed:
            series.add(elapsed)
        await js.delete_key_value(bucket)

    async def registry(timed: bool) -> None:
        nonlocal counter, quiet_ok
        counter += 1
        names = Names(prefix=f"bench{counter}", agents_bucket=f"bench_kv_{counter}")
        reg = AgentRegistry(nc, names)
        await reg.open()  # creates the bucket, as the bridge does at start
        started = time.perf_counter()
        result = await reg.sync(desired)
        elapsed = time.perf_counter() - started
        if result.joined != AGENTS or result.failed:
            raise RuntimeError(f"the first sync did not publish every agent: {result}")
        await check_full(names.agents_bucket, "the registry")
        _, before = await _values(nc, names.agents_bucket)
        started = time.perf_counter()
        again = await reg.sync(desired)
        quiet_elapsed = time.perf_counter() - started
        _, after = await _values(nc, names.agents_bucket)
        if again.writes or again.failed or before != after:
            quiet_ok = False
            bench.info("quiet sync wrote", f"{again}, last sequence {before} -> {after}")
        if timed:
            sync.add(elapsed)
            quiet.add(quiet_elapsed)
        await js.delete_key_value(names.agents_bucket)

    steps: list[Callable[[bool], Awaitable[None]]] = [
        lambda t: raw(gather, raw_gather_put, t),
        lambda t: raw(pipelined, raw_publish_async, t),
        registry,
    ]
    for index in range(warmup + reps):
        shift = index % len(steps)
        for step in steps[shift:] + steps[:shift]:
            await step(index >= warmup)

    baseline = gather if gather.median <= pipelined.median else pipelined
    bench.table(
        f"first publish of {AGENTS:,} agents, file storage, {reps} runs after "
        f"{warmup} warm-up, fresh bucket each",
        [gather, pipelined, sync, quiet],
        baseline,
    )
    ratio = sync.median / baseline.median
    bench.target(
        f"registry sync <= {RATIO_LIMIT:g}x fastest raw put loop (median)",
        ratio <= RATIO_LIMIT,
        f"{sync.median * 1000:.0f} ms / "
        f"{baseline.median * 1000:.0f} ms ({baseline.name}) = {ratio:.2f}x",
    )
    bench.target(
        "quiet sync makes no KV write",
        quiet_ok,
        f"{quiet.n} quiet syncs, stream last sequence unchanged"
        if quiet_ok
        else "a quiet sync wrote",
    )


def _proc_status(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _mb(value: str) -> float:
    amount, _, unit = value.partition(" ")
    assert unit == "kB", value
    return int(amount) / 1024


async def measure_rss(bench: Bench, url: str, tmp: Path) -> None:
    sock = tmp / "docker.sock"
    emulator = [
        sys.executable,
        "-m",
        "bridge.devkit.emulator",
        "--socket",
        str(sock),
        "--tasks",
        str(AGENTS),
        "--seed",
        "2",
    ]
    bridge_cmd = [str(Path(sys.executable).parent / "chorus-bridge"), "run"]
    env = {
        "NATS_URL": url,
        "WHOOSH_DOCKER_HOST": f"unix://{sock}",
        "DISCOVERY_METHOD": "swarm",
        "WHOOSH_DNS_NAMES": "",
        "BRIDGE_LISTEN": "127.0.0.1:0",
        "BRIDGE_LOG_FORMAT": "console",
        "BRIDGE_LOG_LEVEL": "info",
    }
    log_path = tmp / "bridge.log"
    async with child_process("emulator", emulator):
        deadline = time.monotonic() + 60
        while not sock.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the emulator did not create its socket")
            await asyncio.sleep(0.1)
        async with child_process(
            "chorus-bridge run", bridge_cmd, env=env, stderr_to=log_path
        ) as bridge:
            started = time.monotonic()
            nc = await nats.connect(url, name="bench-rss")
            try:
                messages = await _wait_for_agents(nc, "chorus_agents", started)
            finally:
                await nc.drain()
            filled = time.monotonic() - started
            # Then a few seconds more: the acks, announcements and presence work settle.
            samples = [_proc_status(bridge.pid)]
            for _ in range(RSS_SAMPLES):
                await asyncio.sleep(RSS_INTERVAL)
                samples.append(_proc_status(bridge.pid))
            code = await bridge.stop()
    rss = [_mb(s["VmRSS"]) for s in samples]
    hwm = _mb(samples[-1]["VmHWM"])
    bench.say(f"\n-- real bridge (chorus-bridge run, pid-separate) with {AGENTS:,} tasks --")
    bench.info("bucket filled", f"{messages:,} agents {filled:.1f} s after start")
    bench.info(
        "bridge memory",
        f"VmRSS {rss[0]:.1f} MB when the bucket was full, "
        f"max {max(rss):.1f} MB and last {rss[-1]:.1f} MB over the next "
        f"{RSS_SAMPLES * RSS_INTERVAL:.0f} s; VmHWM (peak) {hwm:.1f} MB",
    )
    bench.target(
        f"bridge RSS < {RSS_LIMIT_MB:.0f} MB with {AGENTS:,} agents",
        max(rss) < RSS_LIMIT_MB,
        f"max VmRSS {max(rss):.1f} MB (VmHWM {hwm:.1f} MB)",
    )
    bench.target(
        "bridge exits 0 on SIGTERM",
        code == 0,
        f"exit status {code}" + ("" if code == 0 else f"; log in {log_path}"),
    )
    if code != 0:
        sys.stderr.write(log_path.read_text()[-4000:])


async def _wait_for_agents(nc: NATS, bucket: str, started: float) -> int:
    js = nc.jetstream()
    while True:
        if time.monotonic() - started > BRIDGE_START_TIMEOUT:
            raise RuntimeError(
                f"the bridge did not publish {AGENTS} agents within {BRIDGE_START_TIMEOUT:.0f}s"
            )
        try:
            kv = await js.key_value(bucket)
            messages = int((await kv.status()).stream_info.state.messages)
        except nats.js.errors.NotFoundError:
            messages = 0
        if messages >= AGENTS:
            return messages
        await asyncio.sleep(0.25)


async def run() -> int:
    args = arguments(__doc__ or "")
    quiet_logs()
    warmup, reps = (1, 2) if args.quick else (1, 5)
    bench = Bench(f"kv_publish: {AGENTS:,} agents into the agents bucket")
    agents = emulated_agents(AGENTS)
    with tempfile.TemporaryDirectory(prefix="bench-kv-") as tmp_name:
        tmp = Path(tmp_name)
        async with EmbeddedNats(port=0, store_dir=tmp / "nats") as server:
            nc = await nats.connect(server.url, name="bench-kv")
            try:
                await measure_publish(bench, nc, agents, warmup, reps)
            finally:
                await nc.drain()
            await measure_rss(bench, server.url, tmp)
    return bench.exit_code()


if __name__ == "__main__":
    main(run, limit=900)
