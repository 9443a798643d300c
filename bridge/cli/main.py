"""The `chorus-bridge` command: run, agents, watch, broadcast, demo."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import structlog

from bridge.config import Settings, load_settings, unknown_variables
from bridge.errors import BridgeError, BridgeUnavailableError, ConfigError, NatsError
from bridge.ops.logs import configure_logging
from bridge.ops.redact import redact_text

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

# Flags of `run` (and `demo`), each overriding the environment variable it names.
_SETTING_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--method", "DISCOVERY_METHOD", "swarm, dns or auto (default auto)."),
    ("--docker-host", "WHOOSH_DOCKER_HOST", "Docker Engine address (unix:// or tcp://)."),
    ("--service", "WHOOSH_SERVICE_NAME", "Swarm service whose tasks are the agents."),
    ("--network", "WHOOSH_NETWORK_NAME", "Network(s) of the agent's address, comma-separated."),
    ("--agent-port", "WHOOSH_AGENT_PORT", "The agents' HTTP port."),
    ("--dns-names", "WHOOSH_DNS_NAMES", "Names resolved by the DNS fallback ({service} expands)."),
    ("--known-endpoints", "WHOOSH_KNOWN_ENDPOINTS", "http://host:port agents always included."),
    ("--nats-url", "NATS_URL", "NATS server; unset: start an embedded one."),
    ("--prefix", "BRIDGE_SUBJECT_PREFIX", "First token of every subject."),
    ("--bucket", "BRIDGE_KV_BUCKET", "The agents bucket."),
    ("--poll-interval", "BRIDGE_POLL_INTERVAL", "Seconds between rounds if nothing triggers one."),
    ("--listen", "BRIDGE_LISTEN", "HOST:PORT of /healthz and /metrics."),
    ("--log-format", "BRIDGE_LOG_FORMAT", "json or console."),
    ("--log-level", "BRIDGE_LOG_LEVEL", "debug, info, warning or error."),
)


_FLAG_OF = {variable: flag for flag, variable, _text in _SETTING_FLAGS}


def setting_flags(func: F) -> F:
    """Add the flags of _SETTING_FLAGS to a command."""
    for flag, variable, text in reversed(_SETTING_FLAGS):
        func = click.option(
            flag, variable.lower(), default=None, metavar="VALUE", help=f"{text} [env {variable}]"
        )(func)
    return func


def build_settings(flags: dict[str, Any], **defaults: str) -> Settings:
    """Settings from the environment, then `defaults` (the command's own), then the flags."""
    overrides = {k.upper(): str(v) for k, v in flags.items() if v is not None}
    environ = {**defaults, **os.environ} if defaults else dict(os.environ)
    try:
        settings = load_settings(environ, overrides)
    except ConfigError as exc:
        # A value given as a flag is named as the flag the user typed.
        flag = _FLAG_OF.get(exc.variable) if exc.variable in overrides else None
        fail(ConfigError(flag, exc.value, exc.reason) if flag else exc)
    except BridgeError as exc:
        fail(exc)
    configure_logging(settings.log_format, settings.log_level)
    for name in unknown_variables(environ):
        structlog.get_logger(__name__).warning(
            "config_unknown_variable",
            variable=name,
            hint="not a chorus-bridge setting (a typo?); it is ignored",
        )
    return settings


# Exit statuses (DESIGN.md, "Running it"): 0 and 1 are the command's own answer (for
# `broadcast`: every agent reached, some not), 2 the bridge refused the request.
EXIT_FAILED = 1
EXIT_NO_ANSWER = 3  # NATS unreachable, permission denied, no bridge serving, no report
EXIT_USAGE = 64  # a missing file, a bad flag or variable (sysexits.h EX_USAGE)


def exit_status(exc: BaseException) -> int:
    """The exit status a failure ends a command with."""
    if isinstance(exc, ConfigError | click.UsageError):
        return EXIT_USAGE
    if isinstance(exc, NatsError | BridgeUnavailableError):
        return EXIT_NO_ANSWER
    return EXIT_FAILED


def fail(exc: BaseException) -> Any:
    """One line on stderr (never a password, never a traceback), then the exit status."""
    text = " ".join(str(exc).split()) or "(no detail)"
    click.echo(redact_text(f"chorus-bridge: {type(exc).__name__}: {text}"), err=True)
    sys.exit(exit_status(exc))


class _Commands(click.Group):
    """The command group, with DESIGN.md's exit statuses for usage errors (64, not click's 2)
    and one line for any failure a command did not foresee."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            status = super().main(*args, **kwargs)
        except click.UsageError as exc:
            # One line, as for every other failure; --help has the usage.
            where = f" {exc.ctx.command_path}" if exc.ctx is not None else ""
            click.echo(
                f"chorus-bridge: usage:{where}: {exc.format_message()} (see --help)", err=True
            )
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:  # e.g. a FILE that cannot be opened
            click.echo(f"chorus-bridge: {exc.format_message()}", err=True)
            sys.exit(EXIT_USAGE)
        except click.Abort:
            click.echo("chorus-bridge: aborted", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug: still one line, never a traceback
            fail(exc)
        sys.exit(status if isinstance(status, int) else 0)


def run_until_signal(make: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine until it ends or SIGTERM/SIGINT asks it to stop (it gets the Event)."""

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await make(stop)

    try:
        return asyncio.run(main())
    except BridgeError as exc:
        error: BaseException = exc
    except BaseExceptionGroup as group:  # a TaskGroup's failure
        matched, _ = group.split(BridgeError)
        error = (matched or group).exceptions[0]
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
    except Exception as exc:  # a bug: still one line; BRIDGE_LOG_LEVEL=debug has more
        error = exc
    structlog.get_logger(__name__).debug("command_failed", exc_info=error)
    return fail(error)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="chorus-bridge")
