"""`python -m bridge.devkit.emulator`: serve an emulated swarm on a unix socket until SIGTERM
or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

from bridge.devkit.emulator.server import DockerEmulator
from bridge.devkit.emulator.state import EmulatedSwarm

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.devkit.emulator",
        description="Serve an emulated Docker Engine API (swarm manager) on a unix socket.",
    )
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--tasks", type=int, default=34, help="running tasks (default 34)")
    parser.add_argument("--service", default="CHORUS_chorus", help="service name")
    parser.add_argument("--network", default="chorus_default", help="overlay network name")
    parser.add_argument(
        "--subnet", default="127.10.0.0/16", help="subnet the task addresses come from (loopback)"
    )
    parser.add_argument(
        "--worker", action="store_true", help="act as a worker node (the task list answers 503)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible IDs")
    parser.add_argument(
        "--churn",
        type=int,
        default=0,
        metavar="N",
        help="replace the N least recently changed tasks before serving each "
        "task list (a fleet that never stands still; default 0)",
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    swarm = EmulatedSwarm(
        args.service, args.network, args.subnet, manager=not args.worker, seed=args.seed
    )
    swarm.add_tasks(args.tasks)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with DockerEmulator(args.socket, swarm, churn=args.churn):
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the flags and serve until a signal arrives."""
    asyncio.run(_serve(_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
