#!/usr/bin/env bash
# Deploys docker-compose.swarm.yml as a stack on the local swarm and checks it end to end:
#   1. NATS (TLS on its client port, the stack's own CA), the docker-api proxy (on the
#      manager), two bridges (a leader and a standby) and 10 simulated agents
#      (`chorus-bridge sim-agent`, in the bridge image) come up;
#   2. the agents bucket, read from the host through NATS's host-mode port as the coordinator,
#      lists exactly the 10 running tasks of the agents' service, all of them on the bus;
#   3. with the NATS auth callout on (AUTH_CALLOUT=true, the default): NATS sees each agent
#      connected from its task's overlay address, admitted as its own id (the server's /connz,
#      read inside the NATS container), and an agent, tried from inside its own container,
#      may publish as itself but not as another agent;
#   4. a broadcast sent from the host (`chorus-bridge broadcast -`) reaches the 10;
#   5. from inside a bridge's container, the proxy refuses POST /containers/create (403) and
#      answers GET /tasks (200), at each of its addresses (tasks.docker-api);
#   6. every container of the stack runs as a user that is not root, with a read-only root
#      filesystem, no capabilities and no-new-privileges; one bridge leads, one stands by.
# The host talks only to 127.0.0.1 (NATS's published port, over TLS verified against the
# stack's CA); the bridge reaches the agents on the stack's own overlay network. Whatever happens, the stack, its network, volume, secrets and
# configs are removed at the end. Exit status 0 only when every check passed.
#
# Usage: scripts/stack-test.sh [--skip-build]
#   --skip-build   use the images as they are (scripts/build-images.sh made them already)
# Environment:
#   STACK (chorus_stacktest)            stack name; its network is ${STACK}_net, never the
#                                       chorus_default network of scripts/swarm-up.sh
#   AGENT_REPLICAS (10)                 agents to deploy and expect
#   BRIDGE_IMAGE (chorus-bridge:test), NATS_IMAGE (chorus-nats:test), AGENT_IMAGE (BRIDGE_IMAGE),
#   DOCKER_API_IMAGE (chorus-docker-api:test)
#   STACK_DEADLINE (240)                seconds for the stack to converge
#   AUTH_CALLOUT (true)                 false: nats.conf without the callout (check 3 then only
#                                       reports the addresses NATS sees)
#   NATS_ENDPOINT_MODE (dnsrr)          vip: clients reach NATS through the service's virtual
#                                       IP (to measure which address NATS then sees)
#   CLUSTER (0)                         1: with docker-compose.cluster.yml, three NATS servers
set -euo pipefail
cd "$(dirname "$0")/.."

STACK=${STACK:-chorus_stacktest}
AGENT_REPLICAS=${AGENT_REPLICAS:-10}
BRIDGE_IMAGE=${BRIDGE_IMAGE:-chorus-bridge:test}
NATS_IMAGE=${NATS_IMAGE:-chorus-nats:test}
AGENT_IMAGE=${AGENT_IMAGE:-$BRIDGE_IMAGE}
DOCKER_API_IMAGE=${DOCKER_API_IMAGE:-chorus-docker-api:test}
STACK_DEADLINE=${STACK_DEADLINE:-240}
AUTH_CALLOUT=${AUTH_CALLOUT:-true}
NATS_ENDPOINT_MODE=${NATS_ENDPOINT_MODE:-dnsrr}
CLUSTER=${CLUSTER:-0}
CLEANUP_DEADLINE=90
NETWORK=${STACK}_net

build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --skip-build) build=0; shift ;;
        *) echo "usage: $0 [--skip-build]" >&2; exit 2 ;;
    esac
done

started=$SECONDS
say() { echo "stack-test: [$((SECONDS - started))s] $*"; }
fail() { echo "stack-test: error: $*" >&2; exit 1; }

if [ -x .venv/bin/chorus-bridge ]; then
    CLI=.venv/bin/chorus-bridge
    PY=.venv/bin/python
else
    CLI=$(command -v chorus-bridge) || fail "chorus-bridge is not installed (create .venv: pip install -e .)"
    PY=python3
fi

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stack_containers() {
    docker ps -aq --filter "label=com.docker.stack.namespace=$STACK"
}

