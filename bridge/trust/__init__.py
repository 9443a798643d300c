"""Trust: the NATS auth callout that admits agents as the discovered agents they are."""
