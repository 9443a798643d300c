"""How soon a new replica on a real swarm reaches the agents bucket.

Claim: a new replica is in the bucket within 1 s of Docker listing it running (p95 over 10
scale-ups; DESIGN.md's target for every node of a swarm), instead of waiting for the 30 s poll.
On one node this was 50 ms while every event opened 0.5 s of rounds 10 ms apart; a change is
now one burst of rounds (bridge/discovery/followup.py: a task listed running while its burst is
at its 0.25 s pace is seen up to 0.25 s later), which is what keeps a multi-node swarm's events
(and a healthcheck's) from costing a task list every 10 ms. bench/multinode_latency.py times
the same on five nodes.

The real bridge runs in this process (Swarm discovery only, no DNS, poll 30 s) against the
Docker Engine and an embedded nats-server on loopback. A service of busybox httpd agents on the
overlay network chorus_default (image and network from scripts/swarm-up.sh) is scaled up by one,
SAMPLES times in a row. For each new task:
  t_stamp    Status.Timestamp of the task once its Status.State is running: when the node
             saw it running;
  t_listed   when GET /tasks first lists it running, asked every 5 ms by this program: the
             earliest any client of the manager can know (the manager batches the nodes'
             state reports, so this comes 10 to 115 ms after t_stamp);
  t_bucket   when a KV watch of the bucket saw the task's key;
  latency    t_bucket - t_listed (the target); also shown: t_bucket - t_stamp, and the
             manager's own lag t_listed - t_stamp, which no client can beat.
All three are this host's wall clock (the local engine stamps with the same clock). The
agents' overlay addresses are only read from the Docker API; nothing connects to them.

Baseline, in the same run: the same bridge with its Docker events follower off (rounds on the
30 s poll only), over --baseline-samples scale-ups (3 by default: each may take up to 30 s).

Usage: python bench/swarm_latency.py [--samples 10] [--baseline-samples 3] [--target 1.0]
                                     [--docker-host URL]
The engine defaults to $CHORUS_TEST_DOCKER_HOST, else unix:///var/run/docker.sock.
Exit status: 0 PASS, 1 FAIL, 2 the engine or its test image/network is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path, for tests.swarm_support)
import nats
from nats.js.kv import KeyValue

from bridge.app import Bridge, running_bridge
from bridge.config import Settings
from bridge.edges.nats_server import EmbeddedNats
from bridge.ops.logs import configure_logging
from tests.swarm_support import NETWORK, AgentService, EngineUnavailable, open_engine

POLL_INTERVAL = 30.0
# A sample that has not reached the bucket by then counts as a failure (past the poll, too).
SAMPLE_DEADLINE = POLL_INTERVAL + 15.0
DOCKER_POLL = 0.005


@dataclass(frozen=True)
class Sample:
    task_id: str
    t_stamp: float
    t_listed: float
    t_bucket: float | None

    @property
    def latency(self) -> float | None:
        """From Docker listing the task running to the bucket holding it."""
        return None if self.t_bucket is None else self.t_bucket - self.t_listed

    @property
    def from_stamp(self) -> float | None:
        """From the task's Status.Timestamp to the bucket holding it."""
        return None if self.t_bucket is None else self.t_bucket - self.t_stamp


def docker_time(stamp: str) -> float:
    """A Docker RFC 3339 timestamp (nanoseconds, Z) as a Unix time."""
    head, _, rest = stamp.rstrip("Z").partition(".")
    fraction = rest[:6].ljust(6, "0") if rest else "000000"
    return datetime.fromisoformat(f"{head}.{fraction}+00:00").timestamp()


class BenchService(AgentService):
    """The agents' service, as the swarm tests make it; blocking Docker calls, run in a thread."""

    def wait_new_running(self, known: set[str], deadline: float) -> tuple[str, float, float]:
        """The first task not in `known` that runs: (id, Status.Timestamp, when it was first
        listed running), as Unix times."""
        while time.monotonic() < deadline:
            for task in self.tasks():
                status = task["Status"]
                if task["ID"] not in known and status["State"] == "running":
                    return task["ID"], docker_time(status["Timestamp"]), time.time()
            time.sleep(DOCKER_POLL)
        raise TimeoutError(f"no new task of {self.name} ran in time")


