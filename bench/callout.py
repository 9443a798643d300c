"""How long the NATS auth callout makes an agent's connect, over the stack's TLS: 1,000
connects, p50 and p99; and a NATS restart under 1,000 agents over TLS.

TLS as the stack ships it (docker-compose.swarm.yml): scripts/nats-tls.sh makes the CA and the
server's certificate, nats-server requires TLS on its client port (`--tls --tlscert
--tlskey`), the bridge verifies it with NATS_TLS_CA, and each client verifies it with the
context the bridge builds from that CA (tests/tls_support.py), upgrading after the server's
INFO as nats-py does.

A real nats-server runs nats-callout.conf (requests sealed to the bridge's xkey; agents in the
AGENTS account), and `chorus-bridge run` in its own process answers the callout: discovery
method `dns` with 10 known endpoints on 127.7.0.1-10, so its agents bucket holds 10 agents at
those addresses (no Docker, and no HTTP is ever sent to them). Each connect opens a TCP
connection from one of those addresses, makes the TLS handshake, sends CONNECT as the shared
`agent` user and is timed until the server's PONG: the server has then sent the request, the
bridge has verified, decided, signed and sealed its answer, and the server has checked it and
registered the user.

Baseline, in the same run, interleaved one for one and the order rotated: the same connect
over TLS, by the same client, as the static `coordinator` user (in the callout's auth_users:
no callout). For reference, in the same loop: a second server and bridge without TLS (the
callout's own cost, as before TLS), and a third without TLS or xkey (requests in the clear:
what the sealing costs).

Target: the p99 of a callout connect over TLS under 100 ms (the server gives a callout 2 s).

The restart storm (bench/_callout_storm.py): 1,000 agents (tests/callout_storm.py: raw
clients, each from its own loopback address, reconnecting as the agent library does: at
once, then every 0.5 s), over TLS, are connected through the callout of a bridge whose bucket
holds them (known endpoints); the nats-server is killed (SIGKILL) and started again on its
port and store, ROUNDS times. Each round is timed from the moment the server answers again to
the moment the last agent is admitted; the refusals the agents saw are counted, and so are
attempts that got no answer after the server answered (a TLS handshake cut short), and the
CPU the fleet, the new nats-server and the bridge spent in the round (the 1,000 clients'
handshakes run in this one process, on the same 2 cores as the server and the bridge; an
agent of the stack makes its own on its own host). Baseline, in the same run: the same storm
of 1,000 `coordinator` clients over TLS (no callout), ROUNDS restarts. For reference: both
storms again without TLS. Targets: every TLS round, all back within 5 s of the server
answering, and 0 refused.

    python bench/callout.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from _callout_storm import StormRounds, restart_storm
from common import REPO, Bench, Series, arguments, child_process, main, quiet_logs

from tests.callout_client import Refused, raw_connect
from tests.callout_storm import bridge_env
from tests.callout_support import AGENT_PASSWORD, PASSWORDS, callout_server, make_keys, port_of
from tests.tls_support import client_context, make_certificates

SOURCES = [f"127.7.0.{i}" for i in range(1, 11)]
LIMIT_P99_S = 0.100
STORM_AGENTS = 1000
STORM_BACK_WITHIN_S = 5.0
COORDINATOR = ("coordinator", PASSWORDS["COORD_PASS"])
AGENT = ("agent", AGENT_PASSWORD)


@dataclasses.dataclass(frozen=True)
class Stack:
    """A callout server's port, and the client context when it requires TLS."""

    port: int
    tls: ssl.SSLContext | None


def p99(series: Series) -> float:
    ordered = sorted(series.seconds)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else math.nan


async def connect_once(stack: Stack, source: str, who: tuple[str, str]) -> float:
    """Seconds from opening the TCP connection (then the TLS handshake, with TLS) to PONG."""
    user, password = who
    started = time.perf_counter()
    async with raw_connect(stack.port, source=source, user=user, password=password, tls=stack.tls):
        return time.perf_counter() - started


async def until_admitted(stack: Stack, timeout: float = 30.0) -> None:
    """The bridge is up and its watch has the 10 agents: every source is admitted."""
    deadline = time.monotonic() + timeout
    for source in SOURCES:
        while True:
            try:
                await connect_once(stack, source, AGENT)
                break
            except Refused:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def callout_stack(
    directory: Path, *, xkey: bool, tls: Path | None = None
) -> AsyncIterator[Stack]:
    """A nats-server running nats-callout.conf (with the certificates in `tls`: TLS required
    on the client port) and a bridge answering its callout (NATS_TLS_CA with `tls`)."""
    files = make_keys(directory / "keys")  # makes `directory` too
    ca = tls / "nats_tls_ca.pem" if tls is not None else None
    async with callout_server(directory, files, xkey=xkey, tls=tls) as server:
        env = bridge_env(server.url, files, SOURCES, 0, xkey=xkey, tls_ca=ca)
        async with child_process(
            "bridge",
            [sys.executable, "-m", "bridge", "run"],
            env=env,
            stderr_to=directory / "bridge.log",
        ):
            stack = Stack(port_of(server), client_context(tls) if tls is not None else None)
            await until_admitted(stack)
            yield stack


