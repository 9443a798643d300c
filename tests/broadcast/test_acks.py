"""The term's one subscription to acks: each ack goes to the broadcasts of its opportunity, as
the agent its subject names; outside a term no broadcast can gather any."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from bridge.broadcast.acks import AckDesk
from bridge.contract.names import Names
from bridge.edges.nats_server import EmbeddedNats
from bridge.errors import NatsError
from tests.conftest import wait_for


async def test_each_ack_goes_to_its_opportunitys_broadcasts(
    nats_server: EmbeddedNats, nc: NATS, unique: str
) -> None:
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    desk = AckDesk(nc, names)
    first: list[str] = []
    second: list[str] = []
    async with desk.taking():
        with desk.gathering("c-1", first.append), desk.gathering("c-2", second.append):
            await nc.publish(names.acks("c-1", "a1"), b'{"agent_id": "a2"}')
            await nc.publish(names.acks("c-2", "a2"), b"")
            await nc.publish(names.acks("c-3", "a3"), b"")  # no broadcast of it: dropped
            await wait_for(lambda: bool(first and second), what="the acks")
        await nc.publish(names.acks("c-1", "a4"), b"")  # too late: its broadcast is over
        await nc.flush()
    assert (first, second) == (["a1"], ["a2"])


async def test_outside_a_term_no_broadcast_gathers_acks(
    nats_server: EmbeddedNats, nc: NATS, unique: str
) -> None:
    desk = AckDesk(nc, Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}"))
    with pytest.raises(NatsError, match="not being taken"), desk.gathering("c-1", print):
        pass
