"""A real HAProxy with the stack's docker-api config, a gate that sees what reaches the daemon,
and a raw HTTP/1.1 client, for tests/test_docker_api_proxy.py.

    client --TCP 127.0.0.1--> haproxy (deploy/docker-api/haproxy.cfg) --unix--> DaemonGate
           --unix--> the daemon (the emulator, or a real dockerd)

The gate records every request head that reaches it: that is what the daemon would have seen.
It forwards only the requests the proxy is meant to let through (its own, independent reading
of the rule), so a request that leaks through a broken proxy is recorded and fails the test
without ever reaching a real daemon.

Requests are written as raw bytes, never through an HTTP library that would normalise them:
the point is to send what a hostile client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = [
    "CONFIG",
    "IO_DEADLINE",
    "DaemonGate",
    "Req",
    "Response",
    "haproxy_binary",
    "request",
    "running_haproxy",
    "send",
]

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "docker-api" / "haproxy.cfg"
# The gate's own reading of DESIGN.md's rule (GET and HEAD of five paths, raw, no body).
_ALLOWED_TARGET = re.compile(rb"(/v1\.[0-9]+)?/(_ping|version|info|tasks|events)(\?.*)?")
_BODY_OR_UPGRADE = (b"content-length", b"transfer-encoding", b"upgrade")
START_DEADLINE = 10.0
IO_DEADLINE = 10.0


def haproxy_binary() -> str | None:
    """The haproxy command (Debian's `haproxy` package), if installed."""
    return shutil.which("haproxy")


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request head that reached the gate, i.e. the daemon."""

    method: bytes
    target: bytes
    forwarded: bool


def _parse_head(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes]]:
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    method, target = (parts[0], parts[1]) if len(parts) == 3 else (line, b"")
    headers: dict[bytes, bytes] = {}
    for field in rest.split(b"\r\n"):
        name, sep, value = field.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


def _allowed(method: bytes, target: bytes, headers: dict[bytes, bytes]) -> bool:
    return (
        method in (b"GET", b"HEAD")
        and _ALLOWED_TARGET.fullmatch(target) is not None
        and not any(name in headers for name in _BODY_OR_UPGRADE)
    )


class DaemonGate:
    """A unix socket in front of a daemon's socket: records each request head, forwards the
    allowed ones, and closes the connection at the first one that should never have come."""

    def __init__(self, path: Path, upstream: str) -> None:
        self.path = path
        self.upstream = upstream
        self.seen: list[Seen] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DaemonGate:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            # Connections still open (haproxy keeps idle ones to its server) end here; a handler
            # that ends cancelled would be logged as an error by asyncio's stream callback.
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            pass  # the gate is closing (the only canceller): end quietly
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        back = asyncio.create_task(_pump(up_reader, writer))
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    break
                method, target, headers = _parse_head(head)
                forward = _allowed(method, target, headers)
                self.seen.append(Seen(method, target, forward))
                if not forward:
                    return  # closed at once: haproxy answers its client 502
                up_writer.write(head)
                await up_writer.drain()
            # The client is done sending: the answer in progress still comes back.
            with contextlib.suppress(OSError):
                await asyncio.wait_for(asyncio.shield(back), IO_DEADLINE)
        except (OSError, TimeoutError):
            pass
        finally:
            back.cancel()
            await asyncio.gather(back, return_exceptions=True)
            for w in (up_writer, writer):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def running_haproxy(binary: str, socket_path: Path, log: Path) -> AsyncIterator[int]:
    """haproxy with the repository's config, on 127.0.0.1 (the port yielded), in front of
    `socket_path`; stopped (SIGTERM, then SIGKILL) on exit. Its log goes to `log`."""
    port = free_port()
    env = {
        **os.environ,
        "DOCKER_API_BIND": f"127.0.0.1:{port}",
        "DOCKER_API_SOCKET": str(socket_path),
    }
    out = await asyncio.to_thread(log.open, "wb")
    try:
        process = await asyncio.create_subprocess_exec(
            binary, "-db", "-f", str(CONFIG), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    finally:
        out.close()
    try:
        await _until_accepting(process, port, log)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), START_DEADLINE)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _until_accepting(process: asyncio.subprocess.Process, port: int, log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_DEADLINE
    while not await _accepts(port):
        if process.returncode is not None or loop.time() > deadline:
            text = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"haproxy did not start: {text[-2000:]}")
        await asyncio.sleep(0.05)


# --- a raw HTTP/1.1 client --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Req:
    """One request as raw bytes; `head`: its answer has no body; `stream`: read its answer's
    head only (GET /events never ends)."""

    raw: bytes
    head: bool = False
    stream: bool = False


def request(
    method: str,
    target: str,
    *,
    headers: tuple[str, ...] = (),
    version: str = "HTTP/1.1",
    body: bytes = b"",
    close: bool = True,
) -> Req:
    """One request, byte for byte as given (nothing is encoded or cleaned up)."""
    lines = [f"{method} {target} {version}", "Host: docker", *headers]
    if close:
        lines.append("Connection: close")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    return Req(raw, head=method == "HEAD", stream=target.split("?")[0].endswith("/events"))


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def _read_response(reader: asyncio.StreamReader, req: Req) -> Response | None:
    """The next response, or None when the connection ended first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, sep, value in (f.partition(":") for f in fields)
        if sep
    }
    status = int(status_line.split(" ")[1])
    if req.stream or req.head or status in (204, 304):
        return Response(status, headers, b"")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return Response(status, headers, body)


async def send(connect: tuple[str, int] | Path, batches: list[list[Req]]) -> list[Response]:
    """On one connection: write each batch of requests at once (several = pipelined), then
    read an answer to each. Stops at the first answer that does not come (connection closed)."""
    if isinstance(connect, Path):
        reader, writer = await asyncio.open_unix_connection(str(connect))
    else:
        reader, writer = await asyncio.open_connection(*connect)
    answers: list[Response] = []
    try:
        async with asyncio.timeout(IO_DEADLINE):
            for batch in batches:
                writer.write(b"".join(req.raw for req in batch))
                await writer.drain()
                for req in batch:
                    answer = await _read_response(reader, req)
                    if answer is None:
                        return answers
                    answers.append(answer)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return answers