def main() -> None:
    """chorus-bridge: every replica of a Swarm service of agents, on a NATS bus.

    It lists the service's running tasks through the Docker Engine API (falling back to DNS),
    keeps the JetStream KV bucket `chorus_agents` equal to them, announces joins and leaves on
    `chorus.agents.announce`, and delivers council opportunities to every agent, over the bus
    or by HTTP. Configuration comes from environment variables (see README.md); flags override.
    """


@main.command()
@setting_flags
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the embedded nats-server keeps its state (default: a temp dir).",
)
def run(state_dir: Path | None, **flags: Any) -> None:
    """Run the bridge until SIGTERM or SIGINT (then exit 0 after a clean shutdown).

    With NATS_URL unset, an embedded nats-server with JetStream is started on 127.0.0.1
    (port 4222, or a free one when it is taken) and its URL and state directory are logged.
    """
    from bridge.app import nats_for, run_bridge

    settings = build_settings(flags)

    async def serve(stop: asyncio.Event) -> None:
        async with nats_for(settings, state_dir) as url:
            await run_bridge(settings, url, stop)

    run_until_signal(serve)


def _client_settings(nats_url: str | None, prefix: str | None, bucket: str | None) -> Settings:
    flags = {"nats_url": nats_url, "bridge_subject_prefix": prefix, "bridge_kv_bucket": bucket}
    return build_settings(flags, BRIDGE_LOG_FORMAT="console", BRIDGE_LOG_LEVEL="warning")


def client_options(func: F) -> F:
    func = click.option(
        "--inbox-prefix",
        default=None,
        help="Inbox prefix of the NATS user (default: _INBOX.agent for user "
        "agent, _INBOX.bridge for bridge, else _INBOX.coord).",
    )(func)
    func = click.option("--bucket", default=None, help="The agents bucket [env BRIDGE_KV_BUCKET].")(
        func
    )
    func = click.option(
        "--prefix", default=None, help="Subject prefix [env BRIDGE_SUBJECT_PREFIX]."
    )(func)
    return click.option(
        "--nats-url",
        default=None,
        help="NATS server [env NATS_URL, default nats://127.0.0.1:4222].",
    )(func)


