"""Helpers of the SaaS connectors' tests: open a connector for a block, read a table's pages,
and gather every text a secret must never reach."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest

from aam_bridge.connectors.base import Connector, Page, TableSpec
from aam_dcl import keys
from aam_dcl.logs import configure_logging
from aam_dcl.messages import Record

C = TypeVar("C", bound=Connector)


@contextlib.asynccontextmanager
async def opened(connector: C) -> AsyncIterator[C]:
    await connector.open()
    try:
        yield connector
    finally:
        await connector.close()


async def pages(connector: Connector, table: TableSpec, cursor: str | None = None) -> list[Page]:
    return [page async for page in connector.read(table, cursor)]


def records(read: list[Page]) -> list[Record]:
    return [r for page in read for r in page.records]


def deleted(read: list[Page]) -> list[Record]:
    return [d for page in read for d in page.deleted]


@contextlib.contextmanager
def debug_logging(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """structlog at DEBUG in JSON for the block; then back to the tests' quiet console logs,
    bound to the real stderr (not this test's capture, which closes after it)."""
    configure_logging("DEBUG", "json")
    try:
        yield
    finally:
        with capsys.disabled():
            configure_logging("WARNING", "console")


async def texts_seen(
    logged: Iterable[str], errors: Iterable[BaseException], redis: aioredis.Redis, stream: str
) -> list[str]:
    """What a secret must not be in: the log text given, each error with its causes and
    contexts, /metrics, and every payload published on ``stream`` (which must have some)."""
    seen = [*logged, generate_latest().decode()]
    for error in errors:
        current: BaseException | None = error
        while current is not None:
            seen.append(f"{current!s} {current!r}")
            current = current.__cause__ or current.__context__
    entries = await redis.xrange(keys.stream("default", stream))
    assert entries, "nothing was published"
    seen += [fields[b"payload"].decode() for _, fields in entries]
    return seen
