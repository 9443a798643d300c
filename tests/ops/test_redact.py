"""No password in what is shown: URLs lose their user info."""

from __future__ import annotations

import pytest
import structlog

from bridge.ops.logs import redact_urls
from bridge.ops.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://ops:pw@127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://tok3n@nats:4222", "nats://nats:4222"),
        ("nats://ops:p@ss@nats:4222", "nats://nats:4222"),
        ("nats://a:b@h1:1, tls://c:d@h2:2", "nats://h1:1,tls://h2:2"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    """Each server of a NATS_URL is shown without user and password."""
    assert redact_url(url) == shown


def test_redact_text_cleans_every_url_in_a_message() -> None:
    """A message with URLs in it keeps everything but their user info."""
    text = "cannot connect to nats://ops:p@ss@h:1 (or nats://a:b@h2:2/x), 'tls://t@h3:3'"
    assert redact_text(text) == "cannot connect to nats://h:1 (or nats://h2:2/x), 'tls://h3:3'"


def test_log_lines_carry_no_password() -> None:
    """The log processor removes user info from every string field."""
    event = redact_urls(
        structlog.get_logger(),
        "info",
        {"event": "nats_connected", "url": "nats://ops:pw@h:1", "n": 3},
    )
    assert event == {"event": "nats_connected", "url": "nats://h:1", "n": 3}
