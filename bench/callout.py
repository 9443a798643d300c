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

The restart storm: 1,000 agents (tests/callout_storm.py: raw clients, each from its own
loopback address, reconnecting as the agent library does: at once, then every 0.5 s) are
connected through the callout of a bridge whose bucket holds them (known endpoints); the
nats-server is killed (SIGKILL) and started again on its port and store, ROUNDS times. Each
round is timed from the moment the server answers again to the moment the last agent is
admitted, and the refusals the agents saw are counted. Baseline, in the same run: the same
storm of 1,000 clients as the static `coordinator` user (no callout), ROUNDS restarts.
Targets: every round, all back within 5 s of the server answering, and 0 refused.

TLS: NATS_TLS_* (the stack's TLS on the client port) is not on main yet, so these figures are
without TLS.

    python bench/callout.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from common import REPO, Bench, Series, arguments, child_process, main, quiet_logs

from bridge.edges.nats_server import EmbeddedNats
from tests.callout_client import Refused, raw_connect
from tests.callout_storm import Storm, bridge_process, storm, storm_addresses
from tests.callout_support import AGENT_PASSWORD, PASSWORDS, callout_server, make_keys, port_of
from tests.conftest import wait_for

SOURCES = [f"127.7.0.{i}" for i in range(1, 11)]
LIMIT_P99_S = 0.100
STORM_AGENTS = 1000
STORM_BACK_WITHIN_S = 5.0


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


async def restart_rounds(server: EmbeddedNats, fleet: Storm, rounds: int, series: Series) -> int:
    """Kill the server `rounds` times under `fleet`; each round's time from the server
    answering again to every client back goes into `series`. Returns the refusals seen."""
    loop = asyncio.get_running_loop()
    refused = fleet.refusals
    for _ in range(rounds):
        restarts = server.restarts
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        # B023: awaited within this iteration, so the lambda sees its own `restarts`.
        await wait_for(lambda: server.restarts > restarts, timeout=30, interval=0.005)  # noqa: B023
        answering = loop.time()
        async with asyncio.timeout(60):
            await fleet.all_connected()
        series.add(loop.time() - answering)
        await asyncio.sleep(2.0)  # let the last round's advisories and logs settle
    return fleet.refusals - refused


async def restart_storm(bench: Bench, directory: Path, rounds: int) -> None:
    """The restart storm of STORM_AGENTS agents through the callout, against its baseline."""
    files = make_keys(directory / "keys")
    addresses = storm_addresses(STORM_AGENTS)
    agents = Series(f"{STORM_AGENTS} agents through the callout")
    static = Series(f"{STORM_AGENTS} static users (coordinator), no callout")
    async with (
        callout_server(directory, files) as server,
        bridge_process(server.url, files, addresses, directory / "bridge.log") as bridge,
    ):
        port = port_of(server)
        async with storm(port, addresses) as fleet:
            async with asyncio.timeout(120):
                await fleet.all_connected()
            before = await bridge.callouts()
            refused = await restart_rounds(server, fleet, rounds, agents)
            after = await bridge.callouts()
        async with storm(
            port, addresses, user="coordinator", password=PASSWORDS["COORD_PASS"]
        ) as fleet:
            async with asyncio.timeout(60):
                await fleet.all_connected()
            await restart_rounds(server, fleet, rounds, static)
    counted = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    bench.table("restart storm: server answering -> every client back", [static, agents], static)
    bench.info("callouts during the storm rounds (from /metrics)", repr(counted))
    bench.target(
        f"restart storm: all {STORM_AGENTS} back within {STORM_BACK_WITHIN_S:g} s, every round",
        max(agents.seconds) < STORM_BACK_WITHIN_S,
        f"slowest round {max(agents.seconds):.2f} s of {agents.n}",
    )
    bench.target(
        "restart storm: 0 refused", refused == 0, f"{refused} refusals in {agents.n} rounds"
    )


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
    with tempfile.TemporaryDirectory(prefix="bench-callout-storm-") as tmp:
        await restart_storm(bench, Path(tmp), 3 if args.quick else 10)
    return bench.exit_code()


if __name__ == "__main__":
    assert (REPO / "nats-callout.conf").exists()
    main(run, limit=600)
