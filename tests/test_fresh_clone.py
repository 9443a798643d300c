"""A clone with nothing beside it: README's demo command works as written, and the tests that
read the recorded Docker answers pass."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The tests that read tests/fixtures/ (the recorded Docker Engine answers).
FIXTURE_TESTS = (
    "tests/discovery/test_swarm.py",
    "tests/discovery/test_tasks.py",
    "tests/devkit/test_emulator.py",
)


needs_a_checkout = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(),
    reason="needs git and a git checkout",
)


def fresh_clone(tmp_path: Path) -> Path:
    """`git clone` of the repository into an empty folder: nothing beside the clone."""
    clone = tmp_path / "empty" / "chorus-bridge"
    subprocess.run(
        ["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True, timeout=60
    )
    assert [p.name for p in clone.parent.iterdir()] == [clone.name]
    return clone


def run_in(
    clone: Path, args: list[str], timeout: float
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run `args` in `clone`; it must exit 0. (The completed process, the tail of its output.)"""
    done = subprocess.run(
        args, cwd=clone, capture_output=True, text=True, timeout=timeout, check=False
    )
    tail = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, tail
    return done, tail


def readme_demo_command(readme: str) -> str:
    """The first command of README's first `sh` block: the demo, on embedded defaults."""
    block = re.search(r"```sh\n(.+?)\n```", readme, flags=re.DOTALL)
    assert block is not None, "README has no sh block"
    return block.group(1).splitlines()[0]


@needs_a_checkout
def test_readme_demo_command_works_in_a_fresh_clone(tmp_path: Path) -> None:
    """README's first command, as written, in a fresh clone: a venv, `pip install .`, the
    demo; it ends with every agent reached and exit status 0."""
    clone = fresh_clone(tmp_path)
    command = readme_demo_command((clone / "README.md").read_text())
    assert "pip install" in command and command.endswith("chorus-bridge demo"), command
    done, tail = run_in(clone, ["bash", "-c", command], timeout=600)
    assert re.search(
        r"reached 34 of 34 agents .*: 17 via the bus, 17 via HTTP, 0 failed", done.stdout
    ), tail
    assert "Traceback" not in done.stderr, tail


@needs_a_checkout
def test_fresh_clone_passes_fixture_tests(tmp_path: Path) -> None:
    """In a fresh clone, the fixture tests pass: what the repository holds is all they need."""
    clone = fresh_clone(tmp_path)
    pytest_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", *FIXTURE_TESTS]
    done, tail = run_in(clone, [sys.executable, *pytest_args], timeout=300)
    assert " passed" in done.stdout and "FileNotFoundError" not in done.stdout, tail