def report_storm(
    bench: Bench, kind: str, rounds: tuple[StormRounds, StormRounds, dict[tuple[str, str], float]]
) -> None:
    """The table of one kind of storm, what the rounds cost, and (TLS) its targets."""
    agents, static, counted = rounds
    if kind != "TLS":
        agents.back.note = static.back.note = "for reference"
    bench.table(
        f"restart storm, {kind}: server answering -> every client back",
        [static.back, agents.back],
        static.back,
    )
    for what in (agents, static):
        bench.info(
            f"{what.back.name}: CPU per round (median)",
            f"{what.cpu_summary()}; {what.refused} refused in {what.back.n} rounds; "
            f"attempts unanswered after the server answered: {what.unanswered_summary()}",
        )
    bench.info(f"callouts during the {kind} storm rounds (from /metrics)", repr(counted))
    if kind != "TLS":
        return
    slowest = agents.back.max
    bench.target(
        f"restart storm, TLS: all {STORM_AGENTS} back within {STORM_BACK_WITHIN_S:g} s, "
        "every round",
        slowest < STORM_BACK_WITHIN_S,
        f"slowest round {slowest:.2f} s of {agents.back.n}",
    )
    bench.target(
        "restart storm, TLS: 0 refused",
        agents.refused == 0,
        f"{agents.refused} refusals in {agents.back.n} rounds",
    )


async def connect_series(directory: Path, tls: Path, reps: int, warmup: int) -> list[Series]:
    """Connects of each kind, interleaved and their order rotated: static TLS (the baseline),
    callout TLS, static, callout (xkey), callout (no xkey)."""
    rows = [
        Series("static user (coordinator), TLS"),
        Series("agent through the callout (xkey), TLS"),
        Series("static user (coordinator), no TLS"),
        Series("agent through the callout (xkey), no TLS"),
        Series("agent through the callout (no xkey), no TLS"),
    ]
    async with (
        callout_stack(directory / "tls", xkey=True, tls=tls) as secure,
        callout_stack(directory / "xkey", xkey=True) as sealed,
        callout_stack(directory / "plain", xkey=False) as plain,
    ):
        kinds = [(secure, COORDINATOR), (secure, AGENT), (sealed, COORDINATOR), (sealed, AGENT)]
        kinds.append((plain, AGENT))
        for i in range(warmup + reps):
            source = SOURCES[i % len(SOURCES)]
            first = i % len(kinds)
            for k in [*range(first, len(kinds)), *range(first)]:
                stack, who = kinds[k]
                seconds = await connect_once(stack, source if who is AGENT else "127.0.0.1", who)
                if i >= warmup:
                    rows[k].add(seconds)
    return rows


def report_connects(bench: Bench, rows: list[Series]) -> None:
    static_tls, callout_tls, static, sealed, plain = rows
    for row in (static, sealed, plain):
        row.note = "for reference"
    bench.table("connect until PONG, TLS", [static_tls, callout_tls], static_tls)
    bench.table("connect until PONG, no TLS", [static, sealed, plain], static)
    for series in rows:
        bench.info(
            series.name,
            f"p50 {series.median * 1000:.2f} ms, p99 {p99(series) * 1000:.2f} ms, n {series.n}",
        )
    bench.info(
        "added by the callout over TLS, xkey (p50 difference)",
        f"{(callout_tls.median - static_tls.median) * 1000:.2f} ms",
    )
    bench.info(
        "added by TLS to a callout connect (p50 difference)",
        f"{(callout_tls.median - sealed.median) * 1000:.2f} ms",
    )
    bench.target(
        "callout connect over TLS: p99 < 100 ms",
        p99(callout_tls) < LIMIT_P99_S,
        f"p99 {p99(callout_tls) * 1000:.2f} ms (xkey, TLS)",
    )


async def run() -> int:
    args = arguments(__doc__ or "")
    quiet_logs()
    reps, warmup = (200, 20) if args.quick else (1000, 50)
    rounds = 3 if args.quick else 10
    bench = Bench("NATS auth callout: connect time and restart storm, with the stack's TLS")
    with tempfile.TemporaryDirectory(prefix="bench-callout-") as tmp:
        directory = Path(tmp)
        tls = make_certificates(directory / "secrets")
        bench.say(
            f"{len(SOURCES)} agents; {reps} connects of each kind, interleaved, "
            f"after {warmup} warm-up"
        )
        rows = await connect_series(directory, tls, reps, warmup)
        report_connects(bench, rows)
        bench.say(f"\nrestart storm: {STORM_AGENTS} agents, {rounds} restarts of each kind")
        storm_tls = await restart_storm(directory / "storm-tls", STORM_AGENTS, rounds, tls)
        report_storm(bench, "TLS", storm_tls)
        storm = await restart_storm(directory / "storm", STORM_AGENTS, rounds, None)
        report_storm(bench, "no TLS", storm)
    return bench.exit_code()


if __name__ == "__main__":
    assert (REPO / "nats-callout.conf").exists()
    main(run, limit=900)
