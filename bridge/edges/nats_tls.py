"""TLS to NATS (NATS_TLS_CA, NATS_TLS_CERT, NATS_TLS_KEY): the client's SSL context, a server
that must speak TLS, and a certificate that does not verify said in one line.

nats-py upgrades to TLS only when the server's INFO says `tls_required`: given a CA but facing a
server without TLS, it would go on in the clear and send the password. So, with a CA configured,
the first server that answers is asked for its INFO, and its certificate checked, before nats-py
connects (nothing else is sent), and a server that does not require TLS is refused. (This
guards the start against a server left without TLS; it is no defence against an impostor on
the path, which could answer the two connections differently.) A certificate that the CA does not
verify is not a passing fault (nats-py would retry it for its whole reconnect budget): it is
named at once, with what to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from bridge.config import Settings
from bridge.errors import NatsError
from bridge.ops.redact import redact_url

__all__ = ["nats_tls", "require_tls", "tls_failure", "tls_failure_message"]

# Schemes whose first line from the server is its INFO (ws/wss: a websocket handshake first).
_INFO_SCHEMES = ("nats", "tls")
_INFO_LIMIT = 64 * 1024
# OpenSSL's reasons for a handshake that fails the same way every time: a certificate the peer
# refused or asked for (TLSV13_ALERT_CERTIFICATE_REQUIRED, SSLV3_ALERT_BAD_CERTIFICATE,
# TLSV1_ALERT_UNKNOWN_CA), no protocol or cipher in common.
_LASTING = ("CERTIFICATE", "UNKNOWN_CA", "HANDSHAKE_FAILURE", "PROTOCOL_VERSION")


def nats_tls(settings: Settings) -> dict[str, Any]:
    """nats.connect() keyword arguments for TLS: {} without NATS_TLS_CA, else `tls`, an SSL
    context that verifies the server against that CA only (and presents the client
    certificate of NATS_TLS_CERT/NATS_TLS_KEY when set). NatsError naming the variable when a
    file cannot be read or is not PEM."""
    if not settings.nats_tls_ca:
        return {}
    # Hostname checked and certificate required; the CA below is the only one trusted.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context.load_verify_locations, "NATS_TLS_CA", settings.nats_tls_ca)
    if settings.nats_tls_cert and settings.nats_tls_key:
        _load(
            lambda path: context.load_cert_chain(path, settings.nats_tls_key),
            "NATS_TLS_CERT",
            settings.nats_tls_cert,
        )
    return {"tls": context}


def _load(call: Callable[[str], object], variable: str, path: str) -> None:
    try:
        call(path)
    except FileNotFoundError:
        raise NatsError(f"{variable}={path}: no such file") from None
    except PermissionError:
        raise NatsError(f"{variable}={path}: permission denied") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise NatsError(f"{variable}={path}: not a PEM file of what it names ({exc})") from None


async def require_tls(servers: list[str], settings: Settings, timeout: float) -> None:
    """NatsError unless the first of `servers` that answers requires TLS (its INFO line says
    `tls_required`) and its certificate verifies against NATS_TLS_CA: the handshake is made
    here, then the connection closed, so the server sees a client that left, not a failed
    handshake. Servers that do not answer are skipped: nats-py then says why it cannot
    connect."""
    context = nats_tls(settings)["tls"]
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        if parts.scheme not in _INFO_SCHEMES or not parts.hostname:
            continue
        try:
            required = await _requires_tls(parts.hostname, parts.port or 4222, context, timeout)
        except ssl.SSLError as exc:
            reason = tls_failure(exc) or str(exc)
            raise NatsError(tls_failure_message(server, reason, settings)) from None
        if required is None:
            continue
        if required:
            return
        raise NatsError(
            f"NATS at {redact_url(server)} does not require TLS, yet NATS_TLS_CA is set: "
            "refusing to send credentials in the clear; turn TLS on in the server (the stack's "
            "`--tls` flags) or unset NATS_TLS_CA"
        )


async def _requires_tls(
    host: str, port: int, context: ssl.SSLContext, timeout: float
) -> bool | None:
    """Whether the server's INFO requires TLS (then the handshake is made: ssl.SSLError when
    it fails), or None when it does not answer with an INFO within `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=_INFO_LIMIT)
            try:
                info = _parse_info(await reader.readline())
                required = None if info is None else info.get("tls_required") is True
                if required:
                    await writer.start_tls(context, server_hostname=host)
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except ssl.SSLError:
        raise
    except (OSError, TimeoutError, ValueError):
        return None
    return required


def _parse_info(line: bytes) -> dict[str, Any] | None:
    verb, _, body = line.partition(b" ")
    if verb.upper() != b"INFO":
        return None
    try:
        info = json.loads(body)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def tls_failure(exc: BaseException) -> str | None:
    """What went wrong in the TLS handshake, in OpenSSL's words (e.g. "certificate verify
    failed: unable to get local issuer certificate"), when trying again cannot help: the
    server's certificate does not verify, or the server refused ours (or that we have none).
    None for anything else, a TLS connection the server closed included (a server starting or
    stopping): that is a passing fault, tried again."""
    for error in _chain(exc):
        if isinstance(error, ssl.SSLCertVerificationError):
            detail = error.verify_message or error.reason
            return f"certificate verify failed: {detail}" if detail else str(error)
        if isinstance(error, ssl.SSLError) and any(
            word in str(error.reason or "") for word in _LASTING
        ):
            return str(error.reason)
    return None


def tls_failure_message(url: str, reason: str, settings: Settings) -> str:
    """The one line for a handshake that failed: what, at which server, and what to check."""
    if settings.nats_tls_ca:
        check = (
            f"check that NATS_TLS_CA ({settings.nats_tls_ca}) is the CA that signed the "
            "server's certificate and that the certificate names the host of NATS_URL"
        )
    else:
        check = "set NATS_TLS_CA to the CA that signed the server's certificate"
    return f"TLS to NATS at {redact_url(url)} failed ({reason}): {check}"
