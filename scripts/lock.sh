#!/usr/bin/env bash
# Writes constraints.txt: the exact version of every package that `pip install '.[dev]'` brings
# in, resolved afresh within pyproject.toml's bounds. The Dockerfile and scripts/test.sh install
# with `-c constraints.txt`, so the image and the tests run the same versions until this script
# is run again (on purpose, after a dependency change, then tested like any change).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$PYTHON" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check '.[dev]'
{
    echo "# Exact versions for '.[dev]' on $("$PYTHON" --version 2>&1); made by scripts/lock.sh."
    echo "# Used as pip constraints (-c): installing only part of it (the image) is fine."
    "$venv/bin/pip" freeze --disable-pip-version-check --exclude chorus-bridge | LC_ALL=C sort -f
} >constraints.txt
echo "lock: wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
