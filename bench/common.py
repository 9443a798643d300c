"""What the benchmarks share: timing series, the result table, targets, helper processes.

Every script measures its subject and its baseline in the same run, on loopback only, and
exits 1 when a target is missed, so it can be run as a check. Ratios compare medians; the
absolute limits apply to the 95th percentile (with few samples that is close to the maximum).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from bridge.contract.messages import CouncilOpportunity, Role

__all__ = [
    "BENCH",
    "REPO",
    "Bench",
    "Child",
    "Series",
    "arguments",
    "child_process",
    "cpu_seconds",
    "main",
    "opportunity",
    "quiet_logs",
    "timed",
]

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# Benchmarks on the real swarm make their agents' service as the swarm tests do, with
# tests/swarm_support.py: the repository must be importable, as it is when pytest runs.
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))
# A child still running this long after it was asked to stop is killed.
STOP_GRACE = 10.0
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass
class Series:
    """Durations of one measured thing, in seconds."""

    name: str
    seconds: list[float] = dataclasses.field(default_factory=list)
    note: str = ""

    def add(self, seconds: float) -> None:
        self.seconds.append(seconds)

    @property
    def n(self) -> int:
        return len(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.nan

    @property
    def p95(self) -> float:
        """Nearest-rank 95th percentile."""
        if not self.seconds:
            return math.nan
        ordered = sorted(self.seconds)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    @property
    def min(self) -> float:
        return min(self.seconds) if self.seconds else math.nan

    @property
    def max(self) -> float:
        return max(self.seconds) if self.seconds else math.nan


@dataclasses.dataclass(frozen=True)
class _Check:
    what: str
    ok: bool
    detail: str


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:10.1f}" if not math.isnan(seconds) else f"{'-':>10}"


class Bench:
    """Prints tables and target verdicts; `exit_code()` is 1 when any target was missed."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._checks: list[_Check] = []
        print(f"== {title} ==", flush=True)

    def say(self, text: str) -> None:
        print(text, flush=True)

    def table(self, heading: str, rows: Sequence[Series], baseline: Series) -> None:
        """One row per series: median, p95, min, max (ms), n, and median / baseline median."""
        width = max(len(r.name) for r in rows) + 2
        print(f"\n-- {heading} (ratio = median / median of {baseline.name!r}) --")
        print(
            f"{'name':<{width}}{'median ms':>10}{'p95 ms':>10}{'min ms':>10}{'max ms':>10}"
            f"{'n':>5}{'ratio':>9}"
        )
        for row in rows:
            ratio = row.median / baseline.median if baseline.median else math.nan
            note = f"  {row.note}" if row.note else ""
            print(
                f"{row.name:<{width}}{_ms(row.median)}{_ms(row.p95)}{_ms(row.min)}"
                f"{_ms(row.max)}{row.n:>5}{ratio:>8.2f}x{note}"
            )
        sys.stdout.flush()

    def target(self, what: str, ok: bool, detail: str) -> bool:
        """Record a target and print its verdict."""
        self._checks.append(_Check(what, ok, detail))
        print(f"TARGET {what}: {detail} -> {'PASS' if ok else 'FAIL'}", flush=True)
        return ok

    def info(self, what: str, detail: str) -> None:
        """A figure worth reporting that is not a target."""
        print(f"INFO   {what}: {detail}", flush=True)

    def exit_code(self) -> int:
        failed = [c for c in self._checks if not c.ok]
        print(
            f"\n{self.title}: {len(self._checks) - len(failed)} of {len(self._checks)} "
            f"targets met" + (f"; missed: {', '.join(c.what for c in failed)}" if failed else ""),
            flush=True,
        )
        return 1 if failed else 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, in seconds (/proc/<pid>/stat, Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(series: Series, call: Callable[[], Awaitable[Any]]) -> Any:
    """Await `call()` and add its wall time to `series`; returns what it returned."""
    started = time.perf_counter()
    result = await call()
    series.add(time.perf_counter() - started)
    return result


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds: a smoke run, figures less stable"
    )
    return parser.parse_args()


def quiet_logs() -> None:
    """Warnings and errors only, on stderr: the tables own stdout."""
    from bridge.ops.logs import configure_logging

    configure_logging("console", "WARNING")


def main(run: Callable[[], Coroutine[Any, Any, int]], *, limit: float) -> None:
    """Run a benchmark with an overall time limit, and exit with its status."""

    async def bounded() -> int:
        try:
            async with asyncio.timeout(limit):
                return await run()
        except TimeoutError:
            print(f"benchmark stopped: it ran longer than {limit:.0f}s", file=sys.stderr)
            return 2

    sys.exit(asyncio.run(bounded()))


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when this process dies, even by SIGKILL, so no helper
    # process outlives an interrupted benchmark.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """A helper process: its pid, the lines it printed on stdout, its exit status."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with `prefix` (the rest of it)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError(
                        f"{self.name} exited (status {await self.proc.wait()}) "
                        f"before printing {prefix!r}"
                    )
                text = raw.decode(errors="replace").strip()
                if text.startswith(prefix):
                    return text[len(prefix) :].strip()

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL after a grace period; returns the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.returncode = self.proc.returncode
        assert self.returncode is not None
        return self.returncode


@contextlib.asynccontextmanager
async def child_process(
    name: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stderr_to: Path | None = None,
) -> AsyncIterator[Child]:
    """Start a process (stdin a pipe it may watch for our exit); stop it on the way out."""
    stderr: Any = asyncio.subprocess.DEVNULL
    log_file = None
    if stderr_to is not None:
        log_file = stderr_to.open("ab")
        stderr = log_file
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, **env} if env is not None else None,
            cwd=REPO,
            preexec_fn=_die_with_parent,
        )
        child = Child(proc, name)
        try:
            yield child
        finally:
            await child.stop()
            if proc.stdin is not None:
                proc.stdin.close()
    finally:
        if log_file is not None:
            log_file.close()


def opportunity(opportunity_id: str) -> CouncilOpportunity:
    """The council every broadcast benchmark offers: three roles, two of them core."""
    return CouncilOpportunity(
        id=opportunity_id,
        project="bench",
        title="A council",
        roles=[
            Role(name="tpm", core=True),
            Role(name="senior-software-architect", core=True),
            Role(name="qa-engineer", core=False),
        ],
    )
