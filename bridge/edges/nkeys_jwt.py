"""The nkeys edge: NATS keys, the JWTs of the auth callout, and xkey sealing.

The only importer of `nkeys` (nats-io's) and of PyNaCl, on which nkeys is built. NATS JWTs are
signed with ed25519 nkeys (`"alg": "ed25519-nkey"`), which PyJWT does not support, and the
Python JWT packages for NATS either lack the authorization request/response claims (nats-jwt)
or pin pre-release dependencies (nats-callout); a NATS JWT is base64url(header).base64url(claims)
.base64url(ed25519 signature of the first two parts), so it is built here on nkeys' signing.

nkeys 0.2.1 knows no curve (xkey) keys: they are decoded here with its checksum, and sealed
with PyNaCl's Box as nats-io/nkeys' xkeys do: b"xkv1" + 24-byte nonce + box(message).

Errors: a seed or key that is not what it should be raises CalloutKeyError; a token or sealed
message that cannot be trusted raises CalloutRequestError. The messages never carry a seed.

A restart of NATS under a thousand agents is a thousand requests at once, each answered within
the server's callout timeout (2 s): what can be made once is (a server's verify key, the box
of a curve key pair), and a token's claims are read before its signature is checked, so that a
request the server has given up on costs no signature check.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import os
import time
from typing import Any, Literal

import nacl.exceptions
import nacl.public
import nacl.signing
import nkeys

from bridge.errors import CalloutKeyError, CalloutRequestError

__all__ = [
    "CurveKey",
    "ServerToken",
    "SigningKey",
    "decode_verified",
    "new_seed",
    "read_server_token",
]

# The first byte of a public key (and the second of a seed) says what kind of key it is.
_PREFIX_ACCOUNT = nkeys.PREFIX_BYTE_ACCOUNT  # "A..."
_PREFIX_SERVER = nkeys.PREFIX_BYTE_SERVER  # "N..."
_PREFIX_CURVE = 23 << 3  # "X...": nkeys-go's PrefixByteCurve, unknown to nkeys 0.2.1
_PREFIX_SEED = nkeys.PREFIX_BYTE_SEED  # "S..."
_XKEY_VERSION = b"xkv1"
_NONCE = nacl.public.Box.NONCE_SIZE
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_KINDS = {"account": _PREFIX_ACCOUNT, "curve": _PREFIX_CURVE}
# Peers whose box is kept (servers of a cluster, each restart a new key).
_MAX_BOXES = 64


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


_HEADER_B64 = _b64(_json(_HEADER))


def _b32decode(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    try:
        return base64.b32decode(raw.strip() + b"=" * (-len(raw.strip()) % 8))
    except (binascii.Error, ValueError):
        raise CalloutKeyError("not a NATS key (not base32)") from None


def _checked(raw: bytes) -> bytes:
    """The key bytes without their 2-byte CRC16, which must match."""
    body, crc = raw[:-2], raw[-2:]
    if len(raw) < 3 or nkeys.crc16_checksum(body) != crc:
        raise CalloutKeyError("not a NATS key (bad checksum)")
    return body


def _public(prefix: int, key: bytes) -> str:
    body = bytes([prefix]) + key
    return base64.b32encode(body + nkeys.crc16_checksum(body)).decode().rstrip("=")


def _decode_public(text: str, prefix: int) -> bytes:
    body = _checked(_b32decode(text))
    if len(body) != 33 or body[0] != prefix:
        raise CalloutKeyError("not a NATS public key of the expected kind")
    return body[1:]


def _decode_seed(seed: bytes, prefix: int) -> bytes:
    """The 32 raw bytes of a seed of the given kind ("SA..." account, "SX..." curve)."""
    body = _checked(_b32decode(seed))
    kind = (body[0] & 7) << 5 | (body[1] & 248) >> 3 if len(body) > 1 else -1
    if len(body) != 34 or body[0] & 248 != _PREFIX_SEED or kind != prefix:
        expected = "SA... (an account seed)" if prefix == _PREFIX_ACCOUNT else "SX... (curve)"
        raise CalloutKeyError(f"not a seed of the expected kind: expected {expected}")
    return body[2:]


def new_seed(kind: Literal["account", "curve"]) -> bytes:
    """A fresh seed: b"SA..." for an account (the callout issuer), b"SX..." for a curve key."""
    prefix = _KINDS[kind]
    body = bytes([_PREFIX_SEED | prefix >> 5, (prefix & 31) << 3]) + os.urandom(32)
    return base64.b32encode(body + nkeys.crc16_checksum(body)).rstrip(b"=")


class SigningKey:
    """An account key (seed "SA...") that signs JWTs; `public_key` is its "A..." key."""

    def __init__(self, seed: bytes) -> None:
        _decode_seed(seed, _PREFIX_ACCOUNT)
        try:
            self._pair = nkeys.from_seed(bytearray(seed.strip()))
        except nkeys.NkeysError as exc:
            raise CalloutKeyError(f"not an account seed ({exc})") from None
        self.public_key: str = self._pair.public_key.decode()

    def encode(self, claims: dict[str, Any], *, iat: int | None = None) -> str:
        """A signed JWT of `claims`, with `iss`, `iat` (`iat`, or now on this clock) and a
        unique `jti` set here."""
        body = {
            **claims,
            "iss": self.public_key,
            "iat": int(time.time()) if iat is None else iat,
            "jti": base64.b32encode(os.urandom(20)).decode(),
        }
        signed = f"{_HEADER_B64}.{_b64(_json(body))}"
        return f"{signed}.{_b64(self._pair.sign(signed.encode()))}"


@functools.lru_cache(maxsize=64)
def _server_verify_key(public: str) -> nacl.signing.VerifyKey:
    """The verify key of a server's public key ("N..."): a server keeps one per process."""
    return nacl.signing.VerifyKey(_decode_public(public, _PREFIX_SERVER))


