"""The contract (DESIGN.md): every wire message, subject and bucket, and the agent-id rule.

What agents, coordinators and operators rely on lives here and nowhere else. It imports no
other room of the package and no I/O library: the agent library and the bridge share it.
"""
