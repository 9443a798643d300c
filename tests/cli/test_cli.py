"""The chorus-bridge command as a user runs it: a real process, real signals, real output."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(90)


def env(**extra: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NATS_", "BRIDGE_", "WHOOSH_", "DISCOVERY_"))
    }
    return {**base, "BRIDGE_LOG_FORMAT": "json", **extra}


async def command(
    *args: str,
    stdin: bytes | str | None = None,
    **extra: str,
) -> tuple[int, str, str]:
    """Run `python -m bridge ARGS` with `extra` added to its environment; (status, out, err)."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        env=env(**extra),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(data), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Service:
    def __init__(self, proc: asyncio.subprocess.Process, lines: list[dict[str, object]]) -> None:
        self.proc, self.lines = proc, lines

    def events(self) -> list[object]:
        return [line.get("event") for line in self.lines]


async def _read(proc: asyncio.subprocess.Process, lines: list[dict[str, object]]) -> None:
    assert proc.stderr is not None
    async for raw in proc.stderr:
        try:
            lines.append(json.loads(raw))
        except ValueError:
            lines.append({"event": "raw", "text": raw.decode(errors="replace")})


@pytest.fixture
async def service(
    nats_server: EmbeddedNats, tmp_path: Path, unique: str
) -> AsyncIterator[tuple[Service, DockerEmulator, EmulatedSwarm]]:
    swarm = EmulatedSwarm()
    swarm.add_tasks(4)
    async with DockerEmulator(tmp_path / "docker.sock", swarm) as emulator:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "run",
            env=env(
                NATS_URL=nats_server.url,
                WHOOSH_DOCKER_HOST=emulator.base_url,
                DISCOVERY_METHOD="swarm",
                WHOOSH_DNS_NAMES="",
                BRIDGE_LISTEN="127.0.0.1:0",
                BRIDGE_SUBJECT_PREFIX=f"c{unique}",
                BRIDGE_KV_BUCKET=f"agents_{unique}",
            ),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        lines: list[dict[str, object]] = []
        reader = asyncio.create_task(_read(proc, lines))
        running = Service(proc, lines)
        try:
            await wait_for(
                lambda: "agents_changed" in running.events(), timeout=20, what="the first round"
            )
            yield running, emulator, swarm
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await reader


