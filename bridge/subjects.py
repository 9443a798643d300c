"""Every subject and bucket name, derived from the subject prefix in one place."""

from __future__ import annotations

import dataclasses

from bridge.config import Settings

__all__ = ["Names"]


@dataclasses.dataclass(frozen=True)
class Names:
    """The NATS names of one deployment (DESIGN.md, "The bus").

    With the default prefix `chorus`: chorus.agents.announce, chorus.bridge.broadcast,
    chorus.council.opportunities, chorus.council.<id>.claims, and the buckets chorus_agents
    (BRIDGE_KV_BUCKET), chorus_presence and chorus_bridge (the leader lease).
    """

    prefix: str
    agents_bucket: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Names:
        return cls(prefix=settings.subject_prefix, agents_bucket=settings.kv_bucket)

    @property
    def announce(self) -> str:
        return f"{self.prefix}.agents.announce"

    @property
    def broadcast(self) -> str:
        return f"{self.prefix}.bridge.broadcast"

    @property
    def opportunities(self) -> str:
        return f"{self.prefix}.council.opportunities"

    def claims(self, opportunity_id: str) -> str:
        return f"{self.prefix}.council.{opportunity_id}.claims"

    @property
    def presence_bucket(self) -> str:
        return f"{self.prefix}_presence"

    @property
    def leader_bucket(self) -> str:
        return f"{self.prefix}_bridge"
