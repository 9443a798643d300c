"""Demo and test tooling, never imported by the runtime: `chorus-bridge demo`, simulated agents
(`sim/`) and an emulated Docker Engine API (`emulator/`)."""