@main.command()
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print the agents as a JSON array.")
def agents(
    nats_url: str | None,
    prefix: str | None,
    bucket: str | None,
    inbox_prefix: str | None,
    as_json: bool,
) -> None:
    """Print the agents bucket as a table (or JSON).

    Exit status: 0 printed, 3 NATS or the bucket could not be had (or was denied), 64 usage.
    """
    from bridge.cli.commands import print_agents

    settings = _client_settings(nats_url, prefix, bucket)
    run_until_signal(
        lambda stop: print_agents(settings, as_json=as_json, inbox_prefix=inbox_prefix)
    )


@main.command()
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print each announcement as JSON.")
def watch(
    nats_url: str | None,
    prefix: str | None,
    bucket: str | None,
    inbox_prefix: str | None,
    as_json: bool,
) -> None:
    """Print announcements (joined, updated, left) as they come, until Ctrl-C.

    Exit status: 0 after Ctrl-C, 3 NATS could not be had (or was denied), 64 usage.
    """
    from bridge.cli.commands import watch_announcements

    settings = _client_settings(nats_url, prefix, bucket)
    run_until_signal(
        lambda stop: watch_announcements(settings, stop, as_json=as_json, inbox_prefix=inbox_prefix)
    )


@main.command()
@client_options
@click.argument("file", type=click.File("rb"))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the report.",
)
def broadcast(
    nats_url: str | None,
    prefix: str | None,
    bucket: str | None,
    inbox_prefix: str | None,
    file: Any,
    as_json: bool,
    timeout: float,
) -> None:
    """Send a council opportunity (JSON from FILE, or - for stdin) through a running bridge.

    Prints the report: who got it via the bus, via HTTP, and who did not. Exit status: 0 every
    agent was reached, 1 some were not, 2 the bridge refused the request, 3 no answer could be
    had (NATS unreachable, permission denied, no bridge serving, the bridge failed as it
    broadcast), 64 a usage error.
    """
    from bridge.cli.commands import send_broadcast

    settings = _client_settings(nats_url, prefix, bucket)
    data = file.read()
    status = run_until_signal(
        lambda stop: send_broadcast(
            settings, data, timeout=timeout, as_json=as_json, inbox_prefix=inbox_prefix
        )
    )
    sys.exit(status)


@main.command()
@client_options
@click.argument("opportunity_id", metavar="ID")
@click.option("--watch", is_flag=True, help="Then print each event and the state after it.")
@click.option("--json", "as_json", is_flag=True, help="Print the state (and events) as JSON.")
def council(
    nats_url: str | None,
    prefix: str | None,
    bucket: str | None,
    inbox_prefix: str | None,
    opportunity_id: str,
    watch: bool,
    as_json: bool,
) -> None:
    """Print a council's state: who holds each role (from a running bridge).

    Exit status: 0 printed, 1 the bridge knows no council ID, 2 the bridge refused the
    request, 3 no answer could be had (NATS unreachable, permission denied, no bridge
    serving), 64 a usage error.
    """
    from bridge.cli.council import show_council

    settings = _client_settings(nats_url, prefix, bucket)
    status = run_until_signal(
        lambda stop: show_council(
            settings, opportunity_id, stop, watch=watch, as_json=as_json, inbox_prefix=inbox_prefix
        )
    )
    sys.exit(status)


