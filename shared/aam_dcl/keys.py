"""Every Redis key and name aam-dcl uses, in one place (docs/architecture.md has the key map).

Names from the configuration guide are contracts other systems rely on; new keys never
match ``aam:dcl:*`` because the worker discovers streams by scanning that pattern.
"""

from __future__ import annotations

import re

from aam_dcl.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
NAME_RULE = "1-64 characters of letters, digits, '_', '.' or '-'"

STREAM_PREFIX = "aam:dcl:"


def validate_name(value: str, what: str) -> str:
    """Check a tenant id or connector name; they go into key names and patterns."""
    if not NAME_RE.match(value):
        raise ConfigError(f"{what}={value!r} is invalid: use {NAME_RULE}")
    return value


def stream(tenant: str, connector: str) -> str:
    """The stream one connector of one tenant publishes to: ``aam:dcl:{tenant}:{connector}``."""
    return f"{STREAM_PREFIX}{tenant}:{connector}"


def stream_pattern(tenant: str) -> str:
    """SCAN pattern matching exactly this tenant's connector streams."""
    return f"{STREAM_PREFIX}{tenant}:*"


def connector_of_stream(tenant: str, key: str) -> str | None:
    """The connector name of a stream key of ``tenant``, or None if it is not one."""
    prefix = f"{STREAM_PREFIX}{tenant}:"
    if not key.startswith(prefix):
        return None
    name = key[len(prefix) :]
    return name if NAME_RE.match(name) else None


def stream_key_problem(tenant: str, key: str) -> str | None:
    """Why a key matching ``aam:dcl:{tenant}:*`` is not a connector stream (None if it is)."""
    prefix = f"{STREAM_PREFIX}{tenant}:"
    if not key.startswith(prefix):
        return f"not under {prefix}"
    name = key[len(prefix) :]
    if NAME_RE.match(name):
        return None
    return f"connector part {name!r} is not a valid name ({NAME_RULE})"


def group(tenant: str) -> str:
    """The consumer group of a tenant's workers: ``dcl_engine:{tenant}``."""
    return f"dcl_engine:{tenant}"


def processed_set(tenant: str) -> str:
    """SET of batch ids already written (``SCARD``/``SISMEMBER`` work on it as the guide says)."""
    return f"dcl:processed_batches:{tenant}"


def processed_expiry(tenant: str) -> str:
    """ZSET batch id -> expiry (ms): gives every id in the processed SET its own expiry."""
    return f"dcl:processed_batches_expiry:{tenant}"


def dead_letter_stream(tenant: str, connector: str) -> str:
    """Per-connector dead-letter stream (outside ``aam:dcl:*`` so discovery never reads it)."""
    return f"aam:dlq:{tenant}:{connector}"


def dead_letter_pattern(tenant: str) -> str:
    return f"aam:dlq:{tenant}:*"


def sync_state(tenant: str, connector: str) -> str:
    """HASH of a connector's sync state: the current run's start, chunk counter and cursors,
    the last run's outcome, and the operator's requests (the fields below)."""
    return f"aam:sync:{tenant}:{connector}"


# Fields of the sync state an operator sets (``aam-dcl sync``) and the bridge takes: each holds
# the request's time in ms, and the bridge deletes it only if it still holds what it read.
SYNC_REQUEST_FULL = "request_full_ms"  # the next run reads every table from the start
SYNC_REQUEST_NOW = "request_now_ms"  # run now rather than at the schedule's next time


def paused_flag(tenant: str) -> str:
    """Present while an operator has paused consumption (``aam-dcl pause``)."""
    return f"dcl:paused:{tenant}"


def batch_id(connector: str, run_start_ms: int, chunk_number: int) -> str:
    """``{connector}_{timestamp_ms}_{chunk_number}``; deterministic for a sync run."""
    return f"{connector}_{run_start_ms}_{chunk_number}"


def parse_batch_id(value: str) -> tuple[str, int, int] | None:
    """``(connector, run_start_ms, chunk_number)`` of an id made by ``batch_id``, else None.

    Parsed from the right, since connector names may hold ``_``; ASCII digits only (``int()``
    would also take ``+5``, `` 5`` and other scripts' digits). Other producers' ids are None.
    """
    parts = value.rsplit("_", 2)
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts[1:]):
        return None
    return parts[0], int(parts[1]), int(parts[2])
