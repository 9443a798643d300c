"""The client commands: read the agents bucket, follow announcements."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import click
import msgspec
import nats.errors
from nats.aio.msg import Msg

from bridge.bus.registry import read_bucket
from bridge.cli.session import Session, open_session
from bridge.config import Settings
from bridge.contract.messages import (
    ANNOUNCEMENT_DECODER,
    Agent,
    BroadcastReport,
    ErrorReply,
    decode_reply,
    encode,
)
from bridge.contract.names import Names
from bridge.edges.kv import RawBucket, bind_bucket
from bridge.errors import BridgeUnavailableError, BucketMissingError, NatsError
from bridge.ops.redact import redact_text, redact_url

__all__ = ["print_agents", "read_agents", "send_broadcast", "watch_announcements"]


def _names_of(names: Names) -> tuple[str, ...]:
    """The names a refused subject may contain, to give it back its case."""
    return (
        names.prefix,
        names.agents_bucket,
        names.presence_bucket,
        names.leader_bucket,
        names.announce,
        names.broadcast,
        names.council,
        names.councils_bucket,
    )


@contextlib.asynccontextmanager
async def session(
    settings: Settings, names: Names, inbox_prefix: str | None
) -> AsyncIterator[Session]:
    """A Session whose NATS failures, whatever nats-py raises, are one NatsError line."""
    async with open_session(settings, _names_of(names), inbox_prefix=inbox_prefix) as s:
        try:
            yield s
        except (nats.errors.Error, TimeoutError) as exc:
            text = redact_text(str(exc) or type(exc).__name__)
            raise NatsError(f"NATS at {redact_url(s.url)} failed: {text}") from None


async def read_agents(kv: RawBucket) -> list[Agent]:
    """Every agent in the bucket (its current values), sorted by endpoint."""
    agents, _invalid = await read_bucket(kv)
    return sorted(agents.values(), key=lambda a: (a.endpoint, a.id))


def _table(agents: list[Agent]) -> str:
    header = ("ID", "ENDPOINT", "SOURCE", "SLOT", "NODE", "ON BUS", "HEALTHY", "FIRST SEEN")
    rows = [header] + [
        (
            a.id,
            a.endpoint,
            a.source,
            "" if a.slot is None else str(a.slot),
            (a.node_id or "")[:12],
            "yes" if a.on_bus else "no",
            "" if a.healthy is None else ("yes" if a.healthy else "no"),
            a.first_seen,
        )
        for a in agents
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    by_source = {s: sum(a.source == s for a in agents) for s in ("swarm", "dns", "static")}
    lines.append(
        f"{len(agents)} agents ({by_source['swarm']} swarm, {by_source['dns']} dns, "
        f"{by_source['static']} static; {sum(a.on_bus for a in agents)} on the bus)"
    )
    return "\n".join(lines)


async def print_agents(
    settings: Settings, *, as_json: bool, inbox_prefix: str | None = None
) -> None:
    """Print the agents bucket; NatsError when it cannot be read."""
    names = Names.from_settings(settings)
    async with session(settings, names, inbox_prefix) as s:
        try:
            kv = await s.guard(bind_bucket(s.nc, names.agents_bucket, timeout=5))
        except BucketMissingError:
            raise NatsError(
                f"no bucket {names.agents_bucket!r} on {redact_url(s.url)}: is "
                "the bridge running against this NATS?"
            ) from None
        agents = await s.guard(read_agents(kv))
    click.echo(msgspec.json.format(encode_list(agents)).decode() if as_json else _table(agents))


def encode_list(agents: list[Agent]) -> bytes:
    return b"[" + b",".join(encode(a) for a in agents) + b"]"


def _announcement_line(data: bytes) -> str | None:
    try:
        ann = ANNOUNCEMENT_DECODER.decode(data)
    except msgspec.DecodeError:
        return None
    a = ann.agent
    return (
        f"{ann.at}  {ann.event:<7}  {a.id}  {a.endpoint}  source={a.source}"
        f"  on_bus={'yes' if a.on_bus else 'no'}"
    )


async def watch_announcements(
    settings: Settings, stop: asyncio.Event, *, as_json: bool, inbox_prefix: str | None = None
) -> None:
    """Print each announcement as it arrives, until `stop` is set."""
    names = Names.from_settings(settings)
    async with session(settings, names, inbox_prefix) as s:

        async def show(msg: Msg) -> None:
            line = msg.data.decode(errors="replace") if as_json else _announcement_line(msg.data)
            if line is not None:
                click.echo(line)

        sub = await s.nc.subscribe(names.announce, cb=show)
        await s.settle()
        click.echo(f"watching {names.announce} on {redact_url(s.url)} (Ctrl-C to stop)", err=True)
        await s.guard(stop.wait())
        await sub.unsubscribe()


def _failed_at_the_bridge(msg: Msg) -> bool:
    """A micro service error of the 5xx kind: the bridge's failure, not a refused request (2)."""
    code = (msg.headers or {}).get("Nats-Service-Error-Code", "")
    return code.startswith("5")


def _report_table(report: BroadcastReport) -> str:
    lines = [
        f"opportunity   {report.opportunity_id}",
        f"reached       {report.success_count} of {report.total_agents} agents "
        f"({report.via_bus} via the bus, {report.via_http} via HTTP) in {report.duration_ms} ms",
        f"failed        {len(report.failed)}",
    ]
    if report.unregistered_acks:
        lines.append(f"acks from unknown agents: {report.unregistered_acks}")
    for failure in report.failed:
        lines.append(f"  {failure.agent_id}  {failure.endpoint or '-'}  {failure.error}")
    return "\n".join(lines)


async def send_broadcast(
    settings: Settings,
    data: bytes,
    *,
    timeout: float,
    as_json: bool,
    inbox_prefix: str | None = None,
) -> int:
    """Send an opportunity through a running bridge; returns the exit status (0 every agent
    reached, 1 some not, 2 refused). NatsError or BridgeUnavailableError when no answer could
    be had, or when the bridge failed while broadcasting (an error answer of code 5xx)."""
    names = Names.from_settings(settings)
    async with session(settings, names, inbox_prefix) as s:
        try:
            msg = await s.guard(s.nc.request(names.broadcast, data, timeout=timeout))
        except nats.errors.NoRespondersError:
            raise BridgeUnavailableError(
                f"no bridge is serving {names.broadcast} on {redact_url(s.url)}: is "
                "`chorus-bridge run` running against this NATS?"
            ) from None
        except nats.errors.TimeoutError:
            raise BridgeUnavailableError(
                f"no answer on {names.broadcast} within {timeout:g}s; raise --timeout, "
                "or check the bridge's logs"
            ) from None
    reply = decode_reply(msg.data)
    if isinstance(reply, ErrorReply) and _failed_at_the_bridge(msg):
        raise BridgeUnavailableError(
            f"the bridge failed while broadcasting, so no report can be had: {reply.error}; "
            "some agents may have got it: see the bridge's logs, then send it again"
        )
    if isinstance(reply, ErrorReply):
        click.echo(f"refused: {reply.error} (field {reply.field})", err=True)
        if as_json:
            click.echo(msg.data.decode())
        return 2
    click.echo(msgspec.json.format(msg.data).decode() if as_json else _report_table(reply))
    return 0 if reply.success_count == reply.total_agents else 1