# Removes the stack and everything it made; safe to run when nothing is there.
remove_stack() {
    if docker stack ls --format '{{.Name}}' | grep -qx "$STACK"; then
        say "docker stack rm $STACK"
        docker stack rm "$STACK" >/dev/null || true
    fi
    local deadline=$((SECONDS + CLEANUP_DEADLINE))
    # The services go at once; their containers and the network follow asynchronously.
    while [ -n "$(stack_containers)" ] || docker network inspect "$NETWORK" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "stack-test: warning: containers or network $NETWORK of $STACK still there" \
                "after ${CLEANUP_DEADLINE}s" >&2
            break
        fi
        if [ -z "$(stack_containers)" ]; then
            docker network rm "$NETWORK" >/dev/null 2>&1 || true
        fi
        sleep 1
    done
    local leftovers
    leftovers=$(docker volume ls -q --filter "label=com.docker.stack.namespace=$STACK")
    if [ -n "$leftovers" ]; then
        # shellcheck disable=SC2086  # one volume name per word
        docker volume rm $leftovers >/dev/null || true
    fi
    leftovers=$(docker secret ls -q --filter "label=com.docker.stack.namespace=$STACK")
    # shellcheck disable=SC2086
    [ -z "$leftovers" ] || docker secret rm $leftovers >/dev/null || true
    leftovers=$(docker config ls -q --filter "label=com.docker.stack.namespace=$STACK")
    # shellcheck disable=SC2086
    [ -z "$leftovers" ] || docker config rm $leftovers >/dev/null || true
}

diagnose() {
    echo "----- docker stack ps $STACK" >&2
    docker stack ps "$STACK" --no-trunc \
        --format '{{.Name}} {{.CurrentState}} {{.Error}}' 2>&1 | head -n 30 >&2 || true
    local service
    for service in bridge nats docker-api agent; do
        echo "----- docker service logs ${STACK}_$service (last 30 lines)" >&2
        docker service logs --no-task-ids --tail 30 "${STACK}_$service" 2>&1 | tail -n 30 >&2 || true
    done
}

secrets_dir=""
deployed=0
on_exit() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$status" -ne 0 ] && [ "$deployed" -eq 1 ]; then
        diagnose
    fi
    remove_stack
    [ -z "$secrets_dir" ] || rm -rf "$secrets_dir"
    if [ "$status" -eq 0 ]; then
        say "PASS (cleaned up)"
    else
        echo "stack-test: FAIL (exit $status; cleaned up)" >&2
    fi
    exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# --- the swarm and the images -----------------------------------------------------------------
bash scripts/swarm-up.sh >/dev/null || fail "the Docker swarm could not be brought up (scripts/swarm-up.sh)"
if [ "$build" -eq 1 ]; then
    say "building images"
    bash scripts/build-images.sh >/dev/null || fail "the images could not be built (scripts/build-images.sh)"
fi
for image in "$BRIDGE_IMAGE" "$NATS_IMAGE" "$AGENT_IMAGE" "$DOCKER_API_IMAGE"; do
    docker image inspect "$image" >/dev/null 2>&1 || fail "image $image is missing (scripts/build-images.sh)"
done
remove_stack  # a stack left by a run that was killed

# --- secrets, ports, deploy ---------------------------------------------------------------------
secrets_dir=$(mktemp -d /tmp/chorus-stack-secrets.XXXXXX)
chmod 700 "$secrets_dir"
for user in bridge agent coord ops sys route; do
    head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$secrets_dir/nats_${user}_password"
done
"$PY" scripts/callout-keys.py "$secrets_dir" >/dev/null || fail "scripts/callout-keys.py failed"
bash scripts/nats-tls.sh "$secrets_dir" 2>/dev/null || fail "scripts/nats-tls.sh failed"
nats_port=$(free_port)
compose=(-c docker-compose.swarm.yml)
if [ "$CLUSTER" = 1 ]; then
    compose+=(-c docker-compose.cluster.yml)
    NATS_PUBLISHED_PORT_2=$(free_port) NATS_PUBLISHED_PORT_3=$(free_port)
    export NATS_PUBLISHED_PORT_2 NATS_PUBLISHED_PORT_3
fi

