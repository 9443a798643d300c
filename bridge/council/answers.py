"""Where the answer to a claim goes: to the claiming agent's own inbox, and nowhere else.

DESIGN.md ("Trust"): the bridge answers an agent's request only on an agent's inbox, for a claim
the claiming agent's own: `_INBOX.<agent id>.…` (each agent's inbox prefix is `_INBOX.<agent
id>`). A reply subject that names anything else (another agent's inbox, the lease key, a
subject of the bridge) gets no answer. The answer is never published on the reply subject
itself, which would land in the bridge's own account: it goes out on
`<prefix>.bridge.answers.<agent id>.<rest>`, which nats.conf delivers into the agents' account
as `_INBOX.<agent id>.<rest>` only (and the embedded server maps the same way:
`Names.answer_mapping`).
"""

from __future__ import annotations

import nats.errors
import structlog
from nats.aio.client import Client as NATS

from bridge.contract.names import Names

__all__ = ["answer_claim"]

log = structlog.get_logger(__name__)


async def answer_claim(
    nc: NATS, names: Names, reply: str | None, agent_id: str, answer: bytes
) -> bool:
    """Send `answer` to `agent_id`'s claim whose reply subject is `reply`, when that is the
    agent's own inbox. Whether it was sent."""
    if not reply:
        return False  # a claim published without a reply: nobody asked
    subject = names.answer_subject(agent_id, reply)
    if subject is None:
        log.debug("claim_answer_withheld", agent_id=agent_id, reply=reply[:200])
        return False
    try:
        await nc.publish(subject, answer)
    except (nats.errors.Error, OSError) as exc:
        log.warning("claim_answer_failed", agent_id=agent_id, error=repr(exc))
        return False
    return True
