"""One discovery round of 10,000 emulated tasks, against the bare fetch of the same bytes.

The emulated Docker Engine runs in its own process (`python -m bridge.devkit.emulator`), so serving
13 MB of tasks does not share this process's GIL. The round is the bridge's own
`DiscoveryPipeline.run_round`: GET /tasks through the docker SDK, decode, `Roster.apply`, and
`AgentRegistry.sync` on a real nats-server whose bucket already holds the 10,000 agents.

Two kinds of round, each against its own emulator:
- quiet: the task list does not change between rounds (a fleet standing still): the sync is
  the diff alone and writes nothing (checked on the stream's last sequence);
- changing: the emulator replaces a task before serving each task list (`--churn 1`), so
  every round decodes new tasks, removes and adds agents, and writes them to the bucket.

Baselines, measured in the same loop against the same emulator: `SwarmDiscovery.fetch_tasks`
(the same SDK client, bytes only) and a raw `http.client` GET over the unix socket.

Targets, for both kinds: round median <= 2x the SDK fetch median; round p95 < 250 ms.

    python bench/discovery_round.py [--quick]
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import nats
from common import Bench, Series, arguments, child_process, main, quiet_logs, timed
from nats.aio.client import Client as NATS

from bridge.bus.presence import Presence
from bridge.bus.registry import AgentRegistry
from bridge.config import Settings
from bridge.contract.names import Names
from bridge.discovery.dns import DnsDiscovery
from bridge.discovery.managers import DockerManagers
from bridge.discovery.methods import Discoverer
from bridge.discovery.pipeline import DiscoveryPipeline
from bridge.discovery.roster import Roster
from bridge.discovery.swarm import SwarmDiscovery
from bridge.edges.nats_server import EmbeddedNats
from bridge.ops.metrics import Metrics

TASKS = 10_000
ROUND_LIMIT_S = 0.250
RATIO_LIMIT = 2.0
API_VERSION = "1.41"  # what the emulator (Docker 20.10) negotiates with version="auto"


class _UnixConnection(http.client.HTTPConnection):
    """http.client over a unix socket: the least a client can do to get the bytes."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self._path)
        self.sock = sock


class RawFetch:
    """GET /tasks with the same filters as the bridge, on one kept-alive connection."""

    def __init__(self, path: str, settings: Settings) -> None:
        filters = {"service": [settings.service_name], "desired-state": ["running"]}
        query = urllib.parse.urlencode({"filters": json.dumps(filters)})
        self._url = f"/v{API_VERSION}/tasks?{query}"
        self._conn = _UnixConnection(path)

    def fetch(self) -> bytes:
        self._conn.request("GET", self._url)
        response = self._conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"raw fetch: HTTP {response.status}")
        return body

    def close(self) -> None:
        self._conn.close()


