"""A real nats-server running nats-callout.conf, the callout's keys, admitted agents, and the
callout's counts as the bridge's /metrics serves them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import Settings
from bridge.edges.nats_server import EmbeddedNats
from bridge.edges.nkeys_jwt import CurveKey, SigningKey, new_seed
from bridge.ops.metrics import CALLOUTS
from tests.callout_client import RawClient, Refused, raw_connect
from tests.conftest import RunningBridge
from tests.nats_cluster import free_port
from tests.tls_support import tls_flags

ROOT = Path(__file__).resolve().parents[1]
PASSWORDS = {
    "BRIDGE_PASS": "bridge-secret",
    "AGENT_PASS": "agent-secret",
    "COORD_PASS": "coord-secret",
    "OPS_PASS": "ops-secret",
    "SYS_PASS": "sys-secret",
}
AGENT_PASSWORD = PASSWORDS["AGENT_PASS"]


@dataclasses.dataclass(frozen=True)
class CalloutFiles:
    """The seed files of one test, and the public keys nats-callout.conf is given."""

    issuer_seed: Path
    xkey_seed: Path
    agent_password: Path
    issuer: str
    xkey: str


def make_keys(directory: Path) -> CalloutFiles:
    directory.mkdir(parents=True, exist_ok=True)
    issuer, xkey = new_seed("account"), new_seed("curve")
    files = CalloutFiles(
        issuer_seed=directory / "issuer.seed",
        xkey_seed=directory / "xkey.seed",
        agent_password=directory / "agent.password",
        issuer=SigningKey(issuer).public_key,
        xkey=CurveKey(xkey).public_key,
    )
    files.issuer_seed.write_bytes(issuer + b"\n")
    files.xkey_seed.write_bytes(xkey + b"\n")
    files.agent_password.write_text(AGENT_PASSWORD + "\n")
    return files


def write_confs(directory: Path, *, xkey: bool = True) -> Path:
    """nats.conf and nats-callout.conf as shipped, side by side in `directory`, less the two
    lines of nats.conf that only make sense in the container (as tests/trust/test_nats_conf.py
    does),
    and less the xkey line of nats-callout.conf when `xkey` is False. Returns the callout one."""
    text = (ROOT / "nats.conf").read_text()
    for line in (r"^\s*store_dir: /data\s*$", r"^\s*http: [0-9.]+:8222\s*$"):
        text, count = re.subn(line, "", text, flags=re.MULTILINE)
        assert count == 1, f"nats.conf no longer has exactly one line matching {line!r}"
    (directory / "nats.conf").write_text(text)
    callout = (ROOT / "nats-callout.conf").read_text()
    if not xkey:
        callout, count = re.subn(r"^\s*xkey: \$CALLOUT_XKEY\s*$", "", callout, flags=re.MULTILINE)
        assert count == 1
    path = directory / "nats-callout.conf"
    path.write_text(callout)
    return path


ROUTE_PASS = "route-secret"


def _member_conf(directory: Path, cluster_port: int, *, callout: bool) -> Path:
    """The shipped files in `directory`, the route listener moved to a loopback port: the
    member's nats-cluster.conf, or nats-cluster-callout.conf (`callout`) that includes it."""
    write_confs(directory)
    text = (ROOT / "nats-cluster.conf").read_text()
    text, count = re.subn(r"listen: 0\.0\.0\.0:6222", f"listen: 127.0.0.1:{cluster_port}", text)
    assert count == 1
    path = directory / "nats-cluster.conf"
    path.write_text(text)
    if callout:
        path = directory / "nats-cluster-callout.conf"
        path.write_text((ROOT / "nats-cluster-callout.conf").read_text())
    return path


@contextlib.asynccontextmanager
async def shipped_cluster(
    root: Path, files: CalloutFiles | None = None
) -> AsyncIterator[list[EmbeddedNats]]:
    """Three nats-servers on loopback running the shipped cluster files (with the auth callout
    of `files` when given: nats-cluster-callout.conf), routed to each other."""
    ports = [free_port() for _ in range(3)]
    routes = {
        f"ROUTE_{i + 1}": f"nats-route://route:{ROUTE_PASS}@127.0.0.1:{p}"
        for i, p in enumerate(ports)
    }
    keys = {"CALLOUT_ISSUER": files.issuer, "CALLOUT_XKEY": files.xkey} if files else {}
    async with contextlib.AsyncExitStack() as stack:
        members = []
        for i, port in enumerate(ports):
            directory = root / f"n{i + 1}"
            directory.mkdir()
            env = {
                **PASSWORDS,
                **routes,
                **keys,
                "ROUTE_PASS": ROUTE_PASS,
                "SERVER_NAME": f"n{i + 1}",
            }
            server = EmbeddedNats(
                port=0,
                store_dir=directory / "js",
                config_file=_member_conf(directory, port, callout=files is not None),
                env=env,
            )
            members.append(await stack.enter_async_context(server))
        yield members


