"""Writes as requests on a bucket's `$KV.` subjects, each answer read here: a revision, or our
error for the server's refusal (nats-py's `publish_async` would never resolve a refused write)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.edges.kv.errors import _ack, _mapped
from bridge.edges.kv.records import Write
from bridge.errors import NatsError


class _Answers:
    """The answers to one batch, in the order of its writes: each write's reply subject ends
    in its index, so answers may come in any order, and a second answer to one write is
    ignored."""

    def __init__(self, bucket: str, writes: Sequence[Write]) -> None:
        self._bucket = bucket
        self._writes = writes
        self._results: list[int | NatsError | None] = [None] * len(writes)
        self._missing = len(writes)
        # Set when every write has its answer.
        self.complete = asyncio.Event()

    async def on_answer(self, msg: Msg) -> None:
        index = int(msg.subject.rpartition(".")[2])
        if self._results[index] is None:
            what = f"writing {self._writes[index].key!r} in {self._bucket!r}"
            self._results[index] = _ack(msg, what)
            self._missing -= 1
            if self._missing == 0:
                self.complete.set()

    def results(self, failure: NatsError | None) -> list[int | NatsError]:
        """Each write's answer; `failure` (or "no answer") for a write that got none."""
        return [r if r is not None else failure or NatsError("no answer") for r in self._results]


async def write_batch(
    nc: NATS,
    bucket: str,
    writes: Sequence[Write],
    timeout: float,
) -> list[int | NatsError]:
    """Write to `bucket` on its `$KV.` subjects and collect each answer: a revision or our
    error, in order (nats-py's publish_async never resolves a write the server refuses, so
    the answers are read here). One deadline of `timeout` seconds for the batch. Needs no
    handle of the bucket: agents that may only publish their own keys use it too."""
    prefix = f"$KV.{bucket}."
    inbox = nc.new_inbox()
    answers = _Answers(bucket, writes)
    failure: NatsError | None = None
    try:
        sub = await nc.subscribe(f"{inbox}.*", cb=answers.on_answer)
    except (nats.errors.Error, OSError) as exc:
        return [_mapped(exc, f"writing to {bucket!r}")] * len(writes)
    try:
        async with asyncio.timeout(timeout):
            for index, write in enumerate(writes):
                await nc.publish(
                    prefix + write.key,
                    write.value or b"",
                    reply=f"{inbox}.{index}",
                    headers=write.headers(),
                )
            if writes:
                await answers.complete.wait()
    except TimeoutError:
        failure = NatsError(f"writing to {bucket!r}: no answer within {timeout:g}s")
    except (nats.errors.Error, OSError) as exc:
        failure = _mapped(exc, f"writing to {bucket!r}")
    finally:
        with contextlib.suppress(nats.errors.Error, OSError):
            await sub.unsubscribe()
    return answers.results(failure)
