"""TLS to NATS against a real nats-server with TLS on (the stack's `--tls` flags), with the
certificates scripts/nats-tls.sh makes: the stack's CA verifies the server; a wrong CA, a
certificate that does not name the host, a server without TLS and a missing client certificate
are each refused at once with one line that says what to check."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from bridge.agent import connect_agent
from bridge.config import Settings
from bridge.contract.names import Names
from bridge.devkit.sim import BusAuth, presence_bucket_config, run_single_agent
from bridge.edges.nats_client import INITIAL_CONNECT_ATTEMPTS, RECONNECT_WAIT, connect
from bridge.edges.nats_server import EmbeddedNats
from bridge.edges.nats_tls import tls_failure
from bridge.environment import load_settings
from bridge.errors import ConfigError, NatsError
from tests.conftest import wait_for
from tests.tls_support import make_certificates, tls_flags

# What nats-py would spend retrying a failure it takes for a passing one.
RETRY_BUDGET = INITIAL_CONNECT_ATTEMPTS * RECONNECT_WAIT


@pytest.fixture(scope="module")
def stack_tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the server's certificate and a client certificate (`--client bridge`)."""
    directory = make_certificates(tmp_path_factory.mktemp("tls") / "secrets")
    return make_certificates(directory, "--client", "bridge")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA, which signed nothing the server has."""
    return make_certificates(tmp_path_factory.mktemp("other") / "secrets") / "nats_tls_ca.pem"


@pytest.fixture
async def tls_server(tmp_path: Path, stack_tls: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(
        port=0, store_dir=tmp_path / "nats", extra_args=tls_flags(stack_tls)
    ) as server:
        yield server


def with_ca(ca: Path, **more: str) -> Settings:
    return Settings(nats_tls_ca=str(ca)).replace(**more)


async def refusal(settings: Settings, url: str) -> str:
    """The NatsError connect() ends with; it must come before nats-py's retry budget."""
    start = time.monotonic()
    with pytest.raises(NatsError) as refused:
        async with connect(settings, url):
            pass
    assert time.monotonic() - start < RETRY_BUDGET / 3, "retried as if it could pass"
    message = str(refused.value)
    assert "\n" not in message
    return message


async def test_the_stacks_ca_verifies_the_server(tls_server: EmbeddedNats, stack_tls: Path) -> None:
    async with connect(with_ca(stack_tls / "nats_tls_ca.pem"), tls_server.url) as nc:
        sub = await nc.subscribe("tls.check")
        await nc.publish("tls.check", b"over TLS")
        message = await sub.next_msg(timeout=5)
    assert message.data == b"over TLS"


async def test_a_wrong_ca_is_refused_at_once_in_one_line(
    tls_server: EmbeddedNats, other_ca: Path
) -> None:
    message = await refusal(with_ca(other_ca), tls_server.url)
    assert message.startswith(f"TLS to NATS at {tls_server.url} failed (certificate verify failed")
    assert f"NATS_TLS_CA ({other_ca})" in message


async def test_no_ca_against_the_stacks_server_says_to_set_one(tls_server: EmbeddedNats) -> None:
    message = await refusal(Settings(), tls_server.url)
    assert "certificate verify failed" in message
    assert "set NATS_TLS_CA" in message


async def test_a_certificate_that_does_not_name_the_host_is_refused(
    tmp_path: Path, stack_tls: Path
) -> None:
    """The certificate names 127.0.0.1, localhost and the stack's services, not 127.0.0.3."""
    async with EmbeddedNats(
        port=0, host="127.0.0.3", store_dir=tmp_path / "nats", extra_args=tls_flags(stack_tls)
    ) as server:
        message = await refusal(with_ca(stack_tls / "nats_tls_ca.pem"), server.url)
    assert "IP address mismatch" in message or "Hostname mismatch" in message
    assert "names the host of NATS_URL" in message


async def test_a_server_without_tls_is_refused_before_any_credential_is_sent(
    nats_server: EmbeddedNats, stack_tls: Path
) -> None:
    settings = with_ca(stack_tls / "nats_tls_ca.pem", nats_user="bridge", nats_password="pw")
    message = await refusal(settings, nats_server.url)
    assert "does not require TLS, yet NATS_TLS_CA is set" in message


async def test_a_client_certificate_where_the_server_asks_for_one(
    tmp_path: Path, stack_tls: Path
) -> None:
    ca = stack_tls / "nats_tls_ca.pem"
    async with EmbeddedNats(
        port=0,
        store_dir=tmp_path / "nats",
        extra_args=tls_flags(stack_tls, verify_clients=True),
    ) as server:
        message = await refusal(with_ca(ca), server.url)
        assert message.startswith(f"TLS to NATS at {server.url} failed (")
        client = with_ca(
            ca,
            nats_tls_cert=str(stack_tls / "nats_tls_client_bridge.pem"),
            nats_tls_key=str(stack_tls / "nats_tls_client_bridge.key"),
        )
        async with connect(client, server.url) as nc:
            await nc.flush(timeout=5)


