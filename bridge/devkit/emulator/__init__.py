"""An emulated Docker Engine API (20.10, swarm mode) for the demo, the tests and the benchmarks.

    swarm = EmulatedSwarm()            # service CHORUS_chorus on chorus_default, 127.10.0.0/16
    swarm.add_tasks(34)
    async with DockerEmulator("/tmp/docker.sock", swarm) as emulator:
        client = docker.APIClient(base_url=emulator.base_url, version="auto")

A swarm of several nodes: each served node is a DockerEmulator of the same EmulatedSwarm, on a
socket (or loopback TCP address) of its own, with failures of its own:

    m2, w1 = swarm.add_node(manager=True), swarm.add_node()
    swarm.drain(swarm.node_id)                  # the first manager runs no task
    second = DockerEmulator("/tmp/m2.sock", swarm, node=m2)
    second.set_error("no_leader")               # that manager lost its leader
    swarm.node_down(w1); swarm.start_ready()    # a node event; replacements wait, then run

`python -m bridge.devkit.emulator --socket PATH --tasks N` runs one until SIGTERM or SIGINT.
"""

from bridge.devkit.emulator.faults import ERROR_MODES, ErrorMode
from bridge.devkit.emulator.server import DockerEmulator
from bridge.devkit.emulator.state import EmulatedSwarm
from bridge.devkit.emulator.thread import serve_in_thread

__all__ = ["ERROR_MODES", "DockerEmulator", "EmulatedSwarm", "ErrorMode", "serve_in_thread"]
