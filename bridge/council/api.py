"""The endpoint `council` of the micro service chorus-bridge, on `<prefix>.bridge.council`:
`{"opportunity_id": "..."}` is answered with the council's state (DESIGN.md, "Councils"), from
what the leader holds; an unknown council gets `{"error", "field"}` with code 404, a request
that is not one with code 400."""

from __future__ import annotations

import asyncio
import time

import msgspec

from bridge.bus.councils import Council
from bridge.contract.messages import (
    COUNCIL_REQUEST_DECODER,
    MAX_CLAIM_BYTES,
    CouncilState,
    ErrorReply,
    RoleState,
    encode,
)
from bridge.contract.names import Names
from bridge.council.book import CouncilBook
from bridge.council.rules import state_of
from bridge.edges.micro import Endpoint, Request

__all__ = ["ENDPOINT_NAME", "CouncilEndpoint", "council_state"]

ENDPOINT_NAME = "council"
# How long a request made at the start of a term waits for the councils to be read.
LOAD_WAIT = 5.0


def council_state(council: Council, now: float) -> CouncilState:
    """The answer about one council."""
    return CouncilState(
        opportunity_id=council.id,
        state=state_of(council, now),
        roles=[
            RoleState(
                name=role.name,
                core=role.core,
                holder=held.agent_id if (held := council.holders.get(role.name)) else None,
            )
            for role in council.record.roles
        ],
        activated_at=council.record.activated_at,
    )


class CouncilEndpoint:
    """Answers state requests from the leader's councils."""

    def __init__(self, names: Names, book: CouncilBook) -> None:
        self._names = names
        self._book = book

    def endpoint(self) -> Endpoint:
        return Endpoint(name=ENDPOINT_NAME, subject=self._names.council, handle=self.handle)

    async def handle(self, request: Request) -> None:
        if len(request.data) > MAX_CLAIM_BYTES:
            await _refuse(
                request, "400", ErrorReply(error="request is larger than 4 KiB", field="$")
            )
            return
        try:
            asked = COUNCIL_REQUEST_DECODER.decode(request.data)
        except msgspec.DecodeError as exc:
            error = ErrorReply(error=f"not a council request: {exc}", field="$.opportunity_id")
            await _refuse(request, "400", error)
            return
        if not self._book.loaded.is_set():
            try:
                async with asyncio.timeout(LOAD_WAIT):
                    await self._book.loaded.wait()
            except TimeoutError:
                error = ErrorReply(error="the bridge is still reading the councils: ask again")
                await _refuse(request, "503", error)
                return
        council = self._book.council(asked.opportunity_id)
        if council is None:
            error = ErrorReply(
                error=f"no council {asked.opportunity_id[:128]!r}: it was never broadcast, or "
                "was removed a day after its deadline",
                field="$.opportunity_id",
            )
            await _refuse(request, "404", error)
            return
        await request.respond(encode(council_state(council, time.time())))


async def _refuse(request: Request, code: str, error: ErrorReply) -> None:
    await request.respond_error(code, error.error, encode(error))
