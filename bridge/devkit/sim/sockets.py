"""Listening sockets for many loopback addresses on one shared port, and the fd limit they need."""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
from collections.abc import Sequence

import structlog

from bridge.devkit.sim.errors import SimulationError

__all__ = ["bind_all", "close_all", "ensure_fd_limit"]

log = structlog.get_logger(__name__)

# Another process can hold the chosen port on one of our addresses (or on 0.0.0.0):
# then the whole set is rebound on a new port.
BIND_ATTEMPTS = 8
# Descriptors beyond the listening sockets: NATS connections, the bridge's own client
# sockets in a demo, files, the event loop.
FD_MARGIN = 256
LISTEN_BACKLOG = 128


def ensure_fd_limit(listening: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards the hard limit when `listening` sockets need it."""
    # Each agent may also hold one accepted connection and a client may open one to it.
    wanted = 3 * listening + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted or soft == resource.RLIM_INFINITY:
        return
    new_soft = hard if hard == resource.RLIM_INFINITY else min(hard, max(wanted, soft))
    if new_soft > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        log.info("fd_limit_raised", soft=new_soft, was=soft, hard=hard)
    if new_soft != resource.RLIM_INFINITY and new_soft < listening + FD_MARGIN:
        raise SimulationError(
            f"{listening} simulated agents need about {listening + FD_MARGIN} file descriptors "
            f"but the limit is {new_soft}; raise it (ulimit -n) or simulate fewer agents"
        )


def _listen(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        # Listening now (not when the site starts) makes a port clash show up here, at bind
        # time, where it can be retried on another port.
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_on(addresses: Sequence[str], port: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        for address in addresses:
            socks.append(_listen(address, port))
            if port == 0:
                port = socks[0].getsockname()[1]
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def bind_all(addresses: Sequence[str], port: int | None) -> tuple[int, list[socket.socket]]:
    """Bound sockets, one per address, all on one port (port=None: a free one, chosen once).

    The free port is found by binding the first address to port 0; if another process holds
    that port on a later address, every socket is closed and a new port is tried.
    """
    attempts = BIND_ATTEMPTS if port is None else 1
    last: OSError | None = None
    for _ in range(attempts):
        try:
            socks = _bind_on(addresses, port or 0)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise SimulationError(f"cannot listen on loopback addresses: {exc}") from exc
            last = exc
            continue
        chosen = socks[0].getsockname()[1] if socks else (port or 0)
        return chosen, socks
    where = f"port {port}" if port else "a free port"
    raise SimulationError(
        f"cannot listen on {where} for {len(addresses)} loopback addresses "
        f"({last}); choose another base address or port"
    )


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()
