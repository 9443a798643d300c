"""chorus-bridge: every replica of a Swarm service of agents, on a NATS bus."""

__all__ = ["__version__"]

__version__ = "0.1.0"