class BucketWatch:
    """Records when each key first appears in the bucket (wall clock)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def run(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is not None and entry.operation is None:
                    self.seen.setdefault(entry.key, time.time())
                    self.changed.set()
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    async def wait_key(self, key: str, timeout: float) -> float | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while key not in self.seen:
                    self.changed.clear()
                    await self.changed.wait()
        return self.seen.get(key)


@contextlib.asynccontextmanager
async def bridge_after_first_round(
    settings: Settings, url: str, *, follow_events: bool
) -> AsyncIterator[Bridge]:
    """The bridge running, once its first round is done (within 30 s)."""
    async with running_bridge(settings, url, follow_events=follow_events) as bridge:
        async with asyncio.timeout(30):
            await bridge.pipeline.first_round.wait()
        yield bridge


async def measure(service: BenchService, watch: BucketWatch, samples: int) -> list[Sample]:
    results: list[Sample] = []
    known = {t["ID"] for t in await asyncio.to_thread(service.tasks)}
    replicas = len(known)
    for i in range(samples):
        deadline = time.monotonic() + SAMPLE_DEADLINE
        await asyncio.to_thread(service.scale, replicas + 1 + i)
        task_id, t_stamp, t_listed = await asyncio.to_thread(
            service.wait_new_running, known, deadline
        )
        known.add(task_id)
        t_bucket = await watch.wait_key(task_id, max(0.0, deadline - time.monotonic()))
        sample = Sample(task_id, t_stamp, t_listed, t_bucket)
        results.append(sample)
        shown = "missing" if sample.latency is None else f"{sample.latency:.3f} s"
        print(f"  sample {i + 1:>2}/{samples}: task {task_id[:12]}  {shown}", flush=True)
    return results


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def summary(
    results: list[Sample],
    measure: Callable[[Sample], float | None] | None = None,
) -> tuple[float, float, float, int]:
    """(median, p95, max, missing) of a measure of the samples (default: the latency); nan
    when none arrived."""
    of = measure or (lambda s: s.latency)
    latencies = [v for s in results if (v := of(s)) is not None]
    missing = len(results) - len(latencies)
    if not latencies:
        return math.nan, math.nan, math.nan, missing
    return (statistics.median(latencies), nearest_rank(latencies, 0.95), max(latencies), missing)


def _seconds(value: float | None) -> str:
    return "missing" if value is None else f"{value:7.3f} s"


def report(results: list[Sample], baseline: list[Sample], target: float) -> bool:
    print()
    print(
        f"{'#':>2}  {'task':<25}  {'Timestamp':<12}  {'listed':<12}  {'in bucket':<12}  "
        f"{'latency':>9}  {'from stamp':>10}  {'manager lag':>11}"
    )
    for n, s in enumerate(results, 1):
        seen = "-" if s.t_bucket is None else clock(s.t_bucket)
        print(
            f"{n:>2}  {s.task_id:<25}  {clock(s.t_stamp):<12}  {clock(s.t_listed):<12}  "
            f"{seen:<12}  {_seconds(s.latency):>9}  {_seconds(s.from_stamp):>10}  "
            f"{_seconds(s.t_listed - s.t_stamp):>11}"
        )
    lag = summary(results, lambda s: s.t_listed - s.t_stamp)
    stamp = summary(results, lambda s: s.from_stamp)
    print(
        f"\nfrom Status.Timestamp: median {stamp[0]:.3f} s, p95 {stamp[1]:.3f} s; of which "
        f"the manager's own lag (Timestamp to listed): median {lag[0]:.3f} s, p95 "
        f"{lag[1]:.3f} s"
    )
    base_median = summary(baseline)[0]
    print(
        f"\n{'':<32}{'median s':>10}{'p95 s':>10}{'max s':>10}{'n':>4}{'missing':>9}{'ratio':>10}"
    )
    for name, samples in (
        ("bridge (events + poll)", results),
        (f"poll only, {POLL_INTERVAL:g} s (baseline)", baseline),
    ):
        median, p95, worst, lost = summary(samples)
        print(
            f"{name:<32}{median:>10.3f}{p95:>10.3f}{worst:>10.3f}{len(samples):>4}"
            f"{lost:>9}{median / base_median:>9.4f}x"
        )
    print(
        "(latency = in the bucket - listed running by Docker; ratio = median / the "
        "baseline's median)"
    )
    _, p95, _, missing = summary(results)
    if math.isnan(p95):
        print("\nFAIL: no new replica reached the bucket")
        return False
    passed = missing == 0 and p95 <= target
    print(
        f"{'PASS' if passed else 'FAIL'}: p95 {p95:.3f} s {'<=' if passed else '>'} "
        f"target {target:g} s" + (f", {missing} missing" if missing else "")
    )
    return passed


async def phase(
    service: BenchService, settings: Settings, url: str, samples: int, *, follow_events: bool
) -> list[Sample]:
    """A bridge on a bucket of its own; the service scaled up by one, `samples` times."""
    async with bridge_after_first_round(settings, url, follow_events=follow_events):
        nc = await nats.connect(url)
        watch = BucketWatch()
        try:
            kv = await nc.jetstream().key_value(settings.kv_bucket)
            async with asyncio.TaskGroup() as tg:
                watching = tg.create_task(watch.run(kv))
                what = "events + poll" if follow_events else "poll only (baseline)"
                print(
                    f"service {service.name}: scaling up by one, {samples} times; bridge: "
                    f"{what}, poll {POLL_INTERVAL:g} s",
                    flush=True,
                )
                try:
                    return await measure(service, watch, samples)
                finally:
                    watching.cancel()
        finally:
            await nc.close()


async def run(host: str, samples: int, baseline_samples: int, target: float) -> bool:
    client = await asyncio.to_thread(open_engine, host)
    token = uuid.uuid4().hex[:8]
    service = BenchService(client, f"chorus-bench-{token}")

    def settings(kind: str) -> Settings:
        return Settings(
            docker_host=host,
            discovery_method="swarm",
            service_name=service.name,
            network_names=(NETWORK,),
            dns_names=(),
            poll_interval=POLL_INTERVAL,
            subject_prefix=f"bench{kind}{token}",
            kv_bucket=f"bench_{kind}_{token}",
            listen_host="127.0.0.1",
            listen_port=0,
        )

    try:
        await asyncio.to_thread(service.create, 1)
        await asyncio.to_thread(service.wait_new_running, set(), time.monotonic() + 90)
        with tempfile.TemporaryDirectory(prefix="chorus-bench-") as state:
            async with EmbeddedNats(port=0, store_dir=Path(state) / "nats") as server:
                results = await phase(
                    service, settings("events"), server.url, samples, follow_events=True
                )
                baseline = await phase(
                    service, settings("poll"), server.url, baseline_samples, follow_events=False
                )
    finally:
        await asyncio.to_thread(service.remove)
        client.close()
    return report(results, baseline, target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--baseline-samples", type=int, default=3)
    parser.add_argument("--target", type=float, default=1.0, help="p95 target in seconds")
    parser.add_argument(
        "--docker-host",
        default=os.environ.get("CHORUS_TEST_DOCKER_HOST") or "unix:///var/run/docker.sock",
    )
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    try:
        passed = asyncio.run(
            run(args.docker_host, args.samples, args.baseline_samples, args.target)
        )
    except EngineUnavailable as exc:
        print(f"swarm_latency: no usable Docker swarm: {exc}", file=sys.stderr)
        return 2
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
