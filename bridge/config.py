"""Settings: one immutable object, built once from the environment and the command's flags.

Everything gets a `Settings` passed down. It is a frozen msgspec Struct whose constraints
(ranges, patterns, choices) msgspec checks when the settings are built; bridge/environment.py
reads the variables into it (the only module that reads environment variables).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["DOCKER_CALL_TIMEOUT", "DiscoveryMethod", "LogFormat", "Settings"]

DiscoveryMethod = Literal["swarm", "dns", "auto"]
LogFormat = Literal["json", "console"]

# Docker API calls are bounded so that a hung daemon cannot freeze discovery.
DOCKER_CALL_TIMEOUT = 10.0

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
# One subject token; bucket names are letters, digits, - and _ (NATS' own rule for both).
Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+\Z")]
# JetStream keeps at most 5 replicas of a stream.
Replicas = Annotated[int, msgspec.Meta(ge=1, le=5)]
# A path and nothing more: a query or a fragment would change the URL agents are posted to.
UrlPath = Annotated[str, msgspec.Meta(pattern=r"^/[^\s?#]*\Z")]


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the bridge is configured with (DESIGN.md, "Configuration").

    Built by load_settings() from the environment; tests and the demo build it directly.
    Durations are in seconds.
    """

    discovery_method: DiscoveryMethod = "auto"
    docker_enabled: bool = True
    # One address or several, comma-separated (the managers, tried in turn): docker_hosts.
    docker_host: str = "unix:///var/run/docker.sock"
    docker_tls_verify: bool = False
    docker_cert_path: str | None = None
    service_name: str = "CHORUS_chorus"
    network_names: tuple[str, ...] = ("chorus_default",)
    agent_port: Port = 8080
    verify_health: bool = False
    known_endpoints: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ("tasks.CHORUS_chorus",)
    nats_url: str | None = None
    nats_creds: str | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    # TLS to NATS (DESIGN.md, "Trust"): paths of the CA that signed the server's certificate
    # (PEM), and of a client certificate and its key where the server asks for one.
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    subject_prefix: Token = "chorus"
    kv_bucket: Token = "chorus_agents"
    kv_replicas: Replicas = 1
    poll_interval: Seconds = 30.0
    http_timeout: Seconds = 5.0
    http_concurrency: Annotated[int, msgspec.Meta(ge=1)] = 256
    bus_ack_wait: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    opportunity_path: UrlPath = "/api/v1/opportunities/council"
    listen_host: str = "0.0.0.0"
    # Port 0 lets the OS choose, which tests and the demo rely on.
    listen_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8090
    log_format: LogFormat = "json"
    log_level: str = "INFO"
    docker_timeout: Seconds = DOCKER_CALL_TIMEOUT
    # The NATS auth callout (DESIGN.md, "Trust"): paths of the issuer's account seed, of the
    # curve seed when the server encrypts callouts, and of the shared agent password.
    auth_callout: bool = False
    callout_issuer_seed: str | None = None
    callout_xkey_seed: str | None = None
    callout_agent_password_file: str | None = None

    @property
    def docker_hosts(self) -> tuple[str, ...]:
        """The Docker Engine addresses WHOOSH_DOCKER_HOST lists, in order."""
        return tuple(part.strip() for part in self.docker_host.split(",") if part.strip())

    @property
    def docker_active(self) -> bool:
        """Whether the Docker API may be opened at all."""
        return self.docker_enabled and self.discovery_method != "dns"

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests and the demo build variants this way)."""
        return msgspec.structs.replace(self, **changes)
