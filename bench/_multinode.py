"""What bench/multinode_latency.py runs on: a bridge process reading one manager of the
multi-node swarm, the agents bucket, the managers' task list and the bridge's /healthz, all
sampled on this process's monotonic clock.

The bridge is `python -m bridge run` (what the image runs), with NATS_URL pointing at a
nats-server on loopback, discovery `swarm` with no DNS names (so a failed round asks no
resolver: nothing leaves the machine), and its HTTP on 127.0.0.1. Its log goes to a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import common
import httpx

from tests.multinode.swarm import NETWORK, Node
from tests.multinode.timeline import BucketTimeline, TaskSampler

__all__ = ["BridgeProcess", "HealthSampler", "bridge_process", "converged", "free_port"]

STOP_GRACE = 15.0
HEALTH_INTERVAL = 0.25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class BridgeProcess:
    pid: int
    health_url: str
    log: Path


@contextlib.asynccontextmanager
async def bridge_process(
    nodes: list[Node], service: str, nats_url: str, bucket: str, log: Path, poll: float
) -> AsyncIterator[BridgeProcess]:
    """`python -m bridge run` reading the first of `nodes`' engines (the next when it fails:
    WHOOSH_DOCKER_HOST lists them all, as the stack's tasks.docker-api names every manager),
    until the context exits (SIGTERM)."""
    port = free_port()
    env = {
        **os.environ,
        "DISCOVERY_METHOD": "swarm",
        "WHOOSH_DOCKER_HOST": ",".join(n.socket for n in nodes),
        "WHOOSH_SERVICE_NAME": service,
        "WHOOSH_NETWORK_NAME": NETWORK,
        "WHOOSH_DNS_NAMES": "",
        "NATS_URL": nats_url,
        "BRIDGE_KV_BUCKET": bucket,
        "BRIDGE_SUBJECT_PREFIX": f"b{bucket}",
        "BRIDGE_POLL_INTERVAL": f"{poll:g}",
        "BRIDGE_LISTEN": f"127.0.0.1:{port}",
        "BRIDGE_LOG_FORMAT": "json",
    }
    out = await asyncio.to_thread(log.open, "ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "run",
            env=env,
            stdout=out,
            stderr=out,
            cwd=common.REPO,
        )
    finally:
        out.close()
    try:
        yield BridgeProcess(proc.pid, f"http://127.0.0.1:{port}/healthz", log)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class HealthSampler:
    """GET /healthz every HEALTH_INTERVAL s: (t, status or None when no answer, body)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, int | None, str]] = []
        self._ok = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                try:
                    response = await client.get(self.url)
                    self.samples.append((time.monotonic(), response.status_code, response.text))
                    if response.status_code == 200:
                        self._ok.set()
                except httpx.HTTPError as exc:
                    self.samples.append((time.monotonic(), None, str(exc)))
                await asyncio.sleep(HEALTH_INTERVAL)

    async def wait_ok(self, timeout: float) -> None:
        """Wait for the first 200 (the bridge is up and its first round is done)."""
        await asyncio.wait_for(self._ok.wait(), timeout)

    def first_not_ok(self, after: float) -> tuple[float, str] | None:
        return next(
            ((t, body) for t, status, body in self.samples if t >= after and status != 200), None
        )


async def converged(sampler: TaskSampler, bucket: BucketTimeline, timeout: float) -> float | None:
    """Wait until the bucket holds exactly what the manager's latest good sample lists
    running; the time it first did, or None after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        good = [s for s in sampler.samples[-20:] if s.error is None]
        if good and bucket.keys == good[-1].running:
            return time.monotonic()
        await asyncio.sleep(0.05)
    return None
