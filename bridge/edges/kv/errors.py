"""nats-py's errors, and the server's answers to writes, as ours (`bridge.errors`): mapped
once, here (the package's docstring says which becomes which)."""

from __future__ import annotations

import json

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from bridge.errors import BucketMissingError, NatsError, WriteRefusedError, WrongRevisionError

# The server's codes for a stale expected revision (10071 names the key's last sequence;
# 10164, without it, when another write to the key is still in flight) and a missing stream.
_WRONG_REVISION = {10071, 10164}
_NO_STREAM = 10059


def _mapped(exc: BaseException, what: str) -> NatsError:
    """Our error for a known nats-py error; anything else is re-raised."""
    if isinstance(exc, NatsError):
        return exc
    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.js.errors.BucketNotFoundError):
        return BucketMissingError(f"{what}: the bucket's stream is missing")
    if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError):
        return WrongRevisionError(f"{what}: {exc.description or 'wrong last sequence'}")
    if isinstance(exc, nats.js.errors.APIError):
        return _api_error(exc.err_code or 0, exc.description or repr(exc), what)
    if isinstance(exc, nats.errors.Error | nats.js.errors.Error | OSError | TimeoutError):
        return NatsError(f"{what}: {exc!r}")
    raise exc


def _api_error(code: int, text: str, what: str) -> NatsError:
    if code in _WRONG_REVISION:
        return WrongRevisionError(f"{what}: {text}")
    if code == _NO_STREAM:
        return BucketMissingError(f"{what}: {text}")
    return WriteRefusedError(f"{what}: the server refused it: {text} (error {code})")


def _ack(msg: Msg, what: str) -> int | NatsError:
    """The revision a write got, or why it got none."""
    if msg.headers and msg.headers.get("Status") == "503":
        return BucketMissingError(
            f"{what}: no stream answers (the bucket is missing, or its stream is electing a leader)"
        )
    try:
        answer = json.loads(msg.data)
    except ValueError:
        return WriteRefusedError(f"{what}: unreadable answer {msg.data[:200]!r}")
    error = answer.get("error")
    if isinstance(error, dict):
        return _api_error(int(error.get("err_code", 0)), str(error.get("description")), what)
    return int(answer["seq"])
