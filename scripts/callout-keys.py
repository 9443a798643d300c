#!/usr/bin/env python3
"""Makes the keys of the NATS auth callout in a secrets directory (docker-compose.swarm.yml).

    python3 scripts/callout-keys.py DIR

writes, each readable by its owner only:
    DIR/callout_issuer_seed    the account seed ("SA...") the bridge signs with
                               (BRIDGE_CALLOUT_ISSUER_SEED)
    DIR/callout_xkey_seed      the curve seed ("SX...") the bridge opens requests with
                               (BRIDGE_CALLOUT_XKEY_SEED)
    DIR/callout_issuer_public  its public key, nats-callout.conf's $CALLOUT_ISSUER
    DIR/callout_xkey_public    its public key, nats-callout.conf's $CALLOUT_XKEY
and prints the two public keys. Existing files are kept (exit 1), so that a stack's keys are
never replaced by accident. Needs the nkeys and PyNaCl packages (the chorus-bridge package's
dependencies); the package itself is taken from this clone when it is not installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# From a fresh clone: the package next to this script.
sys.path.append(str(Path(__file__).resolve().parents[1]))
try:
    from bridge.edges.nkeys_jwt import CurveKey, SigningKey, new_seed
except ImportError as exc:
    sys.exit(
        f"callout-keys: {exc}; install the bridge's dependencies (pip install .) or run this "
        "script with the bridge image's python (README, Deploying on Docker Swarm)"
    )


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data + b"\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 64
    directory = Path(argv[1])
    names = [
        "callout_issuer_seed",
        "callout_xkey_seed",
        "callout_issuer_public",
        "callout_xkey_public",
    ]
    present = [n for n in names if (directory / n).exists()]
    if present:
        print(
            f"callout-keys: {directory} already has {', '.join(present)}; kept as they are",
            file=sys.stderr,
        )
        return 1
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    issuer, xkey = new_seed("account"), new_seed("curve")
    publics = (SigningKey(issuer).public_key, CurveKey(xkey).public_key)
    for name, data in zip(names, (issuer, xkey, *(p.encode() for p in publics)), strict=True):
        _write(directory / name, data)
    print(f"CALLOUT_ISSUER={publics[0]}\nCALLOUT_XKEY={publics[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
