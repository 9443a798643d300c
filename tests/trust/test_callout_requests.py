"""The callout answers only requests of the server it serves: one signed by another server's
key, or sent in the clear while a curve key is configured, gets no answer and is counted."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import nkeys

from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nkeys_jwt import CurveKey, new_seed
from tests.callout_support import (
    AGENT_PASSWORD,
    CalloutFiles,
    admitted,
    bridge_settings,
    callout_server,
    callouts,
    make_keys,
    refused,
    user,
)
from tests.conftest import run_bridge, wait_for


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_request(files: CalloutFiles, address: str) -> tuple[bytes, dict[str, str]]:
    """An authorization request as a server makes it, for the agent at `address`, signed by a
    server key of nobody's (not a server of the cluster), sealed to the bridge's curve key."""
    server = nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER)))
    server_key = server.public_key.decode()
    user_key = nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)))
    now = int(time.time())
    claims = {
        "aud": "nats-authorization-request",
        "iat": now,
        "exp": now + 2,
        "jti": "forged",
        "iss": server_key,
        "sub": files.issuer,
        "nats": {
            "type": "authorization_request",
            "version": 2,
            "user_nkey": user_key.public_key.decode(),
            "server_id": {"id": server_key, "name": "elsewhere", "host": "127.0.0.1"},
            "client_info": {"host": address, "id": 99, "user": "agent", "kind": "Client"},
            "connect_opts": {"user": "agent", "pass": AGENT_PASSWORD, "protocol": 1},
        },
    }
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    token = f"{head}.{body}.{_b64(server.sign(f'{head}.{body}'.encode()))}"
    curve = CurveKey(new_seed("curve"))
    return curve.seal(token.encode(), files.xkey), {"Nats-Server-Xkey": curve.public_key}


async def test_a_request_signed_by_another_servers_key_gets_no_answer(
    tmp_path: Path,
    settings: Settings,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """A well-formed request, sealed to the bridge's curve key, for a real agent's address,
    signed by a server key of no server of the cluster (the server itself lets no client
    publish on $SYS.REQ.USER.AUTH: such a request comes from a server elsewhere whose
    callout names the same subject): the bridge's callout answers it nothing, while it
    answers a request its own server sent for the same address."""
    files = make_keys(tmp_path / "keys")
    (address,) = [swarm.address_of(t) or "" for t in swarm.add_tasks(1)]
    async with (
        callout_server(tmp_path, files) as server,
        run_bridge(bridge_settings(settings, files), server.url) as running,
    ):
        callout = running.bridge.callout
        assert callout is not None
        ops = await user(server, "ops", "OPS_PASS")
        genuine = await ops.subscribe("$SYS.REQ.USER.AUTH")
        await ops.flush()
        async with admitted(server, address):
            pass
        await ops.flush()
        real = await genuine.next_msg(timeout=5)
        while genuine.pending_msgs:  # the admitted attempt's request is the last one
            real = await genuine.next_msg(timeout=5)
        await ops.close()
        assert await callout.handle(real.data, real.headers or {}) is not None  # the control
        data, headers = forged_request(files, address)
        assert await callout.handle(data, headers) is None
        assert (await callouts(running))[("rejected", "issuer")] == 1
    rejected = [e for e in logs if e["event"] == "callout_request_rejected"]
    assert rejected and "no server of the cluster" in str(rejected[0]["error"])


async def test_an_unsealed_request_is_refused_when_an_xkey_is_configured(
    tmp_path: Path,
    settings: Settings,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """The server sends its requests in the clear (nats-callout.conf without its xkey line)
    while the bridge has BRIDGE_CALLOUT_XKEY_SEED: no agent is admitted, each request is
    counted as unsealed, and the bridge says what to set."""
    files = make_keys(tmp_path / "keys")
    (address,) = [swarm.address_of(t) or "" for t in swarm.add_tasks(1)]
    async with (
        callout_server(tmp_path, files, xkey=False) as server,
        run_bridge(bridge_settings(settings, files, xkey=True), server.url) as running,
    ):
        await wait_for(
            lambda: any(e["event"] == "callout_serving" for e in logs), what="the callout"
        )
        assert "Authorization Violation" in await refused(server, address)

        async def counted() -> bool:
            counts = await callouts(running)
            return counts[("rejected", "unsealed")] >= 1 and counts[("admitted", "none")] == 0

        await wait_for(counted, timeout=5, what="the unsealed request on /metrics")
    rejected = [e for e in logs if e["event"] == "callout_request_rejected"]
    assert rejected and "unsealed" in str(rejected[0]["error"])
