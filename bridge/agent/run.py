"""`run(main)`: an agent program that ends cleanly on SIGTERM (what `docker stop` sends) and
SIGINT (Ctrl-C): `main` is stopped, every `connect_agent` context in it leaves the bus on the
way out (its presence deleted), and the process exits with status 0, without a traceback."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable

from bridge.agent.logs import INFO, say

__all__ = ["run"]


def run(main: Callable[[], Awaitable[None]]) -> None:
    """Run `main()` until it returns, or until SIGTERM or SIGINT stops it (a second signal
    during the leave ends the process at once, status 128 + the signal's number)."""
    asyncio.run(_until_signalled(main))


async def _until_signalled(main: Callable[[], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main())
    stopped: list[signal.Signals] = []

    def stop(signum: signal.Signals) -> None:
        if stopped:  # asked twice: the leave is bounded, but someone wants out now
            os._exit(128 + signum)
        stopped.append(signum)
        say(INFO, "agent_leaving_on_signal", signal=signum.name)
        task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    try:
        await task
    except asyncio.CancelledError:
        if not stopped:
            raise
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
