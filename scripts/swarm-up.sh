#!/usr/bin/env bash
# Brings up a single-node Docker Swarm for the tests, without any image registry:
#   - installs docker.io and busybox-static when they are missing (Debian, as root);
#   - starts dockerd in the background when no engine answers (log: /tmp/dockerd.log);
#   - `docker swarm init --advertise-addr 127.0.0.1` when the node is not in a swarm;
#   - imports the agent image chorus-agent:test from the static busybox (httpd on /www);
#   - creates the attachable overlay network chorus_default.
# Every step is skipped when its result is already there, so running it again is cheap.
#
# Usage: scripts/swarm-up.sh [--clean] [--service NAME [--replicas N]]
#   --clean          first remove the services labelled chorus.test=1 (left by an earlier run).
#   --service NAME   also create (or scale) a service of N busybox httpd agents on port 8080,
#                    labelled chorus.test=1 so that scripts/swarm-down.sh removes it.
set -euo pipefail

AGENT_IMAGE=chorus-agent:test
NETWORK=chorus_default
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
ENGINE_DEADLINE=${ENGINE_DEADLINE:-90}
SERVICE_DEADLINE=${SERVICE_DEADLINE:-180}

service=""
replicas=1
clean=0

usage() {
    echo "usage: $0 [--clean] [--service NAME [--replicas N]]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --service) service=${2:?--service needs a name}; shift 2 ;;
        --replicas) replicas=${2:?--replicas needs a number}; shift 2 ;;
        --clean) clean=1; shift ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
case "$replicas" in ''|*[!0-9]*) echo "--replicas must be a whole number, got '$replicas'" >&2; exit 2 ;; esac

say() { echo "swarm-up: $*"; }
fail() { echo "swarm-up: error: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || fail "run as root: installing packages and starting dockerd need it"
}

apt_updated=0
apt_install() {
    need_root
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# A static busybox matters: the agent image has no libc to link against.
static_busybox() {
    [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    static_busybox || missing+=(busybox-static)
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    command -v dockerd >/dev/null 2>&1 || fail "dockerd is still missing after installing docker.io"
    static_busybox || fail "/bin/busybox is not a static binary; install busybox-static"
}

engine_up() { docker info >/dev/null 2>&1; }

# Whether the process in PIDFILE is alive and is COMMAND. A daemon that was killed can linger as
# a zombie until its parent reaps it: it holds its pid but will never answer.
alive() {
    local pidfile=$1 command=$2 pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    [ "$(cut -d' ' -f3 "/proc/$pid/stat")" != Z ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$command" ]
}

DOCKERD_PIDFILE=/var/run/docker.pid
CONTAINERD_PIDFILE=/var/run/docker/containerd/containerd.pid

start_engine() {
    if engine_up; then
        return
    fi
    need_root
    if alive "$DOCKERD_PIDFILE" dockerd; then
        say "dockerd is running but not answering yet; waiting"
    else
        # Pid files of a daemon that was killed: dockerd refuses to start while its own pid
        # file names a process that still exists (even a zombie).
        rm -f "$DOCKERD_PIDFILE"
        alive "$CONTAINERD_PIDFILE" containerd || rm -f "$CONTAINERD_PIDFILE"
        say "starting dockerd (log: $DOCKERD_LOG)"
        # setsid: the engine outlives this script and the job that ran it.
        # dockerd outlives this script: it gets none of its other open files (a caller's
        # `flock LOCKFILE` would otherwise stay locked while the daemon runs).
        (
            for fd in $(ls /proc/$BASHPID/fd); do
                [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
            done
            setsid dockerd >"$DOCKERD_LOG" 2>&1 < /dev/null &
        )
    fi
    local deadline=$((SECONDS + ENGINE_DEADLINE))
    until engine_up; do
        if [ $SECONDS -ge $deadline ]; then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            fail "the Docker Engine did not answer 'docker info' within ${ENGINE_DEADLINE}s; see $DOCKERD_LOG"
        fi
        sleep 0.5
    done
    say "Docker Engine $(docker version --format '{{.Server.Version}}') is up"
}

init_swarm() {
    local state
    state=$(docker info --format '{{.Swarm.LocalNodeState}}')
    case "$state" in
        active) ;;
        inactive)
            say "docker swarm init --advertise-addr 127.0.0.1"
            docker swarm init --advertise-addr 127.0.0.1 >/dev/null ;;
        *) fail "the node's swarm state is '$state'; fix it (e.g. 'docker swarm leave --force') and retry" ;;
    esac
    [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" = "true" ] \
        || fail "this node is in a swarm but is not a manager; the tests need a manager"
}

build_agent_image() {
    if docker image inspect "$AGENT_IMAGE" >/dev/null 2>&1; then
        return
    fi
    local root
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/www" "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    local applet
    for applet in sh httpd wget nc cat sleep; do
        ln -s busybox "$root/bin/$applet"
    done
    # A static /health answers 200, so health-verifying clients find the agent alive.
    echo ok >"$root/www/health"
    echo "chorus test agent" >"$root/www/index.html"
    say "importing $AGENT_IMAGE from /bin/busybox"
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/bin' --change 'EXPOSE 8080' \
        --change 'CMD ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]' \
        - "$AGENT_IMAGE" >/dev/null
    rm -rf "$root"
}

create_network() {
    if docker network inspect "$NETWORK" >/dev/null 2>&1; then
        local driver attachable
        driver=$(docker network inspect "$NETWORK" --format '{{.Driver}}')
        attachable=$(docker network inspect "$NETWORK" --format '{{.Attachable}}')
        if [ "$driver" != overlay ] || [ "$attachable" != true ]; then
            fail "network $NETWORK exists but is '$driver' (attachable=$attachable); remove it and retry"
        fi
        return
    fi
    say "docker network create -d overlay --attachable $NETWORK"
    docker network create -d overlay --attachable "$NETWORK" >/dev/null
}

remove_test_services() {
    local services
    mapfile -t services < <(docker service ls --filter label=chorus.test=1 --format '{{.Name}}')
    if [ ${#services[@]} -gt 0 ]; then
        say "removing services left by an earlier run: ${services[*]}"
        docker service rm "${services[@]}" >/dev/null
    fi
}

running_tasks() {
    docker service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' \
        | grep -c '^Running' || true
}

ensure_service() {
    local name=$1 count=$2
    if docker service inspect "$name" >/dev/null 2>&1; then
        say "scaling service $name to $count"
        docker service scale --detach "$name=$count" >/dev/null
    else
        say "creating service $name with $count replicas"
        docker service create --detach --no-resolve-image --name "$name" --replicas "$count" \
            --network "$NETWORK" --label chorus.test=1 \
            "$AGENT_IMAGE" /bin/httpd -f -p 8080 -h /www >/dev/null
    fi
    local deadline=$((SECONDS + SERVICE_DEADLINE)) running
    while true; do
        running=$(running_tasks "$name")
        [ "$running" -ge "$count" ] && break
        [ $SECONDS -ge $deadline ] \
            && fail "service $name has $running of $count tasks running after ${SERVICE_DEADLINE}s"
        sleep 1
    done
    say "service $name: $running tasks running"
}

install_packages
start_engine
init_swarm
if [ "$clean" -eq 1 ]; then
    remove_test_services
fi
build_agent_image
create_network
if [ -n "$service" ]; then
    ensure_service "$service" "$replicas"
fi
say "ready (DOCKER_HOST=unix:///var/run/docker.sock, image $AGENT_IMAGE, network $NETWORK)"
