"""A NATS connection that stays connected but no longer reads (nats-py's read loop ended), and
a NATS server that is frozen (SIGSTOP): /healthz says so, the bridge reconnects by itself within
its ping bound (bridge/edges/nats_client.py), and a stop is prompt even with NATS frozen."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import nats.errors
import pytest

from bridge.config import Settings
from bridge.contract.names import Names
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.chaos.bridges import bridge_process
from tests.chaos.support import healthz, try_broadcast
from tests.conftest import run_bridge, wait_for

pytestmark = pytest.mark.timeout(90)

# /healthz turns 503 within this long of NATS no longer answering: the probe's silence limit
# (5 s) plus one probe interval (2 s) and some slack.
UNHEALTHY_WITHIN = 10.0
# Back to a leader with /healthz 200 within this long: the pings find a deaf connection stale
# within 15 s, then a campaign (every 2 s) takes the lease, which still names this bridge, and
# a first round runs.
RECOVERED_WITHIN = 25.0
# A presence key that is not UTF-8 is given again by the new watch after the reconnect, and
# the marker of its expiry after it (15 s TTL, 5 s marker): the bridge goes deaf twice, so two
# staleness bounds (2 x 15 s) and a campaign.
RECOVERED_FROM_BAD_KEY_WITHIN = 40.0


def _state(pid: int) -> str:
    """The process state letter of /proc/PID/stat (T: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


@contextlib.asynccontextmanager
async def frozen(server: EmbeddedNats) -> AsyncIterator[None]:
    """The nats-server stopped (SIGSTOP) while the context is open, resumed on exit. Entered
    once every thread of it has stopped: a signal is delivered, not obeyed, when kill returns."""
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        await wait_for(lambda: _state(pid) == "T", what="nats-server to stop")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def not_answering(port: int) -> bool:
    try:
        status, body = await healthz(port)
    except OSError:  # not listening yet
        return False
    return status == 503 and any("NATS not answering" in r for r in body.get("reasons", []))


async def healthy_leader(port: int) -> bool:
    try:
        status, body = await healthz(port)
    except OSError:  # not listening yet
        return False
    return status == 200 and body.get("role") == "leader"


async def recovers(
    url: str, settings: Settings, port: int, what: str, within: float = RECOVERED_WITHIN
) -> None:
    """The bridge leads with /healthz 200 again and answers a broadcast with a report."""
    await wait_for(
        lambda: healthy_leader(port),
        timeout=within,
        interval=0.2,
        what=f"a healthy leader again after {what}",
    )

    async def reported() -> bool:
        return await try_broadcast(url, settings, "after-deafness", timeout=3) is not None

    await wait_for(reported, timeout=10, interval=0.2, what=f"a report after {what}")


async def raw_publish(url: str, subject: bytes, payload: bytes) -> None:
    """Publish as any client can, with a subject of any bytes (nats-py encodes str subjects)."""
    address = urlparse(url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\n')
        writer.write(b"PUB %s %d\r\n%s\r\nPING\r\n" % (subject, len(payload), payload))
        await writer.drain()
        async with asyncio.timeout(5):
            answer = b""
            while b"PONG" not in answer:
                chunk = await reader.read(4096)
                assert chunk, f"the server closed the connection: {answer!r}"
                answer += chunk
        assert b"-ERR" not in answer, answer
    finally:
        writer.close()


async def test_a_long_freeze_of_nats(
    tmp_path: Path,
    settings: Settings,
    nats_server: EmbeddedNats,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """NATS frozen for 16 s under a running bridge: /healthz is 503 "NATS not answering"
    during the freeze, and once NATS runs again the bridge leads, is healthy and answers a
    broadcast within the bound (it used to stay deaf, with /healthz 200, for 6 minutes)."""
    swarm.add_tasks(2)
    url = nats_server.url
    async with bridge_process(settings, url, tmp_path / "bridge.log") as bridge:
        await wait_for(
            lambda: healthy_leader(bridge.port), timeout=20, interval=0.2, what="a leader"
        )
        async with frozen(nats_server):
            frozen_at = time.monotonic()
            await wait_for(
                lambda: not_answering(bridge.port),
                timeout=UNHEALTHY_WITHIN,
                interval=0.2,
                what="/healthz 503 while NATS is frozen",
            )
            # The rest of 16 s: long enough for the lease to be lost and the broadcast
            # service's stop to give its flush up (whose late PONG used to kill the read loop).
            await asyncio.sleep(16 - (time.monotonic() - frozen_at))
        await recovers(url, settings, bridge.port, "a 16 s freeze")
    log = (tmp_path / "bridge.log").read_text()
    assert "nats_not_answering" in log


async def test_a_flush_that_timed_out_does_not_leave_the_bridge_deaf(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm
) -> None:
    """A flush that times out while NATS is frozen leaves its cancelled future queued, and
    the PONG that comes after it ends nats-py's read loop (InvalidStateError): the bridge is
    connected and deaf. /healthz says so, and the connection is found stale and replaced."""
    swarm.add_tasks(2)
    url = nats_server.url
    async with run_bridge(settings, url) as running:
        port = running.bridge.http_port
        async with frozen(nats_server):
            with pytest.raises(nats.errors.TimeoutError):
                await running.bridge.nc.flush(timeout=1)
        # NATS answers again, and its PONGs reach the cancelled future.
        await wait_for(
            lambda: not_answering(port),
            timeout=UNHEALTHY_WITHIN,
            interval=0.2,
            what="/healthz 503 while the connection is deaf",
        )
        assert running.bridge.nc.is_connected
        await recovers(url, settings, port, "a dead read loop")


async def test_a_subject_that_is_not_utf8_does_not_leave_the_bridge_deaf(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm
) -> None:
    """An agent writes a presence key that is not UTF-8 (any client may, without the auth
    callout): nats-py's parser fails on the subject and its read loop ends. /healthz says so,
    and the bridge is back, leading and answering broadcasts, within the bound."""
    swarm.add_tasks(2)
    url = nats_server.url
    names = Names.from_settings(settings)
    async with run_bridge(settings, url) as running:
        port = running.bridge.http_port
        subject = f"$KV.{names.presence_bucket}.".encode() + b"agent-\xff"
        await raw_publish(url, subject, b'{"agent_id": "agent"}')
        await wait_for(
            lambda: not_answering(port),
            timeout=UNHEALTHY_WITHIN,
            interval=0.2,
            what="/healthz 503 after the subject that is not UTF-8",
        )
        await recovers(
            url, settings, port, "a subject that is not UTF-8", RECOVERED_FROM_BAD_KEY_WITHIN
        )


async def test_sigterm_with_nats_frozen_exits_promptly(
    tmp_path: Path,
    settings: Settings,
    nats_server: EmbeddedNats,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """SIGTERM to `chorus-bridge run` while its NATS is frozen: exit 0 within 9 s (Docker
    sends SIGKILL after 10 s), where draining used to wait 14 to 17 s. (The bridge's own
    bounds add up to about 4 s; the rest is room for a loaded machine.)"""
    swarm.add_tasks(2)
    async with bridge_process(settings, nats_server.url, tmp_path / "bridge.log") as bridge:
        await wait_for(
            lambda: healthy_leader(bridge.port), timeout=20, interval=0.2, what="a leader"
        )
        assert bridge.proc is not None
        proc = bridge.proc
        async with frozen(nats_server):
            bridge.send(signal.SIGTERM)
            status = await asyncio.wait_for(asyncio.to_thread(proc.wait), 9)
    assert status == 0
    assert "bridge_stopped" in (tmp_path / "bridge.log").read_text()
