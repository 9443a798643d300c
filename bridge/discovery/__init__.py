"""Discovery: who the agents are, from the Swarm API, DNS and known endpoints."""