async def _wait_for_engine(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = _UnixConnection(str(path))
            conn.request("GET", "/_ping")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the emulator did not answer on {path} within {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def _last_seq(nc: NATS, bucket: str) -> int:
    kv = await nc.jetstream().key_value(bucket)
    state = (await kv.status()).stream_info.state
    return int(state.last_seq)


async def run() -> int:
    args = arguments(__doc__ or "")
    quiet_logs()
    warmup, rounds = (2, 5) if args.quick else (5, 20)
    bench = Bench(f"discovery_round: one round of {TASKS:,} emulated tasks")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp:
        async with EmbeddedNats(port=0, store_dir=Path(tmp) / "nats") as server:
            for churn in (0, 1):
                sock = Path(tmp) / f"docker-{churn}.sock"
                emulator_cmd = [
                    sys.executable,
                    "-m",
                    "bridge.devkit.emulator",
                    "--socket",
                    str(sock),
                    "--tasks",
                    str(TASKS),
                    "--seed",
                    "1",
                    "--churn",
                    str(churn),
                ]
                async with child_process("emulator", emulator_cmd):
                    await _wait_for_engine(sock)
                    bench.say(f"emulator: pid-separate, {' '.join(emulator_cmd[1:])}")
                    ok &= await _measure(bench, server.url, str(sock), warmup, rounds, churn)
    return bench.exit_code()


async def _measure(bench: Bench, url: str, sock: str, warmup: int, rounds: int, churn: int) -> bool:
    kind = "changing" if churn else "quiet"
    settings = Settings(
        discovery_method="swarm",
        docker_host=f"unix://{sock}",
        dns_names=(),
        listen_host="127.0.0.1",
        listen_port=0,
    )
    names = Names(prefix="bench", agents_bucket="bench_agents")
    metrics = Metrics()
    nc = await nats.connect(url, name="bench-discovery")
    api = DockerManagers(settings)
    swarm = SwarmDiscovery(settings, api)
    raw = RawFetch(sock, settings)
    try:
        # Wired as the bridge wires them: presence decides on_bus, metrics are recorded.
        presence = Presence(nc, names)
        await presence.open()
        registry = AgentRegistry(nc, names, metrics=metrics, bus_ids=presence.bus_ids)
        roster = Roster((await registry.open()).values())
        discoverer = Discoverer(settings, swarm=swarm, dns=DnsDiscovery(settings), metrics=metrics)
        loop = DiscoveryPipeline(settings, discoverer, registry)

        started = time.perf_counter()
        await loop.run_round(roster)
        first = time.perf_counter() - started
        published = len(registry.published)
        bench.info(
            f"[{kind}] first round", f"{first * 1000:.0f} ms, {published:,} agents in the bucket"
        )
        if published != TASKS:
            return bench.target(f"[{kind}] all tasks published", False, f"{published} of {TASKS}")

        body = await swarm.fetch_tasks()
        bench.info(f"[{kind}] task list", f"{len(body):,} bytes for {TASKS:,} tasks")

        sdk = Series("sdk fetch (SwarmDiscovery.fetch_tasks)")
        rawf = Series("raw fetch (http.client, unix socket)")
        whole = Series(f"round (DiscoveryPipeline.run_round), {kind} list")
        stages = {k: Series(f"  stage: {k}") for k in ("fetch", "decode", "apply", "sync")}
        writes: list[int] = []
        decoded: list[int] = []
        measuring = False

        async def staged_round() -> None:
            t0 = time.perf_counter()
            data = await swarm.fetch_tasks()
            t1 = time.perf_counter()
            found = swarm.decode(data)
            t2 = time.perf_counter()
            roster.apply(swarm=found, dns=None, swarm_expected=True)
            t3 = time.perf_counter()
            result = await registry.sync(roster.agents)
            t4 = time.perf_counter()
            if result.failed:
                raise RuntimeError(f"a round failed to write: {result}")
            if measuring:
                writes.append(result.writes)
                decoded.append(swarm.decoded)
                for key, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    stages[key].add(seconds)

        before = await _last_seq(nc, names.agents_bucket)
        steps = [
            (sdk, swarm.fetch_tasks),
            (rawf, lambda: asyncio.to_thread(raw.fetch)),
            (whole, lambda: loop.run_round(roster)),
            (Series("staged"), staged_round),
        ]
        for index in range(warmup + rounds):
            # Rotate the order so that no step always follows the same neighbour.
            measuring = index >= warmup
            shift = index % len(steps)
            for series, call in steps[shift:] + steps[:shift]:
                if not measuring:
                    await call()
                else:
                    await timed(series, call)
        after = await _last_seq(nc, names.agents_bucket)

        bench.table(
            f"{TASKS:,} tasks, {kind} list, {rounds} rounds after {warmup} warm-up "
            "(stages: the same calls one by one)",
            [sdk, rawf, whole, *stages.values()],
            sdk,
        )
        bench.info(
            f"[{kind}] per staged round",
            f"tasks decoded {min(decoded)}..{max(decoded)}, KV writes {min(writes)}..{max(writes)}",
        )
        bench.info(
            f"[{kind}] round / raw fetch",
            f"{whole.median / rawf.median:.2f}x (raw is "
            "http.client in a thread: the floor for getting the bytes)",
        )
        ok = True
        if not churn:
            ok &= bench.target(
                "[quiet] quiet rounds make no KV write",
                before == after,
                f"stream last sequence {before} before, {after} after "
                f"{2 * (warmup + rounds)} rounds",
            )
        ratio = whole.median / sdk.median
        ok &= bench.target(
            f"[{kind}] round <= {RATIO_LIMIT:g}x sdk fetch (median)",
            ratio <= RATIO_LIMIT,
            f"{whole.median * 1000:.1f} ms / {sdk.median * 1000:.1f} ms = {ratio:.2f}x",
        )
        ok &= bench.target(
            f"[{kind}] round p95 < {ROUND_LIMIT_S * 1000:.0f} ms",
            whole.p95 < ROUND_LIMIT_S,
            f"p95 {whole.p95 * 1000:.1f} ms",
        )
        return ok
    finally:
        raw.close()
        api.close()
        await nc.drain()


if __name__ == "__main__":
    main(run, limit=600)
