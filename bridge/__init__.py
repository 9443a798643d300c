"""chorus-bridge: every replica of a Swarm service of agents, on a NATS bus."""

__all__ = ["__version__"]

# The version: the one place it is written (pyproject.toml reads it from here; CHANGELOG.md
# says what each version changed).
__version__ = "0.1.0"