async def test_sigterm_shuts_down_cleanly(
    service: tuple[Service, DockerEmulator, EmulatedSwarm],
) -> None:
    """SIGTERM stops `run` with exit status 0, after its clean-shutdown line."""
    running, _, _ = service
    running.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(running.proc.wait(), 15) == 0
    events = running.events()
    assert events[-1] == "bridge_stopped"
    # It gave its lease up, so a standby would take over at once.
    assert events.index("bridge_stopping") < events.index("leader_resigned")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_while_nats_does_not_answer_is_prompt(sig: signal.Signals) -> None:
    """SIGTERM or Ctrl-C while `run` is still trying to reach NATS (which it would for ~30 s)
    ends it at once, exit 0, with its stop line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "run",
        env=env(
            NATS_URL="nats://127.0.0.1:1",
            BRIDGE_LISTEN="127.0.0.1:0",
            WHOOSH_DOCKER_ENABLED="false",
            DISCOVERY_METHOD="dns",
        ),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while b"nats_error" not in await proc.stderr.readline():  # it is trying to connect
            pass
    proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), 5)
    assert proc.returncode == 0
    assert b'"bridge_stopped"' in err


async def test_agents_and_broadcast_commands(
    service: tuple[Service, DockerEmulator, EmulatedSwarm], nats_server: EmbeddedNats, unique: str
) -> None:
    """`agents --json` lists the running tasks; `broadcast` reports and sets its exit status."""
    _, _, swarm = service
    names = {
        "NATS_URL": nats_server.url,
        "BRIDGE_SUBJECT_PREFIX": f"c{unique}",
        "BRIDGE_KV_BUCKET": f"agents_{unique}",
    }
    code, out, _ = await command("agents", "--json", **names)
    assert code == 0
    assert {a["id"]: a["address"] for a in json.loads(out)} == {
        t: swarm.address_of(t) for t in swarm.running_ids()
    }
    code, out, _ = await command("agents", **names)
    assert code == 0 and "4 agents (4 swarm, 0 dns, 0 static; 0 on the bus)" in out
    # Nobody listens on the emulated tasks' loopback addresses: all 4 fail, exit status 1.
    opportunity = b'{"id": "c-1", "roles": [{"name": "tpm", "core": true}]}'
    code, out, _ = await command("broadcast", "-", "--json", stdin=opportunity, **names)
    assert code == 1
    report = json.loads(out)
    assert (report["total_agents"], report["success_count"], len(report["failed"])) == (4, 0, 4)
    code, _, err = await command("broadcast", "-", stdin=b'{"id": "c-1", "roles": []}', **names)
    assert code == 2 and "refused" in err and "$.roles" in err


async def test_bad_value_stops_with_one_line() -> None:
    """A bad variable stops the start with one line naming it, exit status 64 (usage)."""
    code, out, err = await command("run", BRIDGE_POLL_INTERVAL="-5")
    assert code == 64 and out == ""
    assert err.strip().splitlines() == [
        "chorus-bridge: ConfigError: BRIDGE_POLL_INTERVAL='-5': must be greater than 0"
    ]


async def test_client_commands_say_when_nothing_listens(unused_tcp_port: int) -> None:
    """`agents` against a NATS that is not there fails with one clear line."""
    code, _, err = await command("agents", NATS_URL=f"nats://127.0.0.1:{unused_tcp_port}")
    assert code == 3
    assert "cannot connect to NATS" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("broadcast", "/nonexistent/opportunity.json"),
        ("broadcast", "-", "--timeout", "soon"),
        ("agents", "--no-such-flag"),
        ("no-such-command",),
        ("demo", "--agents", "5", "--on-bus", "10"),
    ],
)
async def test_usage_errors_exit_64(args: tuple[str, ...]) -> None:
    """A missing file, a bad flag value, an unknown flag or command: exit status 64, and
    nothing sent anywhere."""
    code, out, err = await command(*args, NATS_URL="nats://127.0.0.1:9")
    assert code == 64, err
    assert out == "" and "Traceback" not in err
    assert err.startswith("chorus-bridge: ") and len(err.strip().splitlines()) == 1, err


async def test_broadcast_without_nats_exits_3(unused_tcp_port: int) -> None:
    """NATS unreachable: exit status 3 (no answer could be had), not 1 (some agents missed)."""
    code, _, err = await command(
        "broadcast",
        "-",
        stdin=b'{"id": "c", "roles": [{"name": "a"}]}',
        NATS_URL=f"nats://127.0.0.1:{unused_tcp_port}",
    )
    assert code == 3 and len(err.strip().splitlines()) == 1


async def test_broadcast_with_no_bridge_exits_3(nats_server: EmbeddedNats) -> None:
    """A NATS where no bridge serves broadcasts: one line that says so, exit status 3."""
    code, _, err = await command(
        "broadcast", "-", stdin=b'{"id": "c", "roles": [{"name": "a"}]}', NATS_URL=nats_server.url
    )
    assert code == 3
    assert err.strip().splitlines() == [
        f"chorus-bridge: BridgeUnavailableError: no bridge is serving chorus.bridge.broadcast "
        f"on {nats_server.url}: is `chorus-bridge run` running against this NATS?"
    ]


@pytest.mark.parametrize(("code", "status"), [("400", 2), ("500", 3)])
async def test_broadcast_tells_a_refusal_from_a_failure(
    nats_server: EmbeddedNats, nc: NATS, code: str, status: int
) -> None:
    """The bridge's error answers carry the micro service's error code: a 400 is a refused
    request (exit status 2, fix the request); a 500 is the bridge failing as it broadcast
    (exit status 3: no report could be had), each said in one line."""

    async def answer(msg: Msg) -> None:
        headers = {"Nats-Service-Error-Code": code, "Nats-Service-Error": "went wrong"}
        assert msg.reply
        await nc.publish(msg.reply, b'{"error": "went wrong", "field": null}', headers=headers)

    await nc.subscribe("chorus.bridge.broadcast", cb=answer)
    await nc.flush()
    status_got, out, err = await command(
        "broadcast", "-", stdin=b'{"id": "c", "roles": [{"name": "a"}]}', NATS_URL=nats_server.url
    )
    assert status_got == status, err
    (line,) = err.strip().splitlines()
    assert "went wrong" in line and out == ""


async def test_passwords_are_never_printed(nats_server: EmbeddedNats, unused_tcp_port: int) -> None:
    """A NATS URL with a password: no command prints the password, whatever happens."""
    with_password = nats_server.url.replace("nats://", "nats://ops:s3cret-pw@")
    outputs = [
        await command("agents", NATS_URL=with_password),  # no bucket there
        await command("agents", NATS_URL=f"nats://ops:s3cret-pw@127.0.0.1:{unused_tcp_port}"),
        await command("run", NATS_URL="http://ops:s3cret-pw@nowhere:1"),
    ]
    for code, out, err in outputs:
        assert code != 0
        assert "s3cret-pw" not in out + err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "watch",
        env=env(NATS_URL=with_password),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    first = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
    assert f"watching chorus.agents.announce on {nats_server.url} " in first
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_help_explains() -> None:
    """`--help` of run lists the settings with their variables."""
    code, out, _ = await command("run", "--help")
    assert code == 0
    for variable in ("DISCOVERY_METHOD", "NATS_URL", "WHOOSH_SERVICE_NAME", "BRIDGE_LISTEN"):
        assert variable in out


async def test_watch_prints_announcements(
    service: tuple[Service, DockerEmulator, EmulatedSwarm], nats_server: EmbeddedNats, unique: str
) -> None:
    """`watch` prints a line per announcement, and Ctrl-C ends it with status 0."""
    _, _, swarm = service
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "watch",
        env=env(NATS_URL=nats_server.url, BRIDGE_SUBJECT_PREFIX=f"c{unique}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None and proc.stdout is not None
    first = await asyncio.wait_for(proc.stderr.readline(), 20)
    assert b"watching" in first
    (task,) = swarm.add_tasks(1)
    line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
    address = swarm.address_of(task)
    assert address is not None
    assert " joined " in line and task in line and address in line
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_watch_ends_when_nats_goes_away(tmp_path: Path) -> None:
    """`watch` whose NATS stops: one line, exit status 3 (not a hang)."""
    async with EmbeddedNats(port=0, store_dir=tmp_path / "n", supervise=False) as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "watch",
            env=env(NATS_URL=server.url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        assert b"watching" in await asyncio.wait_for(proc.stderr.readline(), 20)
        await server.__aexit__(None, None, None)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 3
    assert err.decode().strip().splitlines() == [
        f"chorus-bridge: NatsError: lost the connection to NATS at {server.url}"
    ]
