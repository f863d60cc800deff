"""``aam-dcl preview CONNECTOR``: a dry run of one connector of the connectors file. It reads
the first page of each table, publishes nothing and writes no state, and says what the bridge
would send: the schema (declared or inferred, as the bridge builds it) and a few rows. It
checks credentials, object and field lists before a first sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aam_bridge.connectors import registry
from aam_bridge.connectors.base import Connector, TableSpec, close_read
from aam_bridge.connectors_file import load_connectors
from aam_dcl.config import Settings
from aam_dcl.errors import AamDclError, ConfigError
from aam_dcl.schema import table_batch


@dataclass(slots=True)
class TablePreview:
    name: str
    primary_key: list[str]
    columns: list[tuple[str, str]]  # (name, type)
    rows: list[dict[str, Any]]
    rows_on_first_page: int
    deleted_on_first_page: int
    error: str | None = None  # this table could not be read; the others still are

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.name,
            "primary_key": self.primary_key,
            "columns": [{"name": n, "type": t} for n, t in self.columns],
            "rows": self.rows,
            "rows_on_first_page": self.rows_on_first_page,
            "deleted_on_first_page": self.deleted_on_first_page,
            "error": self.error,
        }


def connector_of(settings: Settings, name: str) -> Connector:
    """The connector called ``name`` in AAM_CONNECTORS_FILE (or the built-in demo set)."""
    configs = load_connectors(settings.connectors_file, settings.tenant_id)
    for config in configs:
        if config.name == name:
            return registry.create(config)
    where = settings.connectors_file or "the built-in demo connectors"
    raise ConfigError(
        f"no connector {name!r} in {where}; its connectors: {', '.join(c.name for c in configs)}"
    )


async def preview(connector: Connector, settings: Settings, rows: int) -> list[TablePreview]:
    """The first page of every table of ``connector`` (opened and closed here)."""
    await connector.open()
    try:
        return [await _table(connector, t, settings, rows) for t in await connector.tables()]
    finally:
        await connector.close()


async def _table(
    connector: Connector, table: TableSpec, settings: Settings, rows: int
) -> TablePreview:
    pages = connector.read(table, None)
    try:
        page = await anext(aiter(pages), None)
    except AamDclError as exc:
        return TablePreview(table.name, list(table.primary_key), [], [], 0, 0, error=str(exc))
    finally:
        await close_read(pages)
    records = page.records if page else []
    part = table_batch(
        table.name,
        records,
        primary_key=table.primary_key,
        max_samples=settings.max_samples_per_table,
        column_types=table.column_types,
    )
    return TablePreview(
        table.name,
        list(table.primary_key),
        [(c.name, c.type) for c in part.schema.columns],
        records[:rows],
        len(records),
        len(page.deleted) if page else 0,
    )
