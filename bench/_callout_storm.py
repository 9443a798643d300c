"""The restart storm of bench/callout.py: 1,000 agents (tests/callout_storm.py) connected
through the callout of a bridge in its own process; the nats-server killed (SIGKILL) and
started again on its port and store, round after round. Each round: the time from the server
answering again until the last agent is admitted, the refusals the agents saw, the attempts
that got no answer after the server answered (over TLS: a handshake cut short), and the CPU
the fleet (this process), the new nats-server and the bridge spent in it."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import signal
import statistics
import time
from pathlib import Path

from common import Series, cpu_seconds

from bridge.edges.nats_server import EmbeddedNats
from tests.callout_storm import Storm, bridge_process, storm, storm_addresses
from tests.callout_support import PASSWORDS, callout_server, make_keys, port_of
from tests.conftest import wait_for
from tests.tls_support import client_context

__all__ = ["StormRounds", "restart_storm"]

# Seconds between rounds: the last round's advisories and logs settle.
SETTLE = 2.0


@dataclasses.dataclass
class StormRounds:
    """The rounds of one kind of storm: `back` (seconds per round), refusals, and the attempts
    without an answer after the server answered by what they met (totals); CPU seconds per
    round by process."""

    back: Series
    refused: int = 0
    unanswered: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    unanswered_at: list[float] = dataclasses.field(default_factory=list)  # s after answering
    cpu: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {"fleet": [], "nats-server": [], "bridge": []}
    )

    def unanswered_summary(self) -> str:
        """The attempts without an answer after the server answered: how many of each kind,
        and when (seconds after the server answered, the earliest and the latest)."""
        if not self.unanswered:
            return "0"
        when = f"{min(self.unanswered_at):.2f} to {max(self.unanswered_at):.2f} s"
        return f"{dict(self.unanswered)}, {when} after the server answered"

    def cpu_summary(self) -> str:
        """The median CPU seconds per round of each process, one line."""
        return ", ".join(
            f"{name} {statistics.median(seconds):.2f} s" for name, seconds in self.cpu.items()
        )


async def restart_rounds(
    server: EmbeddedNats, bridge_pid: int, fleet: Storm, rounds: int, into: StormRounds
) -> None:
    """Kill the server `rounds` times under `fleet`, each round measured into `into`."""
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        restarts, refused = server.restarts, fleet.refusals
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        # B023: awaited within this iteration, so the lambda sees its own `restarts`.
        await wait_for(lambda: server.restarts > restarts, timeout=30, interval=0.005)  # noqa: B023
        answering, unanswered = loop.time(), fleet.failure_kinds.copy()
        failed = len(fleet.failure_times)
        assert server.pid is not None
        pids = {"nats-server": server.pid, "bridge": bridge_pid}
        cpu = {name: cpu_seconds(pid) for name, pid in pids.items()} | {
            "fleet": time.process_time()
        }
        async with asyncio.timeout(60):
            await fleet.all_connected()
        into.back.add(loop.time() - answering)
        into.cpu["fleet"].append(time.process_time() - cpu["fleet"])
        for name, pid in pids.items():
            into.cpu[name].append(cpu_seconds(pid) - cpu[name])
        into.refused += fleet.refusals - refused
        into.unanswered += fleet.failure_kinds - unanswered
        into.unanswered_at += [t - answering for t in fleet.failure_times[failed:]]
        await asyncio.sleep(SETTLE)


async def restart_storm(
    directory: Path, agents: int, rounds: int, tls: Path | None
) -> tuple[StormRounds, StormRounds, dict[tuple[str, str], float]]:
    """`rounds` restarts under `agents` agents through the callout, then as many under the same
    number of static `coordinator` clients (the baseline), against one server and bridge; with
    `tls` (scripts/nats-tls.sh's certificates), all of it over TLS. Returns the agents' rounds,
    the baseline's, and the callouts /metrics counted during the agents' rounds."""
    files = make_keys(directory / "keys")
    addresses = storm_addresses(agents)
    kind = "TLS" if tls is not None else "no TLS"
    through = StormRounds(Series(f"{agents} agents through the callout, {kind}"))
    static = StormRounds(Series(f"{agents} static users (coordinator), {kind}"))
    context = client_context(tls) if tls is not None else None
    ca = tls / "nats_tls_ca.pem" if tls is not None else None
    log = directory / "bridge.log"
    async with (
        callout_server(directory, files, tls=tls) as server,
        bridge_process(server.url, files, addresses, log, tls_ca=ca) as bridge,
    ):
        port, pid = port_of(server), bridge.process.pid
        async with storm(port, addresses, tls=context) as fleet:
            async with asyncio.timeout(120):
                await fleet.all_connected()
            before = await bridge.callouts()
            await restart_rounds(server, pid, fleet, rounds, through)
            after = await bridge.callouts()
        async with storm(
            port, addresses, user="coordinator", password=PASSWORDS["COORD_PASS"], tls=context
        ) as fleet:
            async with asyncio.timeout(60):
                await fleet.all_connected()
            await restart_rounds(server, pid, fleet, rounds, static)
    counted = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    return through, static, counted
