"""How a command ends: DESIGN.md's exit statuses, one line on stderr for any failure (never a
traceback, never a password), and a coroutine run until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click
import structlog

from bridge.errors import BridgeError, BridgeUnavailableError, ConfigError, NatsError
from bridge.ops.redact import redact_text

__all__ = [
    "EXIT_FAILED",
    "EXIT_NO_ANSWER",
    "EXIT_USAGE",
    "Commands",
    "exit_status",
    "fail",
    "run_until_signal",
]

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


class Commands(click.Group):
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
