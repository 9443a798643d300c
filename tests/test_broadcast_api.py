"""Validation of broadcast requests (DESIGN.md: id, roles, size)."""

from __future__ import annotations

import pytest

from bridge.broadcast_api import validate_request
from bridge.models import CouncilOpportunity, ErrorReply

GOOD = (b'{"id": "council-42", "project": "whoosh", "title": "Build the API", "roles": '
        b'[{"name": "tpm", "core": true}, {"name": "qa-engineer", "core": false}], '
        b'"deadline": "2026-11-27T01:00:00Z", "details": {}}')


def test_design_example_is_accepted() -> None:
    """The opportunity of DESIGN.md decodes with its roles."""
    opp = validate_request(GOOD)
    assert isinstance(opp, CouncilOpportunity)
    assert opp.id == "council-42"
    assert [r.name for r in opp.roles if r.core] == ["tpm"]


@pytest.mark.parametrize(("body", "field", "says"), [
    (b"not json", "$", "not valid JSON"),
    (b'{"id": 42, "roles": [{"name": "tpm"}]}', "$.id", "Expected `str`"),
    (b'{"id": "bad id!", "roles": [{"name": "tpm"}]}', "$.id", "[A-Za-z0-9_-]{1,128}"),
    (b'{"id": "' + b"x" * 129 + b'", "roles": [{"name": "tpm"}]}', "$.id", "{1,128}"),
    (b'{"id": "c1", "roles": []}', "$.roles", "length >= 1"),
    (b'{"id": "c1"}', "$", "missing required field `roles`"),
    (b'{"id": "c1", "roles": [{"name": ""}]}', "$.roles[0].name", "length >= 1"),
    (b'{"id": "c1", "roles": [{"name": "tpm", "core": "yes"}]}', "$.roles[0].core", "bool"),
    (b'[1, 2]', "$", "Expected `object`"),
])
def test_bad_requests_name_the_field(body: bytes, field: str, says: str) -> None:
    """A request that breaks the schema is refused with what is wrong and where."""
    reply = validate_request(body)
    assert isinstance(reply, ErrorReply)
    assert reply.field == field
    assert says in reply.error


def test_larger_than_64_kib_is_refused() -> None:
    """A 1 MiB request is refused before it is decoded."""
    filler = b"a" * (1 << 20)
    body = b'{"id": "c1", "roles": [{"name": "tpm"}], "details": {"x": "' + filler + b'"}}'
    reply = validate_request(body)
    assert isinstance(reply, ErrorReply)
    assert "64 KiB" in reply.error and reply.field == "$"
