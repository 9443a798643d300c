"""The stack's TLS for tests and benchmarks: the certificates scripts/nats-tls.sh makes, the
nats-server flags the stack starts its server with, and the client context the bridge builds
from NATS_TLS_CA (bridge/edges/nats_tls.py), so a raw client verifies the server as the
bridge does."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

from bridge.config import Settings
from bridge.edges.nats_tls import nats_tls

__all__ = ["client_context", "make_certificates", "tls_flags"]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "nats-tls.sh"


def make_certificates(directory: Path, *args: str) -> Path:
    """Run scripts/nats-tls.sh: `make_certificates(DIR)` makes the CA and the server's
    certificate in DIR (nats_tls_ca.pem, nats_tls_cert.pem, nats_tls_key.pem), extra NAME|IP
    arguments add names; `make_certificates(DIR, "--client", NAME)` adds a client certificate.
    Returns DIR; CalledProcessError when the script fails, TimeoutExpired after 60 s."""
    subprocess.run(
        ["bash", str(SCRIPT), *args, str(directory)]
        if args[:1] == ("--client",)
        else ["bash", str(SCRIPT), str(directory), *args],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory


def tls_flags(tls: Path, *, verify_clients: bool = False) -> tuple[str, ...]:
    """nats-server's flags for TLS on the client port with the certificates in `tls`, as
    docker-compose.swarm.yml starts it (`--tls --tlscert --tlskey`); `verify_clients` asks
    clients for a certificate signed by the same CA."""
    flags = ["--tls", "--tlscert", str(tls / "nats_tls_cert.pem")]
    flags += ["--tlskey", str(tls / "nats_tls_key.pem")]
    if verify_clients:
        flags += ["--tlsverify", "--tlscacert", str(tls / "nats_tls_ca.pem")]
    return tuple(flags)


def client_context(tls: Path) -> ssl.SSLContext:
    """The SSL context a client of the stack verifies the server with: the one the bridge
    builds from NATS_TLS_CA=`tls`/nats_tls_ca.pem (that CA only, the host name checked)."""
    context: ssl.SSLContext = nats_tls(Settings(nats_tls_ca=str(tls / "nats_tls_ca.pem")))["tls"]
    return context
