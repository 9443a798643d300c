"""`chorus-bridge run` as a child process, so a test can pause it (SIGSTOP) like a host would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from bridge.config import Settings
from tests.chaos.support import healthz
from tests.nats_cluster import free_port

__all__ = ["BridgeProcess", "bridge_process"]


class BridgeProcess:
    """A bridge process on the emulated Docker API and a NATS URL; /healthz on `port`."""

    def __init__(self, settings: Settings, nats_url: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("WHOOSH_", "BRIDGE_", "NATS_", "DISCOVERY_"))
            },
            "NATS_URL": nats_url,
            "DISCOVERY_METHOD": "swarm",
            "WHOOSH_DOCKER_HOST": settings.docker_host,
            "WHOOSH_DNS_NAMES": "",
            "WHOOSH_AGENT_PORT": str(settings.agent_port),
            "BRIDGE_SUBJECT_PREFIX": settings.subject_prefix,
            "BRIDGE_KV_BUCKET": settings.kv_bucket,
            "BRIDGE_POLL_INTERVAL": "1",
            "BRIDGE_LISTEN": f"127.0.0.1:{self.port}",
            "BRIDGE_LOG_FORMAT": "console",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def role(self) -> str | None:
        """ "leader" or "standby" from /healthz; None while it does not answer."""
        try:
            _status, body = await healthz(self.port)
        except OSError:
            return None
        role = body.get("role")
        return str(role) if role else None

    async def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 15)
        except TimeoutError:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait)


@contextlib.asynccontextmanager
async def bridge_process(
    settings: Settings,
    nats_url: str,
    log: Path,
) -> AsyncIterator[BridgeProcess]:
    bridge = BridgeProcess(settings, nats_url, log)
    bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()
