"""The `chorus-bridge` command: `main` (run, demo and the client commands), the commands' NATS
session, and the client commands themselves."""