@contextlib.asynccontextmanager
async def callout_server(
    directory: Path,
    files: CalloutFiles,
    *,
    xkey: bool = True,
    tls: Path | None = None,
) -> AsyncIterator[EmbeddedNats]:
    """A nats-server running nats-callout.conf (see write_confs) on a free port, its store in
    `directory`/nats; with `tls`, a directory of scripts/nats-tls.sh's certificates, it
    requires TLS on the client port as the stack starts it (tests/tls_support.py)."""
    conf = write_confs(directory, xkey=xkey)
    env = {**PASSWORDS, "CALLOUT_ISSUER": files.issuer, "CALLOUT_XKEY": files.xkey}
    async with EmbeddedNats(
        port=0,
        store_dir=directory / "nats",
        config_file=conf,
        extra_args=tls_flags(tls) if tls is not None else (),
        env=env,
    ) as server:
        yield server


def bridge_settings(base: Settings, files: CalloutFiles, *, xkey: bool = True) -> Settings:
    """A bridge of the stack's names, as the `bridge` user, serving the callout."""
    return base.replace(
        subject_prefix="chorus",
        kv_bucket="chorus_agents",
        nats_user="bridge",
        nats_password=PASSWORDS["BRIDGE_PASS"],
        auth_callout=True,
        callout_issuer_seed=str(files.issuer_seed),
        callout_xkey_seed=str(files.xkey_seed) if xkey else None,
        callout_agent_password_file=str(files.agent_password),
    )


async def user(server: EmbeddedNats, name: str, variable: str, inbox: str = "") -> NATS:
    """A nats-py client of one of nats.conf's users (from 127.0.0.1)."""
    options = {"inbox_prefix": inbox} if inbox else {}
    return await nats.connect(
        server.url,
        user=name,
        password=PASSWORDS[variable],
        max_reconnect_attempts=1,
        connect_timeout=3,
        **options,
    )


def port_of(server: EmbeddedNats) -> int:
    return int(server.url.rpartition(":")[2])


@contextlib.asynccontextmanager
async def admitted(
    server: EmbeddedNats,
    source: str,
    *,
    password: str = AGENT_PASSWORD,
    timeout: float = 15.0,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[RawClient]:
    """An agent connection from `source`, retried until the callout admits it (the bridge
    needs its first discovery round and its watch of the bucket); fails after `timeout`.
    `tls`: over TLS, as raw_connect."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            async with raw_connect(
                port_of(server), source=source, user="agent", password=password, tls=tls
            ) as client:
                yield client
                return
        except Refused:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def refused(
    server: EmbeddedNats,
    source: str,
    *,
    user_name: str = "agent",
    password: str = AGENT_PASSWORD,
    tls: ssl.SSLContext | None = None,
) -> str:
    """The server's refusal of a connection from `source`; AssertionError if it admits it.
    `tls`: over TLS, as raw_connect."""
    try:
        async with raw_connect(
            port_of(server), source=source, user=user_name, password=password, tls=tls
        ):
            pass
    except Refused as exc:
        return str(exc)
    raise AssertionError(f"a connection from {source} as {user_name!r} was admitted")


# Every (outcome, reason) of chorus_bridge_callouts_total, each served from the start.
CALLOUT_LABELS = set(CALLOUTS)


async def callouts(bridge: RunningBridge) -> dict[tuple[str, str], float]:
    """chorus_bridge_callouts_total by (outcome, reason), read from the bridge's /metrics."""
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"http://127.0.0.1:{bridge.bridge.http_port}/metrics")
    response.raise_for_status()
    return {
        (sample.labels["outcome"], sample.labels["reason"]): sample.value
        for family in text_string_to_metric_families(response.text)
        if family.name == "chorus_bridge_callouts"
        for sample in family.samples
        if sample.name == "chorus_bridge_callouts_total"
    }
