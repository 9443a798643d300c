#!/usr/bin/env bash
# The project's test command: sets up .venv, brings up the real Docker Swarm the swarm tests
# use (as root), the multi-node swarm beside it (scripts/swarm-nodes.sh, as root), installs
# haproxy for the docker-api proxy's tests, builds the stack's images, installs promtool (as
# root, for the alert rules' tests), then runs ruff (lint and format), mypy, import-linter and
# pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k nats_conf -x`.
#
# Environment:
#   CHORUS_SKIP_SWARM=1     do not touch Docker; the swarm and stack tests are skipped
#   CHORUS_SKIP_IMAGES=1    do not build the images; the stack tests are skipped
#   CHORUS_SKIP_MULTINODE=1 do not bring up the multi-node swarm; its tests are skipped
#   CHORUS_MULTINODE_DOWN=1 take the multi-node swarm down when the tests are done (by default
#                           it stays up, like the one-node swarm, so the next run starts at once;
#                           `bash scripts/swarm-nodes.sh down` removes it)
#   CHORUS_REQUIRE_SWARM=1  fail (instead of skipping those tests) when the swarm cannot be had
# The tests learn what is available from CHORUS_TEST_DOCKER_HOST (the engine, in swarm mode)
# and CHORUS_TEST_{BRIDGE,NATS,AGENT,DOCKER_API}_IMAGE, and CHORUS_TEST_MULTINODE=1 (the nodes of
# scripts/swarm-nodes.sh answer), which this script exports. Without them those tests are
# skipped, except under CI=true (set by .ci/run), where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

say() { echo "test.sh: $*"; }

setup_venv() {
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv with $("$PYTHON" --version)"
        "$PYTHON" -m venv .venv
    fi
    # Reinstall only when the project's metadata changed: the install is editable, so code
    # changes need nothing, and a run on an installed tree starts at once.
    local stamp=.venv/.chorus-pyproject.sha256 want
    want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] \
        || ! .venv/bin/python -c 'import bridge, pytest, mypy, ruff, importlinter' >/dev/null 2>&1; then
        say "pip install -c constraints.txt -e '.[dev]'"
        .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
        echo "$want" >"$stamp"
    fi
}

