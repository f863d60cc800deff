"""What the tests share: polling with a deadline, the "drained" check of the consumer group,
Prometheus samples of this process, and the ``aam-dcl`` CLI run in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result
from prometheus_client import REGISTRY
from redis.exceptions import RedisError

from aam_dcl import keys
from aam_dcl_cli.cli import main as aam_dcl_main

POLL_INTERVAL_S = 0.05


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout_s: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until true; fail the test with ``what`` after ``timeout_s``.

    The condition is checked at least once, however little time is left.
    """
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL_S)


async def drained(
    client: aioredis.Redis,
    tenant: str = "default",
    connectors: Iterable[str] | None = None,
    *,
    trust_lag: bool = True,
) -> bool:
    """Every stream of ``tenant`` (or of ``connectors``) has the group ``dcl_engine:{tenant}``
    with nothing undelivered and nothing pending.

    Without ``connectors`` the tenant's streams are found by SCAN, and no stream at all is not
    drained (nothing was published yet). A missing stream or group, or a Redis error (Redis
    restarting), is not drained either: the caller polls again.

    Undelivered is XINFO GROUPS ``lag`` (None, Redis cannot tell, is not drained). With
    ``trust_lag=False`` it is ``last-delivered-id != last-generated-id`` instead: after Redis
    replays its AOF, ``lag`` can stay overstated for good (docs/chaos.md).
    """
    try:
        if connectors is None:
            pattern = keys.stream_pattern(tenant)
            streams = [s async for s in client.scan_iter(match=pattern, _type="stream")]
            if not streams:
                return False
        else:
            streams = [keys.stream(tenant, c) for c in connectors]
        for stream in streams:
            groups = await client.xinfo_groups(stream)
            group = next((g for g in groups if g["name"].decode() == keys.group(tenant)), None)
            if group is None or group["pending"]:
                return False
            if trust_lag:
                undelivered = group["lag"] != 0
            else:
                info = await client.xinfo_stream(stream)
                undelivered = group["last-delivered-id"] != info["last-generated-id"]
            if undelivered:
                return False
    except RedisError:
        return False
    return True


def sample(name: str, **labels: str) -> float:
    """The current value of one Prometheus sample of this process; 0.0 if never recorded.

    Counters are exposed as ``<name>_total`` samples: ``sample("aam_bridge_sync_runs_total",
    tenant="default", connector="crm", status="failed")``.
    """
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def invoke_cli(
    args: Sequence[str], env: Mapping[str, str], stdin: str | None = None
) -> Result:
    """``aam-dcl ARGS`` in-process with click's CliRunner, in a thread: its commands call
    ``asyncio.run``, which cannot run inside the test's event loop."""
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, aam_dcl_main, list(args), input=stdin, env=dict(env)
    )
