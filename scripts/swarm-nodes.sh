#!/usr/bin/env bash
# A real multi-node Docker Swarm on ONE Linux host, without any image registry, beside the host's
# own dockerd (which it never touches: scripts/swarm-up.sh's one-node swarm keeps running).
#
# Each node is a separate dockerd (with its own managed containerd) in its own network, mount and
# UTS namespaces (hostname chorus-node-N), with its own data root, exec root and socket. The node
# namespaces are joined by veth pairs to one bridge in a private "hub" network namespace, so:
#   - nothing is added to the host's network namespace (no host routes, no host iptables rules:
#     the host dockerd's FORWARD DROP policy and br_netfilter never see the nodes' traffic);
#   - the nodes reach only each other (10.250.0.0/24 by default, no default route);
#   - the host talks to each node through its unix socket /run/chorus-node-N.sock;
#   - inside its own mount namespace, each node's engine answers on NODE_SOCKET as well
#     (/run/chorus-node/docker.sock, on a tmpfs only that node sees): what a container's bind
#     mount of that path reaches there is that node's own engine, as /var/run/docker.sock is on
#     a real machine (the stack's docker-api proxy: DOCKER_SOCKET=/run/chorus-node/docker.sock).
#
# Images: the nodes share no registry. An image reaches every node the way an operator without a
# registry does it: `docker save IMAGE | docker -H <node> load` (the `load` command below), from
# the host's engine (SOURCE). The agent image is imported once on node 1 from the static busybox
# and copied to the other nodes the same way.
#
# Usage: scripts/swarm-nodes.sh COMMAND [ARGS]
#   up [--service NAME] [--replicas N] [--load "IMAGE ..."]
#                  bring up NODES nodes (MANAGERS of them managers), the swarm, the agent image on
#                  every node, the attachable overlay network, optionally images from SOURCE and a
#                  dnsrr service of busybox httpd agents. Every step is skipped when its result is
#                  already there: again when up, it takes about a second.
#   down           stop every node (by PID), remove its cgroups, data, sockets and namespaces.
#   status         one line per node, then `docker node ls` from the first answering manager.
#   env N          print `export DOCKER_HOST=...` for node N.
#   describe       one line per node: number, role, address, socket (what tests/multinode reads).
#   load [--managers] IMAGE...
#                  copy images from SOURCE to every node (or every manager) that lacks them, or
#                  has another build of them.
#   crash N        SIGKILL everything of node N (dockerd, containerd, shims, its containers),
#                  like a machine losing power. `start N` brings it back with its old state.
#   stop N         SIGTERM node N's dockerd (a clean shutdown), then kill what is left.
#   start N        start node N's dockerd again (after crash/stop); it rejoins by itself.
#   partition N    take node N's link down (the node keeps running but nobody reaches it).
#   heal N         bring node N's link back up.
#   drain N | active N   set node N's availability (docker node update, on a manager).
#   restore        undo every fault: links up, nodes started, availability active, all Ready.
#   hub CMD...     run CMD in the hub's network namespace (it reaches the sockets, and the nodes'
#                  addresses from the hub's own, NODE_NET.1; nothing it sends can leave the
#                  machine).
#
# Settings (environment): NODES (5), MANAGERS (3), NODE_NET (10.250.0: node N gets .1N, i.e.
# 10.250.0.11 ...), ADDR_POOL (10.251.0.0/16, the swarm's overlay pool), NETWORK (chorus_mn),
# IMAGE (chorus-agent:test), SOURCE (unix:///var/run/docker.sock: where `load` takes images
# from), NAME (cmn: prefix of the namespaces), DATA (/var/lib/chorus-nodes; a tmpfs of at most
# DATA_SIZE, 6g, unless DATA_TMPFS=0), RUN (/run/cmn: exec roots; short, for unix socket
# paths), SOCK_PREFIX (/run/chorus-node-: node N answers on ${SOCK_PREFIX}N.sock), HEARTBEAT (the swarm's dispatcher heartbeat at init; empty: Docker's
# default 5s), DEADLINE (120 s per wait).
# Needs root. Installs what is missing (Debian): docker.io, busybox-static, iproute2, util-linux.
set -euo pipefail

