"""A minimal NATS client that connects from a chosen source address, for the callout tests.

nats-py cannot choose the local address of its connection (no public option; its transport
calls asyncio.open_connection without local_addr), and the callout admits an agent by that
address. Linux lets a socket bind any 127.x.y.z and connect to a server on 127.0.0.1, so this
client speaks the NATS text protocol itself (INFO, CONNECT, PING/PONG, SUB, PUB, MSG, -ERR)
over asyncio streams opened with local_addr. Only what the tests need: no reconnect; headers
(HPUB, HMSG) and no-responders statuses when connected with `headers=True`; TLS when given an
SSL context, upgraded after the server's INFO as nats-py does (the stack's server says
`tls_required` there, and the handshake follows on the same connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator

TIMEOUT = 5.0


class Refused(Exception):
    """The server closed the connection at CONNECT (the text of its -ERR)."""


class RawClient:
    """One connection. `sync()` is a PING/PONG round trip that returns the -ERR lines the
    server sent since the previous one (permission violations, in order)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._errors: list[str] = []
        self._pongs: asyncio.Queue[None] = asyncio.Queue()
        self._msgs: dict[int, asyncio.Queue[tuple[str, bytes]]] = {}
        self._sid = 0
        self._task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    @property
    def source(self) -> str:
        return str(self._writer.get_extra_info("sockname")[0])

    @property
    def tls_version(self) -> str | None:
        """The connection's TLS version ("TLSv1.3"), None in the clear."""
        ssl_object = self._writer.get_extra_info("ssl_object")
        return str(ssl_object.version()) if ssl_object is not None else None

    async def _handshake(
        self, connect: dict[str, object], tls: ssl.SSLContext | None, host: str
    ) -> None:
        async with asyncio.timeout(TIMEOUT):
            info = await self._reader.readline()
            if not info.startswith(b"INFO "):
                raise Refused(f"no INFO from the server: {info[:80]!r}")
            if tls is not None:
                # The writer's transport becomes the TLS one; the reader is fed by it.
                await self._writer.start_tls(tls, server_hostname=host)
            self._writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            await self._writer.drain()
            while True:
                line = (await self._reader.readline()).strip()
                if line == b"PONG":
                    break
                if line.startswith(b"-ERR") or not line:
                    raise Refused(line.decode() or "connection closed")
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while line := await self._reader.readline():
                await self._dispatch(line.rstrip(b"\r\n"))
        # OSError: a reset, or over TLS an ssl.SSLError of a server killed mid-record.
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()

    async def _dispatch(self, line: bytes) -> None:
        if line == b"PING":
            self._writer.write(b"PONG\r\n")
        elif line == b"PONG":
            self._pongs.put_nowait(None)
        elif line.startswith(b"-ERR"):
            self._errors.append(line[5:].decode().strip("'"))
        elif line.startswith((b"MSG ", b"HMSG ")):
            parts = line.split()
            # HMSG <subject> <sid> [reply] <header bytes> <total bytes>: headers come first.
            skip = int(parts[-2]) if line.startswith(b"HMSG ") else 0
            payload = await self._reader.readexactly(int(parts[-1]) + 2)
            queue = self._msgs.get(int(parts[2]))
            if queue is not None:
                queue.put_nowait((parts[1].decode(), payload[skip:-2]))

    async def subscribe(self, subject: str) -> int:
        self._sid += 1
        self._msgs[self._sid] = asyncio.Queue()
        self._writer.write(f"SUB {subject} {self._sid}\r\n".encode())
        await self._writer.drain()
        return self._sid

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        head = f"PUB {subject} {reply + ' ' if reply else ''}{len(payload)}\r\n".encode()
        self._writer.write(head + payload + b"\r\n")
        await self._writer.drain()

    async def hpublish(
        self, subject: str, headers: dict[str, str], payload: bytes = b"", reply: str = ""
    ) -> None:
        """PUB with NATS headers (the connection must have been made with `headers=True`)."""
        lines = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
        head = f"NATS/1.0\r\n{lines}\r\n".encode()
        size = f"{len(head)} {len(head) + len(payload)}"
        command = f"HPUB {subject} {reply + ' ' if reply else ''}{size}\r\n".encode()
        self._writer.write(command + head + payload + b"\r\n")
        await self._writer.drain()

    async def next_msg(self, sid: int, timeout: float = TIMEOUT) -> tuple[str, bytes]:
        async with asyncio.timeout(timeout):
            return await self._msgs[sid].get()

    async def sync(self) -> list[str]:
        self._writer.write(b"PING\r\n")
        await self._writer.drain()
        async with asyncio.timeout(TIMEOUT):
            await self._pongs.get()
        errors, self._errors = self._errors, []
        return errors

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._writer.close()
        try:
            # Bounded: over TLS the close waits for the server's close_notify.
            async with asyncio.timeout(TIMEOUT):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()
        except OSError:  # ConnectionError, or ssl.SSLError over TLS
            pass


@contextlib.asynccontextmanager
async def raw_connect(
    port: int,
    *,
    source: str,
    user: str,
    password: str,
    name: str = "",
    host: str = "127.0.0.1",
    headers: bool = False,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[RawClient]:
    """A client connected from `source` (a loopback address); Refused if the server says no.
    `headers`: the client speaks NATS headers and asks for no-responders statuses. `tls`: the
    connection is upgraded after INFO, the server verified as `host` (ssl.SSLError when its
    certificate does not verify; OSError when the server closes it during the handshake);
    TimeoutError after TIMEOUT seconds without a connection or an answer."""
    # Bounded as nats-py's connect_timeout bounds it: a SYN that a listener with a full accept
    # queue dropped is sent again only after 1, 2, 4 ... s.
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    client = RawClient(reader, writer)
    try:
        await client._handshake(
            {
                "verbose": False,
                "pedantic": False,
                "user": user,
                "pass": password,
                "name": name,
                "lang": "raw",
                "version": "0",
                "protocol": 1,
                "headers": headers,
                "no_responders": headers,
            },
            tls,
            host,
        )
        yield client
    finally:
        await client.close()
