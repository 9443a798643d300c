"""The bridge's state on the bus: the agents bucket (`registry`, `agents_bucket`), presence,
and the leader lease."""
