"""The nkeys edge: seeds, JWT signatures, xkey sealing."""

from __future__ import annotations

import base64
import json
import os
import time

import nkeys
import pytest

from bridge.edges.nkeys_jwt import CurveKey, SigningKey, decode_verified, new_seed
from bridge.errors import CalloutKeyError, CalloutRequestError


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def server_token(claims: dict[str, object], seed: bytes | None = None) -> str:
    """A JWT signed as nats-server signs its requests: by a server ("N...") key."""
    pair = nkeys.from_seed(
        bytearray(seed or nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER))
    )
    body = {**claims, "iss": pair.public_key.decode()}
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    signed = f"{header}.{_b64(json.dumps(body).encode())}"
    return f"{signed}.{_b64(pair.sign(signed.encode()))}"


def test_new_seeds_are_of_their_kind() -> None:
    """An account seed gives an "A..." key, a curve seed an "X..." key; each only its own."""
    account, curve = new_seed("account"), new_seed("curve")
    assert account.startswith(b"SA") and curve.startswith(b"SX")
    assert SigningKey(account).public_key.startswith("A")
    assert CurveKey(curve).public_key.startswith("X")
    with pytest.raises(CalloutKeyError, match="expected SA"):
        SigningKey(curve)
    with pytest.raises(CalloutKeyError, match="expected SX"):
        CurveKey(account)


def test_a_damaged_seed_is_refused() -> None:
    """One character changed breaks the checksum."""
    seed = bytearray(new_seed("account"))
    seed[10] = ord("B") if seed[10] != ord("B") else ord("C")
    with pytest.raises(CalloutKeyError, match="checksum"):
        SigningKey(bytes(seed))


def test_a_server_signed_token_verifies_and_a_tampered_one_does_not() -> None:
    """decode_verified checks the signature with the key the token names as its issuer."""
    token = server_token({"aud": "nats-authorization-request", "exp": time.time() + 5})
    assert decode_verified(token)["aud"] == "nats-authorization-request"
    header, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged = _b64(json.dumps({**claims, "aud": "something else"}).encode())
    with pytest.raises(CalloutRequestError, match="signature"):
        decode_verified(f"{header}.{forged}.{signature}")


def test_tokens_not_from_a_server_or_expired_are_refused() -> None:
    """A token signed by an account key, an expired one, and junk are refused."""
    issuer = SigningKey(new_seed("account"))
    with pytest.raises(CalloutRequestError, match="not a server key"):
        decode_verified(issuer.encode({"aud": "nats-authorization-request"}))
    with pytest.raises(CalloutRequestError, match="expired"):
        decode_verified(server_token({"exp": time.time() - 1}))
    for junk in ("", "a.b", "not.a.jwt", "eyJ.eyJ.x"):
        with pytest.raises(CalloutRequestError):
            decode_verified(junk)


def test_sealed_messages_open_only_between_the_two_keys() -> None:
    """What one curve key seals to another opens there, and nowhere else."""
    server, bridge, stranger = (CurveKey(new_seed("curve")) for _ in range(3))
    sealed = server.seal(b"request", bridge.public_key)
    assert sealed.startswith(b"xkv1")
    assert bridge.open(sealed, server.public_key) == b"request"
    with pytest.raises(CalloutRequestError, match="does not open"):
        stranger.open(sealed, server.public_key)
    with pytest.raises(CalloutRequestError, match="not a sealed"):
        bridge.open(b"eyJhbGciOi...", server.public_key)
