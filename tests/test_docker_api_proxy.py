"""The docker-api proxy (deploy/docker-api/haproxy.cfg) request by request, with a real haproxy.

Each row of the table is sent as raw bytes through haproxy to a DaemonGate in front of the
daemon, and checked twice: the status the client gets, and what the daemon saw. A request the
proxy lets through must get the daemon's own answer (the same row sent straight to the daemon)
and reach it exactly once; any other must get 403 (400 where it is not valid HTTP at all) and
reach nothing. The daemon is the Docker Engine emulator (always) and the real engine of
CHORUS_TEST_DOCKER_HOST (when scripts/test.sh brought it up; a failure without it under CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from bridge.bus.registry import read_bucket
from bridge.config import DOCKER_CALL_TIMEOUT, Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import run_bridge, wait_for
from tests.docker_api_proxy import (
    IO_DEADLINE,
    DaemonGate,
    Response,
    haproxy_binary,
    request,
    running_haproxy,
    send,
)
from tests.docker_api_requests import PASS, TABLE, Row
from tests.swarm_support import engine_host, in_ci


@pytest.fixture(scope="module")
def haproxy() -> str:
    binary = haproxy_binary()
    if binary is None:
        reason = "haproxy is not installed (apt-get install haproxy; scripts/test.sh does)"
        if in_ci():
            pytest.fail(f"{reason}. CI=true: the proxy must be tested in CI", pytrace=False)
        pytest.skip(reason)
    return binary


@dataclasses.dataclass
class Proxy:
    """haproxy on 127.0.0.1:port in front of a gate in front of a daemon."""

    port: int
    gate: DaemonGate


@pytest.fixture
async def emulated(haproxy: str, tmp_path: Path) -> AsyncIterator[tuple[Proxy, EmulatedSwarm]]:
    swarm = EmulatedSwarm(subnet="127.10.0.0/16")
    swarm.add_tasks(3)
    async with (
        DockerEmulator(tmp_path / "docker.sock", swarm),
        DaemonGate(tmp_path / "gate.sock", str(tmp_path / "docker.sock")) as gate,
        running_haproxy(haproxy, gate.path, tmp_path / "haproxy.log") as port,
    ):
        yield Proxy(port, gate), swarm


@pytest.fixture
async def real(haproxy: str, tmp_path: Path) -> AsyncIterator[Proxy]:
    host = engine_host()
    if not host.startswith("unix://"):
        pytest.skip(f"{host}: the proxy test needs the engine's unix socket")
    async with (
        DaemonGate(tmp_path / "gate.sock", host.removeprefix("unix://")) as gate,
        running_haproxy(haproxy, gate.path, tmp_path / "haproxy.log") as port,
    ):
        yield Proxy(port, gate)


async def check_row(proxy: Proxy, row: Row) -> str | None:
    """None when the row holds; else what went wrong."""
    direct: list[Response] = []
    for req in row.requests:
        if row.expect[len(direct)] == PASS:
            direct += await send(proxy.gate.path, [[req]])
        else:
            direct.append(Response(0, {}, b""))
    before = len(proxy.gate.seen)
    try:
        answers = await send(("127.0.0.1", proxy.port), row.batches)
    except TimeoutError:
        return f"no answer within {IO_DEADLINE:g} s; the daemon saw {proxy.gate.seen[before:]}"
    # The gate records a request before it forwards it, so whatever reached it is there now.
    seen = proxy.gate.seen[before:]
    statuses = [a.status for a in answers]
    wanted = [d.status if e == PASS else e for e, d in zip(row.expect, direct, strict=True)]
    reached = [
        req.raw.split(b" ")[1] for req, e in zip(row.requests, row.expect, strict=True) if e == PASS
    ]
    problems = []
    if statuses != wanted:
        problems.append(f"status {statuses}, want {wanted}")
    if [s.target for s in seen] != reached:
        problems.append(f"the daemon saw {[(s.method, s.target) for s in seen]}, want {reached}")
    return "; ".join(problems) or None


async def check_table(proxy: Proxy) -> None:
    failures = [
        f"{row.name}: {problem}"
        for row in TABLE
        if (problem := await check_row(proxy, row)) is not None
    ]
    assert not failures, "\n".join(failures)


async def test_table_against_the_emulator(emulated: tuple[Proxy, EmulatedSwarm]) -> None:
    proxy, swarm = emulated
    await check_table(proxy)
    # The emulator counts only GET as expected; HEAD of the five paths is allowed too.
    five = {"/_ping", "/version", "/info", "/tasks", "/events"}
    others = [
        r for r in swarm.unexpected if r.split(" ")[0] != "HEAD" or r.split(" ")[1] not in five
    ]
    assert others == [], "requests the proxy should have refused reached the emulator"


@pytest.mark.swarm
async def test_table_against_a_real_dockerd(real: Proxy) -> None:
    await check_table(real)


# --- what the bridge needs of the proxy, beyond the table ---------------------------------------


async def test_a_14_mb_task_list_comes_through_whole(
    emulated: tuple[Proxy, EmulatedSwarm],
) -> None:
    """10,000 tasks are about 14 MB of JSON: the proxy streams it, byte for byte."""
    proxy, swarm = emulated
    await asyncio.to_thread(swarm.add_tasks, 10_000)
    wanted = await send(proxy.gate.path, [[request("GET", "/tasks")]])
    answers = await send(("127.0.0.1", proxy.port), [[request("GET", "/v1.41/tasks")]])
    assert [a.status for a in answers] == [200]
    assert len(answers[0].body) > 13_000_000
    assert answers[0].body == wanted[0].body


async def test_a_quiet_event_stream_outlasts_the_bridges_docker_timeout(
    emulated: tuple[Proxy, EmulatedSwarm],
) -> None:
    """The daemon sends nothing on /events while nothing happens. The bridge ends a stream
    that stayed quiet for its Docker timeout itself; the proxy must not cut it sooner (an
    end it did not choose is an outage to the bridge: a warning and a backoff)."""
    proxy, _ = emulated
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(request("GET", "/events").raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_DEADLINE)
        assert head.startswith(b"HTTP/1.1 200 ")
        quiet = DOCKER_CALL_TIMEOUT + 2.0
        with pytest.raises(TimeoutError):
            # An end of the stream (b"") within `quiet` seconds fails the test.
            data = await asyncio.wait_for(reader.read(1), quiet)
            pytest.fail(f"the proxy ended a quiet /events stream within {quiet:g} s ({data!r})")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_the_bridge_discovers_and_follows_events_through_the_proxy(
    emulated: tuple[Proxy, EmulatedSwarm], nats_server: EmbeddedNats, nc: NATS, unique: str
) -> None:
    """The bridge at tcp://<proxy>: its first round lists the tasks, and a task added later
    reaches the bucket through the event stream (the poll is an hour away)."""
    proxy, swarm = emulated
    settings = Settings(
        docker_host=f"tcp://127.0.0.1:{proxy.port}",
        discovery_method="swarm",
        subject_prefix=f"t{unique}",
        kv_bucket=f"agents_{unique}",
        poll_interval=3600.0,
        listen_host="127.0.0.1",
        listen_port=0,
        dns_names=(),
    )

    async def keys() -> set[str]:
        agents, _ = await read_bucket(await nc.jetstream().key_value(settings.kv_bucket))
        return set(agents)

    async with run_bridge(settings, nats_server.url):
        assert await keys() == set(swarm.running_ids())
        (added,) = await asyncio.to_thread(swarm.add_tasks, 1)

        async def listed() -> bool:
            return added in await keys()

        await wait_for(listed, timeout=10, what=f"task {added} in the bucket via /events")
    paths = {s.target.split(b"?")[0] for s in proxy.gate.seen}
    assert paths <= {b"/info", b"/tasks", b"/events"}, paths


async def test_http2_requests_are_refused(emulated: tuple[Proxy, EmulatedSwarm]) -> None:
    """HAProxy also speaks HTTP/2 (prior knowledge) on the bind; such a request reaches the
    rules with an absolute-form target, so even an allowed path is refused. Sent with curl,
    when it is installed."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (the HTTP/2 requests are sent with it)")
    proxy, _ = emulated
    before = len(proxy.gate.seen)
    for method, path in (
        ("GET", "/_ping"),
        ("GET", "/v1.41/tasks"),
        ("POST", "/containers/create"),
    ):
        done = await asyncio.create_subprocess_exec(
            curl,
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--http2-prior-knowledge",
            "-X",
            method,
            f"http://127.0.0.1:{proxy.port}{path}",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(done.communicate(), IO_DEADLINE)
        assert out.decode() == "403 2", f"{method} {path} over HTTP/2: {out!r}"
    assert proxy.gate.seen[before:] == []
