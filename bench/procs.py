"""Running roles in their own processes, started together, timed on one clock.

Each role runs in a fresh ``spawn`` process (like the real daemons: its own interpreter,
event loop (uvloop) and metrics registry). Every process sets up untimed, then all wait on
one barrier and start together; ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, so the
times the processes report are comparable.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

SETUP_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Spec:
    system: str
    role: str  # "publish" | "consume"
    params: dict[str, Any]
    env: tuple[tuple[str, str], ...] = ()


def run_roles(specs: list[Spec], timeout_s: float) -> list[dict[str, Any]]:
    """Run ``specs`` concurrently; each result has started/ended (perf_counter) and RSS."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(specs) + 1)
    results: mp.Queue[tuple[int, dict[str, Any] | str]] = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(i, spec, barrier, results), daemon=True)
        for i, spec in enumerate(specs)
    ]
    for proc in procs:
        proc.start()
    out: dict[int, dict[str, Any]] = {}
    try:
        # A child that fails in setup aborts the barrier; its error is then in the queue.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=SETUP_TIMEOUT_S)
        deadline = time.monotonic() + timeout_s
        while len(out) < len(specs):
            try:
                i, result = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"benchmark roles did not finish in {timeout_s:.0f}s") from None
            if isinstance(result, str):
                raise RuntimeError(f"{specs[i].system} {specs[i].role} failed:\n{result}")
            out[i] = result
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return [out[i] for i in range(len(specs))]


def _child(index: int, spec: Spec, barrier: Any, results: Any) -> None:
    import os

    os.environ.update(dict(spec.env))
    try:
        import uvloop

        from aam_dcl.logs import configure_logging

        configure_logging("WARNING", "console")
        result = uvloop.run(_main(spec, barrier))
    except BaseException:
        barrier.abort()
        results.put((index, traceback.format_exc()))
        return
    results.put((index, result))


async def _main(spec: Spec, barrier: Any) -> dict[str, Any]:
    from systems import make_role

    role = make_role(spec.system, spec.role, spec.params)
    await role.setup()
    rss = RssSampler()
    barrier.wait(timeout=SETUP_TIMEOUT_S)
    started = time.perf_counter()
    with rss:
        result = await role.run()
    ended = result.pop("ended", None) or time.perf_counter()
    await role.teardown()
    return {**result, "started": started, "ended": ended, **rss.report()}


class RssSampler:
    """Peak RSS of this process while the block runs, sampled every ``interval_s`` by a thread.

    Not ``getrusage``'s ru_maxrss: on Linux it survives fork + exec, so a spawned process
    reports its parent's peak as its own.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.before = self.peak = self.after = self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self.before = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = self._process.memory_info().rss
        self.peak = max(self.peak, self.after)

    def report(self) -> dict[str, int]:
        return {"rss_before": self.before, "rss_peak": self.peak, "rss_after": self.after}
