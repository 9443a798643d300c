"""The KV wire format: how a key's write, delete and purge look as NATS messages.

A JetStream KV bucket `B` is the stream `KV_B` over the subjects `$KV.B.<key>`; a message there
is a put, unless its headers say otherwise (nats-facts.md §2, read off nats-server 2.15.1):
- `KV-Operation: DEL`: a delete (older revisions stay);
- `KV-Operation: PURGE` with `Nats-Rollup: sub`: a purge (older revisions go);
- `Nats-Marker-Reason` (nats-server 2.11+): a marker the server placed when a key expired
  (`MaxAge`, `Remove`): a purge as far as the bridge is concerned;
- `Nats-TTL: <seconds>`: the message expires on its own (streams that allow message TTLs).
Agents write their presence entry as such messages (they have no JetStream API of their own),
and the bridge writes its batches so: both take the format from here, nowhere else.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "Operation",
    "delete_headers",
    "key_subject",
    "operation_of",
    "stream_of",
    "ttl_header",
]

Operation = Literal["DEL", "PURGE"] | None
_OPERATION = "KV-Operation"
_ROLLUP = "Nats-Rollup"
_TTL = "Nats-TTL"
_MARKER = "Nats-Marker-Reason"


def key_subject(bucket: str, key: str) -> str:
    """The subject of `key` in `bucket`: `$KV.<bucket>.<key>`."""
    return f"$KV.{bucket}.{key}"


def stream_of(bucket: str) -> str:
    """The stream that holds `bucket`: `KV_<bucket>`."""
    return f"KV_{bucket}"


def ttl_header(seconds: int) -> dict[str, str]:
    """The header that makes a message expire after `seconds` (at least 1: the server
    refuses less)."""
    return {_TTL: str(max(1, int(seconds)))}


def delete_headers(*, purge_ttl: int | None = None) -> dict[str, str]:
    """A delete's headers, or with `purge_ttl` a purge's whose marker expires after that
    many seconds; `purge_ttl=0`: a purge whose marker stays."""
    if purge_ttl is None:
        return {_OPERATION: "DEL"}
    headers = {_OPERATION: "PURGE", _ROLLUP: "sub"}
    if purge_ttl > 0:
        headers.update(ttl_header(purge_ttl))
    return headers


def operation_of(headers: dict[str, str] | None) -> Operation:
    """What a message on a key's subject is: None for a put, DEL or PURGE (a purge, or a
    marker the server placed when the key expired; nats-py's `get()` does not know those)."""
    if not headers:
        return None
    op = headers.get(_OPERATION)
    if op in ("DEL", "PURGE"):
        return "DEL" if op == "DEL" else "PURGE"
    return "PURGE" if _MARKER in headers else None