setup_js() {
    # The official JavaScript NATS clients and AsyncAPI parser of tests/js, pinned by its
    # package-lock.json; reinstalled only when the lock file changed.
    if ! command -v npm >/dev/null 2>&1; then
        say "no npm: the JavaScript client tests are skipped (they fail under CI=true)"
        return
    fi
    # The TypeScript agent library (agent-ts) likewise: its tests here, and against the real
    # bridge in tests/agents/ (which builds it).
    local dir stamp want
    for dir in tests/js agent-ts; do
        stamp=$dir/node_modules/.chorus-lock.sha256
        want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
        if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
            say "npm ci ($dir)"
            (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
            echo "$want" >"$stamp"
        fi
    done
}

swarm_wanted() {
    [ "${CHORUS_SKIP_SWARM:-0}" != 1 ] || return 1
    # swarm-up needs root to install packages and start dockerd, unless an engine answers.
    [ "$(id -u)" -eq 0 ] || docker info >/dev/null 2>&1
}

unavailable() {
    if [ "${CHORUS_REQUIRE_SWARM:-0}" = 1 ]; then
        say "error: $1 (CHORUS_REQUIRE_SWARM=1)" >&2
        exit 1
    fi
    say "warning: $1; the tests that need it are skipped" >&2
}

setup_swarm() {
    if ! swarm_wanted; then
        say "no Docker swarm (not root, or CHORUS_SKIP_SWARM=1); swarm tests are skipped"
        return
    fi
    if ! bash scripts/swarm-up.sh --clean; then
        unavailable "the Docker swarm could not be brought up"
        return
    fi
    export CHORUS_TEST_DOCKER_HOST=unix:///var/run/docker.sock
    export CHORUS_TEST_AGENT_IMAGE=chorus-agent:test
    if [ "${CHORUS_SKIP_IMAGES:-0}" = 1 ]; then
        say "CHORUS_SKIP_IMAGES=1: stack images not built"
        return
    fi
    if bash scripts/build-images.sh; then
        export CHORUS_TEST_BRIDGE_IMAGE=chorus-bridge:test
        export CHORUS_TEST_NATS_IMAGE=chorus-nats:test
        export CHORUS_TEST_DOCKER_API_IMAGE=chorus-docker-api:test
    else
        unavailable "the stack's images could not be built"
    fi
}

setup_multinode() {
    if [ "${CHORUS_SKIP_MULTINODE:-0}" = 1 ] || [ "${CHORUS_SKIP_SWARM:-0}" = 1 ]; then
        say "CHORUS_SKIP_MULTINODE=1 (or CHORUS_SKIP_SWARM=1): multi-node tests are skipped"
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        say "not root: no multi-node swarm; its tests are skipped"
        return
    fi
    local start=$SECONDS
    if bash scripts/swarm-nodes.sh up && bash scripts/swarm-nodes.sh restore; then
        # The proxy's image goes onto the managers (where the stack runs it) as an operator
        # without a registry does it: docker save | docker -H <node> load.
        if [ -n "${CHORUS_TEST_DOCKER_API_IMAGE:-}" ]; then
            bash scripts/swarm-nodes.sh load --managers "$CHORUS_TEST_DOCKER_API_IMAGE" \
                || unavailable "the proxy's image could not be copied to the managers"
        fi
        export CHORUS_TEST_MULTINODE=1
        say "multi-node swarm up in $((SECONDS - start))s"
    else
        unavailable "the multi-node swarm could not be brought up"
    fi
}

# Debian's haproxy runs the docker-api proxy's tests (tests/test_docker_api_proxy.py).
setup_haproxy() {
    command -v haproxy >/dev/null 2>&1 && return
    if [ "$(id -u)" -ne 0 ]; then
        say "no haproxy and not root: the proxy tests are skipped (they fail under CI=true)"
        return
    fi
    say "apt-get install haproxy"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null \
        || say "warning: haproxy could not be installed; the proxy tests are skipped" >&2
}

# openssl makes the stack's CA and certificates (scripts/nats-tls.sh) for the TLS tests.
setup_openssl() {
    command -v openssl >/dev/null 2>&1 && return
    if [ "$(id -u)" -ne 0 ]; then
        say "no openssl and not root: the TLS tests fail (install openssl)"
        return
    fi
    say "apt-get install openssl"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl >/dev/null \
        || say "warning: openssl could not be installed" >&2
}

failed=()
not_run=()

setup_promtool() {
    # promtool checks deploy/prometheus's alert rules; as root it is installed (Debian's
    # prometheus package), else the tests that need it skip (and fail under CI=true).
    if ! bash scripts/ensure-promtool.sh; then
        failed+=(promtool)
    elif ! command -v promtool >/dev/null 2>&1; then
        not_run+=("the alert rules' tests (no promtool: apt-get install prometheus)")
    fi
}

setup_venv
setup_js
setup_openssl
setup_haproxy
# shellcheck source=/dev/null
. .venv/bin/activate
setup_swarm
setup_multinode
setup_promtool

say "ruff check . && ruff format --check ."
ruff check . || failed+=(ruff)
ruff format --check . || failed+=(ruff-format)
say "mypy"
mypy || failed+=(mypy)
say "lint-imports (the import contracts in pyproject.toml)"
lint-imports --no-cache || failed+=(lint-imports)
if command -v npm >/dev/null 2>&1; then
    # Formatting, types and the library's own tests (a real nats-server: .venv's); the same
    # scenario against the real bridge runs in pytest (tests/agents/test_scenario.py).
    say "agent-ts: npm run lint && npm test"
    (cd agent-ts && npm run --silent lint) || failed+=(agent-ts-lint)
    (cd agent-ts && npm test --silent) || failed+=(agent-ts-test)
fi
say "pytest $*"
pytest_status=0
pytest "$@" || pytest_status=$?
if [ "${CHORUS_MULTINODE_DOWN:-0}" = 1 ] && [ "${CHORUS_TEST_MULTINODE:-}" = 1 ]; then
    bash scripts/swarm-nodes.sh down || true
fi

for what in "${not_run[@]}"; do
    say "not run: $what" >&2
done
if [ ${#failed[@]} -gt 0 ]; then
    say "failed: ${failed[*]}" >&2
fi
if [ "$pytest_status" -ne 0 ]; then
    exit "$pytest_status"
fi
[ ${#failed[@]} -eq 0 ]
