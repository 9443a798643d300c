"""The auth callout on a cluster of three nats-servers running nats-cluster-callout.conf: an
agent connecting to any member is admitted by a bridge connected to another."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from tests.callout_support import (
    ROOT,
    admitted,
    bridge_settings,
    make_keys,
    refused,
    shipped_cluster,
)
from tests.conftest import run_bridge

pytestmark = pytest.mark.timeout(90)


def _block(path: Path) -> str:
    text = path.read_text()
    return text[text.index("authorization {") :]


def test_the_cluster_and_the_single_server_have_the_same_callout_block() -> None:
    """nats-cluster-callout.conf repeats nats-callout.conf's block: they must not drift."""
    assert _block(ROOT / "nats-cluster-callout.conf") == _block(ROOT / "nats-callout.conf")


async def test_an_agent_on_another_member_is_admitted(
    tmp_path: Path, settings: Settings, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> None:
    """The bridge is connected to the first member; an agent connecting to the third is
    admitted as its task, and a stranger there is refused."""
    (task,) = swarm.add_tasks(1)
    address = swarm.address_of(task) or ""
    files = make_keys(tmp_path / "keys")
    async with (
        shipped_cluster(tmp_path, files) as members,
        run_bridge(bridge_settings(settings, files), members[0].url),
    ):
        async with admitted(members[2], address, timeout=30):
            pass
        assert "Authorization Violation" in await refused(members[2], "127.10.255.254")
