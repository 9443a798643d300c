"""The callout behind the stack's TLS: nats-server requires TLS on its client port with the
certificate scripts/nats-tls.sh makes, the bridge verifies it with NATS_TLS_CA, and an agent
connects over TLS from its own address and is admitted (a stranger is refused)."""

from __future__ import annotations

from pathlib import Path

from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from tests.callout_support import admitted, bridge_settings, callout_server, make_keys, refused
from tests.conftest import run_bridge
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
