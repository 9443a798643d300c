"""HTTP to agents: the only package that imports httpx and aiohttp (client.py: the calls;
transport.py: aiohttp under httpx).

httpx is the API; the transport under it is aiohttp's client, reached through aiohttp's public
API only (`ClientSession`, `TCPConnector`, `DummyCookieJar`, `ClientTimeout`). On a fan-out to
1,000 agents the client's CPU per call decides how fast a broadcast is: httpcore's pool took
seconds for a fan-out to 1,000 hosts, aiohttp's takes a fraction of that. So:
- `AgentTransport` is an `httpx.AsyncBaseTransport` that hands each request to aiohttp as it
  is (headers, URL and body that httpx already holds are not re-encoded);
- the broadcast's POST (`AgentHTTP.post`) builds its `httpx.Request` from parts made once per
  broadcast and sends it straight through the transport. What `AsyncClient.send` adds on top
  (cookie jar, auth, redirects, default headers, URL merging) is nothing a POST to an agent
  needs: a redirect is not followed anyway, and no cookie is ever kept;
- health checks use `AgentHTTP.get_status`, the same way in.
`AgentHTTP.client` is an ordinary `httpx.AsyncClient` over the same transport, for anything
else. Neither path keeps cookies: what one agent sets must not reach another.

Errors: aiohttp's are mapped to httpx's in the transport (so `client` behaves as httpx does),
and `post`/`get_status` map those to `AgentHTTPError` with a short reason, once, here: the rest
of the bridge never sees either library's exceptions. An error neither library documents is
re-raised as it is: a bug must not look like an agent that is down.
"""

from bridge.edges.agent_http.client import (
    MAX_RESPONSE_BYTES,
    USER_AGENT,
    AgentHTTP,
    AgentURL,
    PostHeaders,
    agent_url,
)
from bridge.edges.agent_http.transport import AgentTransport

__all__ = [
    "MAX_RESPONSE_BYTES",
    "USER_AGENT",
    "AgentHTTP",
    "AgentTransport",
    "AgentURL",
    "PostHeaders",
    "agent_url",
]
