"""Passwords out of what is shown: URLs without their user info, in logs and messages."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_text", "redact_url"]

# scheme://user:password@host -> scheme://host, wherever it appears in a text.
# Greedy up to the authority's last "@": a password may contain "@" itself.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s'\"]*@")


def redact_url(url: str) -> str:
    """`url` (or a comma-separated list of URLs) without user info: nats://u:pw@h:4222 ->
    nats://h:4222. Anything that does not parse as a URL is returned with user info cut out."""
    shown = []
    for part in url.split(","):
        server = part.strip()
        try:
            parts = urlsplit(server)
        except ValueError:
            shown.append(redact_text(server))
            continue
        if "@" in parts.netloc:
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        shown.append(urlunsplit(parts))
    return ",".join(shown)


def redact_text(text: str) -> str:
    """`text` with the user info of every URL in it removed (a last line of defence for
    messages built from a URL)."""
    return _USERINFO.sub(r"\g<scheme>", text)
