"""The embedded nats-server's choice of port: 4222 when no server listens there, even while
connections to a server stopped a moment ago linger in TIME_WAIT (the client commands look
for it on 4222); another port when a server listens there.

The tests never touch 4222 itself (another server may use it on the machine): the default
port is set to a free port the test picks, and the same check runs on it."""

from __future__ import annotations

import socket
from pathlib import Path

import nats
import pytest

from bridge.edges import nats_server as embedded
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import wait_for
from tests.nats_cluster import free_port

pytestmark = pytest.mark.timeout(60)

_TIME_WAIT = "06"  # include/net/tcp_states.h, as /proc/net/tcp shows it


def _time_wait_on(port: int) -> bool:
    """Whether a loopback TCP socket whose local port is `port` is in TIME_WAIT (Linux)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    for line in lines:
        local, state = line.split()[1], line.split()[3]
        if int(local.rpartition(":")[2], 16) == port and state == _TIME_WAIT:
            return True
    return False


def _plain_bind_fails(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture
def default_port(monkeypatch: pytest.MonkeyPatch) -> int:
    """A free port that stands for 4222 in bridge.edges.nats_server."""
    port = free_port()
    monkeypatch.setattr(embedded, "DEFAULT_PORT", port)
    return port


async def test_the_default_port_is_taken_again_after_a_server_stopped(
    tmp_path: Path, default_port: int
) -> None:
    """A server on the default port stops while a client is connected: the server's end of
    the connection lingers in TIME_WAIT, which a plain bind takes for a port in use; the next
    embedded server still gets the default port."""
    async with EmbeddedNats(port=default_port, store_dir=tmp_path / "first") as first:
        nc = await nats.connect(first.url, allow_reconnect=False, connect_timeout=2)
        await nc.flush(timeout=2)
    # The server closed its end first; the client closes its own on the EOF.
    await wait_for(lambda: nc.is_closed, timeout=10, what="the client to see the server go")
    await wait_for(
        lambda: _time_wait_on(default_port), timeout=10, what="a connection in TIME_WAIT"
    )
    assert _plain_bind_fails(default_port), "TIME_WAIT no longer blocks a plain bind here"
    async with EmbeddedNats(store_dir=tmp_path / "second") as second:
        assert second.port == default_port


async def test_a_default_port_a_server_listens_on_is_left_alone(
    tmp_path: Path, default_port: int
) -> None:
    """With a server listening on the default port, the next embedded server takes another."""
    async with (
        EmbeddedNats(port=default_port, store_dir=tmp_path / "first") as first,
        EmbeddedNats(store_dir=tmp_path / "second") as second,
    ):
        assert first.port == default_port
        assert second.port not in (0, default_port)
