"""The callout behind the stack's TLS: nats-server requires TLS on its client port with the
certificate scripts/nats-tls.sh makes, the bridge verifies it with NATS_TLS_CA, and an agent
connects over TLS from its own address and is admitted (a stranger is refused)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bridge.agent import connect_agent
from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from tests.callout_support import (
    AGENT_PASSWORD,
    admitted,
    bridge_settings,
    callout_server,
    make_keys,
    refused,
)
from tests.conftest import run_bridge, wait_for
from tests.tls_support import client_context, make_certificates


async def test_an_agent_is_admitted_over_tls(
    tmp_path: Path, settings: Settings, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> None:
    (task,) = swarm.add_tasks(1)
    address = swarm.address_of(task) or ""
    files = make_keys(tmp_path / "keys")
    tls = make_certificates(tmp_path / "secrets")
    context = client_context(tls)
    bridge = bridge_settings(settings, files).replace(nats_tls_ca=str(tls / "nats_tls_ca.pem"))
    async with (
        callout_server(tmp_path, files, tls=tls) as server,
        run_bridge(bridge, server.url),
    ):
        async with admitted(server, address, tls=context) as agent:
            assert agent.tls_version in ("TLSv1.2", "TLSv1.3")
            assert await agent.sync() == []
        stranger = await refused(server, "127.10.255.254", tls=context)
        assert "Authorization Violation" in stranger
        # The same agent in the clear: the server takes its CONNECT for a failed handshake.
        assert await refused(server, address) == "connection closed"


async def test_the_agent_library_waits_out_a_callout_nobody_answers_yet(
    tmp_path: Path,
    settings: Settings,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A starting stack: the agent connects over TLS before any bridge serves the callout.
    The server closes each attempt when its auth timeout passes (nats-py's connect() then
    returned a client that closed for good, and the agent stayed off the bus); the library
    tries again, and the agent joins once a bridge answers."""
    (task,) = swarm.add_tasks(1, addresses=["127.0.0.1"])
    files = make_keys(tmp_path / "keys")
    tls = make_certificates(tmp_path / "secrets")
    ca = str(tls / "nats_tls_ca.pem")
    bridge = bridge_settings(settings, files).replace(nats_tls_ca=ca)
    caplog.set_level(logging.WARNING, logger="bridge.agent")
    async with callout_server(tmp_path, files, tls=tls) as server:
        url = f"tls://localhost:{server.port}"
        joining = asyncio.create_task(_join(url, task, ca))
        # The server gives the callout 3 s with TLS (tls_timeout 2 s + 1): one attempt at
        # least has been cut before a bridge answers.
        await wait_for(
            lambda: (
                any("closed the connection as it began" in r.message for r in caplog.records)
                or joining.done()
            ),
            timeout=20,
            what="an attempt cut by the server",
        )
        assert not joining.done()
        async with run_bridge(bridge, server.url):
            await asyncio.wait_for(joining, timeout=30)


async def _join(url: str, task: str, ca: str) -> None:
    async with connect_agent(
        url, task, user="agent", password=AGENT_PASSWORD, task_id=task, tls_ca=ca
    ) as agent:
        assert agent.nc.is_connected
