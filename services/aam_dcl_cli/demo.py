"""``aam-dcl demo``: the whole pipeline in one process on embedded defaults.

A private valkey-server (when REDIS_URL is unset), the demo connectors for a few sync runs,
aam-bridge and dcl-worker side by side, progress while it runs, then what landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

from aam_dcl.config import Settings
from aam_dcl.logs import configure_logging, redacted_url
from aam_dcl_cli.inspect import collect_status
from aam_dcl_cli.local_server import LocalServer, start_local_server

DEMO_CONNECTORS = ("salesforce", "hubspot", "dynamics")


@contextlib.asynccontextmanager
async def demo_redis(settings: Settings) -> AsyncIterator[Settings]:
    """Settings pointing at REDIS_URL, or at a private server started for the demo."""
    if settings.redis_url:
        yield settings
        return
    directory = Path(tempfile.mkdtemp(prefix="aam-dcl-demo-redis-"))
    server: LocalServer = await asyncio.to_thread(start_local_server, directory)
    click.echo(f"started a private valkey-server ({server.binary}) on {server.url}")
    try:
        yield settings.model_copy(update={"redis_url": server.url})
    finally:
        await asyncio.to_thread(server.stop)


async def run_demo(settings: Settings, *, records: int, runs: int) -> int:
    from aam_bridge import metrics as bridge_metrics
    from aam_bridge.connectors.base import ConnectorConfig
    from aam_bridge.main import serve as serve_bridge
    from dcl_worker import metrics as worker_metrics
    from dcl_worker.main import serve as serve_worker
    from dcl_worker.sinks.registry import create_sink

    configure_logging("WARNING", "console")
    # The demo's daemons share this process: random metrics ports, quick discovery.
    settings = settings.model_copy(
        update={"metrics_port": 0, "discovery_interval_s": 0.2, "block_ms": 200}
    )
    configs = [
        ConnectorConfig(
            name=name,
            type="demo",
            connector_config_id=f"{name}-demo-001",
            schedule_s=None,
            options={"flavor": name, "records": records, "seed": 1},
        )
        for name in DEMO_CONNECTORS
    ]
    async with demo_redis(settings) as settings:
        click.echo(f"redis: {redacted_url(settings.effective_redis_url)}")
        click.echo(f"store: {redacted_url(settings.sink_url)}")
        click.echo(
            f"tenant: {settings.tenant_id}, {runs} sync runs of {', '.join(DEMO_CONNECTORS)}"
        )
        stop_worker = asyncio.Event()
        worker = asyncio.create_task(serve_worker(settings, stop_worker))
        started = time.monotonic()
        view = _Progress(started, bridge_metrics.RECORDS_PUBLISHED, worker_metrics.RECORDS)

        async def report_progress(label: str) -> None:
            while True:
                await asyncio.sleep(0.5)
                view.show(label)

        with view:
            for run in range(1, runs + 1):
                reporter = asyncio.create_task(report_progress(f"run {run}/{runs}"))
                try:
                    # Each run syncs every connector once (the first in full, then the changes).
                    await serve_bridge(settings, asyncio.Event(), configs)
                    while not await _drained(settings):
                        if worker.done():
                            await worker  # raises what stopped it
                        await asyncio.sleep(0.1)
                finally:
                    reporter.cancel()
                view.show(f"run {run} ok", final=True)
        stop_worker.set()
        await worker
        click.echo(f"done in {time.monotonic() - started:.1f}s")
        sink = create_sink(settings.sink_url, settings.tenant_id)
        await sink.open()
        try:
            counts = await sink.count_rows()
        finally:
            await sink.close()
    click.echo("\nrows per table in the DCL store:")
    for table, count in sorted(counts.items()):
        click.echo(f"  {table:<32} {count:>8,}")
    if settings.sink_url.startswith("duckdb://"):
        path = settings.sink_url.removeprefix("duckdb://")
        query = (
            "SELECT stage, count(*), round(sum(amount)) FROM salesforce__opportunities GROUP BY 1"
        )
        click.echo("\nquery it:")
        click.echo(
            f'.venv/bin/python -c "import duckdb; '
            f"duckdb.connect('{path}', read_only=True).sql('{query}').show()\""
        )
    return 0


async def _drained(settings: Settings) -> bool:
    """True when every stream's group has no lag and nothing pending."""
    report = await collect_status(settings)
    for stream in report["streams"]:
        for group in stream["groups"]:
            if group["pending"] or group["lag"]:
                return False
    return True


class _Progress:
    """Records published and written, in total and per connector, with their rates: a live
    rich table on a terminal, else one plain line per update (and each run's end)."""

    def __init__(self, started: float, published: object, written: object) -> None:
        from rich.console import Console

        self.started, self.published, self.written = started, published, written
        self.console = Console()
        self.live: Any = None
        self.last: tuple[float, float, float] = (started, 0.0, 0.0)

    def __enter__(self) -> _Progress:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, auto_refresh=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def show(self, label: str, *, final: bool = False) -> None:
        now = time.monotonic()
        published = _total(self.published)
        written = _total(self.written, outcome="processed")
        then, published_before, written_before = self.last
        elapsed = max(now - then, 1e-6)
        self.last = (now, published, written)
        pub_rate, write_rate = (
            (published - published_before) / elapsed,
            (written - written_before) / elapsed,
        )
        line = (
            f"  {now - self.started:6.1f}s  {label:<10} published {int(published):>9,}"
            f" ({pub_rate:>8,.0f}/s)  written {int(written):>9,} records ({write_rate:>8,.0f}/s)"
        )
        if self.live is None:
            click.echo(line)
            return
        from rich.table import Table

        table = Table(title=f"{label}: {now - self.started:.1f}s", title_justify="left")
        for name in ("CONNECTOR", "PUBLISHED", "WRITTEN", "WAITING"):
            table.add_column(name, justify="left" if name == "CONNECTOR" else "right")
        pub = _by_connector(self.published)
        wrote = _by_connector(self.written, outcome="processed")
        for connector in sorted(pub):
            p, w = int(pub[connector]), int(wrote.get(connector, 0))
            table.add_row(connector, f"{p:,}", f"{w:,}", f"{max(0, p - w):,}")
        self.live.update(table, refresh=True)
        if final:
            self.console.print(line, soft_wrap=True, highlight=False)


def _by_connector(metric: object, **match: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for family in metric.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in match.items()
            ):
                connector = sample.labels.get("connector", "")
                totals[connector] = totals.get(connector, 0.0) + sample.value
    return totals


def _total(metric: object, **match: str) -> float:
    total = 0.0
    for family in metric.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in match.items()
            ):
                total += sample.value
    return total
