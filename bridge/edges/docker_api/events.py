"""The daemon's /events stream, asked again whenever it stays quiet (a dead manager is noticed)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec
import requests
import structlog

from bridge.edges.docker_api.failures import is_timeout
from bridge.edges.docker_api.threads import in_thread

__all__ = ["EVENTS_QUIET", "EventStream"]

if TYPE_CHECKING:
    from bridge.edges.docker_api.client import DockerAPI
from bridge.errors import DockerAPIError

log = structlog.get_logger(__name__)

_OBJECT = msgspec.json.Decoder(dict[str, Any])

# Seconds an event stream may stay quiet before it is asked again (at most): a manager that
# died with the connection open (a crashed node drops everything) is noticed within this and
# a connect timeout, sooner than the swarm elects another leader (about 10 s).
EVENTS_QUIET = 5.0


class EventStream:
    """The daemon's events as decoded JSON objects, until the stream breaks.

    Docker sends nothing on a quiet stream, so a read that waits EVENTS_QUIET seconds (or
    `timeout`, when shorter) ends the HTTP response, and the stream is opened again at once
    with `since` set to the daemon's time of that moment: a silent daemon is asked again (a
    hung one then fails to answer, which raises), and no event between the two responses is
    lost. The daemon's time is its `Date` header plus the time elapsed here (so the two clocks
    need not agree), and
    never before the last event read plus 1 ns (so no event comes twice).
    """

    def __init__(self, api: DockerAPI, filters: str) -> None:
        self._api = api
        self._filters = filters
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._daemon_clock: tuple[float, float] | None = None  # (Date, monotonic) at open
        self._last_event_ns = 0  # the daemon's timeNano of the last event read
        self._closed = False

    async def open(self, since: str | None = None) -> None:
        params = {"filters": self._filters}
        if since is not None:
            params["since"] = since
        response = await in_thread(
            lambda: self._api._get(
                "/events", params, stream=True, read_timeout=min(EVENTS_QUIET, self._api._timeout)
            ),
            abandon=lambda late: late.close(),
        )
        if self._closed:
            response.close()
            return
        date = response.headers.get("Date")
        stamp = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
        self._daemon_clock = (stamp, time.monotonic())
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._read, args=(response, loop), name="docker-events", daemon=True
        ).start()

    def _read(self, response: requests.Response, loop: asyncio.AbstractEventLoop) -> None:
        """Reader thread: lines to the queue, then None (quiet) or the error that ended it."""
        end: bytes | BaseException | None
        buffer = b""
        try:
            for chunk in response.iter_content(chunk_size=None):
                if self._closed:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        loop.call_soon_threadsafe(self._queue.put_nowait, line)
            end = DockerAPIError("unreachable", "the Docker daemon closed the event stream")
        except Exception as exc:
            end = None if is_timeout(exc) else self._api._mapped(exc)
        finally:
            response.close()
        if not self._closed:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads
                loop.call_soon_threadsafe(self._queue.put_nowait, end)

    def _since(self) -> str:
        """The daemon's time now, less a second for its Date header's rounding, but never
        before the last event read (which would come again)."""
        assert self._daemon_clock is not None
        stamp, at = self._daemon_clock
        estimate = int((stamp + (time.monotonic() - at) - 1.0) * 1e9)
        since = max(estimate, self._last_event_ns + 1)
        return f"{since // 1_000_000_000}.{since % 1_000_000_000:09d}"

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            item = await self._queue.get()
            if item is None:  # quiet for `timeout` seconds: ask again from now
                await self.open(self._since())
                continue
            if isinstance(item, BaseException):
                raise item
            try:
                event = _OBJECT.decode(item)
            except msgspec.DecodeError as exc:
                raise DockerAPIError(
                    "bad_response",
                    f"the Docker event stream sent a line that is not a JSON object ({exc})",
                ) from exc
            stamp = event.get("timeNano")
            if isinstance(stamp, int):
                self._last_event_ns = max(self._last_event_ns, stamp)
            return event

    def close(self) -> None:
        """Stop reading. The reader thread closes the response itself when its current read
        returns (within `timeout`): closing it from here would wait for that read anyway,
        since the reader holds the response's buffer, and it would block the event loop."""
        self._closed = True
