"""The auth callout on a cluster of three nats-servers running nats-cluster-callout.conf: an
agent connecting to any member is admitted by a bridge connected to another."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.callout_support import (
    PASSWORDS,
    ROOT,
    CalloutFiles,
    admitted,
    bridge_settings,
    make_keys,
    refused,
    write_confs,
)
from tests.conftest import run_bridge
from tests.nats_cluster import free_port

pytestmark = pytest.mark.timeout(90)
ROUTE_PASS = "route-secret"


def _block(path: Path) -> str:
    text = path.read_text()
    return text[text.index("authorization {") :]


def test_the_cluster_and_the_single_server_have_the_same_callout_block() -> None:
    """nats-cluster-callout.conf repeats nats-callout.conf's block: they must not drift."""
    assert _block(ROOT / "nats-cluster-callout.conf") == _block(ROOT / "nats-callout.conf")


def _member_conf(directory: Path, cluster_port: int) -> Path:
    """The shipped files in `directory`, the route listener moved to a loopback port."""
    write_confs(directory)
    text = (ROOT / "nats-cluster.conf").read_text()
    text, count = re.subn(r"listen: 0\.0\.0\.0:6222", f"listen: 127.0.0.1:{cluster_port}", text)
    assert count == 1
    (directory / "nats-cluster.conf").write_text(text)
    path = directory / "nats-cluster-callout.conf"
    path.write_text((ROOT / "nats-cluster-callout.conf").read_text())
    return path


@contextlib.asynccontextmanager
async def cluster(root: Path, files: CalloutFiles) -> AsyncIterator[list[EmbeddedNats]]:
    ports = [free_port() for _ in range(3)]
    routes = {
        f"ROUTE_{i + 1}": f"nats-route://route:{ROUTE_PASS}@127.0.0.1:{p}"
        for i, p in enumerate(ports)
    }
    async with contextlib.AsyncExitStack() as stack:
        members = []
        for i, port in enumerate(ports):
            directory = root / f"n{i + 1}"
            directory.mkdir()
            env = {
                **PASSWORDS,
                **routes,
                "ROUTE_PASS": ROUTE_PASS,
                "SERVER_NAME": f"n{i + 1}",
                "CALLOUT_ISSUER": files.issuer,
                "CALLOUT_XKEY": files.xkey,
            }
            members.append(
                await stack.enter_async_context(
                    EmbeddedNats(
                        port=0,
                        store_dir=directory / "js",
                        config_file=_member_conf(directory, port),
                        env=env,
                    )
                )
            )
        yield members


async def test_an_agent_on_another_member_is_admitted(
    tmp_path: Path, settings: Settings, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> None:
    """The bridge is connected to the first member; an agent connecting to the third is
    admitted as its task, and a stranger there is refused."""
    (task,) = swarm.add_tasks(1)
    address = swarm.address_of(task) or ""
    files = make_keys(tmp_path / "keys")
    async with (
        cluster(tmp_path, files) as members,
        run_bridge(bridge_settings(settings, files), members[0].url),
    ):
        async with admitted(members[2], address, timeout=30):
            pass
        assert "Authorization Violation" in await refused(members[2], "127.10.255.254")