say "docker stack deploy $STACK: $AGENT_REPLICAS agents, NATS on 127.0.0.1:$nats_port (TLS), auth callout $AUTH_CALLOUT, NATS endpoint mode $NATS_ENDPOINT_MODE, cluster $CLUSTER"
deployed=1
# STACK names the agents' service (${STACK}_agent) inside the compose file, too.
export STACK
CHORUS_NETWORK=$NETWORK CHORUS_SECRETS_DIR=$secrets_dir \
    NATS_IMAGE=$NATS_IMAGE BRIDGE_IMAGE=$BRIDGE_IMAGE AGENT_IMAGE=$AGENT_IMAGE \
    DOCKER_API_IMAGE=$DOCKER_API_IMAGE AGENT_REPLICAS=$AGENT_REPLICAS \
    NATS_PUBLISHED_PORT=$nats_port DOCKER_GID=$(stat -c %g /var/run/docker.sock) \
    AUTH_CALLOUT=$AUTH_CALLOUT NATS_ENDPOINT_MODE=$NATS_ENDPOINT_MODE \
    docker stack deploy --resolve-image never "${compose[@]}" "$STACK" >/dev/null

# The host's view of the bus: the coordinator user, through NATS's host-mode port, over TLS
# verified against the stack's CA (its certificate names 127.0.0.1).
coordinator() {
    env -u NATS_CREDS -u NATS_TOKEN -u NATS_TLS_CERT -u NATS_TLS_KEY \
        NATS_URL="nats://127.0.0.1:$nats_port" NATS_TLS_CA="$secrets_dir/nats_tls_ca.pem" \
        NATS_USER=coordinator NATS_PASSWORD="$(cat "$secrets_dir/nats_coord_password")" \
        BRIDGE_SUBJECT_PREFIX=chorus BRIDGE_KV_BUCKET=chorus_agents "$CLI" "$@"
}

running_agent_tasks() {
    docker service ps "${STACK}_agent" --filter desired-state=running --no-trunc \
        --format '{{.ID}} {{.CurrentState}}' 2>/dev/null | awk '$2 == "Running" {print $1}' | sort
}

# Prints "listed on_bus matches" for the bucket (JSON on stdin) against the running tasks ($1).
compare_bucket() {
    "$PY" -c '
import json, sys
agents = json.load(sys.stdin)
tasks = set(sys.argv[1].split())
ids = {a["id"] for a in agents}
print(len(agents), sum(1 for a in agents if a["on_bus"]), int(ids == tasks and len(ids) == len(agents)))
' "$1"
}

# --- check 1 and 2: the bucket lists the running agents, all on the bus -------------------------
deadline=$((SECONDS + STACK_DEADLINE))
say "waiting for the bucket to list the $AGENT_REPLICAS running agents, all on the bus"
last=""
while true; do
    tasks=$(running_agent_tasks)
    listing=$(coordinator agents --json 2>/dev/null) || listing=""
    state="no bucket yet"
    if [ -n "$listing" ]; then
        read -r listed on_bus matches < <(compare_bucket "$tasks" <<<"$listing")
        state="bucket $listed agents ($on_bus on the bus), $(wc -w <<<"$tasks") tasks running"
        if [ "$listed" -eq "$AGENT_REPLICAS" ] && [ "$on_bus" -eq "$AGENT_REPLICAS" ] \
            && [ "$matches" -eq 1 ]; then
            break
        fi
    fi
    [ "$state" = "$last" ] || say "$state"
    last=$state
    [ $SECONDS -lt $deadline ] || fail "after ${STACK_DEADLINE}s: $state (want $AGENT_REPLICAS, the running tasks, all on the bus)"
    sleep 2
done
say "check: the bucket lists the $AGENT_REPLICAS running tasks of ${STACK}_agent, all on the bus"
coordinator agents