@dataclasses.dataclass(frozen=True)
class ServerToken:
    """A JWT read but not yet trusted: its claims, and what its signature covers."""

    claims: dict[str, Any]
    issuer: str
    _signed: bytes
    _signature: bytes

    def verify(self) -> dict[str, Any]:
        """The claims, once the signature verifies with the server key `iss` names.
        Raises CalloutRequestError otherwise."""
        try:
            _server_verify_key(self.issuer).verify(self._signed, self._signature)
        except CalloutKeyError:
            raise CalloutRequestError("the issuer is not a server key") from None
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            raise CalloutRequestError(
                "the signature does not verify with the issuer's key"
            ) from None
        return self.claims


def read_server_token(token: str) -> ServerToken:
    """A JWT's claims and issuer, unverified (`verify()` checks it). Raises
    CalloutRequestError when it is no ed25519-nkey JWT with an issuer."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise CalloutRequestError("not a JWT")
    try:
        header, claims = json.loads(_unb64(parts[0])), json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (ValueError, binascii.Error):
        raise CalloutRequestError("not a JWT (bad encoding)") from None
    if not isinstance(header, dict) or header.get("alg") != _HEADER["alg"]:
        raise CalloutRequestError("not an ed25519-nkey JWT")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise CalloutRequestError("a JWT without an issuer")
    signed = f"{parts[0]}.{parts[1]}".encode()
    return ServerToken(claims, claims["iss"], signed, signature)


def decode_verified(token: str, *, now: float | None = None) -> dict[str, Any]:
    """The claims of a JWT signed by the server key ("N...") its `iss` names.

    Raises CalloutRequestError when it is not such a JWT, its signature does not verify with
    that key, or it has expired (on this clock: the callout reads `exp` itself, with a
    tolerance for the two clocks, bridge/trust/requests.py).
    """
    claims = read_server_token(token).verify()
    expires = claims.get("exp")
    if isinstance(expires, int | float) and expires < (time.time() if now is None else now):
        raise CalloutRequestError("the JWT has expired")
    return claims


class CurveKey:
    """A curve key (seed "SX...") that opens what the server seals to it and seals answers."""

    def __init__(self, seed: bytes) -> None:
        self._private = nacl.public.PrivateKey(_decode_seed(seed, _PREFIX_CURVE))
        self.public_key: str = _public(_PREFIX_CURVE, bytes(self._private.public_key))
        # A box per peer: its shared key costs as much as the sealing itself. A server keeps
        # its curve key for its life, so a few peers are all there ever are.
        self._boxes: dict[str, nacl.public.Box] = {}

    def _box(self, peer: str) -> nacl.public.Box:
        box = self._boxes.get(peer)
        if box is not None:
            return box
        try:
            box = nacl.public.Box(
                self._private, nacl.public.PublicKey(_decode_public(peer, _PREFIX_CURVE))
            )
        except CalloutKeyError:
            raise CalloutRequestError(f"{peer[:12]}... is not a curve public key") from None
        if len(self._boxes) >= _MAX_BOXES:
            self._boxes.clear()
        self._boxes[peer] = box
        return box

    def open(self, sealed: bytes, sender: str) -> bytes:
        """The message `sender` (an "X..." key) sealed to this key."""
        if not sealed.startswith(_XKEY_VERSION) or len(sealed) <= len(_XKEY_VERSION) + _NONCE:
            raise CalloutRequestError("not a sealed xkv1 message")
        try:
            return self._box(sender).decrypt(sealed[len(_XKEY_VERSION) :])
        except nacl.exceptions.CryptoError:
            raise CalloutRequestError(
                "the sealed message does not open with this key (a different xkey on the server?)"
            ) from None

    def seal(self, message: bytes, recipient: str) -> bytes:
        """`message` sealed to `recipient` (an "X..." key)."""
        return _XKEY_VERSION + bytes(self._box(recipient).encrypt(message))