async def test_the_agent_library_and_the_simulated_agent_speak_tls(
    tls_server: EmbeddedNats, stack_tls: Path
) -> None:
    """connect_agent with tls_ca, and `chorus-bridge sim-agent`'s agent (NATS_TLS_CA), each
    write their presence over TLS."""
    ca = stack_tls / "nats_tls_ca.pem"
    names = Names(prefix="tls", agents_bucket="tls_agents")
    async with connect(with_ca(ca), tls_server.url) as nc:
        kv = await nc.jetstream().create_key_value(presence_bucket_config(names))
        async with connect_agent(tls_server.url, "task0tls", prefix="tls", tls_ca=str(ca)):
            # A presence write is published without an answer (DESIGN.md, "Trust"): the
            # server has it once the join's flush is back, and stores it a moment later.
            await wait_for(lambda: _has_key(kv, "task0tls"), what="the agent's presence")
        stop = asyncio.Event()
        single = asyncio.create_task(
            run_single_agent(
                names=names,
                stop=stop,
                host="127.61.0.1",
                port=0,
                agent_id="task1tls",
                nats_url=tls_server.url,
                auth=BusAuth(tls_ca=str(ca)),
            )
        )
        try:
            await wait_for(lambda: _has_key(kv, "task1tls"), what="the sim agent's presence")
        finally:
            stop.set()
            await single


async def _has_key(kv: KeyValue, key: str) -> bool:
    try:
        await kv.get(key)
    except KeyNotFoundError:
        return False
    return True


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env={k: v for k, v in os.environ.items() if not k.startswith("NATS_")} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_commands_and_the_service_refuse_a_wrong_ca_in_one_line(
    tls_server: EmbeddedNats, stack_tls: Path, other_ca: Path
) -> None:
    """`chorus-bridge agents` (status 3: no answer could be had) and `chorus-bridge run`."""
    env = {"NATS_URL": tls_server.url, "NATS_TLS_CA": str(other_ca)}
    agents = await asyncio.to_thread(cli, "agents", env=env)
    assert agents.returncode == 3, agents.stderr
    assert agents.stderr.count("\n") == 1, agents.stderr
    assert "certificate verify failed" in agents.stderr and "Traceback" not in agents.stderr
    run_env = env | {"WHOOSH_DOCKER_ENABLED": "false", "BRIDGE_LISTEN": "127.0.0.1:0"}
    run = await asyncio.to_thread(cli, "run", "--method", "dns", env=run_env)
    assert run.returncode != 0
    assert "certificate verify failed" in run.stderr and "Traceback" not in run.stderr
    good = env | {"NATS_TLS_CA": str(stack_tls / "nats_tls_ca.pem")}
    listed = await asyncio.to_thread(cli, "agents", "--json", env=good)
    # Past TLS: the server answered that no bridge made the bucket (status 3), in one line.
    assert listed.stderr.count("\n") == 1, listed.stderr
    assert "no bucket 'chorus_agents'" in listed.stderr


def test_the_variables() -> None:
    settings = load_settings(
        {"NATS_TLS_CA": "/run/secrets/ca", "NATS_TLS_CERT": "/c.pem", "NATS_TLS_KEY": "/k.pem"}
    )
    assert (settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key) == (
        "/run/secrets/ca",
        "/c.pem",
        "/k.pem",
    )
    with pytest.raises(ConfigError, match="NATS_TLS_KEY='': must be set when NATS_TLS_CERT"):
        load_settings({"NATS_TLS_CERT": "/c.pem"})
    with pytest.raises(ConfigError, match="NATS_TLS_CERT='': must be set when NATS_TLS_KEY"):
        load_settings({"NATS_TLS_KEY": "/k.pem"})


async def test_a_ca_file_that_is_not_there_is_named(tls_server: EmbeddedNats) -> None:
    with pytest.raises(NatsError, match=r"^NATS_TLS_CA=/nonexistent/ca.pem: no such file$"):
        async with connect(Settings(nats_tls_ca="/nonexistent/ca.pem"), tls_server.url):
            pass


def _ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] ({reason.lower()})")
    error.reason = reason
    return error


def test_only_lasting_handshake_failures_stop_a_connection() -> None:
    """A certificate refused either way stops at once; a TLS connection the server closed (a
    server starting or stopping, seen while a NATS cluster comes up) is tried again."""
    assert tls_failure(_ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED")) is not None
    assert tls_failure(_ssl_error("TLSV1_ALERT_UNKNOWN_CA")) is not None
    assert tls_failure(_ssl_error("APPLICATION_DATA_AFTER_CLOSE_NOTIFY")) is None
    assert tls_failure(ConnectionResetError(104, "Connection reset by peer")) is None
