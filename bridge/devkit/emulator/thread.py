"""The emulator on an event loop of its own, in a background thread, for blocking callers
(the docker SDK's own tests of a call, a script without asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator

from bridge.devkit.emulator.server import DockerEmulator
from bridge.devkit.emulator.state import EmulatedSwarm

__all__ = ["serve_in_thread"]


@contextlib.contextmanager
def serve_in_thread(
    socket_path: str | os.PathLike[str],
    swarm: EmulatedSwarm | None = None,
    *,
    timeout: float = 10.0,
) -> Iterator[DockerEmulator]:
    """Run a DockerEmulator on its own loop in a background thread, for blocking callers."""
    emulator = DockerEmulator(socket_path, swarm)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(emulator.start())
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="docker-emulator", daemon=True)
    thread.start()
    try:
        if not started.wait(timeout) or failure:
            raise RuntimeError(
                f"the Docker emulator did not start on {socket_path}: "
                f"{failure[0] if failure else 'timed out'}"
            )
        yield emulator
    finally:
        if thread.is_alive() and not failure:
            asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()
