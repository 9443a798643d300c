"""A lease renewal whose answer never comes back costs a retry, not the lease: the server it
went through is killed with the write in its socket (a cluster of three: the lease stream
lives on), or the write was stored and only its answer was lost."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest
import structlog
from nats.aio.client import Client as NATS

from bridge.bus.lease import LeaderElection
from bridge.contract.buckets import LEADER_KEY
from bridge.contract.messages import Lease, now_rfc3339
from bridge.contract.names import Names
from bridge.errors import LeaseLostError
from bridge.waits import cancel_and_wait
from tests.chaos.support import lease_of
from tests.conftest import wait_for
from tests.nats_cluster import NatsCluster, nats_cluster, settled


def _unread_bytes_at(port: int) -> int:
    """Bytes received by loopback sockets whose local port is `port`, not yet read by their
    process (/proc/net/tcp's rx_queue): what a stopped server has not taken in."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rpartition(":")[2], 16) == port:
            total += int(fields[4].partition(":")[2], 16)
    return total


@contextlib.asynccontextmanager
async def _leading(nc: NATS, names: Names, **options: Any) -> AsyncIterator[LeaderElection]:
    """An election run until the context ends, once it leads."""
    election = LeaderElection(nc, names, **options)
    task = asyncio.create_task(election.run())
    try:
        await asyncio.wait_for(election.is_leader.wait(), 30)
        yield election
    finally:
        await cancel_and_wait(task)


async def _lease_stream_off(cluster: NatsCluster, admin: NATS, stream: str, name: str) -> None:
    """Move the lease stream's leader off server `name`, so that killing it kills only the
    connection the renewals go through."""
    async with asyncio.timeout(30):
        while await cluster.stream_leader(stream) == name:
            with contextlib.suppress(nats.errors.Error):
                await admin.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=2)
            await asyncio.sleep(0.5)
    await settled(cluster, [stream])


async def test_a_renewal_lost_with_its_server_is_sent_again(tmp_path: Path, unique: str) -> None:
    """kill -9 of the server the leader is connected to, while a renewal waits unread in its
    socket (the server stopped first): the client reconnects to another server, the renewal
    is sent again there, and the lease is never lost (waiting out the lost answer would take
    the lease's whole remaining 7.5 s, and lose it)."""
    names = Names(prefix=f"r{unique}", agents_bucket=f"agents_{unique}")
    stream = f"KV_{names.leader_bucket}"
    async with nats_cluster(tmp_path / "cluster") as cluster:
        first = cluster.servers[0]
        nc = await nats.connect(
            cluster.urls, dont_randomize=True, reconnect_time_wait=0.1, max_reconnect_attempts=-1
        )
        admin_url = ",".join(cluster.urls[1:])
        admin = await nats.connect(cluster.urls[1:])
        try:
            assert nc.connected_url is not None and nc.connected_url.port == first.port
            with structlog.testing.capture_logs() as logs:
                async with _leading(nc, names, replicas=3) as election:
                    await _lease_stream_off(cluster, admin, stream, first.name)
                    first.send(signal.SIGSTOP)
                    await wait_for(
                        lambda: _unread_bytes_at(first.port) > 0,
                        timeout=10,
                        what="a renewal to wait in the stopped server's socket",
                    )
                    before = await lease_of(admin_url, names.leader_bucket)
                    assert before is not None
                    await first.stop(signal.SIGKILL)

                    async def renewed() -> bool:
                        now = await lease_of(admin_url, names.leader_bucket)
                        return now is not None and now[1] > before[1]

                    await wait_for(renewed, timeout=10, what="a renewal after the kill")
                    after = await lease_of(admin_url, names.leader_bucket)
                    assert after is not None and after[0].bridge_id == election.identity
                    assert election.is_leader.is_set()
            events = [e["event"] for e in logs]
            assert "leader_lease_lost" not in events, events
        finally:
            await nc.close()
            await admin.close()


async def test_a_renewal_stored_without_its_answer_is_renewed_from(nc: NATS, unique: str) -> None:
    """The key names this bridge at a revision it never heard of (its write was stored, the
    answer lost): the fence lets its writes through and the next renewal goes on from that
    revision; the lease is not lost. A key naming another bridge still fences it."""
    names = Names(prefix=f"r{unique}", agents_bucket=f"agents_{unique}")
    with structlog.testing.capture_logs() as logs:
        async with _leading(nc, names, lease=3.0, retry=0.2) as election:
            kv = await nc.jetstream().key_value(names.leader_bucket)
            own = Lease(bridge_id=election.identity, since="x", renewed_at=now_rfc3339())
            stored = await kv.put(LEADER_KEY, msgspec.json.encode(own))
            await election.confirm()

            async def renewed() -> bool:
                entry = await kv.get(LEADER_KEY)
                return entry.revision is not None and entry.revision > stored

            await wait_for(renewed, timeout=10, what="a renewal after the unknown revision")
            assert election.is_leader.is_set()
            events = [e["event"] for e in logs]
            assert "leader_lease_lost" not in events, events
            other = Lease(bridge_id="someone-else", since="x")
            await kv.put(LEADER_KEY, msgspec.json.encode(other))
            with pytest.raises(LeaseLostError):
                await election.confirm()
