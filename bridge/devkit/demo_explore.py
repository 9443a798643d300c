"""What `chorus-bridge demo` leaves a newcomer to try once it is up: the nats CLI's commands
and chorus-bridge's own against the running demo, the council's kill and heal, and the
bridge's HTTP."""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["explore", "own_command"]

Say = Callable[[str], None]

_NEXT = '{"id": "council-43", "roles": [{"name": "tpm", "core": true}]}'
_NATS_COMMANDS = (
    "kv ls chorus_agents",
    "kv get chorus_agents {first_id}",
    "kv watch chorus_presence",
    "kv get chorus_bridge leader",
    "sub chorus.agents.announce",
    "sub 'chorus.council.>'",
    "kv ls chorus_councils",
    "kv get chorus_councils council-42.tpm",
    "sub chorus.council.council-42.events",
    """req chorus.bridge.council '{"opportunity_id": "council-42"}'""",
    "micro ls",
    "micro stats chorus-bridge",
    f"req chorus.bridge.broadcast '{_NEXT}'",
)


def own_command() -> str:
    """How to run chorus-bridge from another terminal: the path of this very command when it
    is not on PATH (a venv that is not activated), else its name."""
    found = shutil.which("chorus-bridge")
    me = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if (
        me is not None
        and me.name == "chorus-bridge"
        and (found is None or Path(found).resolve() != me)
    ):
        return shlex.quote(str(me))
    return "chorus-bridge" if found else f"{shlex.quote(sys.executable)} -m bridge"


def explore(url: str, http_port: int | None, first_id: str, say: Say) -> None:
    """The commands to explore the running demo with."""
    command = own_command()
    lines = [
        "",
        "The demo keeps running until Ctrl-C. Explore it with the nats CLI "
        "(natscli, https://github.com/nats-io/natscli):",
    ]
    lines += [f"  nats --server {url} " + c.replace("{first_id}", first_id) for c in _NATS_COMMANDS]
    lines += [
        "or with these commands:",
        f"  NATS_URL={url} {command} agents",
        f"  NATS_URL={url} {command} watch",
        f"  echo '{_NEXT}' | NATS_URL={url} {command} broadcast -",
        f"  NATS_URL={url} {command} council council-42 --watch",
        "and a newcomer's test of the council: type `kill` and Enter here to kill the holder "
        "of tpm (`kill AGENT_ID` for another): the council degrades, then an idle agent takes "
        "the role and it is active again (watch it with the council command above)",
        f"and the bridge's own HTTP: http://127.0.0.1:{http_port}/healthz and /metrics",
    ]
    for line in lines:
        say(line)
