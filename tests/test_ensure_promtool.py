"""scripts/ensure-promtool.sh, which scripts/test.sh runs so that the alert rules' tests are
not skipped without a word: promtool is installed as root, and its absence is said (and fails
under CI=true) otherwise.

The script runs with a PATH of the test's own: `id` says who runs it, and `apt-get` records
its arguments and, when told to, puts a `promtool` on that PATH as the package would. Nothing
is installed on the machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ensure-promtool.sh"
BASH = shutil.which("bash") or "/bin/bash"
APT_CALLS = ["update -q", "install -y -q --no-install-recommends prometheus"]

_PROMTOOL = '#!{bash}\necho "promtool, version 2.42.0+ds (branch: debian/sid)"\n'
_APT_GET = """#!{bash}
echo "$*" >> {log}
if [ "$1" = install ]; then
    {action}
fi
"""


class Machine:
    """A PATH with `id`, `apt-get` and (when installed) `promtool` of the test's making."""

    def __init__(self, root: Path, *, uid: int, apt_installs: bool = True) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.apt_log = root / "apt-get.log"
        for tool in ("head", "cut"):
            found = shutil.which(tool)
            assert found is not None, tool
            (self.bin / tool).symlink_to(found)
        self._tool("id", f"#!{BASH}\necho {uid}\n")
        # What the package would install, copied into place by absolute path (PATH has no cp).
        package = root / "package"
        package.mkdir()
        (package / "promtool").write_text(_PROMTOOL.format(bash=BASH))
        (package / "promtool").chmod(0o755)
        cp = shutil.which("cp")
        action = f"{cp} {package}/promtool {self.bin}/promtool" if apt_installs else "exit 100"
        self._tool("apt-get", _APT_GET.format(bash=BASH, log=self.apt_log, action=action))

    def _tool(self, name: str, text: str) -> None:
        (self.bin / name).write_text(text)
        (self.bin / name).chmod(0o755)

    def add_promtool(self) -> None:
        self._tool("promtool", _PROMTOOL.format(bash=BASH))

    def apt_calls(self) -> list[str]:
        return self.apt_log.read_text().splitlines() if self.apt_log.exists() else []

    def run(self, *, ci: bool = False) -> subprocess.CompletedProcess[str]:
        env = {"PATH": str(self.bin), **({"CI": "true"} if ci else {})}
        return subprocess.run(
            [BASH, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False
        )


def test_promtool_on_path_needs_nothing(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=0)
    machine.add_promtool()
    result = machine.run(ci=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert machine.apt_calls() == []


def test_root_installs_debian_prometheus(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=0)
    result = machine.run(ci=True)
    assert result.returncode == 0, result.stderr
    assert machine.apt_calls() == APT_CALLS
    assert "promtool 2.42.0+ds installed" in result.stdout
    assert (machine.bin / "promtool").exists()


@pytest.mark.parametrize(
    ("uid", "apt_installs", "why"),
    [(1000, True, "not root"), (0, False, "apt-get install prometheus failed")],
)
@pytest.mark.parametrize("ci", [False, True])
def test_without_promtool_the_skip_is_said_and_fails_under_ci(
    tmp_path: Path, uid: int, apt_installs: bool, why: str, ci: bool
) -> None:
    """One line that says why, which tests are skipped and how to get promtool; exit 1 under
    CI=true, where the alert rules must be checked."""
    machine = Machine(tmp_path, uid=uid, apt_installs=apt_installs)
    result = machine.run(ci=ci)
    assert result.returncode == (1 if ci else 0)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("ensure-promtool: error: " if ci else "ensure-promtool: warning: ")
    assert f"no promtool ({why})" in line
    assert "tests/ops/test_deploy.py" in line and "apt-get install prometheus" in line
    assert machine.apt_calls() == ([] if uid else APT_CALLS)
