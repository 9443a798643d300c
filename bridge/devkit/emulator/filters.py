"""The `filters` query parameter, parsed and matched the way Docker Engine 20.10 does it.

Docker decodes `filters` as JSON into `map[string]map[string]bool`, falling back to the legacy
`map[string][]string`; when both fail it answers HTTP 500 with Go's own JSON error, so the
messages below mimic Go's `encoding/json` wording. Within one key the values are alternatives
(OR); different keys must all match (AND).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "EngineError",
    "FilterArgs",
    "exact_match",
    "fuzzy_match",
    "match_kv_list",
    "parse_filters",
]

FilterArgs = dict[str, frozenset[str]]
"""Filter key -> accepted values."""


class EngineError(Exception):
    """An error answer of the emulated engine: HTTP status and Docker's `message`."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"HTTP {status}: {message}")


def parse_filters(raw: str | None) -> FilterArgs:
    """Parse a `filters` parameter; EngineError(500) with Go's JSON message when malformed."""
    if not raw:
        return {}
    try:
        decoded = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise EngineError(500, _go_syntax_message(raw, exc)) from None
    if decoded is None:
        return {}
    if not isinstance(decoded, dict):
        raise EngineError(500, _go_type_message(decoded, "map[string]map[string]bool"))
    args: FilterArgs = {}
    for key, values in decoded.items():
        args[key] = _values(values, decoded)
    return args


def _values(values: Any, document: Mapping[str, Any]) -> frozenset[str]:
    if values is None:
        return frozenset()
    if isinstance(values, dict):
        for flag in values.values():
            if not isinstance(flag, bool):
                raise EngineError(500, _go_type_message(flag, "bool"))
        return frozenset(values)
    # The legacy form (lists of strings) is accepted only when the whole document is in it.
    legacy = all(v is None or isinstance(v, list) for v in document.values())
    if legacy and isinstance(values, list) and all(isinstance(v, str) for v in values):
        return frozenset(values)
    raise EngineError(500, _go_type_message(values, "map[string]bool"))


def _go_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _go_type_message(value: Any, go_type: str) -> str:
    return f"json: cannot unmarshal {_go_kind(value)} into Go value of type {go_type}"


# Python's decoder messages, mapped to what Go says at the same spot.
_SYNTAX = {
    "Expecting property name enclosed in double quotes": (
        "looking for beginning of object key string"
    ),
    "Expecting value": "looking for beginning of value",
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
    "Extra data": "after top-level value",
}


def _go_syntax_message(raw: str, exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(raw) or exc.msg.startswith("Unterminated"):
        return "unexpected end of JSON input"
    context = _SYNTAX.get(exc.msg, "looking for beginning of value")
    if exc.msg == "Expecting ',' delimiter" and _innermost_open(raw, exc.pos) == "[":
        context = "after array element"
    return f"invalid character {_go_quote(raw[exc.pos])} {context}"


def _innermost_open(raw: str, pos: int) -> str:
    """The bracket that encloses `pos` ('{' or '['), skipping string contents."""
    stack: list[str] = []
    in_string = escaped = False
    for char in raw[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _go_quote(char: str) -> str:
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    return "'" + json.dumps(char)[1:-1] + "'"


def exact_match(args: FilterArgs, key: str, source: str) -> bool:
    """Go's Args.ExactMatch: true when the key is not filtered or lists `source`."""
    values = args.get(key)
    return not values or source in values


def fuzzy_match(args: FilterArgs, key: str, source: str) -> bool:
    """Go's Args.FuzzyMatch: an exact value, or a value that `source` starts with."""
    values = args.get(key)
    return not values or source in values or any(source.startswith(v) for v in values)


def match_kv_list(args: FilterArgs, key: str, sources: Mapping[str, str]) -> bool:
    """Go's Args.MatchKVList: every `k` or `k=v` value must hold in `sources` (AND)."""
    values = args.get(key)
    if not values:
        return True
    if not sources:
        return False
    for value in values:
        name, sep, wanted = value.partition("=")
        if name not in sources or (sep and sources[name] != wanted):
            return False
    return True
