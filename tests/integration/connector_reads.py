"""Helpers of the SaaS connectors' tests: open a connector for a block, read a table's pages,
gather every text a secret must never reach, load an example of docs/connectors.md."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest

from aam_bridge.connectors import registry
from aam_bridge.connectors.base import Connector, Page, TableSpec
from aam_bridge.connectors_file import load_connectors
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


def docs_example(tmp_path: Path, test_file: str, env: Mapping[str, str]) -> Connector:
    """The connector of the connectors file docs/connectors.md marks as loaded by
    ``test_file`` (docs that run), loaded with ``env`` and created."""
    docs = Path(__file__).parents[2] / "docs" / "connectors.md"
    marker = f"<!-- tests/integration/{test_file} loads this example -->\n```yaml\n"
    path = tmp_path / "connectors.yaml"
    path.write_text(docs.read_text().split(marker, 1)[1].split("```", 1)[0])
    (config,) = load_connectors(path, "acme", env=env)
    return registry.create(config)
