"""The roster as the leader knows it: the agents bucket it writes, and presence.

Each Peer is encoded once and kept while its agent's record and roles stay the same, and the
roster's pages are kept while neither the bucket nor presence moved (`version`): a fleet of
10,000 asking for its peers at once costs one roster, not 10,000 (about 12 ms each here).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

from bridge.contract.messages import Agent, PresenceEntry, encode
from bridge.contract.roster import PAGE_MARGIN, Peer, page

__all__ = ["RosterView"]

_Key = tuple[Agent | None, bool, tuple[str, ...]]
# Pages kept for the roster as it is, at most (the first, and the next of each reader).
MAX_PAGES_KEPT = 64


class RosterView:
    """Pages of the roster from `published()` (the agents bucket's records, by id) and
    `present()` (live presence entries, by agent id)."""

    def __init__(
        self,
        published: Callable[[], Mapping[str, Agent]],
        present: Callable[[], Mapping[str, PresenceEntry]],
        version: Callable[[], Hashable],
    ) -> None:
        self._published = published
        self._present = present
        self._version = version
        self._encoded: dict[str, tuple[_Key, bytes]] = {}
        self._pages: dict[tuple[str | None, int], tuple[bytes, str | None]] = {}
        self._snapshot_of: Hashable = None
        self._snapshot: tuple[list[str], list[bytes]] = ([], [])

    def page(self, after: str | None, max_payload: int) -> tuple[bytes, str | None]:
        """(the JSON list of the Peers after `after` that fit in `max_payload` less
        PAGE_MARGIN, the id to ask after next or None): bridge/contract/roster.py."""
        version = self._version()
        if version != self._snapshot_of:
            self._snapshot, self._snapshot_of = self._build(), version
            self._pages = {}
        limit = max(max_payload - PAGE_MARGIN, 1024)
        cached = self._pages.get((after, limit))
        if cached is None:
            if len(self._pages) >= MAX_PAGES_KEPT:  # cursors anyone may send: bounded
                self._pages.clear()
            cached = self._pages[(after, limit)] = page(*self._snapshot, after, limit)
        return cached

    def _build(self) -> tuple[list[str], list[bytes]]:
        published, present = self._published(), self._present()
        ids = sorted(published.keys() | present.keys())
        cache, fresh = self._encoded, {}
        encoded = []
        for agent_id in ids:
            agent, entry = published.get(agent_id), present.get(agent_id)
            key: _Key = (agent, entry is not None, tuple(entry.roles) if entry else ())
            hit = cache.get(agent_id)
            if hit is None or hit[0][1:] != key[1:] or hit[0][0] is not agent:
                hit = (key, encode(_peer(agent_id, agent, entry)))
            fresh[agent_id] = hit
            encoded.append(hit[1])
        self._encoded = fresh  # agents gone are forgotten
        return ids, encoded


def _peer(agent_id: str, agent: Agent | None, entry: PresenceEntry | None) -> Peer:
    return Peer(
        id=agent_id,
        on_bus=entry is not None,
        healthy=agent.healthy if agent is not None else None,
        source=agent.source if agent is not None else None,
        roles=tuple(entry.roles) if entry is not None else (),
    )
