"""The embedded nats-server: restarted on its store when it dies, given up loudly when it
cannot be, and out of reach of the terminal's Ctrl-C (the bridge stops first)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from bridge.errors import EmbeddedServerError
from tests.cli.test_cli import env
from tests.conftest import live_keys, wait_for

pytestmark = pytest.mark.timeout(90)


async def _put_and_get(url: str, value: bytes | None) -> bytes | None:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="kept")
        if value is not None:
            await kv.put("k", value)
        got: bytes | None = (await kv.get("k")).value
        return got
    finally:
        await nc.close()


async def test_a_killed_server_is_restarted_on_its_store(tmp_path: Path) -> None:
    """kill -9 of the server: it is back on the same URL with its JetStream state."""
    async with EmbeddedNats(port=0, store_dir=tmp_path / "nats") as server:
        url, first_pid = server.url, server.pid
        assert await _put_and_get(url, b"v1") == b"v1"
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        await wait_for(lambda: server.restarts == 1, timeout=15, what="the restart")
        assert server.url == url and server.pid != first_pid
        assert await _put_and_get(url, None) == b"v1"


async def test_a_server_that_cannot_restart_ends_the_context(tmp_path: Path) -> None:
    """A server that dies and cannot start again: the context ends with EmbeddedServerError,
    so `run` exits non-zero for its own supervisor."""
    store = tmp_path / "nats"
    ready: asyncio.Future[EmbeddedNats] = asyncio.get_running_loop().create_future()

    async def serve() -> None:
        async with EmbeddedNats(port=0, store_dir=store) as server:
            ready.set_result(server)
            await asyncio.Event().wait()

    task = asyncio.create_task(serve())
    server = await asyncio.wait_for(ready, 15)
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    store.rename(tmp_path / "moved")
    store.write_text("a file where the store was: nats-server cannot start here")
    os.kill(server.pid, signal.SIGKILL)
    with pytest.raises(EmbeddedServerError, match="could not be restarted"):
        await asyncio.wait_for(task, 30)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _ended(pid: int) -> bool:
    """Whether process `pid` is gone (a zombie counts: its parent may never reap it)."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return True


class RunningCommand:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, object]] = []

    def events(self) -> list[object]:
        return [line.get("event") for line in self.lines]

    def line(self, event: str) -> dict[str, object]:
        return next(line for line in self.lines if line.get("event") == event)

    async def read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.lines.append({"event": "raw", "text": raw.decode(errors="replace")})


@pytest.fixture
async def embedded_run(tmp_path: Path, unique: str) -> AsyncIterator[RunningCommand]:
    """`chorus-bridge run` with its embedded NATS, in a process group of its own (as a
    terminal starts it), against an emulated swarm of 3 tasks."""
    swarm = EmulatedSwarm()
    swarm.add_tasks(3)
    async with DockerEmulator(tmp_path / "docker.sock", swarm) as emulator:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "run",
            "--state-dir",
            str(tmp_path / "state"),
            env=env(
                WHOOSH_DOCKER_HOST=emulator.base_url,
                DISCOVERY_METHOD="swarm",
                WHOOSH_DNS_NAMES="",
                BRIDGE_LISTEN="127.0.0.1:0",
                BRIDGE_KV_BUCKET=f"agents_{unique}",
            ),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        running = RunningCommand(proc)
        reader = asyncio.create_task(running.read())
        try:
            await wait_for(
                lambda: "agents_changed" in running.events(), timeout=30, what="the first round"
            )
            yield running
        finally:
            # Its nats-server is in a session of its own: note it before `run` ends, or it
            # would be reparented and left running.
            children = _children(proc.pid) if proc.returncode is None else []
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            await reader


async def test_ctrl_c_stops_the_bridge_before_nats(embedded_run: RunningCommand) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C): exit 0, no NATS error or
    disconnection on the way out, and no nats-server left behind."""
    proc = embedded_run.proc
    (server_pid,) = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    events = embedded_run.events()
    assert events[-1] == "bridge_stopped"
    assert not {"nats_error", "nats_disconnected"} & set(events), events
    await wait_for(lambda: _ended(server_pid), what="the nats-server to end")


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
async def test_a_killed_bridge_takes_its_nats_server_along(embedded_run: RunningCommand) -> None:
    """kill -9 of `run` itself, so that none of its code runs any more: its nats-server, in a
    session of its own, ends with it all the same."""
    proc = embedded_run.proc
    (server_pid,) = _children(proc.pid)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
        await wait_for(lambda: _ended(server_pid), timeout=10, what="the nats-server to end")
    finally:
        if not _ended(server_pid):
            os.kill(server_pid, signal.SIGKILL)


async def test_run_survives_its_nats_server_being_killed(
    embedded_run: RunningCommand, unique: str
) -> None:
    """kill -9 of the embedded nats-server: it is restarted on its store, the bridge
    reconnects, and the bucket still lists the agents."""
    proc = embedded_run.proc
    (server_pid,) = _children(proc.pid)
    loop = asyncio.get_running_loop()
    killed = loop.time()
    os.kill(server_pid, signal.SIGKILL)
    await wait_for(
        lambda: "nats_embedded_restarted" in embedded_run.events(),
        timeout=30,
        interval=0.005,
        what="the restart",
    )
    restarted = loop.time() - killed
    await wait_for(
        lambda: "nats_reconnected" in embedded_run.events(),
        timeout=30,
        interval=0.005,
        what="the bridge to reconnect",
    )
    print(
        f"kill -9 of the embedded nats-server: restarted after {restarted:.2f} s, "
        f"bridge reconnected after {loop.time() - killed:.2f} s"
    )
    assert "nats_embedded_died" in embedded_run.events()
    url = str(embedded_run.line("nats_embedded")["url"])
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        kv = await nc.jetstream().key_value(f"agents_{unique}")
        assert len(await live_keys(kv)) == 3
    finally:
        await nc.close()
    assert proc.returncode is None
