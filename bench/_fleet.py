"""Simulated agents in a process of their own, for the broadcast benchmarks (not a benchmark).

    python bench/_fleet.py --agents 1000 --base 127.5.0.1 [--delay 0.01]
    python bench/_fleet.py --agents 10000 --base 127.6.0.1 --on-bus 10000 --connections 20 \\
        --nats-url nats://127.0.0.1:4222 --emulator-socket /tmp/x/docker.sock

Prints `READY <port>` on stdout once every agent listens (and, on the bus, has written its
presence). With --emulator-socket it also serves an emulated Docker Engine whose service's
tasks are these agents (their addresses and task ids), as `chorus-bridge demo` wires them.
Runs until its stdin closes (the benchmark that started it is gone), SIGTERM or SIGINT, or
--max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from pathlib import Path

from common import quiet_logs

from bridge.contract.messages import CouncilOpportunity
from bridge.contract.names import Names
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.devkit.sim import SimFleet, allocate_addresses
from bridge.devkit.sim.agent import Behaviour, ClaimPolicy, SimAgent, claim_core_role


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--base", required=True, help="first loopback address")
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="seconds each agent takes to answer an HTTP opportunity",
    )
    parser.add_argument("--on-bus", type=int, default=0)
    parser.add_argument("--connections", type=int, default=None)
    parser.add_argument("--nats-url", default=None)
    parser.add_argument("--prefix", default="chorus")
    parser.add_argument("--emulator-socket", default=None)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument(
        "--claims-for",
        default=None,
        metavar="PREFIX",
        help="agents on the bus claim every role of each opportunity whose id starts with "
        "PREFIX, as requests on their own inboxes (others: no claim)",
    )
    return parser


def _every_role_of(prefix: str | None) -> ClaimPolicy:
    if prefix is None:
        return claim_core_role  # the fleet's usual agents: agent i claims core role i

    def every_role(agent: SimAgent, opportunity: CouncilOpportunity) -> list[str]:
        if not opportunity.id.startswith(prefix):
            return []
        roles = [role.name for role in opportunity.roles]
        start = agent.index % len(roles)  # agents start at different roles, as in a race
        return roles[start:] + roles[:start]

    return every_role


def _stop_on_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def wait() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    # A daemon thread: a blocked read must not keep the process alive after a signal.
    threading.Thread(target=wait, name="stdin-eof", daemon=True).start()


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    _stop_on_eof(loop, stop)
    names = Names(prefix=args.prefix, agents_bucket=f"{args.prefix}_agents")
    behaviours: dict[int, Behaviour] = (
        dict.fromkeys(range(args.agents), "slow") if args.delay > 0 else {}
    )
    async with contextlib.AsyncExitStack() as stack:
        task_ids = None
        if args.emulator_socket:
            swarm = EmulatedSwarm()
            task_ids = swarm.add_tasks(
                args.agents, addresses=allocate_addresses(args.agents, args.base)
            )
            await stack.enter_async_context(DockerEmulator(Path(args.emulator_socket), swarm))
        fleet = await stack.enter_async_context(
            SimFleet(
                args.agents,
                on_bus=args.on_bus,
                nats_url=args.nats_url,
                names=names,
                base=args.base,
                behaviours=behaviours,
                slow_delay=args.delay,
                task_ids=task_ids,
                connections=args.connections,
                claim_policy=_every_role_of(args.claims_for),
                ask_claims=args.claims_for is not None,
            )
        )
        print(f"READY {fleet.port}", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.max_seconds):
                await stop.wait()


def main() -> None:
    quiet_logs()
    asyncio.run(serve(_parser().parse_args()))


if __name__ == "__main__":
    main()
