"""End-to-end checks of a SaaS connector: aam-bridge runs it against its fake, the worker
stores what it publishes in DuckDB, and the store is compared with what the fake holds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import duckdb
import redis.asyncio as aioredis

from aam_bridge.connectors.base import ConnectorConfig
from aam_dcl.config import Settings
from tests.integration.conftest import drained, run_bridge_once, wait_until
from tests.integration.test_pipeline import same_value

DELETED_AT = "_dcl_deleted_at"  # the store's delete mark, where the sink has it


async def run_and_drain(settings: Settings, redis: aioredis.Redis, config: ConnectorConfig) -> None:
    """One bridge run of ``config``, then wait until the worker has stored all of it."""
    await run_bridge_once(settings, [config])
    await wait_until(lambda: drained(redis), what=f"the worker to drain {config.name}")


def stored(settings: Settings, table: str, key: str) -> dict[Any, dict[str, Any]]:
    path = settings.sink_url.removeprefix("duckdb://")
    with duckdb.connect(path, read_only=True) as con:
        cur = con.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    by_key = {row[key]: row for row in rows}
    assert len(by_key) == len(rows), f"duplicate keys in {table}"
    return by_key


def assert_store_matches(
    settings: Settings,
    table: str,
    key: str,
    live: Mapping[Any, Mapping[str, Any]],
    gone: set[Any],
) -> bool:
    """The store's ``table`` holds every live row with the source's values; a row deleted at
    the source is marked deleted where the store has the mark (``DELETED_AT``), else it is
    only required not to be live. Returns whether the mark was checked."""
    rows = stored(settings, table, key)
    marks = bool(rows) and DELETED_AT in next(iter(rows.values()))
    for ident, expected in live.items():
        got = rows.get(ident)
        assert got is not None, f"{table}: row {ident} is not stored"
        if marks:
            assert got[DELETED_AT] is None, f"{table}: live row {ident} is marked deleted"
        for column, value in expected.items():
            assert same_value(value, got[column]), (table, ident, column, value, got[column])
    if marks:
        for ident in gone:
            assert ident not in rows or rows[ident][DELETED_AT] is not None, (table, ident)
        extra = {i for i, r in rows.items() if r[DELETED_AT] is None} - set(live)
    else:
        extra = set(rows) - set(live) - gone
    assert not extra, f"{table}: rows the source never had: {sorted(extra)[:5]}"
    return marks