# --- check 3: NATS sees each agent at its task's address, admitted as itself only -------------
container_of() {
    docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_$1" | head -n 1
}
# Monitoring is never published: it is read inside each NATS container, on its own loopback;
# with the cluster, an agent is connected to one of the three servers.
connz="[]"
for service in nats nats-1 nats-2 nats-3; do
    container=$(container_of "$service")
    [ -n "$container" ] || continue
    one=$(docker exec "$container" wget -qO- 'http://127.0.0.1:8222/connz?auth=true&limit=4096') \
        || fail "could not read /connz inside the container of ${STACK}_$service"
    connz=$("$PY" -c '
import json, sys
print(json.dumps(json.loads(sys.argv[1]) + (json.loads(sys.argv[2])["connections"] or [])))' \
        "$connz" "$one")
done
[ "$connz" != "[]" ] || fail "no NATS container of $STACK answered"
listing=$(coordinator agents --json)
view=$("$PY" -c '
import json, sys
conns = json.loads(sys.argv[1])
agents = {a["id"]: a["address"] for a in json.loads(sys.argv[2])}
static = {"bridge", "coordinator", "ops", "sys"}
seen = [(c.get("authorized_user", ""), c["ip"]) for c in conns
        if c.get("authorized_user", "") not in static]
addresses = set(agents.values())
from_tasks = sum(1 for _, ip in seen if ip in addresses)
as_itself = sum(1 for user, ip in seen if agents.get(user) == ip)
print(len(seen), from_tasks, as_itself, ",".join(sorted({ip for _, ip in seen})))
' "$connz" "$listing")
read -r agent_conns from_tasks as_itself seen_ips <<<"$view"
say "NATS sees $agent_conns agent connections, $from_tasks from a task's overlay address, $as_itself admitted as the task at that address; client addresses: $seen_ips"
if [ "$AUTH_CALLOUT" = true ]; then
    if [ "$as_itself" -ne "$AGENT_REPLICAS" ] || [ "$agent_conns" -ne "$AGENT_REPLICAS" ]; then
        fail "NATS has $agent_conns agent connections, $as_itself admitted as the task at their address; want $AGENT_REPLICAS of $AGENT_REPLICAS"
    fi
    say "check: NATS sees the $AGENT_REPLICAS agents at their task addresses, each admitted as itself"
    # From inside one agent's container: as itself it may publish, as another it may not.
    agent_container=$(container_of agent)
    me=$(docker inspect -f '{{index .Config.Labels "com.docker.swarm.task.id"}}' "$agent_container")
    other=$("$PY" -c '
import json, sys
print(next(a["id"] for a in json.loads(sys.argv[1]) if a["id"] != sys.argv[2]))' "$listing" "$me")
    probe=$(docker exec "$agent_container" python3 -c '
import asyncio, json, os, ssl, sys
import nats

async def main(me, other):
    errors = []
    async def on_error(exc):
        errors.append(str(exc))
    password = open("/run/secrets/nats_agent_password").read().strip()
    tls = ssl.create_default_context(cafile=os.environ["NATS_TLS_CA"])
    nc = await nats.connect(os.environ["NATS_URL"].split(","), user="agent", password=password,
                            inbox_prefix="_INBOX.agent", error_cb=on_error, tls=tls,
                            allow_reconnect=False, connect_timeout=5)
    await nc.publish(f"chorus.council.stack-probe.acks.{me}", b"{}")
    await nc.flush()
    own = len(errors)
    for subject in (f"$KV.chorus_presence.{other}", f"chorus.council.stack-probe.acks.{other}",
                    f"chorus.council.stack-probe.claims.{other}"):
        await nc.publish(subject, b"{}")
    await nc.flush()
    for _ in range(50):  # the violations come back asynchronously, after the flush
        if len(errors) >= own + 3:
            break
        await asyncio.sleep(0.1)
    await nc.close()
    print(json.dumps({"own_errors": errors[:own], "denied": errors[own:]}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
' "$me" "$other") || fail "the probe inside agent container $agent_container failed"
    echo "$probe"
    read -r own_errors denied < <("$PY" -c '
import json, sys
r = json.loads(sys.argv[1])
print(len(r["own_errors"]), sum("permissions violation" in e.lower() for e in r["denied"]))' "$probe")
    [ "$own_errors" -eq 0 ] && [ "$denied" -eq 3 ] \
        || fail "an agent acking as itself got $own_errors errors; as another, $denied of 3 publishes were denied"
    say "check: an agent publishes as itself; as another agent, 3 of 3 publishes are denied"
fi

# --- check 4: a broadcast from the host reaches every agent -------------------------------------
opportunity=$(printf '{"id": "stack-test-%s", "project": "chorus", "title": "stack test", "roles": [{"name": "tpm", "core": true}, {"name": "senior-software-architect", "core": true}, {"name": "qa-engineer", "core": false}], "details": {}}' "$(date +%s)")
say "broadcast from the host as the coordinator"
status=0
report=$(coordinator broadcast --json - <<<"$opportunity") || status=$?
echo "$report"
[ "$status" -eq 0 ] || fail "chorus-bridge broadcast exited $status"
read -r total reached failed via_bus < <("$PY" -c '
import json, sys
r = json.load(sys.stdin)
print(r["total_agents"], r["success_count"], len(r["failed"]), r["via_bus"])' <<<"$report")
if [ "$total" -ne "$AGENT_REPLICAS" ] || [ "$reached" -ne "$AGENT_REPLICAS" ] || [ "$failed" -ne 0 ]; then
    fail "the broadcast reached $reached of $total agents ($failed failed); want $AGENT_REPLICAS of $AGENT_REPLICAS"
fi
say "check: the broadcast reached $reached of $total agents"
if [ "$AUTH_CALLOUT" = true ]; then
    # Each agent acks on its own subject, which only the user the callout gave it may use.
    [ "$via_bus" -eq "$AGENT_REPLICAS" ] \
        || fail "$via_bus of $AGENT_REPLICAS agents acked on the bus as themselves"
    say "check: $via_bus of $AGENT_REPLICAS agents acked on the bus, each on its own subject"
fi

# --- check 5: the proxy, from inside a bridge's container ------------------------------------
bridge_container=$(container_of bridge)
[ -n "$bridge_container" ] || fail "no container of ${STACK}_bridge"
proxy=$(docker exec "$bridge_container" python3 -c '
import http.client, json, socket
answers = []
addresses = sorted({info[4][0] for info in socket.getaddrinfo("tasks.docker-api", 2375)})
for address in addresses:
    statuses = []
    for method, path, body in (
        ("GET", "/v1.41/tasks", None),
        ("POST", "/v1.41/containers/create", b"{\"Image\": \"busybox\"}"),
    ):
        conn = http.client.HTTPConnection(address, 2375, timeout=10)
        headers = {"Content-Type": "application/json"} if body else {}
        conn.request(method, path, body=body, headers=headers)
        statuses.append(conn.getresponse().status)
        conn.close()
    answers.append(statuses)
print(json.dumps({"addresses": addresses, "statuses": answers}))
') || fail "the proxy probe inside bridge container $bridge_container failed"
echo "$proxy"
read -r proxies proxied < <("$PY" -c '
import json, sys
r = json.loads(sys.argv[1])
print(len(r["addresses"]), sum(s == [200, 403] for s in r["statuses"]))' "$proxy")
[ "$proxies" -ge 1 ] && [ "$proxied" -eq "$proxies" ] \
    || fail "of $proxies docker-api proxies, $proxied answered GET /tasks 200 and POST /containers/create 403"
say "check: from a bridge's container, all $proxies docker-api proxies answer GET /tasks 200 and POST /containers/create 403"

# --- check 6: least power, and a leader with a standby ------------------------------------------
hardened=0
total=0
for container in $(docker ps -q --filter "label=com.docker.stack.namespace=$STACK"); do
    total=$((total + 1))
    read -r user readonly capdrop < <(docker inspect -f \
        '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{join .HostConfig.CapDrop ","}}' "$container")
    nnp=$(docker exec "$container" grep NoNewPrivs /proc/1/status | tr -d ' \t' || true)
    case "$user" in ''|0|0:*|root|root:*) user_ok=0 ;; *) user_ok=1 ;; esac
    if [ "$user_ok" -eq 1 ] && [ "$readonly" = true ] && [ "$capdrop" = ALL ] && [ "$nnp" = NoNewPrivs:1 ]; then
        hardened=$((hardened + 1))
    else
        echo "stack-test: $(docker inspect -f '{{.Name}}' "$container"): user '$user', read-only $readonly, cap_drop '$capdrop', $nnp" >&2
    fi
done
[ "$total" -gt 0 ] && [ "$hardened" -eq "$total" ] \
    || fail "$hardened of $total containers run as non-root, read-only, without capabilities, with no-new-privileges"
say "check: $hardened of $total containers run as non-root, read-only, without capabilities, with no-new-privileges"

# Each bridge's /healthz (its image's HEALTHCHECK asks the same), from inside its container:
# 200, and between them one leader and one standby.
roles=""
for container in $(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_bridge"); do
    role=$(docker exec "$container" python3 -c '
import json, urllib.request
print(json.loads(urllib.request.urlopen("http://127.0.0.1:8090/healthz", timeout=5).read())["role"])') \
        || fail "the /healthz of bridge container $container is not 200"
    roles="$roles$role "
done
roles=$(tr ' ' '\n' <<<"$roles" | sed '/^$/d' | sort | paste -sd ' ')
[ "$roles" = "leader standby" ] || fail "the bridges' roles are '$roles'; want one leader and one standby"
say "check: two bridges answer /healthz 200: $roles"
