"""The agent library over TLS: `tls_ca` is the CA that signed the server's certificate; without
it (or with another CA) the connection is refused with a ConnectError that says what to check.
A real nats-server with a certificate made here by openssl."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.agent import ConnectError, connect_agent
from bridge.edges.nats_server import EmbeddedNats


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "1",
        "-subj",
        f"/CN={name}",
    )
    return key, cert


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedNats, Path]]:
    """nats-server with a certificate for `localhost` signed by a CA of the test's own."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca_key, ca = make_ca(tmp_path, "ca")
    key, csr, cert = tmp_path / "server.key", tmp_path / "server.csr", tmp_path / "server.pem"
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        csr,
        "-subj",
        "/CN=localhost",
    )
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "1",
        "-extfile",
        ext,
    )
    conf = tmp_path / "tls.conf"
    conf.write_text(f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n')
    async with EmbeddedNats(port=0, store_dir=tmp_path / "nats", config_file=conf) as server:
        yield server, ca


async def test_the_agent_joins_over_tls_with_the_servers_ca(
    tls_server: tuple[EmbeddedNats, Path], tmp_path: Path
) -> None:
    server, ca = tls_server
    url = f"tls://localhost:{server.port}"
    async with connect_agent(url, "agent-tls", tls_ca=str(ca)) as agent:
        assert agent.nc.connected_url is not None and agent.nc.connected_url.scheme == "tls"
    _, other = make_ca(tmp_path, "other")
    for wrong in (None, str(other)):
        with pytest.raises(ConnectError, match="check the URL, the credentials and the TLS CA"):
            async with connect_agent(url, "agent-tls", tls_ca=wrong):
                pass
    with pytest.raises(ConnectError, match="TLS files"):
        async with connect_agent(url, "agent-tls", tls_ca=str(tmp_path / "missing.pem")):
            pass
