"""The NATS server's connection advisories, as far as the bridge reads them.

`$SYS.ACCOUNT.<account>.CONNECT` and `.DISCONNECT` (`io.nats.server.advisory.v1.client_connect`
and `client_disconnect`) describe one client connection: the server (`server.id`), the
connection's id on that server (`client.id`), its account, address and the name the client
gave, and `user`. For a connection the auth callout admitted, the server sets `user` to the
`name` of the user the callout issued (nats-server auth_callout.go: "See if the response wants
to override the username", since 2.10), and `issuer_key` to the account that user belongs to;
for any other connection `user` is what the client sent in CONNECT, and a static user has no
`issuer_key`. Measured on nats-server 2.15.1 (tests/trust/test_agents_account.py).
"""

from __future__ import annotations

import msgspec

from bridge.contract.messages import WireDecoder

__all__ = [
    "ADVISORY_DECODER",
    "NEVER_CONNECTED",
    "RECONNECTING",
    "AdvisoryClient",
    "AdvisoryServer",
    "ConnectionAdvisory",
]

# Reasons of a DISCONNECT advisory for a connection that never got in: its CONNECT was refused
# or not answered in time. Such a connection was never the agent's live connection.
NEVER_CONNECTED = frozenset({"Authentication Failure", "Authentication Timeout"})
# The server closed the connection because the user the callout issued expired (at most 10
# minutes after it was issued): the client reconnects through the callout at once.
RECONNECTING = frozenset({"Authentication Expired"})


class AdvisoryServer(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    name: str = ""


class AdvisoryClient(msgspec.Struct, kw_only=True, frozen=True):
    id: int
    acc: str = ""
    user: str = ""
    name: str = ""
    host: str = ""
    issuer_key: str = ""


class ConnectionAdvisory(msgspec.Struct, kw_only=True, frozen=True):
    """A connect or disconnect advisory; `reason` is set on disconnects only."""

    type: str
    server: AdvisoryServer
    client: AdvisoryClient
    reason: str = ""

    @property
    def connection(self) -> tuple[str, int]:
        """The connection: (the server's id, the client's id on that server)."""
        return self.server.id, self.client.id


ADVISORY_DECODER = WireDecoder(ConnectionAdvisory)
