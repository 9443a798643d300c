"""The roster as the leader knows it: the agents bucket it writes, and presence.

Each Peer is encoded once and kept while its agent's record and roles stay the same: a quiet
fleet of 10,000 costs a pass over the ids per request, not 10,000 encodings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bridge.contract.messages import Agent, PresenceEntry, encode
from bridge.contract.roster import PAGE_MARGIN, Peer, page

__all__ = ["RosterView"]

_Key = tuple[Agent | None, bool, tuple[str, ...]]


class RosterView:
    """Pages of the roster from `published()` (the agents bucket's records, by id) and
    `present()` (live presence entries, by agent id)."""

    def __init__(
        self,
        published: Callable[[], Mapping[str, Agent]],
        present: Callable[[], Mapping[str, PresenceEntry]],
    ) -> None:
        self._published = published
        self._present = present
        self._encoded: dict[str, tuple[_Key, bytes]] = {}

    def page(self, after: str | None, max_payload: int) -> tuple[bytes, str | None]:
        """(the JSON list of the Peers after `after` that fit in `max_payload` less
        PAGE_MARGIN, the id to ask after next or None): bridge/contract/roster.py."""
        ids, encoded = self._snapshot()
        return page(ids, encoded, after, max(max_payload - PAGE_MARGIN, 1024))

    def _snapshot(self) -> tuple[list[str], list[bytes]]:
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
        roles=list(entry.roles) if entry is not None else [],
    )
