"""Waiting, done one way by every loop: jittered exponential backoff between retries, and
waits that end as soon as the daemon is stopping."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable
from typing import Any

from redis.exceptions import RedisError


class Backoff:
    """Bounded, jittered exponential backoff: the n-th delay is drawn from the upper half of
    ``min(cap_s, base_s * 2**n)``, so that many clients retrying at once spread out."""

    def __init__(self, cap_s: float = 5.0, *, base_s: float = 0.1) -> None:
        self.cap_s = cap_s
        self.base_s = base_s
        self.attempt = 0

    def next_s(self) -> float:
        self.attempt += 1
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.attempt, 16))
        return float(ceiling * random.uniform(0.5, 1.0))

    def reset(self) -> None:
        self.attempt = 0


class StopWaiter:
    """Waits that end as soon as ``stopping`` is set, sharing one waiter on the event (not
    one per wait): a daemon makes one and hands it to every loop."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self.stopping = stopping
        self._stopped: asyncio.Future[Any] | None = None

    async def wait_for(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable`` unless stopping is set first; then cancel it and return None."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self.stopping.wait())
        task = asyncio.ensure_future(awaitable)
        try:
            done, _ = await asyncio.wait({task, self._stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # we are cancelled: so is what we waited for
            raise
        if task in done:
            return task.result()
        task.cancel()
        # An abandoned read may still end in an error: collect it rather than lose it.
        with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
            await task
        return None

    async def sleep(self, delay_s: float) -> None:
        """Sleep ``delay_s``, or less if stopping is set meanwhile."""
        await self.wait_for(asyncio.sleep(delay_s))

    def close(self) -> None:
        """Drop the stop waiter (a later wait makes a new one)."""
        if self._stopped is not None:
            self._stopped.cancel()
            self._stopped = None
