"""The `chorus-bridge` command: run, agents, watch, broadcast, council, demo, asyncapi."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from bridge.cli.exits import Commands, fail, run_until_signal
from bridge.cli.options import build_settings, client_options, client_settings, setting_flags
from bridge.contract.messages import is_opportunity_id
from bridge.errors import BridgeError
from bridge.ops.logs import configure_logging

__all__ = ["main"]


@click.group(
    cls=Commands,
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

    Exit status: 0 after SIGTERM or SIGINT, 1 the embedded nats-server could not be kept
    running, 3 NATS could not be reached, 64 a bad variable or flag.
    """
    from bridge.app import nats_for, run_bridge

    settings = build_settings(flags)

    async def serve(stop: asyncio.Event) -> None:
        async with nats_for(settings, state_dir) as url:
            await run_bridge(settings, url, stop)

    run_until_signal(serve)


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

    settings = client_settings(nats_url, prefix, bucket)
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

    settings = client_settings(nats_url, prefix, bucket)
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

    settings = client_settings(nats_url, prefix, bucket)
    data = file.read()
    status = run_until_signal(
        lambda stop: send_broadcast(
            settings, data, timeout=timeout, as_json=as_json, inbox_prefix=inbox_prefix
        )
    )
    sys.exit(status)


def _opportunity_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """An id that no broadcast could have: a usage error, not a council the bridge lacks."""
    if not is_opportunity_id(value):
        raise click.BadParameter(
            f"{value!r} is no opportunity id: 1 to 128 letters, digits, '-' or '_'"
        )
    return value


@main.command()
@client_options
@click.argument("opportunity_id", metavar="ID", callback=_opportunity_id)
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

    settings = client_settings(nats_url, prefix, bucket)
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
    help="Keep everything running after the broadcast, print the nats CLI's and chorus-bridge's "
    "commands to explore it, and read `kill` (or `kill AGENT_ID`) on stdin: a holder's task "
    "leaves, the council degrades, an idle agent takes the role; until Ctrl-C.",
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
        raise click.BadParameter(
            f"{on_bus} is more than --agents {agents}",
            ctx=click.get_current_context(),
            param_hint="'--on-bus'",
        )
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

    settings = client_settings(None, prefix, bucket)
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
