"""The shipped configurations on a real nats-server, in the open mode and with the bridge's
auth callout: the buckets as the bridge makes them, agents connected as agents are, and a
listener with operator rights in both accounts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.contract.buckets import agents_bucket, lease_bucket, presence_bucket
from bridge.contract.messages import Agent, encode
from bridge.contract.names import Names
from bridge.edges.kv import ensure_bucket
from bridge.edges.nats_server import EmbeddedNats
from bridge.edges.nkeys_jwt import CurveKey, SigningKey
from bridge.ops.metrics import Metrics
from bridge.trust.agent_index import AgentAddresses
from bridge.trust.callout import CalloutKeys, make_callout
from tests.callout_client import RawClient, Refused, raw_connect
from tests.callout_support import PASSWORDS, make_keys, write_confs

T = TypeVar("T")
NAMES = Names(prefix="chorus", agents_bucket="chorus_agents")
ROOT = Path(__file__).resolve().parents[2]
OPPORTUNITY_ID = "council-42"
# Agents of the emulated fleet, by id, at the loopback address the callout admits them from.
ATTACKER, VICTIM, THIRD = "a1", "v1", "t1"
ADDRESSES = {ATTACKER: "127.31.0.1", VICTIM: "127.31.0.2", THIRD: "127.31.0.3"}
ADMISSION_WAIT = 15.0
# The bound within which a leak must show: this many times what the positive control took,
# and never less than the floor (a JetStream answer takes a few milliseconds on loopback).
BOUND_FACTOR = 50
BOUND_FLOOR = 0.25
# Seconds to wait for a message before sending it again (`until_heard`).
HEARD_WAIT = 0.2


@dataclasses.dataclass(frozen=True)
class Variant:
    """How agents reach the server: the static `agent` user (`callout` False), or admitted by
    the bridge's auth callout from their own addresses."""

    name: str
    callout: bool


VARIANTS = (Variant("open", callout=False), Variant("callout", callout=True))


def has_agents_account(conf: Path) -> bool:
    """Whether the configuration has the AGENTS account (the one before it put agents in
    CHORUS, beside the bridge: one listener there hears both)."""
    return re.search(r"^\s*AGENTS\s*\{", conf.read_text(), flags=re.MULTILINE) is not None


@dataclasses.dataclass(frozen=True)
class Seen:
    account: str
    subject: str
    reply: str
    data: bytes


