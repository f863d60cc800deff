"""structlog set-up: JSON lines in production, colourless console lines in a terminal.

Context (tenant, connector, batch_id) is bound with contextvars so every line of a batch
carries it. Secrets never reach a log: ``redacted_url`` is the one function that masks the
credentials of a URL, and a last processor applies it to every URL in every logged string.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote_plus

import structlog

MASK = "***"
# Query parameters whose value is a credential: password=, sslpassword=, ssl_password=,
# passwd=, pwd=, token=, secret=... (names compared after percent-decoding).
_SECRET_PARAM_WORDS = ("pass", "pwd", "secret", "token", "credential")
_PARAM_RE = re.compile(r"(?<=[?&])([^=&?#]*)=([^&]*)")
_URL_IN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_urls,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def redacted_url(url: str) -> str:
    """``url`` with every credential replaced by ``***``: safe to log and to print.

    Masks the password of the user part (``user:secret@``, ``:secret@``; everything after the
    first ``:`` up to the *last* ``@``, so an unencoded ``@ / ? #`` in a password is masked too)
    and the value of every credential query parameter (``?password=``, ``&sslpassword=``,
    percent-encoded names included) in any scheme: redis, rediss, unix, postgresql, ...
    The user name stays readable: it says which ACL user or role was used.
    """
    scheme, sep, rest = url.partition("://")
    prefix = scheme + sep if sep else ""
    if not sep:
        rest = url
    rest = _PARAM_RE.sub(_mask_param, rest)
    userinfo, at, hostinfo = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostinfo}"
    return prefix + rest


def redact_urls_in(text: str) -> str:
    """``text`` with ``redacted_url`` applied to every URL in it (for messages and logs)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT_RE.sub(lambda m: redacted_url(m.group(0)), text)


def _mask_param(match: re.Match[str]) -> str:
    name = unquote_plus(match.group(1)).lower()
    if any(word in name for word in _SECRET_PARAM_WORDS):
        return f"{match.group(1)}={MASK}"
    return match.group(0)


def _redact_urls(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Last line of defence: no URL credential reaches a log line, whatever logged it."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "://" in value:
            event_dict[key] = redact_urls_in(value)
    return event_dict


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
