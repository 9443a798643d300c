"""A leader's council duties for one term: the claims subscription opens first (claims are
kept while the councils are read), then the bucket is read, then claims are decided and the
upkeep runs, until the term ends."""

from __future__ import annotations

import asyncio

import structlog

from bridge.council.book import CouncilBook
from bridge.council.claims import ClaimDesk
from bridge.council.members import Members
from bridge.council.upkeep import Upkeep
from bridge.errors import NatsError
from bridge.waits import raise_if_cancelled

__all__ = ["CouncilDuties"]

log = structlog.get_logger(__name__)

# Seconds between attempts to read the councils bucket at the start of a term.
RETRY = 1.0


class CouncilDuties:
    """Runs one term's council duties until cancelled."""

    def __init__(
        self, book: CouncilBook, desk: ClaimDesk, upkeep: Upkeep, members: Members
    ) -> None:
        self._book = book
        self._desk = desk
        self._upkeep = upkeep
        self._members = members

    async def run(self) -> None:
        self._members.begin_term()
        ready = asyncio.Event()
        try:
            async with self._desk.taking(ready):
                await self._begin()
                # Claims wait until who is on the bus is known: an agent on the bus only
                # would be refused as no agent before.
                await self._members.wait_ready()
                ready.set()
                await self._upkeep.run()
        finally:
            self._book.loaded.clear()

    async def _begin(self) -> None:
        """Read the councils bucket, again every RETRY seconds until it can be. A stop that
        its NATS calls swallowed (bridge/waits.py) is raised here: what follows waits for
        presence, and a stop lost there was a bridge that never stopped."""
        failing = False
        while True:
            raise_if_cancelled()
            try:
                async with self._book.lock:
                    await self._book.begin_term()
                break
            except NatsError as exc:
                if not failing:
                    log.warning("councils_unreadable", error=str(exc), retry_in_s=RETRY)
                failing = True
                await asyncio.sleep(RETRY)
        raise_if_cancelled()
        if failing:
            log.info("councils_readable")
