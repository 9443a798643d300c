#!/usr/bin/env bash
# Removes what scripts/swarm-up.sh made: the services labelled chorus.test=1 and the
# chorus_default network (when nothing else uses it). The swarm and the engine stay up, so the
# next swarm-up is instant.
#
# Usage: scripts/swarm-down.sh [--leave] [--images]
#   --leave    also leave the swarm (docker swarm leave --force)
#   --images   also remove the test images (chorus-agent:test and the images of build-images.sh)
set -euo pipefail

NETWORK=chorus_default
TEST_IMAGES=(chorus-agent:test chorus-bridge:test chorus-nats:test chorus-docker-api:test chorus-python-base:test)
leave=0
images=0

while [ $# -gt 0 ]; do
    case "$1" in
        --leave) leave=1; shift ;;
        --images) images=1; shift ;;
        *) echo "usage: $0 [--leave] [--images]" >&2; exit 2 ;;
    esac
done

say() { echo "swarm-down: $*"; }

if ! docker info >/dev/null 2>&1; then
    say "no Docker Engine answers; nothing to remove"
    exit 0
fi

if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = active ]; then
    mapfile -t services < <(docker service ls --filter label=chorus.test=1 --format '{{.Name}}')
    if [ ${#services[@]} -gt 0 ]; then
        say "removing services: ${services[*]}"
        docker service rm "${services[@]}" >/dev/null
    fi
fi

if docker network inspect "$NETWORK" >/dev/null 2>&1; then
    # Tasks of removed services leave the network a moment later, and a swarm network vanishes
    # asynchronously: retry until it is gone, so a swarm-up right after this starts clean.
    deadline=$((SECONDS + 30))
    while docker network inspect "$NETWORK" >/dev/null 2>&1; do
        docker network rm "$NETWORK" >/dev/null 2>&1 || true
        if [ $SECONDS -ge $deadline ]; then
            say "network $NETWORK is still in use; left in place"
            break
        fi
        sleep 0.5
    done
    docker network inspect "$NETWORK" >/dev/null 2>&1 || say "removed network $NETWORK"
fi

if [ "$leave" -eq 1 ] && [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != inactive ]; then
    say "leaving the swarm"
    docker swarm leave --force >/dev/null
fi

if [ "$images" -eq 1 ]; then
    for image in "${TEST_IMAGES[@]}"; do
        if docker image inspect "$image" >/dev/null 2>&1; then
            say "removing image $image"
            docker image rm "$image" >/dev/null || say "image $image is in use; left in place"
        fi
    done
fi
