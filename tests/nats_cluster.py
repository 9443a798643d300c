"""Real nats-server processes that tests (and bench/recovery.py) can hurt: SIGTERM, kill -9,
SIGSTOP/SIGCONT, start again on the same port with the store kept or wiped; and a cluster of
three on loopback with routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors

from bridge.edges.nats_process import find_nats_server, write_answer_mapping

__all__ = ["NatsCluster", "NatsProcess", "free_port", "nats_cluster", "nats_process", "settled"]


# Every port free_port handed out in this process.
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now and that this process was not given before. The
    kernel may give the port it just released to the next bind to port 0 (seen: a cluster's
    client port equal to its route port), and a cluster asks for nine ports before any server
    binds one."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class NatsProcess:
    """One nats-server with JetStream on 127.0.0.1; its ports stay the same across restarts."""

    def __init__(
        self,
        store: Path,
        *,
        name: str = "n1",
        cluster_port: int | None = None,
        routes: Sequence[int] = (),
    ) -> None:
        self.store, self.name = store, name
        self.port, self.http_port = free_port(), free_port()
        self.cluster_port, self.routes = cluster_port, tuple(routes)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        args = [
            find_nats_server(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.http_port),
            "-js",
            "-sd",
            str(self.store),
            "-n",
            self.name,
            "-c",
            str(write_answer_mapping(self.store.parent / f"{self.name}.conf")),
        ]
        if self.cluster_port is not None:
            args += [
                "--cluster_name",
                "chorus",
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_port}",
                "--routes",
                ",".join(f"nats://127.0.0.1:{p}" for p in self.routes),
            ]
        return args

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self._args(), stdout=out, stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 20.0, *, jetstream: bool = True) -> None:
        """Wait until clients can connect (and JetStream answers, when asked)."""
        async with asyncio.timeout(timeout):
            while True:
                if await self._answers(jetstream):
                    return
                await asyncio.sleep(0.05)

    async def _answers(self, jetstream: bool) -> bool:
        try:
            nc = await nats.connect(
                self.url, connect_timeout=0.5, max_reconnect_attempts=0, allow_reconnect=False
            )
        except (nats.errors.Error, OSError):
            return False
        try:
            if jetstream:
                await nc.jetstream().account_info()
            return True
        except (nats.errors.Error, nats.js.errors.Error, OSError):
            return False
        finally:
            await nc.close()

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the process with `sig` and wait for it to end (SIGKILL after 10 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        if sig == signal.SIGSTOP:
            self.proc.send_signal(signal.SIGCONT)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 10)
        except TimeoutError:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)

    def wipe(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)

    def jsz(self) -> dict[str, Any]:
        """The monitoring /jsz answer (meta leader, streams)."""
        url = f"http://127.0.0.1:{self.http_port}/jsz?streams=true"
        with urllib.request.urlopen(url, timeout=2) as answer:  # loopback only
            data: dict[str, Any] = json.load(answer)
        return data


@contextlib.asynccontextmanager
async def nats_process(store: Path) -> AsyncIterator[NatsProcess]:
    server = NatsProcess(store)
    server.start()
    try:
        await server.ready()
        yield server
    finally:
        await server.stop()


class NatsCluster:
    """Three routed nats-servers (n1, n2, n3) with JetStream clustering."""

    def __init__(self, root: Path) -> None:
        cluster_ports = [free_port() for _ in range(3)]
        self.servers = [
            NatsProcess(
                root / f"n{i + 1}",
                name=f"n{i + 1}",
                cluster_port=cluster_ports[i],
                routes=cluster_ports,
            )
            for i in range(3)
        ]

    @property
    def url(self) -> str:
        """NATS_URL of the cluster (comma-separated)."""
        return ",".join(s.url for s in self.servers)

    @property
    def urls(self) -> list[str]:
        """The servers, as nats.connect() takes them."""
        return [s.url for s in self.servers]

    def by_name(self, name: str) -> NatsProcess:
        return next(s for s in self.servers if s.name == name)

    def alive(self) -> list[NatsProcess]:
        return [s for s in self.servers if s.proc is not None and s.proc.poll() is None]

    async def meta_leader(self) -> str:
        for server in self.alive():
            with contextlib.suppress(OSError, ValueError):
                leader = (await asyncio.to_thread(server.jsz)).get("meta_cluster", {})
                if leader.get("leader"):
                    return str(leader["leader"])
        raise AssertionError("no JetStream meta leader")

    async def stream_leader(self, stream: str, timeout: float = 30.0) -> str:
        """The stream's leader, once it has one: a step-down or a kill may have started an
        election, during which the server answers "no leader" or not at all."""
        try:
            async with asyncio.timeout(timeout):
                while (leader := await self._stream_leader_now(stream)) is None:  # noqa: ASYNC110 - polls the server: no event to wait on
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"stream {stream} had no leader for {timeout:g} s") from None
        return leader

    async def _stream_leader_now(self, stream: str) -> str | None:
        try:
            nc = await nats.connect(self.urls, connect_timeout=1, allow_reconnect=False)
        except (nats.errors.Error, OSError):
            return None
        try:
            info = (await nc.jetstream().stream_info(stream)).cluster
        except (nats.errors.Error, nats.js.errors.Error, OSError):
            return None
        finally:
            await nc.close()
        return str(info.leader) if info is not None and info.leader else None


@contextlib.asynccontextmanager
async def nats_cluster(root: Path) -> AsyncIterator[NatsCluster]:
    cluster = NatsCluster(root)
    for server in cluster.servers:
        server.start()
    try:
        for server in cluster.servers:
            await server.ready(30)
        yield cluster
    finally:
        for server in cluster.servers:
            await server.stop()


async def settled(cluster: NatsCluster, streams: Sequence[str], timeout: float = 30.0) -> None:
    """Wait until every stream has a leader and both followers are current again."""

    async def ok() -> bool:
        try:
            nc = await nats.connect(cluster.urls, connect_timeout=1, allow_reconnect=False)
        except (nats.errors.Error, OSError):
            return False
        try:
            for stream in streams:
                info = (await nc.jetstream().stream_info(stream)).cluster
                if (
                    info is None
                    or not info.leader
                    or len([p for p in info.replicas or [] if p.current and not p.offline]) < 2
                ):
                    return False
            return True
        except (nats.errors.Error, nats.js.errors.Error, OSError):
            return False
        finally:
            await nc.close()

    async with asyncio.timeout(timeout):
        while not await ok():  # noqa: ASYNC110 - polls the server: no event to wait on
            await asyncio.sleep(0.2)
