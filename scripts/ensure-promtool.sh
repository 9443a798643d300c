#!/usr/bin/env bash
# Makes promtool available for the tests of deploy/prometheus (tests/ops/test_deploy.py runs
# `promtool check rules` and `promtool test rules`): scripts/test.sh calls it.
#   - promtool on PATH: nothing to do;
#   - root with apt-get: installs Debian's prometheus package (it ships promtool);
#   - otherwise: says that the alert rules' tests will be skipped, and how to get promtool.
# Exit status: 0 when promtool is there, or when it is not and CI is not "true" (the tests
# then skip, saying why); 1 when it is not and CI=true (CI must check the alert rules).
set -euo pipefail

say() { echo "ensure-promtool: $*"; }

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

why=""
if [ "$(id -u)" -ne 0 ]; then
    why="not root"
elif ! command -v apt-get >/dev/null 2>&1; then
    why="no apt-get"
else
    say "apt-get install prometheus (for promtool)"
    if DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            prometheus >/dev/null \
        && command -v promtool >/dev/null 2>&1; then
        say "promtool $(promtool --version 2>&1 | head -n 1 | cut -d' ' -f3) installed"
        exit 0
    fi
    why="apt-get install prometheus failed"
fi

message="no promtool ($why): the alert rules' tests (tests/ops/test_deploy.py) are skipped; install it with 'apt-get install prometheus' as root, or put promtool on PATH"
if [ "${CI:-}" = true ]; then
    say "error: $message (CI=true: they must run)" >&2
    exit 1
fi
say "warning: $message" >&2
