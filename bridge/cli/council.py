"""`chorus-bridge council ID [--watch] [--json]`: a council's state, from a running bridge
(`<prefix>.bridge.council`), and with --watch its events as they come."""

from __future__ import annotations

import asyncio

import click
import msgspec
import nats.errors
from nats.aio.msg import Msg

from bridge.cli.commands import session
from bridge.cli.session import Session
from bridge.config import Settings
from bridge.contract.messages import (
    COUNCIL_EVENT_DECODER,
    COUNCIL_STATE_DECODER,
    ERROR_DECODER,
    CouncilRequest,
    CouncilState,
    encode,
)
from bridge.contract.names import Names
from bridge.errors import BridgeUnavailableError
from bridge.ops.redact import redact_url

__all__ = ["show_council"]

# Exit statuses beyond DESIGN.md's common ones: the bridge knows no such council.
EXIT_UNKNOWN = 1
EXIT_REFUSED = 2
REQUEST_TIMEOUT = 10.0


def state_table(state: CouncilState) -> str:
    """The council as a table: its state, then each role, whether core, and its holder."""
    # activated_at is the council's latest activation: a degraded council was active then.
    since = ""
    if state.activated_at:
        when = "active since" if state.state == "active" else "last activated"
        since = f" ({when} {state.activated_at})"
    rows = [("ROLE", "CORE", "HOLDER")] + [
        (role.name, "yes" if role.core else "no", role.holder or "-") for role in state.roles
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"council {state.opportunity_id}: {state.state}{since}"]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


async def _ask(s: Session, names: Names, opportunity_id: str) -> Msg:
    data = encode(CouncilRequest(opportunity_id=opportunity_id))
    try:
        return await s.guard(s.nc.request(names.council, data, timeout=REQUEST_TIMEOUT))
    except nats.errors.NoRespondersError:
        raise BridgeUnavailableError(
            f"no bridge is serving {names.council} on {redact_url(s.url)}: is "
            "`chorus-bridge run` running against this NATS?"
        ) from None
    except nats.errors.TimeoutError:
        raise BridgeUnavailableError(
            f"no answer on {names.council} within {REQUEST_TIMEOUT:g}s; check the bridge's logs"
        ) from None


def _print(msg: Msg, as_json: bool) -> int:
    """Print an answer; its exit status (0 a state, 1 no such council, 2 refused)."""
    code = (msg.headers or {}).get("Nats-Service-Error-Code")
    if code is None:
        state = COUNCIL_STATE_DECODER.decode(msg.data)
        click.echo(msg.data.decode() if as_json else state_table(state))
        return 0
    if code.startswith("5"):
        raise BridgeUnavailableError(
            f"the bridge failed to answer: {ERROR_DECODER.decode(msg.data).error}"
        )
    click.echo(f"chorus-bridge: {ERROR_DECODER.decode(msg.data).error}", err=True)
    return EXIT_UNKNOWN if code == "404" else EXIT_REFUSED


async def show_council(
    settings: Settings,
    opportunity_id: str,
    stop: asyncio.Event,
    *,
    watch: bool,
    as_json: bool,
    inbox_prefix: str | None = None,
) -> int:
    """Print the council's state (and with `watch`, each event and the state after it, until
    `stop`); the exit status. NatsError or BridgeUnavailableError when no answer came."""
    names = Names.from_settings(settings)
    async with session(settings, names, inbox_prefix) as s:
        events: asyncio.Queue[Msg] = asyncio.Queue()
        if watch:  # subscribed first: no event between the state and the watch is missed
            await s.nc.subscribe(names.council_events(opportunity_id), cb=events.put)
            await s.settle()
        status = _print(await _ask(s, names, opportunity_id), as_json)
        if not watch or status != 0:
            return status
        click.echo(f"watching {names.council_events(opportunity_id)} (Ctrl-C to stop)", err=True)
        while True:
            msg = await s.guard(_next(events, stop))
            if msg is None:
                return 0
            _print_event(msg, as_json)
            if not as_json:
                _print(await _ask(s, names, opportunity_id), as_json)


async def _next(events: asyncio.Queue[Msg], stop: asyncio.Event) -> Msg | None:
    got = asyncio.ensure_future(events.get())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({got, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not got.done():
            got.cancel()
    return got.result() if got.done() and not got.cancelled() else None


def _print_event(msg: Msg, as_json: bool) -> None:
    if as_json:
        click.echo(msg.data.decode(errors="replace"))
        return
    try:
        event = COUNCIL_EVENT_DECODER.decode(msg.data)
    except msgspec.DecodeError:
        return
    who = f"  {event.role} {event.agent_id}" if event.role else ""
    click.echo(f"\n{event.at}  {event.event}{who}")
