"""An emulated Docker Engine API (20.10, swarm mode) for the demo, the tests and the benchmarks.

    swarm = EmulatedSwarm()            # service CHORUS_chorus on chorus_default, 127.10.0.0/16
    swarm.add_tasks(34)
    async with DockerEmulator("/tmp/docker.sock", swarm) as emulator:
        client = docker.APIClient(base_url=emulator.base_url, version="auto")

`python -m bridge.devkit.emulator --socket PATH --tasks N` runs one until SIGTERM or SIGINT.
"""

from bridge.devkit.emulator.faults import ERROR_MODES, ErrorMode
from bridge.devkit.emulator.server import DockerEmulator, serve_in_thread
from bridge.devkit.emulator.state import EmulatedSwarm

__all__ = ["ERROR_MODES", "DockerEmulator", "EmulatedSwarm", "ErrorMode", "serve_in_thread"]
