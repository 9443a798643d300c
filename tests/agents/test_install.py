"""The agent library installs without the bridge's other dependencies: the package's wheel
with `--no-deps`, plus nats-py and msgspec, in a fresh virtual environment (docs/agents.md);
there the documented example joins the real bridge, claims a role and leaves on SIGTERM.

It builds the wheel (pip fetches setuptools for the build) and installs nats-py and msgspec at
the versions of constraints.txt: it needs the package index, as `pip install` does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.contract.messages import CouncilOpportunity, Role, decode_reply, encode
from tests.agents.support import NAMES, ROOT, callout_stack
from tests.agents.test_examples import example
from tests.callout_support import PASSWORDS
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(300)

# What the bridge needs and the library must not (pyproject.toml's dependencies, less two).
NOT_INSTALLED = ["structlog", "click", "docker", "httpx", "aiohttp", "prometheus_client", "yaml"]


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the package's wheel (no dependencies), nats-py, msgspec."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    source.mkdir()
    shutil.copytree(ROOT / "bridge", source / "bridge", ignore=shutil.ignore_patterns("__py*"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", source)
    (wheel,) = (work / "dist").glob("chorus_bridge-*.whl")
    _run(sys.executable, "-m", "venv", work / "venv")
    python = work / "venv" / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "--no-deps", wheel)
    pins = ROOT / "constraints.txt"
    _run(python, "-m", "pip", "install", "-q", "-c", pins, "nats-py", "msgspec")
    return python


def test_the_library_imports_with_nats_py_and_msgspec_alone(fresh_python: Path) -> None:
    installed = _run(fresh_python, "-m", "pip", "list", "--format=freeze")
    names = {line.split("==")[0].lower() for line in installed.split()}
    assert {"chorus-bridge", "nats-py", "msgspec"} <= names
    assert not {"structlog", "click", "docker", "httpx", "aiohttp"} & names
    loaded = _run(
        fresh_python,
        "-c",
        "import sys, bridge.agent; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {NOT_INSTALLED!r}))",
        cwd=fresh_python.parent,  # not the repository: only what is installed
    )
    assert loaded.strip() == "[]"


async def test_the_installed_library_joins_the_real_bridge(
    fresh_python: Path, tmp_path: Path
) -> None:
    async with callout_stack(tmp_path, 2) as stack:
        me = stack.agent_ids[0]
        env = {"NATS_URL": stack.server.url, "AGENT_PASS": PASSWORDS["AGENT_PASS"]}
        async with example(
            "agent.py", str(fresh_python), AGENT_ID=me, AGENT_ROLES="tpm", PYTHONPATH="", **env
        ) as agent:
            await agent.line(f"joined as {me}")
            await wait_for(lambda: me in stack.on_bus(), timeout=10, what="on the bus")
            opportunity = CouncilOpportunity(id="council-installed", roles=[Role(name="tpm")])
            answer = await stack.coordinator.request(
                NAMES.broadcast, encode(opportunity), timeout=20
            )
            report = decode_reply(answer.data)
            assert not hasattr(report, "error") and report.via_bus == 1, report
            await agent.line("council-installed tpm: granted")
            status, stderr = await agent.stop()
        assert status == 0 and "Traceback" not in stderr, stderr
        await wait_for(stack.announced(me, False), timeout=5, what="its leave")
