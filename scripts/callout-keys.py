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
never replaced by accident; a usage error exits 64, a directory that cannot be written 73.

Needs nothing but Python 3.8 or later: it runs from a fresh clone, before anything is
installed. The seeds are 32 bytes from the operating system's random source (`secrets`); the
public keys are derived from them by the base-point multiplications of RFC 8032 (Ed25519, the
account key) and RFC 7748 (X25519, the curve key), and written in the nkeys encoding (base32 of
a prefix byte, the key and its CRC-16/XMODEM). Nothing here signs or encrypts: the bridge does,
with PyNaCl, and tests/test_callout_keys_script.py checks that the keys derived here are the
ones PyNaCl derives from the same seeds.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import sys
from pathlib import Path

EX_USAGE, EX_CANTCREAT = 64, 73

# nkeys' prefix bytes (nats-io/nkeys, strkey.go): the first 5 bits of the base32 text.
PREFIX_SEED = 18 << 3  # "S"
PREFIX_ACCOUNT = 0  # "A"
PREFIX_CURVE = 23 << 3  # "X"

NAMES = ("callout_issuer_seed", "callout_xkey_seed", "callout_issuer_public", "callout_xkey_public")

# The field and curves of RFC 7748 and RFC 8032.
P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P  # edwards25519's d
SQRT_M1 = pow(2, (P - 1) // 4, P)


def crc16(data: bytes) -> bytes:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), little-endian, as nkeys appends it."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc.to_bytes(2, "little")


def _b32(body: bytes) -> bytes:
    return base64.b32encode(body + crc16(body)).rstrip(b"=")


def encode_seed(prefix: int, raw: bytes) -> bytes:
    """An nkeys seed: "S" and the kind's prefix packed into two bytes, then the 32 raw bytes."""
    return _b32(bytes([PREFIX_SEED | prefix >> 5, (prefix & 31) << 3]) + raw)


def encode_public(prefix: int, key: bytes) -> str:
    """An nkeys public key: the kind's prefix byte, then the 32 bytes of the key."""
    return _b32(bytes([prefix]) + key).decode()


def _edwards_add(p: tuple[int, ...], q: tuple[int, ...]) -> tuple[int, int, int, int]:
    # Extended coordinates (X, Y, Z, T), the addition of RFC 8032 section 5.1.4.
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _edwards_base() -> tuple[int, int, int, int]:
    # RFC 8032 section 5.1: y = 4/5, x the even root of x^2 = (y^2 - 1) / (d y^2 + 1).
    y = 4 * pow(5, P - 2, P) % P
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if x & 1:
        x = P - x
    return x, y, 1, x * y % P


def ed25519_public(seed: bytes) -> bytes:
    """The Ed25519 public key of a 32-byte seed (RFC 8032 section 5.1.5)."""
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar = (scalar & ((1 << 254) - 8)) | (1 << 254)
    point, result = _edwards_base(), (0, 1, 1, 0)
    while scalar:
        if scalar & 1:
            result = _edwards_add(result, point)
        point = _edwards_add(point, point)
        scalar >>= 1
    z_inverse = pow(result[2], P - 2, P)
    x, y = result[0] * z_inverse % P, result[1] * z_inverse % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def x25519_public(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key: its product with u = 9 (RFC 7748
    section 5, the Montgomery ladder)."""
    k = int.from_bytes(private, "little")
    k = (k & ~7 & ~(1 << 255)) | (1 << 254)
    x1, x2, z2, x3, z3, swap = 9, 1, 0, 9, 1, 0
    for bit in reversed(range(255)):
        k_t = (k >> bit) & 1
        if swap ^ k_t:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = k_t
        a, b, c, d = x2 + z2, x2 - z2, x3 + z3, x3 - z3
        aa, bb, da, cb = a * a % P, b * b % P, d * a % P, c * b % P
        e = aa - bb
        x3, z3 = (da + cb) ** 2 % P, x1 * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + 121665 * e) % P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


def make_keys() -> dict[str, bytes]:
    """Fresh seeds and their public keys, by file name."""
    issuer, xkey = secrets.token_bytes(32), secrets.token_bytes(32)
    return {
        "callout_issuer_seed": encode_seed(PREFIX_ACCOUNT, issuer),
        "callout_xkey_seed": encode_seed(PREFIX_CURVE, xkey),
        "callout_issuer_public": encode_public(PREFIX_ACCOUNT, ed25519_public(issuer)).encode(),
        "callout_xkey_public": encode_public(PREFIX_CURVE, x25519_public(xkey)).encode(),
    }


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data + b"\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1].startswith("-"):
        print("usage: python3 scripts/callout-keys.py DIR", file=sys.stderr)
        return EX_USAGE
    directory = Path(argv[1])
    present = [name for name in NAMES if (directory / name).exists()]
    if present:
        print(
            f"callout-keys: {directory} already has {', '.join(present)}; kept as they are",
            file=sys.stderr,
        )
        return 1
    keys, written = make_keys(), []
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in NAMES:
            _write(directory / name, keys[name])
            written.append(directory / name)
    except OSError as exc:
        # No half set left behind: a second run would keep it and refuse to go on.
        for path in written:
            path.unlink()
        print(f"callout-keys: cannot write the keys in {directory}: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    print(
        f"CALLOUT_ISSUER={keys['callout_issuer_public'].decode()}\n"
        f"CALLOUT_XKEY={keys['callout_xkey_public'].decode()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
