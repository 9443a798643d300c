"""Shared fixtures: a real nats-server, unique names, bounded waits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from bridge.embedded import EmbeddedNats

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "docker-engine-20.10"


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A real nats-server with JetStream, on a free port, state in a temp dir."""
    async with EmbeddedNats(port=0, store_dir=tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    """A plain client of the test server, for observing what the bridge does."""
    client = await nats.connect(nats_server.url, max_reconnect_attempts=1, connect_timeout=2)
    yield client
    await client.close()


@pytest.fixture
def unique() -> str:
    """A short unique token, for subject prefixes and bucket names."""
    return uuid.uuid4().hex[:10]


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0,
                   interval: float = 0.02, what: str = "condition") -> None:
    """Wait until `predicate` holds, failing after `timeout` seconds (no bare sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