NODES=${NODES:-5}
MANAGERS=${MANAGERS:-3}
NODE_NET=${NODE_NET:-10.250.0}
ADDR_POOL=${ADDR_POOL:-10.251.0.0/16}
NETWORK=${NETWORK:-chorus_mn}
IMAGE=${IMAGE:-chorus-agent:test}
SOURCE=${SOURCE:-unix:///var/run/docker.sock}
NAME=${NAME:-cmn}
DATA=${DATA:-/var/lib/chorus-nodes}
RUN=${RUN:-/run/cmn}
NODE_SOCKET_DIR=/run/chorus-node
NODE_SOCKET=$NODE_SOCKET_DIR/docker.sock
SOCK_PREFIX=${SOCK_PREFIX:-/run/chorus-node-}
HEARTBEAT=${HEARTBEAT:-}
DATA_TMPFS=${DATA_TMPFS:-1}
DATA_SIZE=${DATA_SIZE:-6g}
DEADLINE=${DEADLINE:-120}
HUB=$NAME-hub

say() { echo "swarm-nodes: $*" >&2; }
fail() { echo "swarm-nodes: error: $*" >&2; exit 1; }

case "$NODES" in ''|*[!0-9]*|0) fail "NODES must be a positive number" ;; esac
case "$MANAGERS" in ''|*[!0-9]*|0) fail "MANAGERS must be a positive number" ;; esac
[ "$MANAGERS" -le "$NODES" ] || fail "MANAGERS ($MANAGERS) > NODES ($NODES)"
[ "$NODES" -le 9 ] || fail "at most 9 nodes (addresses .11-.19)"

ns() { echo "$NAME-$1"; }
addr() { echo "$NODE_NET.1$1"; }
sock() { echo "${SOCK_PREFIX}$1.sock"; }
pidfile() { echo "$RUN/$1.pid"; }
log() { echo "$DATA/node$1.log"; }
cgparent() { echo "chorus-node-$1"; }
dk() { local n=$1; shift; docker -H "unix://$(sock "$n")" "$@"; }

