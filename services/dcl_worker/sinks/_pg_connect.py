"""How the PostgreSQL sink reaches its server: DCL_SINK_URL read into an asyncpg DSN and a
schema, the sessions' settings, and the one mapping of asyncpg's exceptions
(``translate_pg``).

Refusals that no retry can fix — no such database (SQLSTATE 3D000), a password or role the
server refuses (class 28), a missing privilege (42501) — are ConfigError while connecting
(open() and check(): the daemon exits 2 with one line); later, mid-run, the same refusals are
SinkUnavailable (a revoked grant must not dead-letter good batches). Connection problems,
timeouts and the server starting or stopping (57P03, class 57) are SinkUnavailable.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from aam_dcl.errors import AamDclError, ConfigError, SinkDataError, SinkUnavailable
from aam_dcl.logs import redacted_url
from dcl_worker.sinks._merge import first_line
from dcl_worker.sinks._tenancy import url_schema

CONNECT_TIMEOUT_S = 10.0
# SQLSTATE classes that mean "the store is not usable now", not "this data is bad":
# connection, transaction rollback (deadlock), resources, operator intervention,
# object not in prerequisite state (lock timeout), system and internal errors.
_UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})
# Refusals no retry fixes while connecting, and what to do about each.
_NEVER_STATES = {
    "3D000": "create the database, or name an existing one in DCL_SINK_URL's path",
    "28P01": "the server refused the password: fix DCL_SINK_URL's user or password",
    "28000": "the server refuses this user (no such role, or pg_hba.conf): fix DCL_SINK_URL's "
    "user, or let it log in",
    "42501": "grant the user CONNECT on the database and CREATE on it (or on the schema)",
}
# A double prints as its shortest decimal (extra_float_digits 1, the default): the exact numeric
# of a staged float is read from it. Naive datetimes read as UTC.
SERVER_SETTINGS = {"timezone": "UTC", "application_name": "dcl-worker", "extra_float_digits": "1"}


def translate_pg(
    exc: Exception, url: str, where: str, what: str, *, opening: bool = False
) -> AamDclError | None:
    """Our error for an asyncpg (or network) exception; None for any other exception.

    While connecting (``opening``), a refusal of ``_NEVER_STATES`` is ConfigError naming
    DCL_SINK_URL (password masked) and the fix, anything else SinkUnavailable: no batch is at
    fault then. Later, connection problems, timeouts, the classes above and those refusals
    are SinkUnavailable (retry later); any other server error rejects the data: SinkDataError.
    """
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        hint = _NEVER_STATES.get(state) or (_NEVER_STATES["28000"] if state[:2] == "28" else None)
        if opening and hint is not None:
            return ConfigError(
                f"DCL_SINK_URL={redacted_url(url)}: PostgreSQL ({where}) {what}: "
                f"{first_line(exc)} (SQLSTATE {state}): {hint}"
            )
        if opening or hint is not None or state[:2] in _UNAVAILABLE_CLASSES:
            return SinkUnavailable(f"PostgreSQL ({where}): {what}: {exc}")
        return SinkDataError(f"PostgreSQL rejected the write: {what}: {exc}")
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return SinkUnavailable(f"PostgreSQL ({where}): {what}: {exc!r}")
    return None


def parse_postgres_url(url: str) -> tuple[str, str | None]:
    """(asyncpg DSN, the schema ``?schema=`` names, or None: the tenant's, by ``_tenancy``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    if not schemas:
        return url, None
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), url_schema(schemas[-1])


def where(dsn: str, schema: str) -> str:
    """host:port/db, schema S: for messages (never the password)."""
    parts = urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}, schema {schema}"


async def missing_privilege(con: asyncpg.Connection, schema: str, exists: bool) -> str | None:
    """What the user may not do that open() and write() need, or None: create the schema (or,
    if it exists, use it and create tables in it) and write its inbox."""
    if not exists:
        if await con.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')"):
            return None
        return f"CREATE on the database, to create schema {schema}"
    if not await con.fetchval(
        "SELECT has_schema_privilege($1, 'USAGE') AND has_schema_privilege($1, 'CREATE')", schema
    ):
        return f"USAGE and CREATE on schema {schema}"
    inbox = await con.fetchval("SELECT to_regclass(format('%I._dcl_inbox', $1::text))", schema)
    if inbox is not None and not await con.fetchval(
        "SELECT has_table_privilege($1::regclass, 'SELECT, INSERT, UPDATE, DELETE')", inbox
    ):
        return f"SELECT, INSERT, UPDATE and DELETE on {schema}._dcl_inbox"
    return None


def never_works(url: str, where: str, problem: str) -> ConfigError:
    return ConfigError(f"DCL_SINK_URL={redacted_url(url)}: PostgreSQL ({where}): {problem}")


def connect_kwargs() -> dict[str, Any]:
    return {"timeout": CONNECT_TIMEOUT_S, "server_settings": SERVER_SETTINGS}
