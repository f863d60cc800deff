"""Every Redis key and name aam-dcl uses, in one place (the README has the key map).

Names from the configuration guide are contracts other systems rely on; new keys never
match ``aam:dcl:*`` because the worker discovers streams by scanning that pattern.

One key map serves standalone Redis and Redis Cluster. A key written together with another
one in a script or MULTI carries that key's name as its hash tag: ``prefix:{aam:dcl:t:c}``
hashes to the slot of ``aam:dcl:t:c`` (Redis hashes what the first ``{...}`` holds), so a
connector's stream, dead letters and sync state share one slot, and the processed set and
its expiry index another. Names are checked against NAME_RE (no braces): a tenant or a
connector cannot inject a tag.
"""

from __future__ import annotations

import re

from aam_dcl.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
NAME_RULE = "1-64 characters of letters, digits, '_', '.' or '-'"

STREAM_PREFIX = "aam:dcl:"
_DLQ_PREFIX = "aam:dlq:"
_SYNC_PREFIX = "aam:sync:"
_LEASE_PREFIX = "aam:lease:"
_FENCE_PREFIX = "aam:fence:"


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
    """ZSET batch id -> expiry (ms): gives every id in the processed SET its own expiry.
    In the processed SET's slot: ``dcl:processed_batches_expiry:{dcl:processed_batches:t}``."""
    return f"dcl:processed_batches_expiry:{{{processed_set(tenant)}}}"


def dead_letter_stream(tenant: str, connector: str) -> str:
    """Per-connector dead-letter stream, in its stream's slot: ``aam:dlq:{aam:dcl:t:c}``
    (outside ``aam:dcl:*``, so discovery never reads it)."""
    return f"{_DLQ_PREFIX}{{{stream(tenant, connector)}}}"


def dead_letter_pattern(tenant: str) -> str:
    """SCAN pattern of the tenant's dead-letter streams (ACL and SCAN globs take ``{}``
    literally)."""
    return f"{_DLQ_PREFIX}{{{stream_pattern(tenant)}}}"


def connector_of_dead_letter_stream(tenant: str, key: str) -> str | None:
    """The connector of a dead-letter stream key of ``tenant``, or None if it is not one."""
    return _tagged_connector(_DLQ_PREFIX, tenant, key)


def sync_state(tenant: str, connector: str) -> str:
    """HASH of a connector's sync state, in its stream's slot (``aam:sync:{aam:dcl:t:c}``;
    the publish script writes both): the current run's start, chunk counter and cursors, the
    last run's outcome, and the operator's requests (the fields below)."""
    return f"{_SYNC_PREFIX}{{{stream(tenant, connector)}}}"


def sync_state_pattern(tenant: str) -> str:
    """SCAN pattern of the tenant's sync states."""
    return f"{_SYNC_PREFIX}{{{stream_pattern(tenant)}}}"


def connector_of_sync_state(tenant: str, key: str) -> str | None:
    """The connector of a sync state key of ``tenant``, or None if it is not one."""
    return _tagged_connector(_SYNC_PREFIX, tenant, key)


def lease(tenant: str, connector: str) -> str:
    """STRING ``"{holder} {token}"``: the bridge replica syncing the connector, with a PX expiry
    it renews while it holds it; in the stream's slot (``aam:lease:{aam:dcl:t:c}``)."""
    return f"{_LEASE_PREFIX}{{{stream(tenant, connector)}}}"


def fence(tenant: str, connector: str) -> str:
    """STRING counter (INCR per new lease holder): the current holder's fencing token. The
    publish script refuses a write whose token is not this value (``aam:fence:{aam:dcl:t:c}``)."""
    return f"{_FENCE_PREFIX}{{{stream(tenant, connector)}}}"


def lease_pattern(tenant: str) -> str:
    """ACL pattern of the tenant's leases."""
    return f"{_LEASE_PREFIX}{{{stream_pattern(tenant)}}}"


def fence_pattern(tenant: str) -> str:
    """ACL pattern of the tenant's fencing counters."""
    return f"{_FENCE_PREFIX}{{{stream_pattern(tenant)}}}"


def _tagged_connector(prefix: str, tenant: str, key: str) -> str | None:
    inner = key.removeprefix(prefix)
    if inner == key or not (inner.startswith("{") and inner.endswith("}")):
        return None
    return connector_of_stream(tenant, inner[1:-1])


# --- names before the hash tags (aam-dcl < 0.2), renamed at start-up on standalone Redis -------


def legacy_sync_state(tenant: str, connector: str) -> str:
    """``aam:sync:{tenant}:{connector}`` (the bridge renames it to ``sync_state``)."""
    return f"{_SYNC_PREFIX}{tenant}:{connector}"


def legacy_dead_letter_stream(tenant: str, connector: str) -> str:
    """``aam:dlq:{tenant}:{connector}`` (the worker renames it to ``dead_letter_stream``)."""
    return f"{_DLQ_PREFIX}{tenant}:{connector}"


def legacy_processed_expiry(tenant: str) -> str:
    """``dcl:processed_batches_expiry:{tenant}`` (the worker renames it)."""
    return f"dcl:processed_batches_expiry:{tenant}"


def legacy_renames(role: str, tenant: str, connector: str) -> list[tuple[str, str]]:
    """``(old name, new name)`` of the keys the ``role``'s daemon renames for a connector."""
    if role == "bridge":
        return [(legacy_sync_state(tenant, connector), sync_state(tenant, connector))]
    return [
        (legacy_dead_letter_stream(tenant, connector), dead_letter_stream(tenant, connector)),
        (legacy_processed_expiry(tenant), processed_expiry(tenant)),
    ]


# Fields of the sync state an operator sets (``aam-dcl sync``) and the bridge takes: each holds
# the request's time in ms, and the bridge deletes it only if it still holds what it read.
SYNC_REQUEST_FULL = "request_full_ms"  # the next run reads every table from the start
SYNC_REQUEST_NOW = "request_now_ms"  # run now rather than at the schedule's next time


def consumer_heartbeat(tenant: str, consumer: str) -> str:
    """STRING with a short TTL, refreshed by a live worker: ``dcl:consumer:{tenant}:{name}``
    (its value is the time it was written, ms). Absent = the consumer is dead."""
    return f"dcl:consumer:{tenant}:{consumer}"


def consumer_heartbeat_pattern(tenant: str) -> str:
    """ACL pattern of the tenant's consumer heartbeats."""
    return consumer_heartbeat(tenant, "*")


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
