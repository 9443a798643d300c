"""The package's map in README is the package's tree, and the rooms' layers hold."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREE = re.compile(r"<!-- tree:start -->\n```\n(.*?)```\n<!-- tree:end -->", re.S)


def _mapped() -> set[str]:
    """The paths README's map names, relative to the repository (a folder ends in /)."""
    block = TREE.search((ROOT / "README.md").read_text())
    assert block, "README.md has no <!-- tree:start --> block"
    paths: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in block.group(1).splitlines():
        name = line.strip().split()[0]
        depth = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= depth:
            stack.pop()
        path = "".join(part for _d, part in stack) + name
        paths.add(path)
        if name.endswith("/"):
            stack.append((depth, name))
    return paths


def _tree() -> set[str]:
    """The package's modules and the folders below its rooms (what the map goes down to)."""
    paths: set[str] = {"bridge/"}
    for path in (ROOT / "bridge").rglob("*"):
        rel = path.relative_to(ROOT)
        if "__pycache__" in rel.parts or path.name in {"__init__.py", "__main__.py", "py.typed"}:
            continue
        if len(rel.parts) > 3:  # inside bridge/edges/kv/, bridge/devkit/sim/, ...
            continue
        if path.is_dir():
            paths.add(f"{rel}/")
        elif path.suffix == ".py":
            paths.add(str(rel))
    return paths


def test_the_map_names_every_module_and_nothing_else() -> None:
    """A newcomer finds each room and module of README's map in the tree, and the reverse."""
    mapped, tree = _mapped(), _tree()
    assert not tree - mapped, f"in the tree, not in README's map: {sorted(tree - mapped)}"
    assert not mapped - tree, f"in README's map, not in the tree: {sorted(mapped - tree)}"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "wrong_way"),
    [
        ("bridge/contract/names.py", "import bridge.bus.lease"),
        ("bridge/edges/agent_http/client.py", "import bridge.broadcast.targets"),
        ("bridge/bus/presence.py", "import bridge.service"),
        ("bridge/service.py", "import bridge.devkit.demo"),
    ],
)
def test_a_wrong_way_import_breaks_the_layers(tmp_path: Path, module: str, wrong_way: str) -> None:
    """A room importing a room above it fails `lint-imports`, as the shipped tree passes it."""
    shutil.copytree(ROOT / "bridge", tmp_path / "bridge", ignore=shutil.ignore_patterns("__py*"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint_imports(tmp_path).returncode == 0
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{wrong_way}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout or "broken" in result.stdout
