"""TLS to Redis (rediss://): the client's TLS arguments, whether REDIS_URL turns verification
off, and what a failed TLS connection means, in one line that says what to change.

Verification is on by default: the server's certificate must chain to REDIS_TLS_CA (or the
URL's ssl_ca_certs, else the system CAs) and name REDIS_URL's host. A server that asks for a
client certificate (tls-auth-clients) gets REDIS_TLS_CERT with REDIS_TLS_KEY.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from aam_dcl.config import Settings

# How long a diagnosis waits for the server to say why it closed a TLS connection.
_PROBE_TIMEOUT_S = 3.0

# Alerts a server sends about the client's certificate, by OpenSSL's reason.
_NO_CLIENT_CERT = (
    "the server requires a client certificate: set REDIS_TLS_CERT and REDIS_TLS_KEY "
    "(or ?ssl_certfile=&ssl_keyfile=)"
)
_CLIENT_CERT_REFUSED = (
    "the server refused the client certificate (REDIS_TLS_CERT): it is not signed by a CA "
    "the server trusts (its tls-ca-cert-file), or it has expired"
)
_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": _NO_CLIENT_CERT,
    "TLSV1_ALERT_UNKNOWN_CA": _CLIENT_CERT_REFUSED,
    "SSLV3_ALERT_BAD_CERTIFICATE": _CLIENT_CERT_REFUSED,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": _CLIENT_CERT_REFUSED,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": _CLIENT_CERT_REFUSED,
}
# How redis-py says the server closed the connection under it.
_CLOSED = ("reset by peer", "closed by server", "broken pipe", "eof occurred")
_FALSE_WORDS = frozenset({"0", "F", "FALSE", "N", "NO"})  # redis-py's to_bool


def _is_tls(settings: Settings) -> bool:
    return settings.effective_redis_url.startswith("rediss://")


def tls_options(settings: Settings) -> dict[str, Any]:
    """The client's TLS arguments for rediss:// (none otherwise: the plain connection takes
    none): verification pinned on whatever redis-py's defaults, and the REDIS_TLS_* files. The
    URL's own ssl_* options still win: redis-py lets the query override arguments."""
    if not _is_tls(settings):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis_tls_ca:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca)
    if settings.redis_tls_cert and settings.redis_tls_key:
        options["ssl_certfile"] = str(settings.redis_tls_cert)
        options["ssl_keyfile"] = str(settings.redis_tls_key)
    return options


def unverified_tls(settings: Settings) -> list[str]:
    """The REDIS_URL options, as written, that turn rediss:// verification off (none: it is
    on), read as redis-py reads them."""
    if not _is_tls(settings):
        return []
    query = dict(parse_qsl(urlsplit(settings.effective_redis_url).query))
    off = []
    if query.get("ssl_cert_reqs") == "none":
        off.append("ssl_cert_reqs=none")
    if query.get("ssl_check_hostname", "").upper() in _FALSE_WORDS:
        off.append(f"ssl_check_hostname={query['ssl_check_hostname']}")
    return off


async def tls_problem(settings: Settings, exc: BaseException) -> str | None:
    """What ``exc``, from a command on a rediss:// connection, says about TLS — one line with
    the fix — or None when it is no TLS problem. A server that closes the connection right
    after the handshake is asked why (a new handshake, then waiting for its alert): a TLS 1.3
    server refuses a missing client certificate only after the client has sent its request."""
    if not _is_tls(settings):
        return None
    cause = _ssl_error(exc)
    closed = isinstance(exc, RedisConnectionError | OSError) and any(
        word in str(exc).lower() for word in _CLOSED
    )
    if cause is None and closed:
        cause = await _server_alert(settings)
    if cause is None:
        return None
    host = urlsplit(settings.effective_redis_url).hostname
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = str(cause.verify_message or cause.reason)
        if "mismatch" in why.lower():
            return (
                f"the server's certificate is not valid for host {host!r}: connect by a name "
                "the certificate lists (REDIS_URL's host)"
            )
        return (
            f"the server's certificate does not verify ({why}): set REDIS_TLS_CA to the CA "
            "that signed it"
        )
    reason = str(cause.reason or "")
    return _ALERTS.get(reason, f"the TLS handshake failed: {reason or cause}")


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError behind ``exc`` (redis-py wraps it in a ConnectionError)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def _server_alert(settings: Settings) -> ssl.SSLError | None:
    """A new TLS connection made as the client makes it, reading without sending: a server
    that refuses the client says why in an alert; one that waits for a command says nothing."""
    client = aioredis.Redis.from_url(settings.effective_redis_url, **tls_options(settings))
    try:
        pool = client.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)  # as the pool makes one
        if not isinstance(connection, SSLConnection):
            return None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                connection.host, connection.port, ssl=connection.ssl_context.get()
            ),
            _PROBE_TIMEOUT_S,
        )
        try:
            await asyncio.wait_for(reader.read(1), _PROBE_TIMEOUT_S)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    except ssl.SSLError as exc:
        return exc
    except (OSError, TimeoutError):
        return None
    finally:
        await client.aclose()
    return None
