"""What the auth callout holds and issues: its keys (`CalloutKeys`), and the user an admitted
agent becomes (`user_claims`, with `agent_permissions`): a user of the account AGENTS, named
after the agent, that lives USER_TTL seconds and may publish only the agent's own subjects
(docs/trust-design.md)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import structlog

from bridge.config import Settings
from bridge.contract.kv_wire import key_subject
from bridge.contract.names import Names
from bridge.edges.nkeys_jwt import CurveKey, SigningKey
from bridge.errors import CalloutKeyError, ConfigError
from bridge.ops.metrics import Metrics

log = structlog.get_logger(__name__)

__all__ = [
    "AGENT_ACCOUNT",
    "AGENT_USER",
    "USER_TTL",
    "CalloutKeys",
    "agent_permissions",
    "say_identity",
    "user_claims",
]

AGENT_USER = "agent"
# nats.conf's account of the agents (the user JWT's `aud`): no JetStream, and nothing of the
# bridge's account but the streams nats.conf exports and imports.
AGENT_ACCOUNT = "AGENTS"
# Seconds an issued user lives (DESIGN.md: at most 10 minutes). The server then closes the
# connection and the client reconnects through the callout, which checks its address again.
USER_TTL = 600


def _read(path: str, variable: str) -> bytes:
    try:
        return Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(variable, path, f"cannot read it ({exc.strerror})") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalloutKeys:
    """What the callout signs and opens with; `agent_password` None: not checked."""

    issuer: SigningKey
    xkey: CurveKey | None = None
    agent_password: str | None = None

    @classmethod
    def load(cls, settings: Settings) -> CalloutKeys:
        """Read the seed files. Raises ConfigError naming the variable of a bad one."""
        if not settings.callout_issuer_seed:
            raise ConfigError(
                "BRIDGE_CALLOUT_ISSUER_SEED", "", "must be set when BRIDGE_AUTH_CALLOUT is true"
            )
        path, variable = settings.callout_issuer_seed, "BRIDGE_CALLOUT_ISSUER_SEED"
        try:
            issuer = SigningKey(_read(path, variable))
            xkey = None
            if settings.callout_xkey_seed:
                path, variable = settings.callout_xkey_seed, "BRIDGE_CALLOUT_XKEY_SEED"
                xkey = CurveKey(_read(path, variable))
        except CalloutKeyError as exc:
            raise ConfigError(variable, path, str(exc)) from None
        password = None
        if settings.callout_agent_password_file:
            password = _read(
                settings.callout_agent_password_file, "BRIDGE_CALLOUT_AGENT_PASSWORD_FILE"
            ).decode()
        return cls(issuer=issuer, xkey=xkey, agent_password=password)


def agent_permissions(names: Names, agent_id: str) -> dict[str, Any]:
    """The `pub`/`sub` permissions of an admitted agent (docs/trust-design.md): an allow-list
    of its own subjects to publish (its presence key, acks and claims, messages as their
    sender, the roster request, and replies to a peer's inbox under its own id), nothing of
    `$JS.API` or `$SYS` (both still answer in an account without JetStream); to read, what
    agents read, its own messages and its own inbox."""
    return {
        "pub": {
            "allow": [
                key_subject(names.presence_bucket, agent_id),
                names.acks("*", agent_id),
                names.claims("*", agent_id),
                names.messages("*", agent_id),
                names.roster,
                f"_INBOX.*.{agent_id}.>",
            ]
        },
        "sub": {
            "allow": [
                names.opportunities,
                names.announce,
                names.council_events("*"),
                names.messages(agent_id, "*"),
                f"{names.agent_inbox(agent_id)}.>",
            ]
        },
    }


def user_claims(
    names: Names,
    agent_id: str,
    user_nkey: str,
    *,
    account: str = AGENT_ACCOUNT,
    issued_at: int | None = None,
) -> dict[str, Any]:
    """The claims of the user JWT that admits agent `agent_id` on the connection whose key is
    `user_nkey`: in `account` (`aud`), named after the agent, expiring USER_TTL seconds after
    `issued_at` (the request's `iat`, the server's clock; default now), with
    `agent_permissions`."""
    return {
        "sub": user_nkey,
        "aud": account,
        "name": agent_id,
        "exp": (int(time.time()) if issued_at is None else issued_at) + USER_TTL,
        "nats": {
            "type": "user",
            "version": 2,
            "subs": -1,
            "data": -1,
            "payload": -1,
            **agent_permissions(names, agent_id),
        },
    }


def say_identity(enforced: bool, metrics: Metrics) -> None:
    """Whether the server holds each agent to its own subjects (only with the callout): on
    /metrics, and at start a warning when it does not (DESIGN.md, "Trust")."""
    metrics.agent_identity_enforced.set(1 if enforced else 0)
    if not enforced:
        log.warning(
            "agent_identity_not_enforced",
            mode="open (BRIDGE_AUTH_CALLOUT=false)",
            effect="every agent shares the agent user: any agent may write another's "
            "presence, acks, claims and messages",
            hint="for agents that are not all trusted, set BRIDGE_AUTH_CALLOUT=true "
            "(nats-callout.conf)",
        )
