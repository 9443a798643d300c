"""Running the node scripts of tests/js: found, or skipped (failed under CI=true)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

JS_DIR = Path(__file__).resolve().parent / "js"


def node_or_skip() -> str:
    """The node binary, when node and tests/js/node_modules (`npm ci` there) are present."""
    node = shutil.which("node")
    missing = (
        "node is not installed"
        if node is None
        else "tests/js/node_modules is missing (run `npm ci` in tests/js)"
        if not (JS_DIR / "node_modules").is_dir()
        else None
    )
    if missing is None and node is not None:
        return node
    return unavailable(missing or "node is missing")


def unavailable(missing: str) -> NoReturn:
    """Skip the test for want of `missing`, or fail it under CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing}: CI must run the JavaScript client tests")
    pytest.skip(missing)