# Whether the process in PIDFILE is alive (not a zombie) and is COMMAND.
alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    [ "$(cut -d' ' -f3 "/proc/$pid/stat")" != Z ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

answers() { dk "$1" info >/dev/null 2>&1; }

wait_for() { # DESCRIPTION COMMAND...: retry COMMAND until it succeeds or DEADLINE passes
    local what=$1; shift
    local deadline=$((SECONDS + DEADLINE))
    until "$@"; do
        [ $SECONDS -lt $deadline ] || fail "timed out after ${DEADLINE}s waiting for: $what"
        sleep 0.5
    done
}

# --- network: a hub namespace with a bridge, one namespace per node -----------------------------

# --- what the nodes need, installed when missing (Debian) ---------------------------------

static_busybox() { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    static_busybox || missing+=(busybox-static)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v nsenter >/dev/null 2>&1 && command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
    [ ${#missing[@]} -eq 0 ] && return
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    command -v dockerd >/dev/null 2>&1 || fail "dockerd is still missing after installing docker.io"
    static_busybox || fail "/bin/busybox is not a static binary; install busybox-static"
}

netns_exists() { [ -e "/run/netns/$1" ]; }

# The nodes' data roots (images, containers, swarm state, logs) live in a tmpfs by default:
# images load at memory speed and `down` is a umount, where deleting the same files from a
# disk mounted with `discard` took 15 s per node. About 150 MB per node plus its images.
ensure_data() {
    mkdir -p "$DATA"
    [ "$DATA_TMPFS" = 1 ] || return 0
    mountpoint -q "$DATA" && return
    [ -z "$(ls -A "$DATA")" ] || fail "$DATA is not empty and not a tmpfs (run down first, or DATA_TMPFS=0)"
    mount -t tmpfs -o "size=$DATA_SIZE,mode=0711" chorus-nodes "$DATA"
    say "tmpfs $DATA (at most $DATA_SIZE)"
}

ensure_hub() {
    netns_exists "$HUB" || { ip netns add "$HUB"; say "netns $HUB"; }
    ip -n "$HUB" link set lo up
    ip -n "$HUB" link show br0 >/dev/null 2>&1 || ip -n "$HUB" link add br0 type bridge
    ip -n "$HUB" link set br0 up
    # The hub's own address on the nodes' link (.1): what `hub CMD` runs reaches the nodes'
    # addresses (a stack's host-mode ports), as an operator's machine on their network would.
    ip -n "$HUB" addr replace "$NODE_NET.1/24" dev br0
}

ensure_node_net() {
    local n=$1 nsn
    nsn=$(ns "$n")
    netns_exists "$nsn" || { ip netns add "$nsn"; say "netns $nsn ($(addr "$n"))"; }
    ip -n "$nsn" link set lo up
    if ! ip -n "$nsn" link show eth0 >/dev/null 2>&1; then
        ip -n "$HUB" link del "n$n" 2>/dev/null || true
        ip -n "$HUB" link add "n$n" type veth peer name eth0 netns "$nsn"
    fi
    ip -n "$HUB" link set "n$n" master br0 up
    ip -n "$nsn" addr replace "$(addr "$n")/24" dev eth0
    ip -n "$nsn" link set eth0 up
}

# --- one dockerd per node --------------------------------------------------------------------

# Whether node N's running dockerd answers on NODE_SOCKET in its own mount namespace (a node
# started by an older copy of this script does not).
has_node_socket() {
    nsenter --mount --target "$(cat "$(pidfile "$1")")" -- test -S "$NODE_SOCKET" 2>/dev/null
}

# Start node N's dockerd unless it runs; `start_node` also waits until it answers.
launch_node() {
    local n=$1
    if alive "$(pidfile "$n")" dockerd; then
        has_node_socket "$n" && return
        say "node $n has no $NODE_SOCKET: restarting its dockerd (its swarm state is kept)"
        stop_node "$n"
    fi
    ensure_node_net "$n"
    rm -f "$(pidfile "$n")" "$(sock "$n")"
    # A containerd killed with its node can linger as a zombie for a moment: dockerd then takes
    # its pid file for a live containerd, waits for its socket and gives up after 2 minutes.
    alive "$RUN/$n/containerd/containerd.pid" containerd || rm -f "$RUN/$n/containerd/containerd.pid"
    mkdir -p "$DATA/node$n" "$RUN/$n" "$NODE_SOCKET_DIR"
    # Inside fresh mount + UTS namespaces (slave propagation: nothing leaks back to the host):
    # a sysfs of the node's network namespace (what `ip netns exec` does), keeping the host's
    # cgroup mounts, which the fresh sysfs would hide.
    local script
    script=$(cat <<EOF
set -e
hostname chorus-node-$n
hold=$RUN/$n.cgroup
mkdir -p \$hold
mount --rbind /sys/fs/cgroup \$hold
umount -l /sys
mount -t sysfs sysfs /sys
mount --rbind \$hold /sys/fs/cgroup
umount -l \$hold
mount -t tmpfs -o size=1m,mode=0755 chorus-node-$n $NODE_SOCKET_DIR
exec dockerd --data-root $DATA/node$n --exec-root $RUN/$n --pidfile $(pidfile "$n") \
    -H unix://$(sock "$n") -H unix://$NODE_SOCKET --bip 172.30.$n.1/24 --cgroup-parent $(cgparent "$n") \
    --exec-opt native.cgroupdriver=cgroupfs --swarm-default-advertise-addr $(addr "$n")
EOF
)
    say "starting node $n dockerd (netns $(ns "$n"), log $(log "$n"))"
    # The daemons outlive this script: they get none of its other open files (a caller's
    # `flock LOCKFILE swarm-nodes.sh up` would otherwise stay locked while the nodes run).
    (
        for fd in $(ls /proc/$BASHPID/fd); do
            [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
        done
        setsid nsenter --net="/run/netns/$(ns "$n")" -- \
            unshare --mount --uts --propagation slave -- /bin/sh -c "$script" \
            >>"$(log "$n")" 2>&1 </dev/null &
    )
}

wait_answers() {
    wait_for "node $1 dockerd to answer on $(sock "$1") (see $(log "$1"))" answers "$1"
}

start_node() { launch_node "$1"; wait_answers "$1"; }

# PIDs of everything that belongs to node N: processes in its network namespace (dockerd,
# containerd, shims, docker-proxy) and processes in its containers' cgroups.
node_pids() {
    local n=$1 f
    if netns_exists "$(ns "$n")"; then
        ip netns pids "$(ns "$n")" 2>/dev/null || true
    fi
    # cgroup v1 (the pids hierarchy) or v2 (the unified one)
    for f in /sys/fs/cgroup/pids/"$(cgparent "$n")"/*/cgroup.procs \
             /sys/fs/cgroup/pids/"$(cgparent "$n")"/cgroup.procs \
             /sys/fs/cgroup/"$(cgparent "$n")"/*/cgroup.procs \
             /sys/fs/cgroup/"$(cgparent "$n")"/cgroup.procs; do
        [ -r "$f" ] && cat "$f"
    done
    return 0
}

kill_node() { # N SIGNAL: signal every process of node N, by PID
    local n=$1 sig=$2 pid
    for pid in $(node_pids "$n" | sort -u); do
        kill -s "$sig" "$pid" 2>/dev/null || true
    done
}

remove_cgroups() {
    local n=$1 d
    for d in /sys/fs/cgroup/*/"$(cgparent "$n")" /sys/fs/cgroup/"$(cgparent "$n")"; do
        [ -d "$d" ] || continue
        # depth first: the containers' groups, then the parent
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
}

stop_node() { # N [hard]
    local n=$1 hard=${2:-} pid i
    if [ -z "$hard" ] && alive "$(pidfile "$n")" dockerd; then
        pid=$(cat "$(pidfile "$n")")
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 60); do
            alive "$(pidfile "$n")" dockerd || break
            sleep 0.5
        done
    fi
    kill_node "$n" KILL
    for i in $(seq 1 20); do
        [ -z "$(node_pids "$n")" ] && break
        sleep 0.25
        kill_node "$n" KILL
    done
    [ -z "$(node_pids "$n")" ] || say "warning: node $n still has processes: $(node_pids "$n" | tr '\n' ' ')"
    remove_cgroups "$n"
    rm -f "$(sock "$n")" "$(pidfile "$n")"
}

# --- the swarm ---------------------------------------------------------------------------------

swarm_state() { dk "$1" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null | tr -d '\n'; }

init_swarm() {
    case "$(swarm_state 1)" in
        active) return ;;
        inactive) ;;
        *) fail "node 1 swarm state is '$(swarm_state 1)'" ;;
    esac
    say "docker swarm init on node 1 ($(addr 1))${HEARTBEAT:+, dispatcher heartbeat $HEARTBEAT}"
    dk 1 swarm init --advertise-addr "$(addr 1)" --listen-addr "$(addr 1):2377" \
        --data-path-addr "$(addr 1)" --default-addr-pool "$ADDR_POOL" \
        ${HEARTBEAT:+--dispatcher-heartbeat "$HEARTBEAT"} >/dev/null
}

leader() { # the first node that answers as a manager
    local n
    for n in $(seq 1 "$MANAGERS"); do
        if [ "$(dk "$n" info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ]; then
            echo "$n"; return 0
        fi
    done
    return 1
}

join_node() {
    local n=$1 role=$2 state token m
    state=$(swarm_state "$n")
    [ "$state" = active ] && return
    [ "$state" = inactive ] || fail "node $n swarm state is '$state'"
    m=$(leader) || fail "no manager answers"
    token=$(dk "$m" swarm join-token -q "$role")
    say "node $n joins as $role"
    dk "$n" swarm join --token "$token" --advertise-addr "$(addr "$n")" \
        --listen-addr "$(addr "$n"):2377" --data-path-addr "$(addr "$n")" "$(addr "$m"):2377" >/dev/null
}

has_leader() { leader >/dev/null; }

all_ready() {
    local m ready
    m=$(leader) || return 1
    ready=$(dk "$m" node ls --format '{{.Status}}' | grep -c '^Ready$' || true)
    [ "$ready" -ge "$NODES" ]
}

# The agent image, imported on node 1 from the static busybox (no registry, no base image).
import_agent_image() {
    dk 1 image inspect "$IMAGE" >/dev/null 2>&1 && return
    static_busybox || fail "/bin/busybox must be a static binary (apt-get install busybox-static)"
    local root applet
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/www" "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    for applet in sh httpd wget nc cat sleep; do ln -s busybox "$root/bin/$applet"; done
    echo ok >"$root/www/health"
    echo "chorus test agent" >"$root/www/index.html"
    tar -C "$root" -c . | dk 1 import --change 'ENV PATH=/bin' --change 'EXPOSE 8080' \
        --change 'CMD ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]' - "$IMAGE" >/dev/null
    rm -rf "$root"
    say "node 1: imported $IMAGE"
}

image_id() { docker -H "$1" image inspect --format '{{.Id}}' "$2" 2>/dev/null; }

# Copy IMAGE from the engine at FROM to every node that lacks this very build of it: what an
# operator without a registry does (`docker save IMAGE | docker -H <node> load`).
copy_image() { # FROM IMAGE [NODE...]: to the nodes given (default: every node)
    local from=$1 image=$2 want n
    shift 2
    local targets=("$@")
    [ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(seq 1 "$NODES")
    want=$(image_id "$from" "$image") || fail "image $image is not on $from (build it first)"
    local archive="$DATA/image-$$.tar"
    for n in "${targets[@]}"; do
        [ "$(image_id "unix://$(sock "$n")" "$image")" = "$want" ] && continue
        alive "$(pidfile "$n")" dockerd || { say "node $n is down: $image not copied"; continue; }
        # Saved once, loaded on each node that needs it.
        [ -s "$archive" ] || docker -H "$from" save -o "$archive" "$image" \
            || { rm -f "$archive"; fail "could not save $image from $from"; }
        dk "$n" load -q -i "$archive" >/dev/null \
            || { rm -f "$archive"; fail "could not load $image into node $n"; }
        # The build this one replaces is left untagged: removed (unless a container still
        # runs it), or every load of a new build would stay in the nodes' tmpfs until it fills.
        dk "$n" image prune -f >/dev/null || say "node $n: could not remove untagged images"
        say "node $n: loaded $image"
    done
    rm -f "$archive"
}

ensure_network() {
    local m
    m=$(leader) || fail "no manager answers"
    dk "$m" network inspect "$NETWORK" >/dev/null 2>&1 && return
    say "overlay network $NETWORK"
    dk "$m" network create -d overlay --attachable "$NETWORK" >/dev/null
}

running_tasks() {
    dk "$1" service ps "$2" --filter desired-state=running --format '{{.CurrentState}}' \
        | grep -c '^Running' || true
}

ensure_service() {
    local name=$1 count=$2 m
    m=$(leader) || fail "no manager answers"
    if dk "$m" service inspect "$name" >/dev/null 2>&1; then
        dk "$m" service scale --detach "$name=$count" >/dev/null
    else
        say "service $name: $count replicas (endpoint-mode dnsrr, network $NETWORK)"
        dk "$m" service create --detach --no-resolve-image --name "$name" --replicas "$count" \
            --endpoint-mode dnsrr --network "$NETWORK" --label chorus.test=1 \
            "$IMAGE" /bin/httpd -f -p 8080 -h /www >/dev/null
    fi
    local deadline=$((SECONDS + DEADLINE)) running
    while true; do
        running=$(running_tasks "$m" "$name")
        [ "$running" -ge "$count" ] && break
        [ $SECONDS -lt $deadline ] || fail "service $name: $running of $count running after ${DEADLINE}s"
        sleep 1
    done
    say "service $name: $running tasks running on $(dk "$m" service ps "$name" \
        --filter desired-state=running --format '{{.Node}}' | sort -u | wc -l) nodes"
}

cmd_up() {
    local service="" replicas=1 images="" n image
    while [ $# -gt 0 ]; do
        case "$1" in
            --service) service=${2:?}; shift 2 ;;
            --replicas) replicas=${2:?}; shift 2 ;;
            --load) images=${2?--load needs image names (may be empty)}; shift 2 ;;
            *) fail "unknown argument to up: $1" ;;
        esac
    done
    local t0=$SECONDS
    install_packages
    ensure_data
    mkdir -p "$RUN"
    ensure_hub
    for n in $(seq 1 "$NODES"); do ensure_node_net "$n"; done
    # All at once, then wait: the nodes start in parallel.
    for n in $(seq 1 "$NODES"); do launch_node "$n"; done
    for n in $(seq 1 "$NODES"); do wait_answers "$n"; done
    init_swarm
    for n in $(seq 2 "$NODES"); do
        if [ "$n" -le "$MANAGERS" ]; then join_node "$n" manager; else join_node "$n" worker; fi
    done
    wait_for "all $NODES nodes Ready" all_ready
    import_agent_image
    copy_image "unix://$(sock 1)" "$IMAGE"
    for image in $images; do copy_image "$SOURCE" "$image"; done
    ensure_network
    [ -z "$service" ] || ensure_service "$service" "$replicas"
    say "up in $((SECONDS - t0))s: $NODES nodes ($MANAGERS managers); managers' sockets:" \
        "$(for n in $(seq 1 "$MANAGERS"); do printf 'unix://%s ' "$(sock "$n")"; done)"
}

cmd_down() {
    local n
    for n in $(seq 1 9); do
        if netns_exists "$(ns "$n")" || [ -e "$(pidfile "$n")" ] || [ -d "$DATA/node$n" ] \
            || [ -d "/sys/fs/cgroup/pids/$(cgparent "$n")" ]; then
            say "removing node $n"
            stop_node "$n" hard
            if [ -d "$DATA/node$n" ]; then
                # The node's mounts lived in its own mount namespace, gone with its processes.
                rm -rf "${DATA:?}/node$n" || fail "could not remove $DATA/node$n (still mounted?)"
            fi
            rm -f "$(log "$n")"
            rm -rf "${RUN:?}/$n" "$RUN/$n.cgroup"
            netns_exists "$(ns "$n")" && ip netns del "$(ns "$n")"
        fi
    done
    if netns_exists "$HUB"; then ip netns del "$HUB"; say "removed netns $HUB"; fi
    # `ip netns add` made /run/netns a mount of its own; an empty one goes too.
    if [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
        umount /run/netns 2>/dev/null || true
        rmdir /run/netns 2>/dev/null || true
    fi
    rmdir "$RUN" "$NODE_SOCKET_DIR" 2>/dev/null || true
    if mountpoint -q "$DATA"; then
        # Every node process is gone, so is every mount namespace that held it.
        umount "$DATA" || fail "could not unmount $DATA (busy: $(fuser -m "$DATA" 2>&1 | tr -s ' '))"
        say "unmounted $DATA"
    fi
    rmdir "$DATA" 2>/dev/null || true
    say "down"
}

cmd_status() {
    local n m st pid
    for n in $(seq 1 "$NODES"); do
        st=$(swarm_state "$n" || true)
        pid=-
        if alive "$(pidfile "$n")" dockerd; then pid=$(cat "$(pidfile "$n")"); fi
        printf 'node %s  %-12s pid=%-8s swarm=%s\n' "$n" "$(addr "$n")" "$pid" "${st:-unreachable}"
    done
    if m=$(leader); then dk "$m" node ls; fi
}

availability() { # N drain|active
    local m
    m=$(leader) || fail "no manager answers"
    dk "$m" node update --availability "$2" "chorus-node-$1" >/dev/null
    say "node $1: availability $2"
}

# Undo every fault: links up, every node started, availability active, and wait until the
# swarm lists every node Ready and active again.
cmd_restore() {
    local n
    for n in $(seq 1 "$NODES"); do
        netns_exists "$(ns "$n")" || fail "node $n does not exist (run up)"
        ip -n "$HUB" link set "n$n" up
        launch_node "$n"
    done
    for n in $(seq 1 "$NODES"); do wait_answers "$n"; done
    wait_for "a manager to answer" has_leader
    local m
    m=$(leader)
    for n in $(seq 1 "$NODES"); do
        if [ "$(dk "$m" node inspect --format '{{.Spec.Availability}}' "chorus-node-$n")" != active ]; then
            availability "$n" active
        fi
    done
    wait_for "all $NODES nodes Ready" all_ready
}

node_arg() {
    case "${1:-}" in ''|*[!0-9]*) fail "expected a node number" ;; esac
    [ "$1" -ge 1 ] && [ "$1" -le "$NODES" ] || fail "node $1 is not 1..$NODES"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    describe|env|'') ;;
    *) [ "$(id -u)" -eq 0 ] || fail "run as root (network namespaces, mounts, dockerd)" ;;
esac
case "$command" in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) node_arg "${1:-}"; echo "export DOCKER_HOST=unix://$(sock "$1")" ;;
    describe)
        for n in $(seq 1 "$NODES"); do
            role=worker; [ "$n" -le "$MANAGERS" ] && role=manager
            echo "$n $role $(addr "$n") unix://$(sock "$n")"
        done ;;
    crash) node_arg "${1:-}"; kill_node "$1" KILL; say "node $1: SIGKILL sent to all its processes" ;;
    stop) node_arg "${1:-}"; stop_node "$1" ;;
    start) node_arg "${1:-}"; start_node "$1" ;;
    partition) node_arg "${1:-}"; ip -n "$HUB" link set "n$1" down; say "node $1: link down" ;;
    heal) node_arg "${1:-}"; ip -n "$HUB" link set "n$1" up; say "node $1: link up" ;;
    drain|active) node_arg "${1:-}"; availability "$1" "$command" ;;
    restore) cmd_restore ;;
    load)
        targets=()
        if [ "${1:-}" = --managers ]; then mapfile -t targets < <(seq 1 "$MANAGERS"); shift; fi
        [ $# -gt 0 ] || fail "load needs image names"
        for i in "$@"; do copy_image "$SOURCE" "$i" "${targets[@]}"; done ;;
    hub) [ $# -gt 0 ] || fail "hub needs a command"; exec nsenter --net="/run/netns/$HUB" -- "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
esac
