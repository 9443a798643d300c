"""Where the answer to a claim goes: to the claiming agent's own inbox, and nowhere else.

DESIGN.md ("Trust"): the bridge answers an agent's request only on an agent's inbox, for a claim
the claiming agent's own: `_INBOX.<agent id>.…` (in the callout mode each agent's inbox prefix
is `_INBOX.<agent id>`, and only it may subscribe there). A reply subject that names anything
else (another agent's inbox, the lease key, a subject of the bridge) gets no answer.

In the open mode (no auth callout) every agent shares nats.conf's `agent` user, whose inbox
prefix is `_INBOX.agent`: its replies are accepted too, there and only there. Every agent can
read that inbox (they share the user), which the open mode admits anyway (README: agents are
trusted there).
"""

from __future__ import annotations

import nats.errors
import structlog
from nats.aio.client import Client as NATS

__all__ = ["answer_claim"]

log = structlog.get_logger(__name__)


async def answer_claim(
    nc: NATS, reply: str | None, agent_id: str, answer: bytes, *, shared_inbox: str | None
) -> bool:
    """Send `answer` to `agent_id`'s claim whose reply subject is `reply`, when that is the
    agent's own inbox (or, with `shared_inbox` given: the open mode, that shared inbox).
    Whether it was sent."""
    if not reply:
        return False  # a claim published without a reply: nobody asked
    own = reply.startswith(f"_INBOX.{agent_id}.")
    shared = shared_inbox is not None and reply.startswith(f"{shared_inbox}.")
    if not (own or shared):
        log.debug("claim_answer_withheld", agent_id=agent_id, reply=reply[:200])
        return False
    try:
        await nc.publish(reply, answer)
    except (nats.errors.Error, OSError) as exc:
        log.warning("claim_answer_failed", agent_id=agent_id, error=repr(exc))
        return False
    return True