class Listener:
    """Operators' subscriptions in each account (ops in CHORUS, agents-ops in AGENTS) to the
    subjects the test watches; everything they hear is in `seen`, in order."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._clients: dict[str, NATS] = {}
        self._heard = asyncio.Event()

    @property
    def accounts(self) -> tuple[str, ...]:
        return tuple(self._clients)

    async def connect(self, server: EmbeddedNats, accounts: dict[str, str]) -> None:
        """`accounts`: account name -> operator user of that account."""
        for account, user in accounts.items():
            self._clients[account] = await nats.connect(
                server.url,
                user=user,
                password=PASSWORDS["OPS_PASS"],
                max_reconnect_attempts=1,
                connect_timeout=3,
            )

    async def watch(self, account: str, subjects: Iterable[str]) -> None:
        """Listen on `subjects` in `account` (skipped if the account is not there)."""
        nc = self._clients.get(account)
        if nc is None:
            return

        async def heard(msg: Msg) -> None:
            self.seen.append(Seen(account, msg.subject, msg.reply, msg.data))
            self._heard.set()

        for subject in subjects:
            await nc.subscribe(subject, cb=heard)
        await nc.flush()

    async def control(
        self, subjects_by_account: dict[str, list[str]], *, fresh: bool = False
    ) -> float:
        """The positive control: an operator publishes on every watched subject of each account
        and the listener hears every one. Returns the seconds that took; fails after 10 s.
        `fresh`: the subscriptions were just made, so what is not heard within HEARD_WAIT is
        published again (see `until_heard`), and the time says little."""
        loop = asyncio.get_running_loop()
        mark, started = len(self.seen), loop.time()
        expected = {
            (account, subject, f"control {account} {subject} {started}".encode())
            for account in self._clients
            for subject in subjects_by_account[account]
        }
        missing = set(expected)
        async with asyncio.timeout(10):
            while missing:
                for account, subject, token in sorted(missing):
                    await self._clients[account].publish(subject, token)
                for nc in self._clients.values():
                    await nc.flush()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARD_WAIT if fresh else None):
                        # No await between the check and clear(): no message slips between.
                        while missing := expected - self._heard_since(mark):
                            self._heard.clear()
                            await self._heard.wait()
        took = loop.time() - started
        del self.seen[mark:]  # the control's own messages are no finding
        return took

    def _heard_since(self, mark: int) -> set[tuple[str, str, bytes]]:
        return {(s.account, s.subject, s.data) for s in self.seen[mark:]}

    async def delete_consumers(self, streams: Iterable[str], delivering_to: set[str]) -> int:
        """Delete the consumers of `streams` (as ops in CHORUS) whose deliver subject is one of
        `delivering_to`: what a call made keeps delivering, which would blur the next one."""
        js, deleted = self._clients["CHORUS"].jetstream(timeout=5), 0
        for stream in streams:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                for info in await js.consumers_info(stream):
                    if info.config.deliver_subject in delivering_to:
                        await js.delete_consumer(stream, info.name)
                        deleted += 1
        return deleted

    async def close(self) -> None:
        for nc in self._clients.values():
            await nc.close()


async def bridge_client(server: EmbeddedNats) -> NATS:
    return await nats.connect(
        server.url,
        user="bridge",
        password=PASSWORDS["BRIDGE_PASS"],
        inbox_prefix="_INBOX.bridge",
        max_reconnect_attempts=1,
        connect_timeout=3,
    )


async def make_buckets(nc: NATS) -> None:
    """The buckets as the bridge makes them (its own specs and code), the agents of the fleet
    in the agents bucket."""
    await ensure_bucket(nc, presence_bucket(NAMES))
    await ensure_bucket(nc, lease_bucket(NAMES))
    await ensure_bucket(nc, agents_bucket(NAMES))
    agents = await nc.jetstream(timeout=5).key_value(NAMES.agents_bucket)
    for agent_id, address in ADDRESSES.items():
        record = Agent(
            id=agent_id,
            endpoint=f"http://{address}:8080",
            address=address,
            port=8080,
            source="swarm",
            task_id=agent_id,
        )
        await agents.put(agent_id, encode(record))


@contextlib.asynccontextmanager
async def serving_callout(nc: NATS, keys_dir: Path) -> AsyncIterator[None]:
    """The bridge's callout (bridge/trust/callout.py, following the agents bucket) on `nc`,
    with the seeds `shipped_server` made in `keys_dir`."""
    keys = CalloutKeys(
        issuer=SigningKey((keys_dir / "issuer.seed").read_bytes()),
        xkey=CurveKey((keys_dir / "xkey.seed").read_bytes()),
        agent_password=PASSWORDS["AGENT_PASS"],
    )
    callout = make_callout(nc, NAMES, keys, AgentAddresses(nc, NAMES), metrics=Metrics())
    task = asyncio.create_task(callout.run(), name="callout")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until_heard(
    send: Callable[[], Awaitable[None]],
    heard: Callable[[], Awaitable[T]],
    *,
    timeout: float = 10.0,
) -> T:
    """`send`, and again every HEARD_WAIT seconds, until `heard` returns (it raises
    TimeoutError while nothing came). A nats-py subscription just made and flushed now and then
    misses the first message sent to it (nats-py 2.16.0: about 1 in 30 here; none with the raw
    protocol client of tests/callout_client.py), so a test that needs a message through one
    sends it until it arrives, once per need."""
    async with asyncio.timeout(timeout):
        while True:
            await send()
            with contextlib.suppress(TimeoutError):
                return await heard()


@contextlib.asynccontextmanager
async def agent_connection(
    server: EmbeddedNats, agent_id: str, *, callout: bool
) -> AsyncIterator[RawClient]:
    """Agent `agent_id` connected as agents connect: the static `agent` user (open mode), or
    with the shared agent credentials from its own address, retried until the callout admits
    it (it needs its watch of the agents bucket first)."""
    port = int(server.url.rpartition(":")[2])
    source = ADDRESSES[agent_id] if callout else "127.0.0.1"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ADMISSION_WAIT
    while True:
        try:
            async with raw_connect(
                port,
                source=source,
                user="agent",
                password=PASSWORDS["AGENT_PASS"],
                name=agent_id,
                headers=True,
            ) as client:
                yield client
                return
        except Refused:
            if not callout or loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def shipped_server(directory: Path, *, callout: bool) -> AsyncIterator[EmbeddedNats]:
    """nats.conf (or nats-callout.conf) as shipped, less monitoring and the container's store
    directory; with `callout`, the seeds for the callout are made in `directory` first."""
    conf = write_confs(directory)
    env = dict(PASSWORDS)
    if callout:
        files = make_keys(directory / "keys")
        env.update(CALLOUT_ISSUER=files.issuer, CALLOUT_XKEY=files.xkey)
    else:
        conf = directory / "nats.conf"
    async with EmbeddedNats(
        port=0, store_dir=directory / "nats", config_file=conf, env=env
    ) as server:
        yield server
