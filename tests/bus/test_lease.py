"""Several bridges against one NATS: one leader, and a standby that takes over."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from bridge.bus.lease import LeaderElection
from bridge.bus.registry import read_bucket
from bridge.contract.messages import Lease
from bridge.contract.names import Names
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from bridge.errors import LeaseLostError
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)


class BridgeProcess:
    """`chorus-bridge run` as a child process, its JSON log lines collected."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, object]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                continue

    def saw(self, event: str) -> bool:
        return any(line.get("event") == event for line in self.lines)

    @property
    def http_port(self) -> int:
        return next(
            int(str(line["port"])) for line in self.lines if line.get("event") == "http_listening"
        )

    async def health(self) -> tuple[int, dict[str, object]]:
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{self.http_port}/healthz")
        return response.status_code, response.json()


async def start(nats_url: str, docker_host: str, unique: str) -> BridgeProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "BRIDGE_"))}
    env.update(
        NATS_URL=nats_url,
        WHOOSH_DOCKER_HOST=docker_host,
        DISCOVERY_METHOD="swarm",
        WHOOSH_DNS_NAMES="",
        BRIDGE_LISTEN="127.0.0.1:0",
        BRIDGE_POLL_INTERVAL="30",
        BRIDGE_SUBJECT_PREFIX=f"l{unique}",
        BRIDGE_KV_BUCKET=f"agents_{unique}",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return BridgeProcess(proc)


async def test_standby_takes_over_after_sigkill(
    nats_server: EmbeddedNats, nc: NATS, tmp_path: Path, unique: str
) -> None:
    """Kill the leader with SIGKILL: the standby leads within 20 s; the bucket stays right.

    By design the takeover comes at most LEASE + RETRY (12 s) after the last renewal, which
    came up to a renewal interval before the kill; the rest is room for a loaded machine."""
    swarm = EmulatedSwarm()
    swarm.add_tasks(4)
    async with DockerEmulator(tmp_path / "docker.sock", swarm) as emulator:
        first = await start(nats_server.url, emulator.base_url, unique)
        await wait_for(lambda: first.saw("agents_changed"), timeout=20, what="the first leader")
        second = await start(nats_server.url, emulator.base_url, unique)
        try:
            await wait_for(lambda: second.saw("bridge_standby"), timeout=20, what="a standby")
            assert not second.saw("bridge_leader")
            code, health = await second.health()
            assert code == 200 and health["role"] == "standby"
            code, health = await first.health()
            assert code == 200 and health["role"] == "leader"
            kv = await nc.jetstream().key_value(f"agents_{unique}")

            async def bucket_right() -> bool:
                agents, _ = await read_bucket(kv)
                return {k: a.address for k, a in agents.items()} == {
                    t: swarm.address_of(t) for t in swarm.running_ids()
                }

            assert await bucket_right()
            first.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await wait_for(
                lambda: second.saw("bridge_leader"), timeout=20 + 1, what="the standby to take over"
            )
            takeover = time.monotonic() - killed
            assert takeover < 20, takeover
            print(f"takeover after SIGKILL: {takeover:.1f} s")
            assert await bucket_right()
            swarm.add_tasks(2)
            await wait_for(bucket_right, timeout=5, what="the new leader to follow a scale-up")
            code, health = await second.health()
            assert code == 200 and health["role"] == "leader"
        finally:
            for bridge in (first, second):
                if bridge.proc.returncode is None:
                    bridge.proc.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(bridge.proc.wait(), 15)
                await bridge.reader
        assert second.proc.returncode == 0


async def _wait_leader(election: LeaderElection) -> None:
    async with asyncio.timeout(10):
        await election.is_leader.wait()


async def test_lease_value_says_since_once_per_term(nc: NATS, unique: str) -> None:
    """`since` is set when the term starts and stays; `renewed_at` moves with each renewal."""
    names = Names(prefix=f"l{unique}", agents_bucket=f"agents_{unique}")
    election = LeaderElection(nc, names, lease=1.5, retry=0.2)
    task = asyncio.create_task(election.run())
    try:
        await _wait_leader(election)
        kv = await nc.jetstream().key_value(names.leader_bucket)
        first = msgspec.json.decode((await kv.get("leader")).value or b"", type=Lease)

        async def renewed() -> bool:
            value = (await kv.get("leader")).value or b""
            return msgspec.json.decode(value, type=Lease).renewed_at != first.renewed_at

        await wait_for(renewed, timeout=5, what="a renewal")
        later = msgspec.json.decode((await kv.get("leader")).value or b"", type=Lease)
        assert later.since == first.since and later.bridge_id == election.identity
        assert later.renewed_at is not None and later.renewed_at > first.since
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_leader_keeps_its_term_when_the_lease_bucket_is_lost(nc: NATS, unique: str) -> None:
    """The lease bucket deleted under a leader (a NATS restart of a memory bucket): it is
    created again and the lease retaken, without stepping down; a foreign write to the
    key then fences the leader's writes."""
    names = Names(prefix=f"l{unique}", agents_bucket=f"agents_{unique}")
    election = LeaderElection(nc, names, lease=3.0, retry=0.2)
    task = asyncio.create_task(election.run())
    try:
        await _wait_leader(election)
        await election.confirm()
        js = nc.jetstream()
        await js.delete_stream(f"KV_{names.leader_bucket}")

        async def retaken() -> bool:
            try:
                kv = await js.key_value(names.leader_bucket)
                entry = await kv.get("leader")
            except nats.js.errors.Error:
                return False
            return bool(entry.value)

        await wait_for(retaken, timeout=8, what="the lease to be taken again")
        assert election.is_leader.is_set() and not election.lost.is_set()
        await election.confirm()
        kv = await js.key_value(names.leader_bucket)
        await kv.put("leader", msgspec.json.encode(Lease(bridge_id="someone-else", since="x")))
        with pytest.raises(LeaseLostError):
            await election.confirm()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_lease_that_still_names_this_bridge_is_taken_at_once(nc: NATS, unique: str) -> None:
    """A bridge that stepped down for want of answers while its renewals still reached the
    server (NATS frozen, its connection deaf) finds the key naming it: nobody else leads, so
    it leads again at once, not after the lease runs out; a key naming another bridge waits."""
    names = Names(prefix=f"l{unique}", agents_bucket=f"agents_{unique}")
    first = LeaderElection(nc, names, identity="bridge-a", lease=30.0, retry=0.2)
    task = asyncio.create_task(first.run())
    try:
        await _wait_leader(first)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Cancelled, it resigned: the key is deleted. Put back what a late renewal leaves.
    kv = await nc.jetstream().key_value(names.leader_bucket)
    own = msgspec.json.encode(Lease(bridge_id="bridge-a", since="x"))
    await kv.put("leader", own)
    again = LeaderElection(nc, names, identity="bridge-a", lease=30.0, retry=0.2)
    other = LeaderElection(nc, names, identity="bridge-b", lease=30.0, retry=0.2)
    tasks = [asyncio.create_task(again.run()), asyncio.create_task(other.run())]
    try:
        await _wait_leader(again)  # well within the 30 s lease
        lease = msgspec.json.decode((await kv.get("leader")).value or b"", type=Lease)
        assert lease.bridge_id == "bridge-a" and lease.since != "x"  # a new term
        await wait_for(lambda: other.leader == "bridge-a", what="the other to see the leader")
        assert not other.is_leader.is_set()
    finally:
        for running in tasks:
            running.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
