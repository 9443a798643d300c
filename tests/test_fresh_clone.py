"""A clone with nothing beside it runs the tests that read the recorded Docker answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The tests that read tests/fixtures/ (the recorded Docker Engine answers).
FIXTURE_TESTS = (
    "tests/test_discovery_swarm.py",
    "tests/test_discovery_tasks.py",
    "tests/test_emulator.py",
)


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(),
    reason="needs git and a git checkout",
)
def test_fresh_clone_passes_fixture_tests(tmp_path: Path) -> None:
    """`git clone` into an empty folder (nothing beside the clone), then the fixture tests pass
    there: what the repository holds is all they need."""
    clone = tmp_path / "empty" / "chorus-bridge"
    subprocess.run(
        ["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True, timeout=60
    )
    assert [p.name for p in clone.parent.iterdir()] == [clone.name]  # nothing beside it
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FIXTURE_TESTS],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    tail = done.stdout[-2000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert " passed" in done.stdout and "FileNotFoundError" not in done.stdout, tail