@main.command()
@click.option(
    "--agents",
    type=click.IntRange(1, 10_000),
    default=34,
    show_default=True,
    help="Simulated agents (tasks of the emulated service).",
)
@click.option(
    "--on-bus",
    type=click.IntRange(0, 10_000),
    default=17,
    show_default=True,
    help="How many of them are also on the bus (the rest are HTTP only).",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep everything running after the broadcast, and print the nats commands "
    "to explore it, until Ctrl-C.",
)
def demo(agents: int, on_bus: int, keep: bool) -> None:
    """The whole story on one machine: discovery, presence, a broadcast, its report.

    Starts an embedded nats-server, an emulated Docker Engine API serving a service of
    AGENTS tasks with loopback addresses, AGENTS simulated agents (ON-BUS of them on NATS),
    and the real bridge; then sends one council opportunity and prints who got it and who
    claimed each role. Ctrl-C stops it cleanly.
    """
    from bridge.devkit.demo import run_demo

    if on_bus > agents:
        fail(click.BadParameter(f"--on-bus {on_bus} is more than --agents {agents}"))
    configure_logging("console", "WARNING")
    if keep:
        result = run_until_signal(lambda stop: run_demo(agents, on_bus, keep=stop))
    else:
        try:
            result = asyncio.run(run_demo(agents, on_bus))
        except KeyboardInterrupt:
            sys.exit(130)
        except BridgeError as exc:
            fail(exc)
    report = result.report
    sys.exit(0 if report and report.success_count == report.total_agents else 1)


@main.command()
@click.option("--prefix", default=None, help="Subject prefix [env BRIDGE_SUBJECT_PREFIX].")
@click.option("--bucket", default=None, help="The agents bucket [env BRIDGE_KV_BUCKET].")
def asyncapi(prefix: str | None, bucket: str | None) -> None:
    """Print the AsyncAPI 3.0 document of every subject, bucket and payload (YAML).

    Generated from the wire models; docs/asyncapi.yaml is its output for the default names.
    """
    from bridge.contract.asyncapi import asyncapi_yaml
    from bridge.contract.names import Names

    settings = _client_settings(None, prefix, bucket)
    click.echo(asyncapi_yaml(Names.from_settings(settings)), nl=False)


@main.command("sim-agent")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on.",
)
@click.option(
    "--agent-id",
    envvar="SIM_AGENT_ID",
    default=None,
    help="The agent's id, e.g. {{.Task.ID}} in a stack [env SIM_AGENT_ID; default: the hostname].",
)
@click.option(
    "--index",
    envvar="SIM_AGENT_INDEX",
    type=click.IntRange(min=0),
    default=None,
    help="Claim core role number INDEX of each opportunity [env SIM_AGENT_INDEX].",
)
@click.option(
    "--endpoint",
    envvar="SIM_AGENT_ENDPOINT",
    default=None,
    help="The endpoint to advertise in presence [env SIM_AGENT_ENDPOINT].",
)
def sim_agent(
    host: str, port: int, agent_id: str | None, index: int | None, endpoint: str | None
) -> None:
    """Run one simulated agent: its HTTP API, and presence/acks on NATS when NATS_URL is set.

    For trying a stack or a bridge against stand-in agents; it is not part of the bridge.
    NATS_URL, NATS_USER/NATS_PASSWORD or NATS_TOKEN, NATS_TLS_CA (NATS_TLS_CERT and
    NATS_TLS_KEY) and BRIDGE_SUBJECT_PREFIX are read as for the bridge.
    """
    from bridge.contract.names import Names
    from bridge.devkit.sim import BusAuth, run_single_agent

    settings = build_settings({}, BRIDGE_LOG_FORMAT="console")
    run_until_signal(
        lambda stop: run_single_agent(
            names=Names.from_settings(settings),
            stop=stop,
            host=host,
            port=port,
            agent_id=agent_id,
            nats_url=settings.nats_url,
            auth=BusAuth(
                user=settings.nats_user,
                password=settings.nats_password,
                token=settings.nats_token,
                tls_ca=settings.nats_tls_ca,
                tls_cert=settings.nats_tls_cert,
                tls_key=settings.nats_tls_key,
            ),
            opportunity_path=settings.opportunity_path,
            endpoint=endpoint,
            index=index,
        )
    )
