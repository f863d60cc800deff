"""The benchmark's workload: 7-field CRM records in chunks, and the same entries as payloads.

Every system measured gets the same data. aam-dcl's bridge gets the records as pre-built
pages (a connector that does no I/O, so the source is never the bottleneck) and does its real
work on them: schema inference, samples, encoding, XADD + checkpoint. The peers get the
entry bodies that work produces, as dicts, and encode them themselves in the timed part.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from sink_speed import FIELDS, crm_rows

from aam_bridge.connectors.base import Connector, ConnectorConfig, Page, TableSpec
from aam_dcl.messages import Batch, Record, encode
from aam_dcl.schema import table_batch

CONNECTOR = "salesforce"
TABLE = "opportunities"
PRIMARY_KEY = ("id",)
TENANT = "bench"
GROUP_CONSUMER = "bench-worker"

__all__ = ["CONNECTOR", "FIELDS", "TABLE", "TENANT", "Workload", "crm_rows"]


@dataclass(frozen=True, slots=True)
class Workload:
    """``records`` CRM rows cut into entries of ``chunk`` records."""

    records: int
    chunk: int = 200

    @property
    def entries(self) -> int:
        return -(-self.records // self.chunk)

    def rows(self) -> list[Record]:
        return crm_rows(self.records)

    def pages(self) -> list[list[Record]]:
        rows = self.rows()
        return [rows[i : i + self.chunk] for i in range(0, len(rows), self.chunk)]

    def bodies(self, run_ms: int = 1) -> list[dict[str, Any]]:
        """The entry bodies aam-dcl's bridge would publish, as JSON-ready dicts."""
        return [orjson.loads(p) for p in self.payloads(run_ms)]

    def payloads(self, run_ms: int = 1) -> list[bytes]:
        """The encoded ``payload`` field of every entry, as aam-dcl's bridge would write it."""
        out = []
        for n, page in enumerate(self.pages(), 1):
            tb = table_batch(TABLE, page, primary_key=PRIMARY_KEY, max_samples=8)
            batch = Batch(f"{CONNECTOR}_{run_ms}_{n}", CONNECTOR, "sf-bench", [tb], TENANT)
            out.append(encode(batch))
        return out


class PagesConnector(Connector):
    """A connector over pre-built pages: no I/O, so the bridge's own cost is what is timed.

    With ``pages_per_s`` the pages are released on a fixed schedule (the latency case):
    page k is yielded at start + k / pages_per_s, late pages immediately.
    """

    type_name: ClassVar[str] = "bench-pages"

    def __init__(
        self, pages: list[list[Record]], pages_per_s: float | None = None, name: str = CONNECTOR
    ) -> None:
        super().__init__(ConnectorConfig(name, self.type_name, "sf-bench", schedule_s=None))
        self._pages = pages
        self._pages_per_s = pages_per_s

    async def tables(self) -> list[TableSpec]:
        return [TableSpec(TABLE, PRIMARY_KEY)]

    def reads_in_full(self, table: TableSpec, cursor: str | None) -> bool:
        return False  # no completion marker: the peers send none, every case counts entries

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        start = int(cursor) + 1 if cursor else 0
        began = time.perf_counter()
        for k, n in enumerate(range(start, len(self._pages))):
            if self._pages_per_s:
                delay = began + k / self._pages_per_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield Page(self._pages[n], str(n))
