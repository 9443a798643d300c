"""scripts/callout-keys.py: runs with Python's standard library alone (a fresh clone, nothing
installed), and the keys it writes are the ones the bridge loads (PyNaCl derives the same
public keys from its seeds)."""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bridge.edges.nkeys_jwt import CurveKey, SigningKey

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "callout-keys.py"
NAMES = ("callout_issuer_seed", "callout_xkey_seed", "callout_issuer_public", "callout_xkey_public")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # -I -S: no site-packages, no PYTHONPATH, no current directory on the path: the standard
    # library alone, as in a fresh clone with only python3.
    return subprocess.run(
        [sys.executable, "-I", "-S", str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("callout_keys", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_keys_are_made_without_the_package_and_load_in_the_bridge(tmp_path: Path) -> None:
    """Four files, owner-only, in a new owner-only directory; the printed public keys are the
    files' and the ones the bridge derives from the seeds."""
    secrets_dir = tmp_path / "secrets"
    result = _run(str(secrets_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert secrets_dir.stat().st_mode & 0o777 == 0o700
    files = {name: (secrets_dir / name).read_bytes().strip() for name in NAMES}
    assert all((secrets_dir / name).stat().st_mode & 0o777 == 0o600 for name in NAMES)
    issuer = SigningKey(files["callout_issuer_seed"]).public_key
    xkey = CurveKey(files["callout_xkey_seed"]).public_key
    assert files["callout_issuer_public"].decode() == issuer
    assert files["callout_xkey_public"].decode() == xkey
    assert result.stdout.splitlines() == [f"CALLOUT_ISSUER={issuer}", f"CALLOUT_XKEY={xkey}"]


def test_derived_public_keys_match_pynacl_for_many_seeds() -> None:
    """The RFC 8032 and RFC 7748 derivations agree with PyNaCl (through bridge.edges.nkeys_jwt)
    on 64 random seeds of each kind."""
    script = _script()
    for _ in range(64):
        raw = secrets.token_bytes(32)
        account = script.encode_seed(script.PREFIX_ACCOUNT, raw)
        curve = script.encode_seed(script.PREFIX_CURVE, raw)
        assert SigningKey(account).public_key == script.encode_public(
            script.PREFIX_ACCOUNT, script.ed25519_public(raw)
        )
        assert CurveKey(curve).public_key == script.encode_public(
            script.PREFIX_CURVE, script.x25519_public(raw)
        )


def test_existing_keys_are_kept(tmp_path: Path) -> None:
    """A second run changes nothing and says which files it kept (exit 1)."""
    assert _run(str(tmp_path), cwd=tmp_path).returncode == 0
    before = {name: (tmp_path / name).read_bytes() for name in NAMES}
    result = _run(str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "already has callout_issuer_seed" in result.stderr
    assert {name: (tmp_path / name).read_bytes() for name in NAMES} == before


@pytest.mark.parametrize("args", [(), ("a", "b"), ("--help",)])
def test_a_usage_error_exits_64(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _run(*args, cwd=tmp_path)
    assert result.returncode == 64
    assert result.stderr.startswith("usage: python3 scripts/callout-keys.py DIR")
    assert os.listdir(tmp_path) == []


def test_a_directory_that_cannot_be_made_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """DIR under a regular file: exit 73, one line naming the directory, no traceback."""
    (tmp_path / "file").write_text("")
    result = _run(str(tmp_path / "file" / "secrets"), cwd=tmp_path)
    assert result.returncode == 73
    assert result.stderr.startswith("callout-keys: cannot write the keys in ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == ["file"]
