"""The edges: each module (or package) here is the only importer of one third-party I/O library.

`nats_client` (the NATS connection), `kv/` (JetStream KV: `nats.js`), `docker_api` (`docker`,
`requests`), `agent_http` (HTTP to agents: `httpx`, `aiohttp`), `nkeys_jwt` (`nkeys`, PyNaCl),
`nats_server` (the embedded nats-server binary). Their errors become ours (bridge/errors.py)
here, once.
"""
