"""How long the NATS auth callout makes an agent's connect: 1,000 connects, p50 and p99.

A real nats-server runs nats-callout.conf (requests sealed to the bridge's xkey, as the stack
ships it), and `chorus-bridge run` in its own process answers the callout: discovery method
`dns` with 10 known endpoints on 127.7.0.1-10, so its agents bucket holds 10 agents at those
addresses (no Docker, and no HTTP is ever sent to them). Each connect opens a TCP connection
from one of those addresses, sends CONNECT as the shared `agent` user and is timed until the
server's PONG: the server has then sent the request, the bridge has verified, decided, signed
and sealed its answer, and the server has checked it and registered the user.

Baseline, in the same run and interleaved one for one: the same connect, by the same client,
as the static `coordinator` user (in the callout's auth_users: no callout). A second server
and bridge without xkey (requests in the clear) show what the sealing costs.

Target: the p99 of a callout connect under 100 ms (the server gives a callout 2 s).

    python bench/callout.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from common import REPO, Bench, Series, arguments, child_process, main, quiet_logs

from tests.callout_client import Refused, raw_connect
from tests.callout_support import AGENT_PASSWORD, PASSWORDS, callout_server, make_keys, port_of

SOURCES = [f"127.7.0.{i}" for i in range(1, 11)]
LIMIT_P99_S = 0.100


def p99(series: Series) -> float:
    ordered = sorted(series.seconds)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else math.nan


async def connect_once(port: int, source: str, user: str, password: str) -> float:
    started = time.perf_counter()
    async with raw_connect(port, source=source, user=user, password=password):
        return time.perf_counter() - started


def bridge_env(url: str, keys: Path, *, xkey: bool) -> dict[str, str]:
    own = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIDGE_", "WHOOSH_", "NATS_", "DISCOVERY_", "DOCKER_"))
    }
    return {
        **own,
        "DISCOVERY_METHOD": "dns",
        "WHOOSH_DNS_NAMES": "",
        "WHOOSH_KNOWN_ENDPOINTS": ",".join(f"http://{s}:8080" for s in SOURCES),
        "NATS_URL": url,
        "NATS_USER": "bridge",
        "NATS_PASSWORD": PASSWORDS["BRIDGE_PASS"],
        "BRIDGE_LISTEN": "127.0.0.1:0",
        "BRIDGE_LOG_LEVEL": "warning",
        "BRIDGE_AUTH_CALLOUT": "true",
        "BRIDGE_CALLOUT_ISSUER_SEED": str(keys / "issuer.seed"),
        "BRIDGE_CALLOUT_AGENT_PASSWORD_FILE": str(keys / "agent.password"),
        **({"BRIDGE_CALLOUT_XKEY_SEED": str(keys / "xkey.seed")} if xkey else {}),
    }


async def until_admitted(port: int, timeout: float = 30.0) -> None:
    """The bridge is up and its watch has the 10 agents: every source is admitted."""
    deadline = time.monotonic() + timeout
    for source in SOURCES:
        while True:
            try:
                await connect_once(port, source, "agent", AGENT_PASSWORD)
                break
            except Refused:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def callout_stack(directory: Path, *, xkey: bool) -> AsyncIterator[int]:
    """A nats-server running nats-callout.conf and a bridge answering its callout; the port."""
    files = make_keys(directory / "keys")  # makes `directory` too
    async with callout_server(directory, files, xkey=xkey) as server:
        env = bridge_env(server.url, directory / "keys", xkey=xkey)
        async with child_process(
            "bridge",
            [sys.executable, "-m", "bridge", "run"],
            env=env,
            stderr_to=directory / "bridge.log",
        ):
            await until_admitted(port_of(server))
            yield port_of(server)


async def run() -> int:
    args = arguments(__doc__ or "")
    quiet_logs()
    reps, warmup = (200, 20) if args.quick else (1000, 50)
    bench = Bench("NATS auth callout: connect time")
    static = Series("static user (coordinator), no callout")
    sealed = Series("agent through the callout (xkey)")
    plain = Series("agent through the callout (no xkey)")
    with tempfile.TemporaryDirectory(prefix="bench-callout-") as tmp:
        async with (
            callout_stack(Path(tmp) / "xkey", xkey=True) as port,
            callout_stack(Path(tmp) / "plain", xkey=False) as plain_port,
        ):
            bench.say(
                f"{len(SOURCES)} agents; {reps} connects of each kind, interleaved, "
                f"after {warmup} warm-up"
            )
            for i in range(warmup + reps):
                source = SOURCES[i % len(SOURCES)]
                times = (
                    await connect_once(port, "127.0.0.1", "coordinator", PASSWORDS["COORD_PASS"]),
                    await connect_once(port, source, "agent", AGENT_PASSWORD),
                    await connect_once(plain_port, source, "agent", AGENT_PASSWORD),
                )
                if i >= warmup:
                    for series, seconds in zip((static, sealed, plain), times, strict=True):
                        series.add(seconds)
    bench.table("connect until PONG", [static, sealed, plain], static)
    for series in (static, sealed, plain):
        bench.info(
            series.name,
            f"p50 {series.median * 1000:.2f} ms, p99 {p99(series) * 1000:.2f} ms, n {series.n}",
        )
    bench.info(
        "added by the callout, xkey (p50 difference)",
        f"{(sealed.median - static.median) * 1000:.2f} ms",
    )
    bench.target(
        "callout connect p99 < 100 ms",
        p99(sealed) < LIMIT_P99_S,
        f"p99 {p99(sealed) * 1000:.2f} ms (xkey)",
    )
    return bench.exit_code()


if __name__ == "__main__":
    assert (REPO / "nats-callout.conf").exists()
    main(run, limit=600)
