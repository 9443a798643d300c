"""The fixed documents of the emulated engine: headers, /version, /info, error bodies.

They are Docker Engine 20.10.24's (API 1.41), as recorded; /info reflects the swarm's role.
"""

from __future__ import annotations

import copy
from typing import Any

from bridge.devkit.emulator.nodes import NodeRecord
from bridge.devkit.emulator.state import EmulatedSwarm
from bridge.devkit.emulator.tasks import load_template, rfc3339_now

__all__ = [
    "API_VERSION",
    "COMMON_HEADERS",
    "MANAGER_PREPARING",
    "NOT_IN_SWARM",
    "NOT_MANAGER_WORKER",
    "NO_LEADER",
    "PING_HEADERS",
    "PROXY_FORBIDDEN",
    "SWARM_LOCKED",
    "info_document",
    "not_manager_message",
    "swarm_header",
    "version_document",
]

API_VERSION = "1.41"
COMMON_HEADERS = {
    "Api-Version": API_VERSION,
    "Docker-Experimental": "false",
    "Ostype": "linux",
    "Server": "Docker/20.10.24+dfsg1 (linux)",
}
PING_HEADERS = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache"}
# The 503 bodies of the task list off a manager: the recorded one (swarm mode off), and the
# one a worker node gives (daemon/cluster/cluster.go).
NOT_IN_SWARM = (
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm '
    'join" to connect this node to swarm and try again.'
)
NOT_MANAGER_WORKER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or "
    "modify cluster state. Please run this command on a manager node or "
    "promote the current node to a manager."
)

# Docker's other answers for a manager-only call a node cannot serve (moby
# daemon/cluster/errors.go and Cluster.errNoManager; HTTP 503), and swarmkit's for a swarm
# without a leader (HTTP 500, as `docker node ls` shows it on a manager that lost quorum).
SWARM_LOCKED = (
    "Swarm is encrypted and needs to be unlocked before it can be used. Please use "
    '"docker swarm unlock" to unlock it.'
)
MANAGER_PREPARING = (
    "This node is not a swarm manager. Manager is being prepared or has trouble connecting "
    "to the cluster."
)
NO_LEADER = (
    "rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that "
    "too few managers are online. Make sure more than half of the managers are online."
)
# HAProxy's own answer when an `http-request deny` refuses a request (deploy/docker-api).
PROXY_FORBIDDEN = (
    "<html><body><h1>403 Forbidden</h1>\nRequest forbidden by administrative rules.\n"
    "</body></html>\n"
)

_VERSION = load_template("version.json")
_INFO = load_template("info.json")


def version_document() -> dict[str, Any]:
    """GET /version, as recorded."""
    document: dict[str, Any] = copy.deepcopy(_VERSION)
    return document


def swarm_header(swarm: EmulatedSwarm, node: NodeRecord) -> str:
    """The `Swarm` header of /_ping (API 1.42 and later engines send it)."""
    if not swarm.active:
        return "inactive"
    return f"active/{node.role}"


def not_manager_message(swarm: EmulatedSwarm) -> str:
    """What a manager-only call answers on a node that is not a manager (with HTTP 503)."""
    return NOT_MANAGER_WORKER if swarm.active else NOT_IN_SWARM


def info_document(
    swarm: EmulatedSwarm, node: NodeRecord, *, locked: bool = False
) -> dict[str, Any]:
    """GET /info: the recorded engine, as the node serving it sees the swarm."""
    info: dict[str, Any] = copy.deepcopy(_INFO)
    running = swarm.replicas
    info.update(
        Containers=running,
        ContainersRunning=running,
        Name=node.hostname,
        SystemTime=rfc3339_now(),
        NEventsListener=swarm.event_streams,
        Swarm=_swarm_section(swarm, node, locked),
    )
    return info


def _swarm_section(swarm: EmulatedSwarm, node: NodeRecord, locked: bool) -> dict[str, Any]:
    if not swarm.active or locked:
        # A locked manager knows nothing of the swarm until it is unlocked.
        return {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "locked" if swarm.active else "inactive",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        }
    manager = node.role == "manager"
    managers = [n for n in swarm.nodes.values() if n.role == "manager"]
    section: dict[str, Any] = {
        "NodeID": node.id,
        "NodeAddr": "127.0.0.1",
        "LocalNodeState": "active",
        "ControlAvailable": manager,
        "Error": "",
        "RemoteManagers": [{"NodeID": m.id, "Addr": "127.0.0.1:2377"} for m in managers]
        or [{"NodeID": swarm.manager_node_id, "Addr": "127.0.0.1:2377"}],
    }
    if manager:  # only a manager knows the cluster
        section.update(Nodes=len(swarm.nodes), Managers=len(managers), Cluster=_cluster(swarm))
    return section


def _cluster(swarm: EmulatedSwarm) -> dict[str, Any]:
    return {
        "ID": swarm.cluster_id,
        "Version": {"Index": 10},
        "CreatedAt": swarm.created_at,
        "UpdatedAt": swarm.created_at,
        "Spec": {
            "Name": "default",
            "Labels": {},
            "Orchestration": {"TaskHistoryRetentionLimit": 5},
            "Raft": {
                "SnapshotInterval": 10000,
                "KeepOldSnapshots": 0,
                "LogEntriesForSlowFollowers": 500,
                "ElectionTick": 10,
                "HeartbeatTick": 1,
            },
            "Dispatcher": {"HeartbeatPeriod": 5000000000},
            "CAConfig": {"NodeCertExpiry": 7776000000000000},
            "TaskDefaults": {},
            "EncryptionConfig": {"AutoLockManagers": False},
        },
        "RootRotationInProgress": False,
        "DefaultAddrPool": ["10.0.0.0/8"],
        "SubnetSize": 24,
        "DataPathPort": 4789,
    }
